"""Noise-shift measurement: does the sampler's state carry the noise level the schedule says?

`measure_noise_shift` runs a `Sampler` and, at the start of every step, asks a noise-level
estimator (`nag_engine.analysis.noise_level`) what level the state x carries. Every estimator is
biased on its own (a posterior mean over a bounded t is pulled toward the middle of [0, 1]), so
the same estimator also reads TRUE forward-process samples ``x_t = alpha_t x0 + sigma_t eps`` at
the same nominal t, and the shift is reported as

    shift(step) = mean estimate on sampler states - mean estimate on forward samples,

never as "estimate - t" (docs/ARCHITECTURE.md, "Ground truth"). A positive shift means the
sampler's states look noisier than data noised to the nominal t; negative, cleaner.

Two readings of the level. The estimator's posterior mean, per sample (every estimator has
it); near t -> 0 it mixes "sharper" with "cleaner" (for the linear schedule the within-mode
variance (1 - t)^2 s^2 + t^2 is not monotone below t = s^2 / (1 + s^2), 0.08 for s = 0.3), so
the sign of the shift there can depend on the estimator. And, where the estimator gives the
density of x at a level (`ExactPosterior`), the level that maximises the whole batch's
likelihood (`nag_engine.analysis.likelihood_level`), with no prior pulling it toward the
middle; the report holds it as `sampler_ml_level` / `forward_ml_level` / `ml_shift` (None for
other estimators).

Late steps (t <= late_t_max, where the paper locates the shift) are summarised per SAMPLE
first: each sample's level averaged over the late steps, then mean and standard error over
samples (`late_shift`, `late_shift_se`): the steps of one trajectory are not independent, and
treating them so understated the error (by a factor of about 2 at 25 steps).

Over 400 lines because the report and the measurement that fills it are one contract (the
same field list, written by one and round-tripped through JSON / CSV by the other), and the
measurement reads two independent sets of states in two readings, each its own small function.

`NoiseShiftReport` holds the per-step numbers (JSON / CSV export);
`nag_engine.analysis.shift_figure` draws them, `nag_engine.analysis.level_density` the
distribution of per-sample levels at a few steps (`keep_levels_at`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch

from ..sampler import Sampler, StepInfo
from .likelihood_level import max_likelihood_level, supports_likelihood
from .noise_level import NoiseLevelEstimator

Tensor = torch.Tensor

__all__ = [
    "QUANTILE_LEVELS",
    "NoiseShiftReport",
    "late_shift_stats",
    "late_steps",
    "measure_noise_shift",
]

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
# the maximum-likelihood reading: [S] arrays, None where the estimator has no likelihood
_ML_ARRAYS = ("sampler_ml_level", "forward_ml_level", "ml_shift", "ml_shift_se")
_LATE = ("late_shift", "late_shift_se", "late_ml_shift", "late_ml_shift_se")


@dataclass
class NoiseShiftReport:
    """Per-step noise-shift statistics of one sampler configuration ([S] arrays, S = steps).

    step, t: step index and nominal time at the step's start. sampler_mean / sampler_std: mean
    and standard deviation over the n samples of the estimated level of the sampler states;
    forward_mean / forward_std: the same for forward-process samples at t. shift =
    sampler_mean - forward_mean, shift_se its standard error (independent samples).
    sampler_spread / forward_spread: mean posterior std of the estimator (how identifiable the
    level is at all). sampler_quantiles / forward_quantiles [S, len(quantile_levels)]: quantiles
    of the per-sample estimated level. meta: free-form description (solver, steps, guidance).

    Late steps (`late_steps`: t <= late_t_max, else the last step): late_shift = the shift
    averaged over them, late_shift_se its standard error with each sample's level averaged over
    the late steps first (`late_shift_stats`); NaN in reports built without per-sample levels.

    The maximum-likelihood reading (None unless the estimator gives a likelihood):
    sampler_ml_level / forward_ml_level [S]: the level maximising the batch's likelihood at each
    step, ml_shift their difference, ml_shift_se its sandwich standard error (NaN at a step whose
    likelihood peaks at an end of the t range searched: no interior maximum); late_ml_shift /
    late_ml_shift_se: ml_shift averaged over the late steps, its error from per-sample
    influences averaged over the late steps first (NaN if any late step is at an edge).

    kept_levels: per-sample levels at the steps nearest the times asked for by
    ``measure_noise_shift(keep_levels_at=...)``, keyed by the asked time as ``f"{t:g}"``:
    {"t": nominal t of the step, "step": its index, "sampler": [n], "forward": [n]}."""

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
    late_t_max: float = 0.2
    late_shift: float = math.nan
    late_shift_se: float = math.nan
    sampler_ml_level: Optional[np.ndarray] = None
    forward_ml_level: Optional[np.ndarray] = None
    ml_shift: Optional[np.ndarray] = None
    ml_shift_se: Optional[np.ndarray] = None
    late_ml_shift: Optional[float] = None
    late_ml_shift_se: Optional[float] = None
    kept_levels: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def mean_shift(self) -> float:
        """The shift averaged over steps."""
        return float(np.mean(self.shift))

    @property
    def mean_ml_shift(self) -> Optional[float]:
        """The maximum-likelihood shift averaged over steps (None without that reading)."""
        return None if self.ml_shift is None else float(np.mean(self.ml_shift))

    @property
    def z_scores(self) -> np.ndarray:
        """shift / shift_se per step (inf where the standard error is 0 and the shift is not)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            z = self.shift / self.shift_se
        return np.where((self.shift == 0) & (self.shift_se == 0), 0.0, z)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python containers (lists, floats, None) of every field."""
        out: dict[str, Any] = {name: np.asarray(getattr(self, name)).tolist() for name in _ARRAYS}
        out["quantile_levels"] = list(self.quantile_levels)
        out["n"] = int(self.n)
        out["meta"] = dict(self.meta)
        out["mean_shift"] = self.mean_shift
        out["late_t_max"] = float(self.late_t_max)
        for name in _ML_ARRAYS:
            value = getattr(self, name)
            out[name] = None if value is None else np.asarray(value, np.float64).tolist()
        for name in _LATE:
            value = getattr(self, name)
            out[name] = None if value is None else float(value)
        out["mean_ml_shift"] = self.mean_ml_shift
        out["kept_levels"] = {
            key: {k: np.asarray(v).tolist() for k, v in kept.items()}
            for key, kept in self.kept_levels.items()
        }
        return out

    def to_json(self, **kwargs: Any) -> str:
        """The report as a JSON object (keyword arguments go to json.dumps)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> NoiseShiftReport:
        """Inverse of `to_json` (reads JSON written before the late / ML / kept fields too)."""
        data = json.loads(text)
        arrays = {name: np.asarray(data[name], dtype=np.float64) for name in _ARRAYS}
        arrays["step"] = arrays["step"].astype(np.int64)
        optional = {
            name: None if data.get(name) is None else np.asarray(data[name], dtype=np.float64)
            for name in _ML_ARRAYS
        }
        late = {name: data.get(name) for name in _LATE}
        for name in ("late_shift", "late_shift_se"):
            late[name] = math.nan if late[name] is None else float(late[name])
        kept = {
            key: {
                "t": float(value["t"]),
                "step": int(value["step"]),
                "sampler": np.asarray(value["sampler"], dtype=np.float64),
                "forward": np.asarray(value["forward"], dtype=np.float64),
            }
            for key, value in data.get("kept_levels", {}).items()
        }
        return cls(
            **arrays,
            quantile_levels=tuple(data["quantile_levels"]),
            n=int(data["n"]),
            meta=dict(data.get("meta", {})),
            late_t_max=float(data.get("late_t_max", 0.2)),
            **late,
            **optional,
            kept_levels=kept,
        )

    def csv_header(self) -> list[str]:
        """Column names of `to_csv` (the maximum-likelihood columns only where present)."""
        columns = list(_ARRAYS[:-2])
        for prefix in ("sampler", "forward"):
            columns += [f"{prefix}_q{round(100 * q):02d}" for q in self.quantile_levels]
        return columns + self._ml_columns()

    def _ml_columns(self) -> list[str]:
        return [name for name in _ML_ARRAYS if getattr(self, name) is not None]

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
            row += [repr(float(getattr(self, name)[i])) for name in self._ml_columns()]
            writer.writerow(row)
        return buffer.getvalue()


