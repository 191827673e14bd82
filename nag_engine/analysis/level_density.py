"""The noise-shift picture of the NAG paper: at a fixed nominal t, the distribution (a Gaussian
kernel density estimate) of the per-sample estimated noise level among the sampler's states,
against the same for forward-process samples at that t -- one panel per t, one colour per
setting (e.g. the baseline and NAG).

The per-sample levels come from ``measure_noise_shift(..., keep_levels_at=(0.8, 0.5, ...))``
(`NoiseShiftReport.kept_levels`). A sampler whose states carry the level the schedule says has
its solid curve on top of the dashed forward curve; a curve to the right of it means states
that look noisier than t, to the left cleaner. The estimator's own bias moves both curves
alike, so compare the curves with each other, not with the nominal t (the vertical line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..images import write_figure
from .noise_shift import NoiseShiftReport

__all__ = ["level_density_figure", "level_density_plot"]


def level_density_figure(
    reports: dict[str, NoiseShiftReport],
    path: Union[str, Path],
    *,
    title: Optional[str] = None,
    dpi: int = 100,
) -> None:
    """Draw `level_density_plot` of the reports (one per setting, each with kept levels) and
    write it to `path` as a PNG, atomically: on any error no file (and no temporary) is left."""
    write_figure(path, level_density_plot(reports, title=title), dpi=dpi)


def level_density_plot(reports: dict[str, NoiseShiftReport], *, title: Optional[str] = None) -> Any:
    """A matplotlib Figure: one panel per kept time (the keys of the reports' `kept_levels`, in
    the first report's order), each showing the density of the estimated level of the sampler
    states of every report (solid, a colour per report, labelled by its key) and of the
    forward-process samples (dashed; drawn once when all reports share them), the step's
    nominal t as a grey vertical line. x: estimated noise level, y: density. No display is
    needed (Agg)."""
    from matplotlib.figure import Figure

    keys = _kept_keys(reports)
    figure = Figure(figsize=(4.0 * len(keys) + 0.5, 4.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(keys)))
    colours = {name: f"C{i % 10}" for i, name in enumerate(reports)}
    for ax, key in zip(axes, keys):
        _panel(ax, key, reports, colours)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5))
    estimator = {str(r.meta.get("estimator", "")) for r in reports.values()}
    default = "Estimated noise level at fixed nominal t: sampler states vs forward samples"
    if len(estimator) == 1 and estimator != {""}:
        default += f" (read by {estimator.pop()})"
    figure.suptitle(default if title is None else title)
    return figure


def _kept_keys(reports: dict[str, NoiseShiftReport]) -> list[str]:
    """The kept times shared by every report, in the first report's order."""
    if not reports:
        raise ValueError("level_density_figure needs at least one report")
    first = next(iter(reports.values()))
    keys = [k for k in first.kept_levels if all(k in r.kept_levels for r in reports.values())]
    if not keys:
        raise ValueError(
            "the reports keep no per-sample levels at a common time: measure them with "
            "measure_noise_shift(..., keep_levels_at=(0.8, 0.5, 0.2, 0.05))"
        )
    return keys


def _panel(ax: Any, key: str, reports: dict[str, NoiseShiftReport], colours: dict) -> None:
    """One kept time: densities of every report's sampler levels and the forward levels."""
    kept = {name: r.kept_levels[key] for name, r in reports.items()}
    every = np.concatenate([np.concatenate([k["sampler"], k["forward"]]) for k in kept.values()])
    nominal, step = next(iter(kept.values()))["t"], next(iter(kept.values()))["step"]
    low, high = np.quantile(every, [0.002, 0.998])
    low, high = min(low, nominal), max(high, nominal)
    pad = 0.08 * max(high - low, 1e-3)
    grid = np.linspace(low - pad, high + pad, 400)
    forwards: list[np.ndarray] = []
    for name, levels in kept.items():
        forward = np.asarray(levels["forward"], np.float64)
        if any(np.array_equal(forward, seen) for seen in forwards):
            continue
        shared = len(forwards) == 0 and _forward_shared(kept)
        label = "forward samples" if shared else f"forward samples ({name})"
        _draw_density(ax, forward, grid, "0.15" if shared else colours[name], "--", label)
        forwards.append(forward)
    for name, levels in kept.items():
        values = np.asarray(levels["sampler"], np.float64)
        _draw_density(ax, values, grid, colours[name], "-", f"sampler states: {name}")
    ax.axvline(nominal, color="0.55", linestyle=":", linewidth=1.2, label="nominal t")
    steps = {str(r.meta.get("steps", "")) for r in reports.values()}
    where = f"step {step + 1} of {steps.pop()}" if len(steps) == 1 else "nearest step"
    ax.set_title(f"nominal t = {nominal:.3g} ({where})")
    ax.set_xlim(grid[0], grid[-1])
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("estimated noise level of a sample")
    ax.set_ylabel("density")
    ax.grid(True, color="0.92")
    ax.set_axisbelow(True)


def _forward_shared(kept: dict[str, dict]) -> bool:
    """Whether every report holds the same forward-sample levels."""
    first = np.asarray(next(iter(kept.values()))["forward"])
    return all(np.array_equal(first, np.asarray(k["forward"])) for k in kept.values())


def _draw_density(
    ax: Any, values: np.ndarray, grid: np.ndarray, colour: str, style: str, label: str
) -> None:
    """A Gaussian KDE (Scott's bandwidth) of values on grid; a vertical line at the value when
    they do not spread (fewer than 2 distinct values)."""
    if len(values) < 2 or np.ptp(values) == 0:
        ax.axvline(float(values[0]), color=colour, linestyle=style, label=label)
        return
    from scipy.stats import gaussian_kde

    ax.plot(grid, gaussian_kde(values)(grid), color=colour, linestyle=style, label=label)
