"""The NAG study on the digits DiT: does NAG help the shipped architecture before it is trained?

Run as ``python -m benchmarks.nag_study digits [--quick] [--out DIR] [--render-only]``.

* Model: the `digits` preset's DiT (8x8x1, patch 2, 64 wide, 4 blocks, 10 classes, velocity,
  linear schedule), trained as the preset trains it (p_t = 0.2, p_c = 0.1, batch 128, AdamW
  1e-3, EMA 0.999) on scikit-learn's 1,797 digits. The EMA weights are kept at 500 / 1k / 2k /
  4k / 8k steps of one run per training seed (and at half of each, the weaker model of
  autoguidance). The runs are cached in ``--runs``.
* Sampling: Euler at 25 steps, n = 1,797 with the real digits' labels, 3 sampling seeds; NAG
  0 / 0.25 / 0.5 / 1 / 2. Controls at the 50 model evaluations NAG costs: the baseline at 50
  steps and autoguidance w = 1.5 / 2 (`benchmarks.nag_study.AutoguidanceModel`, the half-steps
  checkpoint as the weak model). CFG, epsilon scaling and the time-shift sampler are compared
  in the gmm32 part; here each run costs seconds to tens of seconds on 2 CPU cores, so the list
  is kept short.
* Metric: FD-digits (`nag_engine.analysis.digit_features`) against all 1,797 real digits, and
  the classifier's accuracy on the requested class. The floor of FD-digits is what a perfect
  model's 1,797 fresh samples would score, which cannot be drawn: it is estimated from disjoint
  halves of the real digits, as half their FD-digits (the finite-sample bias of a Frechet
  distance scales as 1/n_a + 1/n_b), mean ± SE over random splits. Paired differences against
  the 25-step baseline (same checkpoint, same sampling seed): mean ± SE over the sampling seeds
  (with one training seed they measure sampling noise only, not a new draw of the model).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
from nag_engine.analysis.digit_features import (
    digit_accuracy,
    digit_feature_net,
    digit_features,
    real_digits,
)
from nag_engine.analysis.metrics import frechet_distance
from nag_engine.images import atomic_write_bytes, write_figure
from nag_engine.presets import PRESETS
from nag_engine.training.config import TrainConfig, seeded_init
from nag_engine.training.data import load_dataset
from nag_engine.training.trainer import Trainer

Tensor = torch.Tensor

PART = "digits"
NAG_SCALES = (0.25, 0.5, 1.0, 2.0)
AUTOGUIDANCE_SCALES = (0.5, 1.0)  # s = w - 1


@dataclass(frozen=True)
class Size:
    """How big the study is (`SIZES`)."""

    n: int = 1797
    steps: int = 25
    checkpoints: tuple[int, ...] = (500, 1000, 2000, 4000, 8000)
    train_seeds: int = 1
    sample_seeds: int = 3
    floor_splits: int = 20


SIZES = {
    "full": Size(),
    "quick": Size(n=96, steps=4, checkpoints=(8, 16), sample_seeds=2, floor_splits=4),
}


@dataclass(frozen=True)
class Method:
    """One sampler setting: its name, family, strength, steps and Sampler options."""

    name: str
    family: str  # baseline, nag, steps, autoguidance
    scale: float
    steps: int
    options: tuple[tuple[str, Any], ...] = ()


def study_methods(size: Size) -> list[Method]:
    """The baseline, the NAG scales and the controls at about twice the baseline's NFE."""
    s, s2 = size.steps, 2 * size.steps
    methods = [Method("baseline", "baseline", 0.0, s)]
    methods += [Method(f"nag {v:g}", "nag", v, s, (("nag_scale", v),)) for v in NAG_SCALES]
    methods.append(Method(f"baseline, {s2} steps", "steps", 0.0, s2))
    methods += [
        Method(f"autoguidance w = {1 + v:g}", "autoguidance", v, s, (("nag_scale", v),))
        for v in AUTOGUIDANCE_SCALES
    ]
    return methods