def late_steps(t: np.ndarray, late_t_max: float) -> np.ndarray:
    """Boolean mask of the steps whose nominal t is <= late_t_max; the last step alone when
    there is none (a coarse grid: the last step stands for the late ones)."""
    late = np.asarray(t, np.float64) <= late_t_max
    if not late.any():
        late[-1] = True
    return late


def late_shift_stats(
    sampler_levels: np.ndarray, forward_levels: np.ndarray, late: np.ndarray
) -> tuple[float, float]:
    """(shift, standard error) over the late steps from per-sample levels [S, n] (sampler
    states and forward samples, two independent sets, each sample row-aligned across steps).

    Each sample's level is averaged over the late steps first; the shift is the difference of
    the two sets' means of those averages and its error combines both sets' standard errors
    (ddof 1; 0 for a single sample). The steps of one trajectory are correlated, so this is the
    honest error; treating the steps as independent understates it."""
    ours = np.asarray(sampler_levels, np.float64)[late].mean(0)
    theirs = np.asarray(forward_levels, np.float64)[late].mean(0)
    shift = float(ours.mean() - theirs.mean())
    return shift, float(np.sqrt(_mean_variance(ours) + _mean_variance(theirs)))


def _mean_variance(values: np.ndarray) -> float:
    """Squared standard error of the mean of independent values (0 for one value)."""
    return float(values.var(ddof=1) / len(values)) if len(values) > 1 else 0.0


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


