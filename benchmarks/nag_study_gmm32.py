"""The NAG study on a 32-D Gaussian mixture: does NAG help a model that is not yet trained?

Over 400 lines because it is one experiment end to end: its setup, the measurement, the
analysis, the tables and verdicts, and the figure, each a few short functions.

Run as ``python -m benchmarks.nag_study gmm32 [--quick] [--out DIR] [--render-only]``.

* Data: a class-conditional 32-D Gaussian mixture, ``random_mixture(32, 8 modes, spread 2,
  std 0.3, 4 classes)``: mode k belongs to class k % 4, so every class has two modes and CFG
  has something to do (push a class's samples away from the other classes' modes).
* Models: `MLPDenoiser` (hidden 128, depth 3) trained with noise-condition dropout p_t = 0.2 and
  class dropout p_c = 0.1, 3 training seeds; the EMA weights are kept at 125 / 250 / ... / 8000
  steps of one run per seed.
* Sampling: Euler and Euler-Maruyama at 25 steps, n = 2000, 2 sampling seeds, NAG scale
  0 / 0.25 / 0.5 / 1 / 2 (``out(t,c) + s [out(t,c) - out(null t,c)]``, s = 0 no guidance). Labels
  are split over the classes in proportion to the mixture's class weights, so the samples
  should have the mixture's mode weights.
* Controls at about the 50 model evaluations (NFE) NAG costs: the baseline at 50 steps, CFG
  1.5 / 2 at 25 steps, epsilon scaling and the time-shift sampler at 50 steps (their settings
  in `nag_engine.analysis.settings.Scales`), NAG 0.5 / 1 only on t <= 0.3 with the steps that
  bring it to ~50 NFE, and autoguidance w = 1.5 / 2 (`benchmarks.nag_study.AutoguidanceModel`;
  the weaker model is the checkpoint with half the steps).
* Metrics against the exact mixture, each with the same statistic on exact samples (the floor:
  n exact draws with the same labels, several draws): per-mode Frechet distance to the true
  components (mean over the modes), the per-mode spread ratio, the mode-weight chi-square and
  the energy distance to exact samples; the late noise shift (t <= 0.2, per sample first) of the
  baseline and NAG runs, read by the exact posterior (`ExactPosterior`) on the first 500 samples
  of each run (the estimator costs more than the sampling). Paired differences (same training
  seed, sampling seed, checkpoint and solver) against the 25-step baseline.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.nag_study import (
    AutoguidanceModel,
    format_pm,
    machine_description,
    mean_se,
    paired_difference,
    significant,
    write_section,
)
from nag_engine import Sampler
from nag_engine.analysis.metrics import energy_distance, per_mode_statistics
from nag_engine.analysis.noise_level import ExactPosterior
from nag_engine.analysis.noise_shift import measure_noise_shift
from nag_engine.analysis.settings import Scales, data_variance, setting_options
from nag_engine.images import atomic_write_bytes, write_figure
from nag_engine.models import GaussianMixtureModel, MLPDenoiser
from nag_engine.training.config import TrainConfig, seeded_init
from nag_engine.training.data import load_dataset, mixture_for
from nag_engine.training.trainer import Trainer

Tensor = torch.Tensor

PART = "gmm32"
MIXTURE = {"dim": 32, "num_modes": 8, "spread": 2.0, "std": 0.3, "num_classes": 4}
TRAIN = {"lr": 1e-3, "warmup_steps": 100, "ema_decay": 0.999, "p_t": 0.2, "p_c": 0.1}
SOLVERS = ("euler", "euler-maruyama")
NAG_SCALES = (0.25, 0.5, 1.0, 2.0)
PREDICTED_SCALES = (0.25, 0.5, 1.0)  # "NAG at some scale in 0.25-1" (the pre-registration)
CFG_SCALES = (1.5, 2.0)
INTERVAL = (0.0, 0.3)
INTERVAL_SCALES = (0.5, 1.0)
AUTOGUIDANCE_SCALES = (0.5, 1.0)  # s = w - 1
LATE_T_MAX = 0.2
METRICS = ("fd", "spread", "chi2", "energy")
SPREAD_FACTORS = (0.9, 0.95, 0.98, 1.02, 1.05, 1.1)  # the calibration: exact samples sharpened


@dataclass(frozen=True)
class Size:
    """How big the study is (`SIZES`)."""

    n: int = 2000
    n_shift: int = 500  # the first n_shift samples of a run are read for the noise shift
    steps: int = 25
    checkpoints: tuple[int, ...] = (250, 500, 1000, 2000, 4000, 8000)
    train_seeds: int = 3
    sample_seeds: int = 2
    floor_draws: int = 10
    data_n: int = 50000
    hidden: int = 128
    depth: int = 3
    batch_size: int = 256


SIZES = {
    "full": Size(),
    "quick": Size(
        n=128,
        n_shift=64,
        steps=8,
        checkpoints=(40, 80),
        train_seeds=1,
        floor_draws=3,
        data_n=2000,
        hidden=32,
        depth=2,
        batch_size=64,
    ),
}


@dataclass(frozen=True)
class Method:
    """One sampler setting: its name, family, strength, steps and Sampler options."""

    name: str
    family: str  # baseline, nag, steps, cfg, eps-scaling, time-shift, nag-interval, autoguidance
    scale: float
    steps: int
    options: dict[str, Any] = field(default_factory=dict)
    measure_shift: bool = False

    @property
    def label(self) -> str:
        """How tables name it."""
        if self.family == "autoguidance":
            return f"autoguidance w = {1 + self.scale:g}"
        if self.family == "steps":
            return f"baseline, {self.steps} steps"
        return self.name


# ----------------------------------------------------------------------------- setup
def study_seeds(seed: int, size: Size) -> dict[str, list[int]]:
    """Every random source of the study, derived from the user's seed."""
    return {
        "train": [seed + i for i in range(size.train_seeds)],
        "sample": [seed + 1000 + j for j in range(size.sample_seeds)],
        "reference": [seed + 2000 + j for j in range(size.sample_seeds)],
        "floor": [seed + 3000 + d for d in range(size.floor_draws)],
    }


def class_labels(mixture: GaussianMixtureModel, n: int) -> Tensor:
    """n class ids in proportion to the mixture's class weights (largest remainders), so that
    conditional samples with these labels have the mixture's mode weights; interleaved, so
    that every prefix is in proportion too (within one sample per class)."""
    weights = mixture.log_weights.exp()
    class_weights = torch.zeros(mixture.num_classes, dtype=torch.float64)
    class_weights.index_add_(0, mixture.classes, weights)
    exact = class_weights * n
    counts = exact.floor().long()
    order = torch.argsort(exact - counts.double(), descending=True)
    counts[order[: n - int(counts.sum())]] += 1
    labels = torch.repeat_interleave(torch.arange(mixture.num_classes), counts)
    position = torch.cat([(torch.arange(c) + 0.5) / c for c in counts.tolist()])
    return labels[torch.argsort(position, stable=True)]


