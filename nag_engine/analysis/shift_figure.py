"""The noise-shift figure: the reports of several guidance settings (`NoiseShiftReport`, from
`nag_engine.analysis.noise_shift.measure_noise_shift`) drawn with matplotlib -- the shift of
every setting against nominal t on one shared axis (a labelled line with a +-2 standard-error
band each) and, beside it, the estimated level of sampler states and forward samples against t.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .noise_shift import NoiseShiftReport

__all__ = ["describe_reports", "shift_bound", "shift_figure"]


def shift_bound(reports: dict[str, NoiseShiftReport]) -> float:
    """The vertical half-range of the shift axis: the largest |shift| + 2 SE over all reports,
    rounded up to 1, 2 or 5 times a power of ten (shared, so settings compare)."""
    peak = max(
        float(np.max(np.abs(np.asarray(r.shift)) + 2 * np.asarray(r.shift_se)))
        for r in reports.values()
    )
    peak = max(peak, 1e-6)
    power = 10.0 ** math.floor(math.log10(peak))
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= peak)


def describe_reports(reports: dict[str, NoiseShiftReport]) -> str:
    """What the reports share, from their meta: "<steps> <solver> steps, n = <n> samples per
    setting, read by <estimator>" (parts the reports disagree on are left out)."""

    def common(key: str) -> str:
        values = {str(r.meta.get(key, "")) for r in reports.values()}
        return values.pop() if len(values) == 1 else ""

    sizes = {r.n for r in reports.values()}
    parts = []
    if common("steps"):
        parts.append(" ".join(filter(None, [common("steps"), common("solver"), "steps"])))
    if len(sizes) == 1:
        parts.append(f"n = {sizes.pop()} samples per setting")
    if common("estimator"):
        parts.append(f"read by {common('estimator')}")
    return ", ".join(parts)


def shift_figure(
    reports: dict[str, NoiseShiftReport],
    *,
    title: Optional[str] = None,
    show_levels: bool = True,
) -> Any:
    """A matplotlib Figure of the noise shift of several settings (one report per setting, in
    dict order; each setting one colour and a legend entry named by its key), titled `title`
    or "Noise shift: " + `describe_reports`.

    Right (or alone, without `show_levels`): the shift of every setting against the nominal
    time t on one shared axis, a line per setting with a shaded +-2 standard-error band, zero as
    a grey line, the vertical range +-`shift_bound`. Left (with `show_levels`): the estimated
    noise level against t, sampler states solid, forward-process samples dashed, the diagonal
    dotted. t runs from 1 (noise) on the left to 0 (data) on the right, as sampling does. The
    figure is 12.8 x 5 inches (8 x 5 without the level panel); write it with
    ``nag_engine.images.write_figure``. No display is needed (Agg)."""
    from matplotlib.figure import Figure

    if not reports:
        raise ValueError("shift_figure needs at least one report")
    figure = Figure(figsize=(12.8, 5.0) if show_levels else (8.0, 5.0), layout="constrained")
    axes = figure.subplots(1, 2) if show_levels else [figure.subplots()]
    colours = {name: f"C{i % 10}" for i, name in enumerate(reports)}
    if show_levels:
        _level_axes(axes[0], reports, colours)
    _shift_axes(axes[-1], reports, colours)
    figure.suptitle(f"Noise shift: {describe_reports(reports)}" if title is None else title)
    return figure


def _time_axis(axes: Any) -> None:
    """Nominal t from 1 (left) to 0 (right) with its label."""
    axes.set_xlim(1.0, 0.0)
    axes.set_xlabel("nominal noise level t of the step (1 = noise, 0 = data)")
    axes.grid(True, color="0.9")
    axes.set_axisbelow(True)  # the grid under the bands too


def _shift_axes(axes: Any, reports: dict[str, NoiseShiftReport], colours: dict) -> None:
    """The shift of every report on one axis, with +-2 SE bands and a legend of settings."""
    axes.axhline(0.0, color="0.5", linewidth=0.8)
    for name, report in reports.items():
        t = np.asarray(report.t, np.float64)
        shift, se = np.asarray(report.shift), np.asarray(report.shift_se)
        marker = "o" if len(t) <= 30 else None
        axes.plot(t, shift, color=colours[name], marker=marker, markersize=3, label=name)
        if np.any(se > 0):
            band = (shift - 2 * se, shift + 2 * se)
            axes.fill_between(t, *band, color=colours[name], alpha=0.2, linewidth=0)
    bound = shift_bound(reports)
    axes.set_ylim(-bound, bound)
    _time_axis(axes)
    axes.set_ylabel("noise shift (estimated level: sampler - forward)")
    axes.set_title("shift per step, band ±2 s.e. (> 0: states noisier than t says)")
    axes.legend(title="setting", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _level_axes(axes: Any, reports: dict[str, NoiseShiftReport], colours: dict) -> None:
    """Estimated level against t: sampler states solid, forward samples dashed, diagonal
    dotted; a legend of the three line styles."""
    from matplotlib.lines import Line2D

    axes.plot([0.0, 1.0], [0.0, 1.0], color="0.6", linestyle=":")
    low, high = 0.0, 1.0
    for name, report in reports.items():
        t = np.asarray(report.t, np.float64)
        axes.plot(t, report.forward_mean, color=colours[name], linestyle="--", linewidth=1)
        axes.plot(t, report.sampler_mean, color=colours[name], linewidth=1.5)
        values = np.concatenate([report.forward_mean, report.sampler_mean])
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    axes.set_ylim(low - 0.02, high + 0.02)
    _time_axis(axes)
    axes.set_ylabel("estimated noise level (mean over samples)")
    axes.set_title("estimated vs nominal level")
    styles = [
        Line2D([], [], color="0.2", linewidth=1.5, label="sampler states"),
        Line2D([], [], color="0.2", linestyle="--", linewidth=1, label="forward-process samples"),
        Line2D([], [], color="0.6", linestyle=":", label="estimate = t"),
    ]
    axes.legend(handles=styles, loc="upper right")