@dataclass
class _Readings:
    """Per-step, per-sample readings of one set of states (sampler or forward): levels and
    spreads [S, n]; with a likelihood, the batch's ML level [S] and influences [S, n]."""

    levels: Tensor
    spread: Tensor
    ml_level: Optional[np.ndarray] = None
    ml_influence: Optional[np.ndarray] = None


def _ml_readings(
    estimator: NoiseLevelEstimator, states: Sequence[Tensor], labels: Optional[Tensor]
) -> tuple[np.ndarray, np.ndarray]:
    """The maximum-likelihood level [S] of the batch of states at every step and each
    sample's influence on it [S, n] (`max_likelihood_level`)."""
    levels, influences = [], []
    with torch.autocast(states[0].device.type, enabled=False):
        for x in states:
            reading = max_likelihood_level(estimator, x, labels)
            assert reading is not None  # only called for estimators with a likelihood
            levels.append(reading.level)
            influences.append(reading.influence.numpy())
    return np.asarray(levels, np.float64), np.stack(influences)


def _late_ml(
    ours: _Readings, theirs: _Readings, late: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """ML shift [S] and its standard error [S]; their late average and its error, with each
    sample's influence averaged over the late steps first (the late steps share samples)."""
    assert ours.ml_level is not None and theirs.ml_level is not None
    assert ours.ml_influence is not None and theirs.ml_influence is not None
    shift = ours.ml_level - theirs.ml_level
    se = np.sqrt((ours.ml_influence**2).sum(1) + (theirs.ml_influence**2).sum(1))
    late_var = (ours.ml_influence[late].mean(0) ** 2).sum()
    late_var += (theirs.ml_influence[late].mean(0) ** 2).sum()
    return shift, se, float(np.mean(shift[late])), float(np.sqrt(late_var))


def _kept_levels(
    times: np.ndarray, ours: Tensor, theirs: Tensor, keep_levels_at: Sequence[float]
) -> dict[str, dict[str, Any]]:
    """Per-sample levels [n] of both sets at the step whose nominal t is nearest each asked t."""
    kept: dict[str, dict[str, Any]] = {}
    for wanted in keep_levels_at:
        i = int(np.argmin(np.abs(times - float(wanted))))
        kept[f"{float(wanted):g}"] = {
            "t": float(times[i]),
            "step": i,
            "sampler": ours[i].numpy().copy(),
            "forward": theirs[i].numpy().copy(),
        }
    return kept


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
    late_t_max: float = 0.2,
    keep_levels_at: Sequence[float] = (),
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
    has ``sample_data``. Estimation runs with autocast off, outside autograd.

    late_t_max: the late steps are those with t <= late_t_max (the last step if none);
    `NoiseShiftReport.late_shift` / `late_shift_se` summarise them per sample first.
    keep_levels_at: nominal times whose nearest steps' per-sample levels are kept in
    `NoiseShiftReport.kept_levels`. Where the estimator gives a likelihood
    (`supports_likelihood`), the maximum-likelihood reading is added; that keeps every step's
    states until the end (steps x n x sample size numbers)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    reference = _default_reference(sampler, estimator) if reference is None else reference
    device = sampler.device
    labels = _as_labels(y, n, device)
    with_ml = supports_likelihood(estimator)
    ours, dtype = _read_sampler(
        sampler, estimator, n, y, labels, seed, batch_size, callback, with_ml
    )
    theirs = _read_forward(
        sampler, estimator, reference, n, labels, seed, batch_size, dtype, with_ml
    )
    times = sampler.grid[:-1].to(torch.float64).numpy().copy()
    ours_stats = _summaries(ours.levels, quantile_levels)
    theirs_stats = _summaries(theirs.levels, quantile_levels)
    late = late_steps(times, late_t_max)
    late_shift, late_shift_se = late_shift_stats(ours.levels.numpy(), theirs.levels.numpy(), late)
    ml: dict[str, Any] = {}
    if with_ml:
        ml_shift, ml_shift_se, late_ml, late_ml_se = _late_ml(ours, theirs, late)
        ml = {
            "sampler_ml_level": ours.ml_level,
            "forward_ml_level": theirs.ml_level,
            "ml_shift": ml_shift,
            "ml_shift_se": ml_shift_se,
            "late_ml_shift": late_ml,
            "late_ml_shift_se": late_ml_se,
        }
    meta = {
        "solver": sampler.solver,
        "steps": sampler.steps,
        "schedule": sampler.schedule.name,
        "prediction": sampler.prediction,
        "cfg_scale": sampler.guidance.cfg_scale,
        "nag_scale": sampler.guidance.nag_scale,
        "classifier_nag_scale": sampler.classifier_nag_scale,
        "estimator": type(estimator).__name__,
        "seed": seed,
    }
    return NoiseShiftReport(
        step=np.arange(sampler.steps, dtype=np.int64),
        t=times,
        sampler_mean=ours_stats["mean"],
        sampler_std=ours_stats["std"],
        forward_mean=theirs_stats["mean"],
        forward_std=theirs_stats["std"],
        shift=ours_stats["mean"] - theirs_stats["mean"],
        shift_se=np.sqrt((ours_stats["std"] ** 2 + theirs_stats["std"] ** 2) / n),
        sampler_spread=ours.spread.mean(1).numpy(),
        forward_spread=theirs.spread.mean(1).numpy(),
        sampler_quantiles=ours_stats["quantiles"],
        forward_quantiles=theirs_stats["quantiles"],
        quantile_levels=tuple(float(q) for q in quantile_levels),
        n=n,
        meta=meta,
        late_t_max=float(late_t_max),
        late_shift=late_shift,
        late_shift_se=late_shift_se,
        kept_levels=_kept_levels(times, ours.levels, theirs.levels, keep_levels_at),
        **ml,
    )


def _estimate(
    estimator: NoiseLevelEstimator, x: Tensor, rows: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    """Posterior mean and spread of every row (float64, CPU), autocast off, no autograd."""
    with torch.autocast(x.device.type, enabled=False), torch.no_grad():
        est = estimator.estimate(x, rows)
    return est.mean.detach().double().cpu(), est.std.detach().double().cpu()


def _read_sampler(
    sampler: Sampler,
    estimator: NoiseLevelEstimator,
    n: int,
    y: Any,
    labels: Optional[Tensor],
    seed: int,
    batch_size: Optional[int],
    callback: Optional[Callable[[StepInfo], None]],
    with_ml: bool,
) -> tuple[_Readings, torch.dtype]:
    """Run the sampler (asked for y; the estimator is given the labels, y as n class ids)
    and read every state at every step's start; returns the readings and the states' dtype."""
    steps = sampler.steps
    levels = torch.zeros(steps, n, dtype=torch.float64)
    spread = torch.zeros(steps, n, dtype=torch.float64)
    seen = torch.zeros(steps, n, dtype=torch.bool)
    states: list[list[Tensor]] = [[] for _ in range(steps)]  # per step, batches in order
    state_dtype: list[torch.dtype] = []

    def read_state(info: StepInfo) -> None:
        start, stop = info.batch_start, info.batch_start + len(info.x)
        rows = None if labels is None else labels[start:stop]
        levels[info.step, start:stop], spread[info.step, start:stop] = _estimate(
            estimator, info.x, rows
        )
        seen[info.step, start:stop] = True
        if with_ml:
            states[info.step].append(info.x.detach().clone())
        if not state_dtype:
            state_dtype.append(info.x.dtype)
        if callback is not None:
            callback(info)

    sampler.sample(n, y=y, seed=seed, batch_size=batch_size, progress=False, callback=read_state)
    if not bool(seen.all()):
        raise RuntimeError("the sampler did not report every step of every sample")
    readings = _Readings(levels, spread)
    if with_ml:
        batches = [torch.cat(parts) for parts in states]
        readings.ml_level, readings.ml_influence = _ml_readings(estimator, batches, labels)
    return readings, state_dtype[0] if state_dtype else torch.float32


def _read_forward(
    sampler: Sampler,
    estimator: NoiseLevelEstimator,
    reference: Reference,
    n: int,
    labels: Optional[Tensor],
    seed: int,
    batch_size: Optional[int],
    dtype: torch.dtype,
    with_ml: bool,
) -> _Readings:
    """The estimator's reading of true forward-process samples at every step's nominal t."""
    device = sampler.device
    generator = torch.Generator().manual_seed(seed)
    x0 = _draw_reference(reference, n, labels, generator).to(torch.float64).cpu()
    times = sampler.grid[:-1].to(torch.float64)
    alphas, sigmas = sampler.schedule.alpha(times), sampler.schedule.sigma(times)
    steps = sampler.steps
    levels = torch.zeros(steps, n, dtype=torch.float64)
    spread = torch.zeros(steps, n, dtype=torch.float64)
    states: list[Tensor] = []
    chunk = n if batch_size is None else batch_size
    for i in range(steps):
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        x_t = (alphas[i] * x0 + sigmas[i] * eps).to(device, dtype)
        for lo in range(0, n, chunk):
            rows = None if labels is None else labels[lo : lo + chunk]
            levels[i, lo : lo + chunk], spread[i, lo : lo + chunk] = _estimate(
                estimator, x_t[lo : lo + chunk], rows
            )
        if with_ml:
            states.append(x_t)
    readings = _Readings(levels, spread)
    if with_ml:
        readings.ml_level, readings.ml_influence = _ml_readings(estimator, states, labels)
    return readings