def nfe(method: Method) -> int:
    """Model evaluations per sample."""
    two_passes = method.family in ("nag", "autoguidance")
    return method.steps * (2 if two_passes else 1)


# ----------------------------------------------------------------------------- models
def trained_checkpoints(size: Size, seed: int, runs: Path, progress: bool) -> dict[int, Path]:
    """The EMA weights at every checkpoint and at half of each (autoguidance's weak model), as
    exported files cached in `runs` (one training run per seed)."""
    wanted = sorted({*size.checkpoints, *(c // 2 for c in size.checkpoints)})
    folder = runs / f"digits_seed{seed}_{max(wanted)}"
    paths = {step: folder / f"step{step}.safetensors" for step in wanted}
    if all(p.is_file() for p in paths.values()):
        return paths
    train = dict(PRESETS["digits"].train)
    train.pop("checkpoint_every", None)
    config = TrainConfig(**{**train, "steps": max(wanted), "seed": seed})
    with seeded_init(seed):
        model = PRESETS["digits"].build_model()
    trainer = Trainer(model, load_dataset("digits"), config)
    for step in wanted:
        trainer.run(until=step, progress=progress)
        trainer.export(paths[step])
    return paths


def load(path: Path) -> torch.nn.Module:
    from nag_engine import load_checkpoint

    return load_checkpoint(path).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- metrics
def fd_floor(real_features: Tensor, splits: int, seed: int) -> dict[str, Any]:
    """Half the FD-digits between disjoint random halves of the real digits, over `splits`
    splits: the estimated score of 1,797 fresh samples from the data distribution."""
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(splits):
        order = torch.randperm(len(real_features), generator=generator)
        half = len(order) // 2
        a, b = real_features[order[:half]], real_features[order[half : 2 * half]]
        values.append(0.5 * frechet_distance(a, b))
    mean, se = mean_se(values)
    return {"mean": mean, "se": se, "values": values}


def quality(samples: Tensor, labels: Tensor, real_features: Tensor) -> dict[str, float]:
    """FD-digits against the real digits and the accuracy on the requested classes."""
    fd = frechet_distance(digit_features(samples), real_features)
    return {"fd": fd, "accuracy": digit_accuracy(samples, labels)}


def run_method(
    method: Method, models: dict[int, Path], step: int, labels: Tensor, seed: int
) -> Tensor:
    """The samples of one setting at one checkpoint and sampling seed."""
    model = load(models[step])
    if method.family == "autoguidance":
        model = AutoguidanceModel(model, load(models[step // 2]))
    sampler = Sampler(model, method.steps, solver="euler", **dict(method.options))
    return sampler.sample(len(labels), y=labels, seed=seed, progress=False)


def _run_key(method: Method, size: Size, train_seed: int, sample_seed: int, step: int) -> str:
    """What identifies one run's result in the cache."""
    return json.dumps(
        [method.name, method.steps, dict(method.options), size.n, train_seed, sample_seed, step]
    )


def _cached_results(path: Path) -> dict[str, dict]:
    """The results of earlier (possibly interrupted) runs: one JSON object per line."""
    if not path.is_file():
        return {}
    results = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
        results[entry["key"]] = entry["result"]
    return results


def measure(size: Size, seed: int, runs: Path, progress: bool) -> dict[str, Any]:
    """Train (or reuse) the checkpoints, sample every setting, score every run. Each run's
    scores are appended to a cache in `runs` as it finishes, so a killed study resumes where
    it stopped (the samples are drawn from their own seeds: a resumed run gives the same)."""
    started = time.perf_counter()
    x_real, y_real = real_digits()
    order = torch.randperm(len(y_real), generator=torch.Generator().manual_seed(seed))
    labels = y_real[order[: size.n]]
    real_features = digit_features(x_real)
    floor = fd_floor(real_features, size.floor_splits, seed + 3000)
    methods = study_methods(size)
    train_seeds = [seed + i for i in range(size.train_seeds)]
    sample_seeds = [seed + 1000 + j for j in range(size.sample_seeds)]
    runs_out = []
    runs.mkdir(parents=True, exist_ok=True)
    cache_path = runs / f"digits_results_seed{seed}.jsonl"
    cache = _cached_results(cache_path)
    total = len(train_seeds) * len(size.checkpoints) * len(sample_seeds) * len(methods)
    with tqdm(total=total, desc="digits study", disable=not progress) as bar:
        for train_seed in train_seeds:
            models = trained_checkpoints(size, train_seed, runs, progress)
            for step in size.checkpoints:
                for sample_seed in sample_seeds:
                    for method in methods:
                        key = _run_key(method, size, train_seed, sample_seed, step)
                        if key not in cache:
                            x = run_method(method, models, step, labels, sample_seed)
                            cache[key] = quality(x, labels, real_features)
                            with cache_path.open("a") as file:
                                file.write(json.dumps({"key": key, "result": cache[key]}) + "\n")
                        runs_out.append(
                            {
                                "method": method.name,
                                "train_seed": train_seed,
                                "sample_seed": sample_seed,
                                "checkpoint": step,
                                **cache[key],
                            }
                        )
                        bar.update(1)
    return {
        "size": asdict(size),
        "seed": seed,
        "machine": machine_description(),
        "feature_net_held_out_accuracy": digit_feature_net().held_out_accuracy,
        "methods": [{**asdict(m), "options": dict(m.options), "nfe": nfe(m)} for m in methods],
        "floor": floor,
        "runs": runs_out,
        "wall_s": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- analysis
def _cell(payload: dict, method: str, checkpoint: int) -> list[dict]:
    """The runs of one method at one checkpoint, ordered by (training seed, sampling seed)."""
    cell = [r for r in payload["runs"] if r["method"] == method and r["checkpoint"] == checkpoint]
    return sorted(cell, key=lambda r: (r["train_seed"], r["sample_seed"]))


def analyse(payload: dict) -> dict[str, Any]:
    """Per method and checkpoint: FD-digits excess over the floor and accuracy (mean ± SE), and
    the paired gain against the baseline (positive: the method lowers FD-digits)."""
    floor = payload["floor"]["mean"]
    rows = []
    for method in payload["methods"]:
        for checkpoint in payload["size"]["checkpoints"]:
            cell = _cell(payload, method["name"], checkpoint)
            base = _cell(payload, "baseline", checkpoint)
            excess = mean_se([r["fd"] - floor for r in cell])
            accuracy = mean_se([r["accuracy"] for r in cell])
            gain = paired_difference([r["fd"] for r in base], [r["fd"] for r in cell])
            rows.append(
                {
                    "method": method["name"],
                    "family": method["family"],
                    "scale": method["scale"],
                    "nfe": method["nfe"],
                    "checkpoint": checkpoint,
                    "excess": excess[0],
                    "excess_se": excess[1],
                    "accuracy": accuracy[0],
                    "accuracy_se": accuracy[1],
                    "gain": gain,
                    "significant": significant(gain) if method["name"] != "baseline" else 0,
                }
            )
    return {"rows": rows}


def _row(analysis: dict, method: str, checkpoint: int) -> dict:
    return next(
        r for r in analysis["rows"] if r["method"] == method and r["checkpoint"] == checkpoint
    )


def best_nag(analysis: dict, checkpoint: int) -> dict:
    """The NAG scale with the largest paired gain at a checkpoint."""
    rows = [r for r in analysis["rows"] if r["family"] == "nag" and r["checkpoint"] == checkpoint]
    return max(rows, key=lambda r: r["gain"]["mean"])


# ----------------------------------------------------------------------------- text
def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def excess_table(payload: dict, analysis: dict) -> str:
    """FD-digits minus the floor, every method by checkpoint."""
    checkpoints = payload["size"]["checkpoints"]
    rows = []
    for method in payload["methods"]:
        cells = [method["name"], str(method["nfe"])]
        for c in checkpoints:
            r = _row(analysis, method["name"], c)
            cells.append(format_pm(r["excess"], r["excess_se"], bold=r["significant"] > 0))
        rows.append(cells)
    return _table(["method", "NFE", *(f"{c} steps" for c in checkpoints)], rows)


def gain_table(payload: dict, analysis: dict) -> str:
    """Paired FD-digits gain against the baseline, every method by checkpoint."""
    checkpoints = payload["size"]["checkpoints"]
    rows = []
    for method in payload["methods"][1:]:
        cells = [method["name"]]
        for c in checkpoints:
            r = _row(analysis, method["name"], c)
            g = r["gain"]
            cells.append(format_pm(g["mean"], g["se"], bold=r["significant"] != 0))
        rows.append(cells)
    return _table(["method", *(f"{c} steps" for c in checkpoints)], rows)


def accuracy_table(payload: dict, analysis: dict) -> str:
    checkpoints = payload["size"]["checkpoints"]
    rows = []
    for method in payload["methods"]:
        cells = [method["name"]]
        for c in checkpoints:
            r = _row(analysis, method["name"], c)
            cells.append(format_pm(r["accuracy"], r["accuracy_se"]))
        rows.append(cells)
    return _table(["method", *(f"{c} steps" for c in checkpoints)], rows)


def verdict(payload: dict, analysis: dict) -> list[str]:
    """Plain-words answers, read off the paired gains (2 standard errors)."""
    checkpoints = payload["size"]["checkpoints"]
    lines = []
    helped = [c for c in checkpoints if best_nag(analysis, c)["significant"] > 0]
    hurt = {
        c: [r["scale"] for r in analysis["rows"]
            if r["family"] == "nag" and r["checkpoint"] == c and r["significant"] < 0]
        for c in checkpoints
    }  # fmt: skip
    if helped:
        parts = []
        for c in helped:
            best = best_nag(analysis, c)
            g = best["gain"]
            parts.append(f"{c} steps (NAG {best['scale']:g}: {format_pm(g['mean'], g['se'])})")
        lines.append(
            "**Does NAG help here?** It lowers FD-digits by more than two standard errors at "
            + ", ".join(parts)
            + "."
        )
    else:
        lines.append(
            "**Does NAG help here?** No NAG scale lowers FD-digits by more than two standard "
            "errors at any checkpoint."
        )
    worse = [f"{c} steps (NAG {', '.join(f'{s:g}' for s in v)})" for c, v in hurt.items() if v]
    if worse:
        lines.append(
            "It raises FD-digits by more than two standard errors at " + ", ".join(worse) + "."
        )
    for c in checkpoints:
        best = best_nag(analysis, c)
        better = [
            r["method"]
            for r in analysis["rows"]
            if r["checkpoint"] == c
            and r["family"] not in ("baseline", "nag")
            and r["gain"]["mean"] - best["gain"]["mean"]
            > 2 * math.hypot(r["gain"]["se"], best["gain"]["se"])
        ]
        if better:
            lines.append(
                f"At {c} steps these controls beat the best NAG scale by more than two "
                f"standard errors of the difference: {', '.join(better)}."
            )
    return lines


def render(payload: dict, analysis: dict) -> str:
    """The RESULTS.md section."""
    size = payload["size"]
    floor = payload["floor"]
    quick = size["n"] < 1797
    lines = [
        "### Digits DiT: NAG over training (`python -m benchmarks.nag_study digits`)",
        "",
        f"Machine: {payload['machine']}; wall time {payload['wall_s'] / 60:.0f} min"
        + (" (a `--quick` smoke run: the numbers mean nothing)" if quick else "")
        + ".",
        "",
        f"The `digits` preset's DiT, {size['train_seeds']} training seed(s), EMA weights at "
        f"{', '.join(str(c) for c in size['checkpoints'])} training steps; Euler, "
        f"{size['steps']} steps, n = {size['n']} with the real digits' labels, "
        f"{size['sample_seeds']} sampling seeds. FD-digits against all 1,797 real digits "
        f"minus its floor: {format_pm(floor['mean'], floor['se'])} (half the FD-digits of "
        f"disjoint real halves, {size['floor_splits']} splits). Standard errors are over the "
        "sampling seeds: they cover sampling noise, not a new training run. Bold: more than "
        "two standard errors (of the paired difference) from the baseline.",
        "",
        "FD-digits minus the floor (lower is better):",
        "",
        excess_table(payload, analysis),
        "",
        f"Paired gain against the {size['steps']}-step baseline (baseline FD − method FD; > 0: "
        "better):",
        "",
        gain_table(payload, analysis),
        "",
        "Classifier accuracy on the requested class (real digits, held out: "
        f"{payload['feature_net_held_out_accuracy']:.3f}):",
        "",
        accuracy_table(payload, analysis),
        "",
        "![digits study](nag_study_digits.png)",
        "",
        *verdict(payload, analysis),
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figure
def study_figure(payload: dict, analysis: dict) -> Any:
    """Left: FD-digits excess over the floor vs training steps (baseline, NAG scales). Right:
    the paired gain of each NAG scale and control against the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    checkpoints, steps = payload["size"]["checkpoints"], payload["size"]["steps"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, method in enumerate(payload["methods"]):
        rows = [_row(analysis, method["name"], c) for c in checkpoints]
        if method["family"] in ("baseline", "nag"):
            left.errorbar(
                checkpoints,
                [r["excess"] for r in rows],
                yerr=[r["excess_se"] for r in rows],
                marker="o",
                capsize=3,
                label=method["name"],
                color=f"C{index}",
            )
        if method["family"] != "baseline":
            right.errorbar(
                np.asarray(checkpoints) * (1 + 0.03 * (index - 4)),
                [r["gain"]["mean"] for r in rows],
                yerr=[r["gain"]["se"] for r in rows],
                marker="o" if method["family"] == "nag" else "s",
                linestyle="-" if method["family"] == "nag" else ":",
                capsize=3,
                label=f"{method['name']} (NFE {method['nfe']})",
                color=f"C{index}",
            )
    left.axhline(0.0, color="black", linewidth=0.8)
    right.axhline(0.0, color="black", linewidth=0.8)
    for ax, title, ylabel in (
        (left, "FD-digits minus its floor (lower is better)", "FD-digits − floor"),
        (
            right,
            f"Paired gain against the {steps}-step baseline (> 0: better)",
            "baseline − method",
        ),
    ):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(checkpoints, [str(c) for c in checkpoints])
        ax.set_xlabel("training steps")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    figure.suptitle(
        f"Digits DiT: NAG over training (Euler {payload['size']['steps']} steps, "
        f"n = {payload['size']['n']}, ± 1 SE over {payload['size']['sample_seeds']} seeds)"
    )
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a smoke run (tiny sizes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=Path("runs/nag_study"), help="model cache")
    parser.add_argument("--results", type=Path, default=None, help="RESULTS.md to write into")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the section and figure from the JSON"
    )


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"nag_study_{PART}.json"
    if args.render_only:
        payload = json.loads(json_path.read_text())
    else:
        size = SIZES["quick" if args.quick else "full"]
        payload = measure(size, args.seed, args.runs, progress=True)
        atomic_write_bytes(json_path, (json.dumps(payload, indent=1) + "\n").encode())
    analysis = analyse(payload)
    write_figure(out / f"nag_study_{PART}.png", study_figure(payload, analysis))
    results = args.results or out / "RESULTS.md"
    write_section(results, PART, render(payload, analysis))
    print(render(payload, analysis))
    return 0