def interval_steps(steps: int, interval: tuple[float, float], target: int) -> int:
    """The step count whose Euler grid with NAG on `interval` costs closest to `target` model
    evaluations (the smaller on a tie)."""

    def cost(n: int) -> int:
        times = 1.0 - np.arange(n) / n
        return n + int(((times >= interval[0]) & (times <= interval[1])).sum())

    return min(range(steps, target + 1), key=lambda n: (abs(cost(n) - target), n))


def study_methods(size: Size, scales: Scales) -> list[Method]:
    """The baseline, the NAG scales and the controls at about twice the baseline's NFE."""
    s, s2 = size.steps, 2 * size.steps
    methods = [Method("baseline", "baseline", 0.0, s, measure_shift=True)]
    methods += [
        Method(f"nag {v:g}", "nag", v, s, {"nag_scale": v}, measure_shift=True) for v in NAG_SCALES
    ]
    methods.append(Method("steps x2", "steps", 0.0, s2))
    methods += [Method(f"cfg {v:g}", "cfg", v, s, {"cfg_scale": v}) for v in CFG_SCALES]
    for name in ("eps-scaling", "time-shift"):
        methods.append(Method(name, name, 0.0, s2, setting_options(name, scales)))
    steps = interval_steps(s, INTERVAL, s2)
    for v in INTERVAL_SCALES:
        options = {"nag_scale": v, "nag_interval": INTERVAL}
        name = f"nag {v:g} on t <= {INTERVAL[1]:g}"
        methods.append(Method(name, "nag-interval", v, steps, options))
    methods += [
        Method(f"autoguidance {v:g}", "autoguidance", v, s, {"nag_scale": v})
        for v in AUTOGUIDANCE_SCALES
    ]
    return methods


def make_model(size: Size) -> MLPDenoiser:
    """The study's denoiser architecture (fresh weights from torch's global generator)."""
    return MLPDenoiser(
        MIXTURE["dim"],
        hidden=size.hidden,
        depth=size.depth,
        num_classes=MIXTURE["num_classes"],
        prediction="velocity",
        schedule="linear",
    )


