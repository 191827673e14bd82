"""Noise-shift measurement: does the sampler's state carry the noise level the schedule says?

`measure_noise_shift` runs a `Sampler` and, at the start of every step, asks a noise-level
estimator (`nag_engine.analysis.noise_level`) what level the state x carries. Every estimator is
biased on its own (a posterior mean over a bounded t is pulled toward the middle of [0, 1]), so
the same estimator also reads TRUE forward-process samples ``x_t = alpha_t x0 + sigma_t eps`` at
the same nominal t, and the shift is reported as

    shift(step) = mean estimate on sampler states - mean estimate on forward samples,

never as "estimate - t" (docs/ARCHITECTURE.md, "Ground truth"). A positive shift means the
sampler's states look noisier than data noised to the nominal t; negative, cleaner.

`NoiseShiftReport` holds the per-step numbers (JSON / CSV export);
`nag_engine.analysis.shift_figure` draws them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch

from ..sampler import Sampler, StepInfo
from .noise_level import NoiseLevelEstimator

Tensor = torch.Tensor

__all__ = ["QUANTILE_LEVELS", "NoiseShiftReport", "measure_noise_shift"]

QUANTILE_LEVELS: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)

_ARRAYS = (
    "step",
    "t",
    "sampler_mean",
    "sampler_std",
    "forward_mean",
    "forward_std",
    "shift",
    "shift_se",
    "sampler_spread",
    "forward_spread",
    "sampler_quantiles",
    "forward_quantiles",
)


@dataclass
class NoiseShiftReport:
    """Per-step noise-shift statistics of one sampler configuration ([S] arrays, S = steps).

    step, t: step index and nominal time at the step's start. sampler_mean / sampler_std: mean
    and standard deviation over the n samples of the estimated level of the sampler states;
    forward_mean / forward_std: the same for forward-process samples at t. shift =
    sampler_mean - forward_mean, shift_se its standard error (independent samples).
    sampler_spread / forward_spread: mean posterior std of the estimator (how identifiable the
    level is at all). sampler_quantiles / forward_quantiles [S, len(quantile_levels)]: quantiles
    of the per-sample estimated level. meta: free-form description (solver, steps, guidance)."""

    step: np.ndarray
    t: np.ndarray
    sampler_mean: np.ndarray
    sampler_std: np.ndarray
    forward_mean: np.ndarray
    forward_std: np.ndarray
    shift: np.ndarray
    shift_se: np.ndarray
    sampler_spread: np.ndarray
    forward_spread: np.ndarray
    sampler_quantiles: np.ndarray
    forward_quantiles: np.ndarray
    quantile_levels: tuple[float, ...] = QUANTILE_LEVELS
    n: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_shift(self) -> float:
        """The shift averaged over steps."""
        return float(np.mean(self.shift))

    @property
    def z_scores(self) -> np.ndarray:
        """shift / shift_se per step (inf where the standard error is 0 and the shift is not)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            z = self.shift / self.shift_se
        return np.where((self.shift == 0) & (self.shift_se == 0), 0.0, z)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python containers (lists, floats) of every field."""
        out: dict[str, Any] = {name: np.asarray(getattr(self, name)).tolist() for name in _ARRAYS}
        out["quantile_levels"] = list(self.quantile_levels)
        out["n"] = int(self.n)
        out["meta"] = dict(self.meta)
        out["mean_shift"] = self.mean_shift
        return out

    def to_json(self, **kwargs: Any) -> str:
        """The report as a JSON object (keyword arguments go to json.dumps)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> NoiseShiftReport:
        """Inverse of `to_json`."""
        data = json.loads(text)
        arrays = {name: np.asarray(data[name], dtype=np.float64) for name in _ARRAYS}
        arrays["step"] = arrays["step"].astype(np.int64)
        return cls(
            **arrays,
            quantile_levels=tuple(data["quantile_levels"]),
            n=int(data["n"]),
            meta=dict(data.get("meta", {})),
        )

    def csv_header(self) -> list[str]:
        """Column names of `to_csv`."""
        columns = list(_ARRAYS[:-2])
        for prefix in ("sampler", "forward"):
            columns += [f"{prefix}_q{round(100 * q):02d}" for q in self.quantile_levels]
        return columns

    def to_csv(self) -> str:
        """A header row and one row per step."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.csv_header())
        for i in range(len(self.t)):
            row: list[Union[int, str]] = [int(self.step[i])]
            row += [repr(float(getattr(self, name)[i])) for name in _ARRAYS[1:-2]]
            row += [repr(float(v)) for v in self.sampler_quantiles[i]]
            row += [repr(float(v)) for v in self.forward_quantiles[i]]
            writer.writerow(row)
        return buffer.getvalue()


# --------------------------------------------------------------------------- measurement
Reference = Union[Callable[..., Any], Any]


def _as_labels(y: Any, n: int, device: torch.device) -> Optional[Tensor]:
    if y is None:
        return None
    if isinstance(y, int) and not isinstance(y, bool):
        return torch.full((n,), y, dtype=torch.long, device=device)
    return torch.as_tensor(y, device=device).long().expand(n)


def _draw_reference(
    reference: Reference, n: int, y: Optional[Tensor], generator: torch.Generator
) -> Tensor:
    """n clean samples from `reference`: an object with `sample_data(n, y=, generator=)` (a
    GaussianMixtureModel, asked for the classes y) or a callable reference(n, generator=g)
    returning x0 or (x0, anything)."""
    if hasattr(reference, "sample_data"):
        labels = None if y is None else y.cpu()
        out = reference.sample_data(n, y=labels, generator=generator)
    elif callable(reference):
        out = reference(n, generator=generator)
    else:
        raise TypeError(
            "reference must be a callable reference(n, generator=...) -> x0 or (x0, y), or have "
            f"a sample_data method; got {type(reference).__name__}"
        )
    x0 = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(x0, Tensor) or len(x0) != n:
        raise ValueError(f"reference must return n={n} samples, got {type(x0).__name__}")
    return x0


def _default_reference(sampler: Sampler, estimator: NoiseLevelEstimator) -> Reference:
    for candidate in (getattr(estimator, "mixture", None), sampler.model):
        if candidate is not None and hasattr(candidate, "sample_data"):
            return candidate
    raise ValueError(
        "measure_noise_shift needs clean reference data to read the estimator's bias off "
        "forward-process samples: pass reference=callable(n, generator=...) -> (x0, y) (for a "
        "Gaussian mixture, the mixture itself)"
    )


def _summaries(levels: Tensor, levels_q: Sequence[float]) -> dict[str, np.ndarray]:
    """Mean, std and quantiles over the samples of [S, n] estimated levels."""
    levels = levels.double()
    n = levels.shape[1]
    q = torch.tensor(list(levels_q), dtype=torch.float64)
    return {
        "mean": levels.mean(1).numpy(),
        "std": (levels.std(1) if n > 1 else torch.zeros(len(levels), dtype=torch.float64)).numpy(),
        "quantiles": torch.quantile(levels, q, dim=1).T.numpy(),
    }


def measure_noise_shift(
    sampler: Sampler,
    estimator: NoiseLevelEstimator,
    n: int,
    *,
    y: Any = None,
    seed: int = 0,
    reference: Optional[Reference] = None,
    batch_size: Optional[int] = None,
    quantile_levels: Sequence[float] = QUANTILE_LEVELS,
    callback: Optional[Callable[[StepInfo], None]] = None,
) -> NoiseShiftReport:
    """Measure the noise shift of `sampler` with `estimator` on n samples.

    Runs ``sampler.sample(n, y=y, seed=seed, callback=...)``; at every step the estimator reads
    the state at the step's start (StepInfo.x at nominal StepInfo.t). The same estimator reads
    n forward-process samples ``alpha_t x0 + sigma_t eps`` at each step's nominal t (the
    sampler's schedule), with x0 from `reference` drawn once and eps fresh per step (generator
    seeded with `seed`), cast to the sampler state's dtype. The estimator is given the labels y
    (an int or n class ids, or None) on both sides.

    reference: a callable ``reference(n, generator=g) -> x0`` or ``(x0, extra)`` (extra is
    ignored; for a class-conditional measurement it must draw class y), or an object with
    ``sample_data(n, y=..., generator=...)`` such as a `GaussianMixtureModel` (asked for class
    y). None uses the estimator's mixture (`ExactPosterior`) or the sampler's model if either
    has ``sample_data``. Estimation runs with autocast off, outside autograd."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    reference = _default_reference(sampler, estimator) if reference is None else reference
    device = sampler.device
    labels = _as_labels(y, n, device)
    steps = sampler.steps
    sampler_levels = torch.zeros(steps, n, dtype=torch.float64)
    sampler_spread = torch.zeros(steps, n, dtype=torch.float64)
    seen = torch.zeros(steps, n, dtype=torch.bool)
    state_dtype: list[torch.dtype] = []

    def estimate(x: Tensor, rows: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        with torch.autocast(device.type, enabled=False), torch.no_grad():
            est = estimator.estimate(x, rows)
        return est.mean.detach().double().cpu(), est.std.detach().double().cpu()

    def read_state(info: StepInfo) -> None:
        start, stop = info.batch_start, info.batch_start + len(info.x)
        rows = None if labels is None else labels[start:stop]
        mean, std = estimate(info.x, rows)
        sampler_levels[info.step, start:stop] = mean
        sampler_spread[info.step, start:stop] = std
        seen[info.step, start:stop] = True
        if not state_dtype:
            state_dtype.append(info.x.dtype)
        if callback is not None:
            callback(info)

    sampler.sample(n, y=y, seed=seed, batch_size=batch_size, progress=False, callback=read_state)
    if not bool(seen.all()):
        raise RuntimeError("the sampler did not report every step of every sample")

    # the estimator's reading of true forward-process samples at the same nominal times
    generator = torch.Generator().manual_seed(seed)
    x0 = _draw_reference(reference, n, labels, generator).to(torch.float64).cpu()
    dtype = state_dtype[0] if state_dtype else torch.float32
    times = sampler.grid[:-1].to(torch.float64)
    alphas, sigmas = sampler.schedule.alpha(times), sampler.schedule.sigma(times)
    forward_levels = torch.zeros(steps, n, dtype=torch.float64)
    forward_spread = torch.zeros(steps, n, dtype=torch.float64)
    chunk = n if batch_size is None else batch_size
    for i in range(steps):
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        x_t = (alphas[i] * x0 + sigmas[i] * eps).to(device, dtype)
        for lo in range(0, n, chunk):
            rows = None if labels is None else labels[lo : lo + chunk]
            mean, std = estimate(x_t[lo : lo + chunk], rows)
            forward_levels[i, lo : lo + chunk] = mean
            forward_spread[i, lo : lo + chunk] = std

    ours = _summaries(sampler_levels, quantile_levels)
    theirs = _summaries(forward_levels, quantile_levels)
    shift = ours["mean"] - theirs["mean"]
    shift_se = np.sqrt((ours["std"] ** 2 + theirs["std"] ** 2) / n)
    meta = {
        "solver": sampler.solver,
        "steps": steps,
        "schedule": sampler.schedule.name,
        "prediction": sampler.prediction,
        "cfg_scale": sampler.guidance.cfg_scale,
        "nag_scale": sampler.guidance.nag_scale,
        "classifier_nag_scale": sampler.classifier_nag_scale,
        "estimator": type(estimator).__name__,
        "seed": seed,
    }
    return NoiseShiftReport(
        step=np.arange(steps, dtype=np.int64),
        t=times.numpy().copy(),
        sampler_mean=ours["mean"],
        sampler_std=ours["std"],
        forward_mean=theirs["mean"],
        forward_std=theirs["std"],
        shift=shift,
        shift_se=shift_se,
        sampler_spread=sampler_spread.mean(1).numpy(),
        forward_spread=forward_spread.mean(1).numpy(),
        sampler_quantiles=ours["quantiles"],
        forward_quantiles=theirs["quantiles"],
        quantile_levels=tuple(float(q) for q in quantile_levels),
        n=n,
        meta=meta,
    )