def train_checkpoints(
    size: Size, seed: int, mixture_seed: int, progress: bool
) -> dict[int, dict[str, Tensor]]:
    """One training run: the EMA weights at every checkpoint and at half of each (the weaker
    model of autoguidance), keyed by training step."""
    data = load_dataset("gmm", n=size.data_n, seed=seed, mixture_seed=mixture_seed, **MIXTURE)
    with seeded_init(seed):
        model = make_model(size)
    steps = max(size.checkpoints)
    config = TrainConfig(steps=steps, batch_size=size.batch_size, seed=seed, **TRAIN)
    trainer = Trainer(model, data, config)
    saved: dict[int, dict[str, Tensor]] = {}
    for step in sorted({*size.checkpoints, *(c // 2 for c in size.checkpoints)}):
        trainer.run(until=step, progress=progress)
        saved[step] = copy.deepcopy(trainer.ema.state_dict())
    return saved


def load_model(size: Size, state: dict[str, Tensor]) -> MLPDenoiser:
    """The study's architecture with the given weights, in eval mode."""
    model = make_model(size)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- metrics
def gaussian_frechet(x: Tensor, mean: Tensor, variance: Tensor) -> float:
    """Frechet distance between the Gaussian fitted to x [m, d] (sample mean and covariance)
    and N(mean, diag(variance)): |m - mean|^2 + tr(S) + tr(V) - 2 tr((V^1/2 S V^1/2)^1/2)."""
    x = x.double()
    mean, variance = mean.double(), variance.double()
    cov = torch.cov(x.T)
    root = variance.sqrt()
    inner = root[:, None] * cov * root[None, :]
    cross = torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()
    return float((x.mean(0) - mean).square().sum() + cov.trace() + variance.sum() - 2 * cross)


def per_mode_frechet(mixture: GaussianMixtureModel, x: Tensor) -> list[float]:
    """Per mode: the Frechet distance between the samples assigned to it (their most likely
    mode) and its true component; NaN for a mode holding fewer than 2 samples."""
    comp = mixture.component_of(x).to(x.device)
    values = []
    for k, (mean, variance) in enumerate(zip(mixture.means, mixture.variances)):
        rows = x[comp == k]
        values.append(gaussian_frechet(rows, mean, variance) if len(rows) > 1 else math.nan)
    return values


def quality(mixture: GaussianMixtureModel, x: Tensor, reference: Tensor) -> dict[str, Any]:
    """The study's sample-quality numbers of x against the mixture and exact samples: the mean
    over the modes of the per-mode FD (modes with fewer than 2 samples left out and counted),
    the mean per-mode spread ratio, the mode-weight chi-square, the energy distance to
    `reference`, and the per-mode values behind them."""
    stats = per_mode_statistics(mixture, x)
    fd = np.asarray(per_mode_frechet(mixture, x))
    spread = stats["spread_ratio"].numpy()
    return {
        "fd": float(np.nanmean(fd)) if np.isfinite(fd).any() else math.nan,
        "spread": float(np.nanmean(spread)) if np.isfinite(spread).any() else math.nan,
        "chi2": float(stats["chi2"]),
        "energy": energy_distance(x, reference),
        "modes_missing": int(np.isnan(fd).sum()),
        "fd_per_mode": fd.tolist(),
        "spread_per_mode": spread.tolist(),
        "counts": stats["counts"].tolist(),
    }


def exact_floor(
    mixture: GaussianMixtureModel, labels: Tensor, seeds: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """Each metric on n exact samples with the given labels, one draw per seed (the energy
    distance against a second, independent exact set): mean, standard error and the values."""
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        x = mixture.sample_data(len(labels), y=labels, generator=generator)[0].float()
        reference = mixture.sample_data(len(labels), y=labels, generator=generator)[0].float()
        q = quality(mixture, x, reference)
        for m in METRICS:
            values[m].append(q[m])
    return {m: dict(zip(("mean", "se"), mean_se(v)), values=v) for m, v in values.items()}


def spread_calibration(
    mixture: GaussianMixtureModel,
    labels: Tensor,
    seeds: Sequence[int],
    factors: Sequence[float] = SPREAD_FACTORS,
) -> list[dict[str, Any]]:
    """How far each metric moves when exact samples are sharpened (r < 1) or blurred (r > 1):
    every point's offset from its mode's mean scaled by r, the metric compared with the same
    draw unscaled (the floor draws of `exact_floor`: same seeds), mean ± SE over the draws. At
    finite n the per-mode FD is lowest slightly below r = 1 (its estimation noise shrinks with
    the spread), the energy distance at r = 1."""
    out = []
    for factor in factors:
        differences: dict[str, list[float]] = {m: [] for m in METRICS}
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            x, comp = mixture.sample_data(len(labels), y=labels, generator=generator)
            reference = mixture.sample_data(len(labels), y=labels, generator=generator)[0].float()
            centre = mixture.means[comp]
            scaled = (centre + factor * (x - centre)).float()
            exact = quality(mixture, x.float(), reference)
            moved = quality(mixture, scaled, reference)
            for m in METRICS:
                differences[m].append(moved[m] - exact[m])
        entry: dict[str, Any] = {"factor": factor}
        for m, values in differences.items():
            entry[m], entry[m + "_se"] = mean_se(values)
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- sampling
def run_method(
    model: torch.nn.Module,
    method: Method,
    solver: str,
    labels: Tensor,
    seed: int,
    mixture: GaussianMixtureModel,
    estimator: ExactPosterior,
    reference: Tensor,
    n_shift: int,
) -> dict[str, Any]:
    """Sample n = len(labels) points with one setting and score them; where the method asks,
    read the noise shift of the first `n_shift` of them (the same trajectories: a sample's
    noise comes from its index and the seed)."""
    sampler = Sampler(model, method.steps, solver=solver, **method.options)
    nfe = sum(len(passes) for passes in sampler.plan.guidance_plan.passes)
    n = len(labels)
    row: dict[str, Any] = {"steps": method.steps, "nfe": nfe}
    start = time.perf_counter()
    x = sampler.sample(n, y=labels, seed=seed, batch_size=n, progress=False)
    row.update(quality(mixture, x, reference))
    if method.measure_shift:
        row.update(read_shift(sampler, labels[:n_shift], seed, mixture, estimator, x[:n_shift]))
    row["seconds"] = time.perf_counter() - start
    return row


def read_shift(
    sampler: Sampler,
    labels: Tensor,
    seed: int,
    mixture: GaussianMixtureModel,
    estimator: ExactPosterior,
    samples: Tensor,
) -> dict[str, Any]:
    """The noise shift of `sampler` on len(labels) samples, read by the exact posterior: the
    late shift (t <= LATE_T_MAX, each sample averaged over the late steps first) and its
    standard error, the maximum-likelihood reading's late shift where the report has one, the
    shift averaged over all steps, and how far the run's final states lie from `samples` (the
    same trajectories drawn in a larger batch: float rounding only)."""
    final: dict[int, Tensor] = {}
    steps, n = sampler.steps, len(labels)

    def keep_final(info) -> None:
        if info.step == steps - 1:
            final[info.batch_start] = info.x_next.clone()

    report = measure_noise_shift(
        sampler,
        estimator,
        n,
        y=labels,
        seed=seed,
        reference=mixture,
        batch_size=n,
        callback=keep_final,
        late_t_max=LATE_T_MAX,
    )
    x = torch.cat([final[k] for k in sorted(final)])
    return {
        "late_shift": float(report.late_shift),
        "late_shift_se": float(report.late_shift_se),
        "late_ml_shift": _optional_float(getattr(report, "late_ml_shift", None)),
        "mean_shift": float(report.mean_shift),
        "shift_states_max_diff": float((x - samples).abs().max()),
    }


def _optional_float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


@dataclass
class Setup:
    """What every run of the study shares."""

    size: Size
    seed: int
    mixture: GaussianMixtureModel
    labels: Tensor
    estimator: ExactPosterior
    methods: list[Method]
    seeds: dict[str, list[int]]
    references: list[Tensor]  # exact samples per sampling seed, for the energy distance


def make_setup(size: Size, seed: int) -> Setup:
    """The mixture, labels, estimator, methods, seeds and exact reference samples."""
    seeds = study_seeds(seed, size)
    mixture = mixture_for({"name": "gmm", "mixture_seed": seed, **MIXTURE})
    labels = class_labels(mixture, size.n)
    scales = Scales(data_variance=data_variance(mixture, seed=seed))
    references = [
        mixture.sample_data(size.n, y=labels, generator=torch.Generator().manual_seed(s))[0]
        for s in seeds["reference"]
    ]
    return Setup(
        size=size,
        seed=seed,
        mixture=mixture,
        labels=labels,
        estimator=ExactPosterior(mixture),
        methods=study_methods(size, scales),
        seeds=seeds,
        references=[r.float() for r in references],
    )


def runs_of_checkpoint(setup: Setup, states: dict[int, dict], checkpoint: int, bar) -> list[dict]:
    """Every solver, sampling seed and method on one checkpoint (autoguidance with the one at
    half its steps)."""
    model = load_model(setup.size, states[checkpoint])
    guided = AutoguidanceModel(model, load_model(setup.size, states[checkpoint // 2]))
    rows = []
    for solver in SOLVERS:
        for sample_seed, reference in zip(setup.seeds["sample"], setup.references):
            for method in setup.methods:
                bar.set_postfix_str(f"step {checkpoint} {solver} {method.name}")
                net = guided if method.family == "autoguidance" else model
                row = run_method(
                    net,
                    method,
                    solver,
                    setup.labels,
                    sample_seed,
                    setup.mixture,
                    setup.estimator,
                    reference,
                    setup.size.n_shift,
                )
                where = {"checkpoint": checkpoint, "solver": solver, "method": method.name}
                rows.append({"sample_seed": sample_seed, **where, **row})
                bar.update(1)
    return rows


def measure(size: Size, seed: int, progress: bool) -> dict[str, Any]:
    """Train, sample and score everything; the payload that `render` and `study_figure` read."""
    setup = make_setup(size, seed)
    floors = exact_floor(setup.mixture, setup.labels, setup.seeds["floor"])
    total = (size.train_seeds * len(size.checkpoints) * len(SOLVERS) * size.sample_seeds) * len(
        setup.methods
    )
    runs: list[dict[str, Any]] = []
    with tqdm(total=total, desc="gmm32 runs", disable=not progress) as bar:
        for train_seed in setup.seeds["train"]:
            bar.set_postfix_str(f"training seed {train_seed}")
            states = train_checkpoints(size, train_seed, seed, progress)
            for checkpoint in size.checkpoints:
                rows = runs_of_checkpoint(setup, states, checkpoint, bar)
                runs += [{"train_seed": train_seed, **row} for row in rows]
    mixture = setup.mixture
    return {
        "part": PART,
        "size": asdict(size),
        "seed": seed,
        "mixture": {**MIXTURE, "mixture_seed": seed, "weights": mixture.log_weights.exp().tolist()},
        "model": {"architecture": "MLPDenoiser", "hidden": size.hidden, "depth": size.depth},
        "train": {**TRAIN, "batch_size": size.batch_size, "steps": max(size.checkpoints)},
        "labels_per_class": torch.bincount(setup.labels).tolist(),
        "seeds": setup.seeds,
        "methods": [asdict(m) | {"label": m.label} for m in setup.methods],
        "floors": floors,
        "spread_calibration": spread_calibration(mixture, setup.labels, setup.seeds["floor"]),
        "runs": runs,
    }


# ----------------------------------------------------------------------------- analysis
def _cell_runs(runs: list[dict], solver: str, method: str, checkpoint: int) -> list[dict]:
    """The runs of one (solver, method, checkpoint), ordered by (training, sampling) seed."""
    chosen = [
        r
        for r in runs
        if r["solver"] == solver and r["method"] == method and r["checkpoint"] == checkpoint
    ]
    return sorted(chosen, key=lambda r: (r["train_seed"], r["sample_seed"]))


def _value(run: dict, metric: str, floors: dict) -> float:
    """A run's value of a summary quantity: fd / energy as their excess over the floor,
    spread_error = |spread - 1|, late_shift_abs = |late shift|, others as stored."""
    if metric in ("fd", "energy"):
        return run[metric] - floors[metric]["mean"]
    if metric == "spread_error":
        return abs(run["spread"] - 1.0)
    if metric == "late_shift_abs":
        return abs(run["late_shift"])
    value = run.get(metric)
    return math.nan if value is None else float(value)


def analyse(payload: dict[str, Any]) -> dict[str, Any]:
    """Means with standard errors per (solver, method, checkpoint), paired differences
    against the baseline, the best NAG scale, NAG against each control, and the prediction's
    criteria -- all from the runs in `payload`."""
    runs, floors = payload["runs"], payload["floors"]
    methods = [m["name"] for m in payload["methods"]]
    shift_methods = {m["name"] for m in payload["methods"] if m["measure_shift"]}
    checkpoints = payload["size"]["checkpoints"]
    summary, paired = [], []
    for solver in SOLVERS:
        for checkpoint in checkpoints:
            base = _cell_runs(runs, solver, "baseline", checkpoint)
            for method in methods:
                cell = _cell_runs(runs, solver, method, checkpoint)
                entry = {
                    "solver": solver,
                    "method": method,
                    "checkpoint": checkpoint,
                    "nfe": cell[0]["nfe"],
                    "steps": cell[0]["steps"],
                    "runs": len(cell),
                }
                quantities = ["fd", "spread", "chi2", "energy", "modes_missing"]
                if method in shift_methods:
                    quantities += ["late_shift", "late_ml_shift", "mean_shift"]
                for q in quantities:
                    entry[q], entry[q + "_se"] = mean_se([_value(r, q, floors) for r in cell])
                summary.append(entry)
                if method == "baseline":
                    continue
                gains = {
                    "solver": solver,
                    "method": method,
                    "checkpoint": checkpoint,
                    "nfe": entry["nfe"],
                }
                compared = ["fd", "energy", "chi2", "spread_error"]
                if method in shift_methods:
                    compared.append("late_shift_abs")
                for q in compared:
                    gains[q] = _paired(base, cell, q, floors)
                paired.append(gains)
    best = _best_scales(paired, checkpoints)
    versus = _nag_versus_controls(runs, floors, best, payload["methods"])
    return {
        "summary": summary,
        "paired": paired,
        "best_nag": best,
        "nag_vs_controls": versus,
        "prediction": _prediction(paired, best, checkpoints),
    }


def _paired(reference: list[dict], treated: list[dict], metric: str, floors: dict) -> dict:
    keys = [(r["train_seed"], r["sample_seed"]) for r in reference]
    if keys != [(r["train_seed"], r["sample_seed"]) for r in treated]:
        raise ValueError("paired runs must share training and sampling seeds")
    return paired_difference(
        [_value(r, metric, floors) for r in reference],
        [_value(r, metric, floors) for r in treated],
        groups=[r["train_seed"] for r in reference],
    )


def _find(rows: list[dict], **where: Any) -> dict:
    return next(r for r in rows if all(r[k] == v for k, v in where.items()))


def _best_scales(paired: list[dict], checkpoints: Sequence[int]) -> list[dict]:
    """Per (solver, checkpoint): the NAG scale with the largest mean paired FD gain (chosen on
    the same runs it is reported on, so its gain is mildly optimistic)."""
    best = []
    for solver in SOLVERS:
        for checkpoint in checkpoints:
            options = [
                (_find(paired, solver=solver, checkpoint=checkpoint, method=f"nag {s:g}"), s)
                for s in NAG_SCALES
            ]
            row, scale = max(options, key=lambda o: o[0]["fd"]["mean"])
            best.append(
                {
                    "solver": solver,
                    "checkpoint": checkpoint,
                    "scale": scale,
                    "method": row["method"],
                    "fd": row["fd"],
                    "late_shift_abs": row["late_shift_abs"],
                }
            )
    return best


def _nag_versus_controls(
    runs: list[dict], floors: dict, best: list[dict], methods: list[dict]
) -> list[dict]:
    """Paired FD difference control - best NAG (positive: NAG better), per control, solver and
    checkpoint."""
    controls = [m["name"] for m in methods if m["family"] not in ("baseline", "nag")]
    out = []
    for b in best:
        nag = _cell_runs(runs, b["solver"], b["method"], b["checkpoint"])
        for control in controls:
            other = _cell_runs(runs, b["solver"], control, b["checkpoint"])
            out.append(
                {
                    "solver": b["solver"],
                    "checkpoint": b["checkpoint"],
                    "control": control,
                    "nag": b["method"],
                    "nfe_control": other[0]["nfe"],
                    "nfe_nag": nag[0]["nfe"],
                    "fd": _paired(other, nag, "fd", floors),
                }
            )
    return out


def _prediction(paired: list[dict], best: list[dict], checkpoints: Sequence[int]) -> dict:
    """The pre-registered criteria, per solver and checkpoint: early (<= 1k steps) -- some
    scale in 0.25-1 with a paired FD gain and a paired |late shift| reduction above 2 SE;
    late (>= 4k steps) -- every scale in 0.25-1 with an FD gain within 2 SE of 0."""
    early, late = [], []
    for solver in SOLVERS:
        for checkpoint in checkpoints:
            rows = [
                _find(paired, solver=solver, checkpoint=checkpoint, method=f"nag {s:g}")
                for s in PREDICTED_SCALES
            ]
            fd_up = [s for s, r in zip(PREDICTED_SCALES, rows) if significant(r["fd"]) > 0]
            both = [
                s
                for s, r in zip(PREDICTED_SCALES, rows)
                if significant(r["fd"]) > 0 and significant(r["late_shift_abs"]) > 0
            ]
            entry = {"solver": solver, "checkpoint": checkpoint}
            if checkpoint <= 1000:
                early.append(
                    {**entry, "fd_scales": fd_up, "fd_and_shift_scales": both, "held": bool(both)}
                )
            if checkpoint >= 4000:
                off = [s for s, r in zip(PREDICTED_SCALES, rows) if significant(r["fd"]) != 0]
                late.append({**entry, "outside_2se_scales": off, "held": not off})
    return {"early": early, "late": late}


# ----------------------------------------------------------------------------- tables
def _method_rows(payload: dict, families: Optional[set[str]] = None) -> list[dict]:
    return [m for m in payload["methods"] if families is None or m["family"] in families]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def summary_table(payload: dict, analysis: dict, quantity: str, families=None) -> str:
    """Rows: solver x method (with its steps and NFE); columns: checkpoints; cells: the
    quantity's mean ± SE over the runs."""
    checkpoints = payload["size"]["checkpoints"]
    header = ["solver", "method", "steps", "NFE"] + [f"{c} steps" for c in checkpoints]
    rows = []
    for solver in SOLVERS:
        for m in _method_rows(payload, families):
            cells = [
                _find(analysis["summary"], solver=solver, method=m["name"], checkpoint=c)
                for c in checkpoints
            ]
            rows.append(
                [solver, m["label"], str(cells[0]["steps"]), str(cells[0]["nfe"])]
                + [format_pm(c[quantity], c[quantity + "_se"]) for c in cells]
            )
    return _table(header, rows)


def paired_table(payload: dict, analysis: dict, quantity: str, families=None) -> str:
    """Rows: solver x method; cells: paired gain against the 25-step baseline, mean ± SE over
    the pairs (bold: beyond 2 SE)."""
    checkpoints = payload["size"]["checkpoints"]
    header = ["solver", "method", "steps", "NFE"] + [f"{c} steps" for c in checkpoints]
    rows = []
    for solver in SOLVERS:
        for m in _method_rows(payload, families):
            if m["family"] == "baseline":
                continue
            cells = [
                _find(analysis["paired"], solver=solver, method=m["name"], checkpoint=c)
                for c in checkpoints
            ]
            summary = _find(analysis["summary"], solver=solver, method=m["name"])
            rows.append(
                [solver, m["label"], str(summary["steps"]), str(cells[0]["nfe"])]
                + [_format_gain(c[quantity]) for c in cells]
            )
    return _table(header, rows)


def _format_gain(entry: dict) -> str:
    return format_pm(entry["mean"], entry["se"], bold=significant(entry) != 0)


def versus_table(payload: dict, analysis: dict) -> str:
    """Rows: solver x control; cells: paired FD difference control - best NAG scale."""
    checkpoints = payload["size"]["checkpoints"]
    controls = _method_rows(
        payload, {"steps", "cfg", "eps-scaling", "time-shift", "nag-interval", "autoguidance"}
    )
    header = ["solver", "control", "NFE"] + [f"{c} steps" for c in checkpoints]
    rows = []
    for solver in SOLVERS:
        for m in controls:
            cells = [
                _find(analysis["nag_vs_controls"], solver=solver, control=m["name"], checkpoint=c)
                for c in checkpoints
            ]
            rows.append(
                [solver, m["label"], str(cells[0]["nfe_control"])]
                + [_format_gain(c["fd"]) for c in cells]
            )
    best_row = []
    for solver in SOLVERS:
        scales = [
            _find(analysis["best_nag"], solver=solver, checkpoint=c)["scale"] for c in checkpoints
        ]
        nfe = _find(analysis["summary"], solver=solver, method="nag 1")["nfe"]
        best_row.append(
            [solver, "(the NAG scale compared: its best)", str(nfe)]
            + [f"s = {s:g}" for s in scales]
        )
    return _table(header, best_row + rows)


# ----------------------------------------------------------------------------- verdicts
def _listing(items: Sequence[str]) -> str:
    items = list(items)
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _where(analysis: dict, solver: str, method: str, metric: str, sign: int) -> str:
    """The checkpoints where a method's paired gain in `metric` is beyond 2 SE with `sign`."""
    rows = [r for r in analysis["paired"] if r["solver"] == solver and r["method"] == method]
    hits = [str(r["checkpoint"]) for r in rows if significant(r[metric]) == sign]
    return "every checkpoint" if len(hits) == len(rows) else _listing(hits)


def _per_scale(analysis: dict, solver: str, metric: str) -> str:
    return "; ".join(
        f"s = {s:g} better at {_where(analysis, solver, f'nag {s:g}', metric, 1)}, worse at "
        f"{_where(analysis, solver, f'nag {s:g}', metric, -1)}"
        for s in NAG_SCALES
    )


def _spreads(analysis: dict, solver: str, checkpoints: Sequence[int]) -> str:
    """Per checkpoint: the baseline's spread ratio -> NAG's at every scale."""
    parts = []
    for c in checkpoints:
        base = _find(analysis["summary"], solver=solver, method="baseline", checkpoint=c)
        nag = [
            _find(analysis["summary"], solver=solver, method=f"nag {s:g}", checkpoint=c)
            for s in NAG_SCALES
        ]
        spreads = " / ".join(f"{r['spread']:.3f}" for r in nag)
        parts.append(f"{c}: {base['spread']:.3f} -> {spreads}")
    return "; ".join(parts)


def help_verdict(payload: dict, analysis: dict) -> list[str]:
    """Does NAG help, when, at what scale: per solver, the paired FD and energy gains of every
    scale, the spread it produces, and the best scale's gain."""
    lines = []
    checkpoints = payload["size"]["checkpoints"]
    for solver in SOLVERS:
        bests = [b for b in analysis["best_nag"] if b["solver"] == solver]
        best = [
            f"{b['checkpoint']}: s = {b['scale']:g}, {format_pm(b['fd']['mean'], b['fd']['se'])}"
            f" ({_share(analysis, b)} of the baseline's excess)"
            for b in bests
        ]
        robust = [
            str(b["checkpoint"])
            for b in bests
            if significant({"mean": b["fd"]["mean"], "se": b["fd"]["se_clustered"]}) > 0
        ]
        scales = " / ".join(f"{s:g}" for s in NAG_SCALES)
        fd, energy = (_per_scale(analysis, solver, m) for m in ("fd", "energy"))
        lines.append(
            f"- **{solver}.** Per-mode FD (paired, beyond 2 SE): {fd}. Energy distance: "
            f"{energy}. Spread ratio, baseline "
            f"-> NAG s = {scales} (exact samples {payload['floors']['spread']['mean']:.3f}): "
            f"{_spreads(analysis, solver, checkpoints)}. Largest mean FD gain per checkpoint: "
            f"{'; '.join(best)}; beyond 2 SE also over the {payload['size']['train_seeds']} "
            f"training-seed means at {_listing(robust)}."
        )
    return lines


def _share(analysis: dict, best: dict) -> str:
    """The best scale's FD gain as a percentage of the baseline's excess over the floor."""
    base = _find(
        analysis["summary"], solver=best["solver"], method="baseline", checkpoint=best["checkpoint"]
    )
    if not base["fd"] > 0:
        return "n/a"
    return f"{100 * best['fd']['mean'] / base['fd']:.0f} %"


def shift_verdict(payload: dict, analysis: dict) -> list[str]:
    """The baseline's late shift and the best NAG scale's, per solver and checkpoint."""
    lines = []
    for solver in SOLVERS:
        parts, toward = [], []
        for b in (r for r in analysis["best_nag"] if r["solver"] == solver):
            c = b["checkpoint"]
            base = _find(analysis["summary"], solver=solver, method="baseline", checkpoint=c)
            nag = _find(analysis["summary"], solver=solver, method=b["method"], checkpoint=c)
            parts.append(
                f"{c}: {base['late_shift']:+.4f} -> {nag['late_shift']:+.4f} (s = {b['scale']:g})"
            )
            if significant(b["late_shift_abs"]) > 0:
                toward.append(str(c))
        lines.append(
            f"- **{solver}**: late shift (t <= {LATE_T_MAX:g}) of the baseline -> NAG at its best "
            f"scale: {'; '.join(parts)}. |late shift| smaller by more than 2 SE (paired) at "
            f"{_listing(toward)} training steps."
        )
    return lines


def controls_verdict(payload: dict, analysis: dict) -> list[str]:
    """Against each control at equal NFE: where the best NAG scale wins, loses or ties."""
    lines = []
    for m in _method_rows(payload):
        if m["family"] in ("baseline", "nag"):
            continue
        rows = [r for r in analysis["nag_vs_controls"] if r["control"] == m["name"]]
        won = [f"{r['solver']} {r['checkpoint']}" for r in rows if significant(r["fd"]) > 0]
        lost = [f"{r['solver']} {r['checkpoint']}" for r in rows if significant(r["fd"]) < 0]
        lines.append(
            f"- vs **{m['label']}** (NFE {analysis_nfe(analysis, m['name'])}): NAG better by "
            f"more than 2 SE at {_cells_text(won, rows)}; worse at {_cells_text(lost, rows)}; "
            f"{len(rows) - len(won) - len(lost)} of {len(rows)} within 2 SE."
        )
    return lines


def _cells_text(hits: list[str], rows: list[dict]) -> str:
    return (
        f"all {len(rows)} (solver, checkpoint) cells" if len(hits) == len(rows) else _listing(hits)
    )


def summary_verdict(analysis: dict) -> list[str]:
    """Three lines: the prediction's count, the best scale, and the equal-NFE baseline."""
    early, late = analysis["prediction"]["early"], analysis["prediction"]["late"]
    scales = sorted({b["scale"] for b in analysis["best_nag"]})
    steps = [r for r in analysis["nag_vs_controls"] if r["control"] == "steps x2"]
    beaten = [r for r in steps if significant(r["fd"]) < 0]
    return [
        f"- The prediction held in {sum(e['held'] for e in early)} of {len(early)} under-trained "
        f"(<= 1k steps) and {sum(e['held'] for e in late)} of {len(late)} trained (>= 4k steps) "
        "(solver, checkpoint) cells (details at the end).",
        f"- NAG's best scale by mean per-mode FD gain: s = {', '.join(f'{s:g}' for s in scales)} "
        f"(over the {len(analysis['best_nag'])} cells; the smallest tried is "
        f"{min(NAG_SCALES):g}).",
        f"- Spending NAG's extra evaluations on twice the steps instead (no guidance, same NFE) "
        f"gives a lower per-mode FD than NAG's best scale in {len(beaten)} of {len(steps)} cells.",
    ]


def analysis_nfe(analysis: dict, method: str) -> int:
    """The NFE of a method (the same at every checkpoint and solver)."""
    return _find(analysis["summary"], method=method)["nfe"]


def prediction_verdict(analysis: dict) -> list[str]:
    """The pre-registered criteria, cell by cell, and how many cells they held in."""
    early, late = analysis["prediction"]["early"], analysis["prediction"]["late"]
    lines = []
    if early:
        held = [_cell_name(e) for e in early if e["held"]]
        fd_only = [_cell_name(e) for e in early if e["fd_scales"] and not e["held"]]
        no_gain = [_cell_name(e) for e in early if not e["fd_scales"]]
        lines.append(
            f"- *Under-trained (<= 1k steps): held in {len(held)} of {len(early)} (solver, "
            f"checkpoint) cells.* Some s in 0.25-1 with an FD gain and a |late shift| reduction "
            f"both beyond 2 SE: {_listing(held)}; FD gain only: {_listing(fd_only)}; no FD gain "
            f"beyond 2 SE at any s in 0.25-1: {_listing(no_gain)}."
        )
    if late:
        held = [_cell_name(e) for e in late if e["held"]]
        off = [f"{_cell_name(e)} ({_signed_scales(analysis, e)})" for e in late if not e["held"]]
        lines.append(
            f"- *Trained (>= 4k steps): held in {len(held)} of {len(late)} cells.* Every s in "
            f"0.25-1 within 2 SE of 0: {_listing(held)}; some s beyond 2 SE: {_listing(off)}."
        )
    if not early and not late:
        lines.append("- No checkpoint of this run falls in the pre-registered ranges.")
    return lines


def _cell_name(entry: dict) -> str:
    return f"{entry['solver']} {entry['checkpoint']}"


def _signed_scales(analysis: dict, entry: dict) -> str:
    """The scales of a cell whose FD gain is beyond 2 SE, each marked better or worse."""
    parts = []
    for s in entry["outside_2se_scales"]:
        row = _find(
            analysis["paired"],
            solver=entry["solver"],
            checkpoint=entry["checkpoint"],
            method=f"nag {s:g}",
        )
        parts.append(f"s = {s:g} {'better' if significant(row['fd']) > 0 else 'worse'}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- the section
def render(payload: dict, analysis: dict) -> str:
    """The markdown section of RESULTS.md."""
    size, floors = payload["size"], payload["floors"]
    nag = {"baseline", "nag"}
    floor_text = "; ".join(
        f"{name} {format_pm(floors[m]['mean'], floors[m]['se'])}"
        for m, name in (
            ("fd", "per-mode FD"),
            ("spread", "spread ratio"),
            ("chi2", "mode-weight χ²"),
            ("energy", "energy distance"),
        )
    )
    interval = _find(payload["methods"], family="nag-interval")
    pairs = size["train_seeds"] * size["sample_seeds"]
    sections = [
        "### The 32-D mixture (written by `python -m benchmarks.nag_study gmm32`)",
        "",
        f"`{payload['command']}` on {payload['machine']}: {payload['seconds'] / 60:.1f} minutes.",
        "",
        f"*Setup.* Data: `random_mixture(32, num_modes=8, spread=2, std=0.3, num_classes=4)` "
        f"(mode k in class k mod 4: two modes per class, so CFG has classes to separate). "
        f"Model: `MLPDenoiser` (hidden {size['hidden']}, depth {size['depth']}), AdamW lr "
        f"{TRAIN['lr']:g}, batch {size['batch_size']}, p_t = {TRAIN['p_t']:g}, p_c = "
        f"{TRAIN['p_c']:g}, EMA {TRAIN['ema_decay']:g}; {size['train_seeds']} training seeds, EMA "
        f"weights at {', '.join(map(str, size['checkpoints']))} steps of one run each. Sampling: "
        f"n = {size['n']} (labels in proportion to the class weights, "
        f"{payload['labels_per_class']}), {size['sample_seeds']} sampling seeds, "
        f"{size['steps']} steps; NAG s = {', '.join(f'{s:g}' for s in NAG_SCALES)}. Controls at "
        f"~{2 * size['steps']} NFE: the baseline at {2 * size['steps']} steps, CFG "
        f"{' / '.join(f'{s:g}' for s in CFG_SCALES)} at {size['steps']} steps, epsilon scaling "
        f"(eps / 1.005) and the time-shift sampler (window 0.05) at {2 * size['steps']} steps, "
        f"NAG on t <= {INTERVAL[1]:g} at {interval['steps']} steps, autoguidance (the engine's "
        f"NAG pass run by the checkpoint with half the steps, with its time: w = 1 + s) at "
        f"{size['steps']} steps. Errors: standard errors over the {size['train_seeds']} x "
        f"{size['sample_seeds']} (training seed x sampling seed) runs; paired differences pair "
        f"runs of the same seeds, checkpoint and solver, and a gain > 0 means the method lowers "
        f"the quantity (bold: beyond 2 SE).",
        "",
        f"*Floors* (the same statistic on n exact samples with the same labels, "
        f"{size['floor_draws']} draws, mean ± SE): {floor_text}. Excess = value − floor mean.",
        "",
        calibration_text(payload),
        "",
        "**Excess per-mode Fréchet distance over the floor** (mean over the 8 modes of the FD "
        "between the samples assigned to a mode and its true Gaussian):",
        "",
        summary_table(payload, analysis, "fd"),
        "",
        "**Paired gain in per-mode FD against the baseline at the same checkpoint** "
        "(baseline − method):",
        "",
        paired_table(payload, analysis, "fd"),
        "",
        "**NAG at its best scale against each control** (paired FD difference control − NAG; "
        "> 0: NAG better. The best scale is picked on the same runs, so NAG's side is mildly "
        "optimistic):",
        "",
        versus_table(payload, analysis),
        "",
        "**Paired gain in energy distance to exact samples** (baseline − method; floor "
        f"{format_pm(floors['energy']['mean'], floors['energy']['se'])}):",
        "",
        paired_table(payload, analysis, "energy"),
        "",
        f"**Spread ratio** (per-mode sample std / true std, mean over modes; exact samples "
        f"{format_pm(floors['spread']['mean'], floors['spread']['se'])}; < 1 sharper):",
        "",
        summary_table(payload, analysis, "spread"),
        "",
        f"**Mode-weight χ²** (8 modes; exact samples "
        f"{format_pm(floors['chi2']['mean'], floors['chi2']['se'])}):",
        "",
        summary_table(payload, analysis, "chi2"),
        "",
        f"**Late noise shift** (t <= {LATE_T_MAX:g}; each sample's exact-posterior level "
        "averaged over the late steps first, minus the same on forward samples; > 0 noisier; "
        f"read on the first {size['n_shift']} samples of every run, for time), mean ± SE over "
        "the runs:",
        "",
        summary_table(payload, analysis, "late_shift", nag),
        "",
        "**Paired reduction of |late shift|** (|baseline| − |NAG|; > 0: NAG moves it toward 0):",
        "",
        paired_table(payload, analysis, "late_shift_abs", nag),
        "",
        "#### Verdict (generated from the numbers above)",
        "",
        *summary_verdict(analysis),
        "",
        "*Does NAG help here, when, at what scale?* (per-mode FD, paired against the baseline "
        "at the same checkpoint)",
        "",
        *help_verdict(payload, analysis),
        "",
        "*Does NAG pull the late shift toward 0?*",
        "",
        *shift_verdict(payload, analysis),
        "",
        "*Against which competitor does it win or lose?* (best NAG scale vs each control at "
        "its NFE, paired FD)",
        "",
        *controls_verdict(payload, analysis),
        "",
        "*The pre-registered prediction* (each (solver, checkpoint) judged on its own. Over "
        f"{pairs} pairs, 2 SE is a weaker bar than a 95 % test (t with {pairs - 1} degrees of "
        "freedom), and with several scales and cells a few crossings are expected by chance "
        "alone):",
        "",
        *prediction_verdict(analysis),
        "",
        "Every number (per run, floors, paired differences with a second standard error over "
        "the training-seed means, `se_clustered`) is in `benchmarks/nag_study_gmm32.json`; the "
        "figure is `benchmarks/nag_study_gmm32.png`.",
    ]
    return "\n".join(sections)


def calibration_text(payload: dict) -> str:
    """What sharpening or blurring exact samples does to the per-mode FD and the energy."""
    rows = payload.get("spread_calibration")
    if not rows:
        return ""
    cells = "; ".join(
        f"r = {r['factor']:g}: FD {format_pm(r['fd'], r['fd_se'])}, energy "
        f"{format_pm(r['energy'], r['energy_se'])}"
        for r in rows
    )
    return (
        "*Calibration* (exact samples with every point's offset from its mode's mean scaled by "
        "r, minus the same draws unscaled; r < 1 sharper): "
        f"{cells}. At this n (~{payload['size']['n'] // 8} samples per mode in 32-D) the "
        "per-mode FD's own estimation noise shrinks with the spread, so it is lowest slightly "
        "below r = 1 and rewards a few per cent of sharpening; the energy distance is lowest "
        "at r = 1. Read FD gains together with the spread ratio and the energy distance."
    )


# ----------------------------------------------------------------------------- the figure
def _series(analysis: dict, key: str, solver: str, method: str, checkpoints, quantity: str):
    rows = [_find(analysis[key], solver=solver, method=method, checkpoint=c) for c in checkpoints]
    if key == "summary":
        return [r[quantity] for r in rows], [r[quantity + "_se"] for r in rows]
    return [r[quantity]["mean"] for r in rows], [r[quantity]["se"] for r in rows]


def _errorbars(ax, checkpoints, values, errors, index: int, **style) -> None:
    """One series with SE bars, nudged sideways by its index so the bars do not overlap."""
    x = np.asarray(checkpoints, dtype=np.float64) * 1.06 ** (index - 2)
    errors = np.nan_to_num(np.asarray(errors, dtype=np.float64))
    ax.errorbar(x, values, yerr=errors, marker="o", markersize=4, capsize=3, **style)


def _axes_style(ax, checkpoints, title: str, ylabel: str, legend: Optional[str] = "best") -> None:
    ax.set_xscale("log")
    ax.set_xticks(checkpoints, [str(c) for c in checkpoints])
    ax.minorticks_off()
    ax.set_xlabel("training steps (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.grid(alpha=0.3)
    if legend is not None:
        ax.legend(fontsize=7, loc=legend)


def _symlog(ax, values: Sequence[float]) -> None:
    """A symmetric log y axis, linear within 1 % of the largest |value| (small gains visible
    next to large losses)."""
    largest = float(np.nanmax(np.abs(values))) if len(values) else 1.0
    ax.set_yscale("symlog", linthresh=max(0.01 * largest, 1e-6))


NAG_COLORS = {"baseline": "black", **{f"nag {s:g}": f"C{i}" for i, s in enumerate(NAG_SCALES)}}


def study_figure(payload: dict, analysis: dict) -> Any:
    """Per solver (rows): excess per-mode FD of the baseline and NAG; NAG's paired gain per
    scale; the controls' paired gain and NAG's best; the late shift of the baseline and NAG."""
    from matplotlib.figure import Figure

    checkpoints = payload["size"]["checkpoints"]
    figure = Figure(figsize=(20, 11.5), layout="constrained")
    axes = figure.subplots(2, 4)
    for row, solver in enumerate(SOLVERS):
        _excess_panel(axes[row][0], payload, analysis, solver, checkpoints)
        _nag_gain_panel(axes[row][1], analysis, solver, checkpoints)
        _controls_panel(axes[row][2], payload, analysis, solver, checkpoints, row == 1)
        _shift_panel(axes[row][3], analysis, solver, checkpoints)
    size = payload["size"]
    figure.suptitle(
        f"NAG on an MLP learning a 32-D, 8-mode Gaussian mixture: {size['steps']} sampling "
        f"steps, n = {size['n']}, mean ± SE over {size['train_seeds']} training x "
        f"{size['sample_seeds']} sampling seeds (top: Euler, bottom: Euler-Maruyama)",
        fontsize=12,
    )
    return figure


def _excess_panel(ax, payload: dict, analysis: dict, solver: str, checkpoints) -> None:
    floor = payload["floors"]["fd"]
    for i, method in enumerate(NAG_COLORS):
        values, errors = _series(analysis, "summary", solver, method, checkpoints, "fd")
        _errorbars(ax, checkpoints, values, errors, i, color=NAG_COLORS[method], label=method)
    band = 2 * (floor["se"] if math.isfinite(floor["se"]) else 0.0)
    ax.axhspan(-band, band, color="grey", alpha=0.25, label="exact samples: floor ± 2 SE")
    ax.set_yscale("symlog", linthresh=max(band, 1e-3))
    title = f"{solver}: per-mode FD above the exact floor ({floor['mean']:.3g})"
    _axes_style(ax, checkpoints, title, "per-mode FD − floor (symlog)", "lower left")


def _nag_gain_panel(ax, analysis: dict, solver: str, checkpoints) -> None:
    shown = []
    for i, s in enumerate(NAG_SCALES):
        values, errors = _series(analysis, "paired", solver, f"nag {s:g}", checkpoints, "fd")
        _errorbars(ax, checkpoints, values, errors, i + 1, color=f"C{i}", label=f"NAG s = {s:g}")
        shown += values
    _symlog(ax, shown)
    title = f"{solver}: paired FD gain of NAG (baseline − NAG)"
    _axes_style(ax, checkpoints, title, "FD gain ± SE (> 0: NAG better; symlog)", "lower right")


def _controls_panel(
    ax, payload: dict, analysis: dict, solver: str, checkpoints, legend: bool
) -> None:
    controls = _method_rows(
        payload, {"steps", "cfg", "eps-scaling", "time-shift", "nag-interval", "autoguidance"}
    )
    shown = []
    for i, m in enumerate(controls):
        values, errors = _series(analysis, "paired", solver, m["name"], checkpoints, "fd")
        label = f"{m['label']} (NFE {analysis_nfe(analysis, m['name'])})"
        style = {"color": f"C{i}", "label": label, "linewidth": 1, "alpha": 0.8}
        _errorbars(ax, checkpoints, values, errors, i % 5, **style)
        shown += values
    best = [_find(analysis["best_nag"], solver=solver, checkpoint=c) for c in checkpoints]
    label = f"NAG, best scale per checkpoint (NFE {analysis_nfe(analysis, 'nag 1')})"
    values, errors = [b["fd"]["mean"] for b in best], [b["fd"]["se"] for b in best]
    _errorbars(ax, checkpoints, values, errors, 2, color="black", linestyle="--", label=label)
    _symlog(ax, shown + values)
    steps = payload["size"]["steps"]
    title = f"{solver}: paired FD gain vs the {steps}-step baseline, equal NFE"
    if not legend:
        title += " (legend below)"
    _axes_style(ax, checkpoints, title, "FD gain ± SE (> 0: better; symlog)", None)
    if legend:  # one legend for both rows, below the lower panel
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))


def _shift_panel(ax, analysis: dict, solver: str, checkpoints) -> None:
    for i, method in enumerate(NAG_COLORS):
        values, errors = _series(analysis, "summary", solver, method, checkpoints, "late_shift")
        _errorbars(ax, checkpoints, values, errors, i, color=NAG_COLORS[method], label=method)
    title = f"{solver}: late noise shift (t <= {LATE_T_MAX:g}), exact posterior"
    ylabel = "level of states − level of forward samples (> 0: noisier)"
    _axes_style(ax, checkpoints, title, ylabel, "upper right")


# ----------------------------------------------------------------------------- entry point
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This part's command-line options (besides --out)."""
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny n, 2 checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="seeds every random source")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the RESULTS section and the figure from OUT/nag_study_gmm32.json",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine two OpenMP threads slowed "
        "these small matrices down up to 7x whenever another process held a core)",
    )


def run(args: argparse.Namespace) -> int:
    """Run (or re-render) the part and write its JSON, figure and RESULTS.md section."""
    out: Path = args.out
    json_path = out / f"nag_study_{PART}.json"
    if args.render_only:
        payload = json.loads(json_path.read_text())
    else:
        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        size = SIZES["quick" if args.quick else "full"]
        payload = measure(size, args.seed, progress=not args.no_progress)
        command = "python -m benchmarks.nag_study gmm32" + (" --quick" if args.quick else "")
        payload.update(
            command=command + (f" --seed {args.seed}" if args.seed else ""),
            machine=machine_description(),
            seconds=time.perf_counter() - start,
        )
        # the measurements first, so nothing measured is lost if the analysis fails
        atomic_write_bytes(json_path, json.dumps(payload, indent=1).encode())
    payload["analysis"] = analyse(payload)
    atomic_write_bytes(json_path, json.dumps(payload, indent=1).encode())
    write_figure(out / f"nag_study_{PART}.png", study_figure(payload, payload["analysis"]))
    write_section(out / "RESULTS.md", PART, render(payload, payload["analysis"]))
    print(
        f"wrote {json_path}, nag_study_{PART}.png and its RESULTS.md section "
        f"({payload['seconds'] / 60:.1f} min)"
    )
    return 0
