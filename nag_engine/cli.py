"""The `nag-engine` command: demo, sample, analyze, train, info.

nag-engine demo                       compare baseline / CFG / NAG / CFG+NAG on the shipped
                                      models, write one PNG per model, print a quality table
nag-engine sample --model toy2d       samples (+ PNG) from a shipped model, a checkpoint
                                      file or an exact mixture (ring-exact, gmm32-exact)
nag-engine analyze --model toy2d      measure noise shift per guidance setting (PNG, JSON, CSV)
nag-engine train --preset toy2d       train a NAG-capable checkpoint (resumable)
nag-engine info [PATH]                what a checkpoint is; without PATH, the kernel backends here
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from . import __version__
from .images import atomic_write_bytes, atomic_write_npz, density_image, encode_png, side_by_side
from .sampler import Sampler
from .solvers import SOLVERS

EXACT_MODELS = ("ring-exact", "gmm32-exact")


# ---------------------------------------------------------------------- models and data
def resolve_model(name: str) -> tuple[nn.Module, Optional[Any]]:
    """(model, reference) for a shipped name, an exact mixture or a checkpoint path. The
    reference is the exact mixture for mixture data, the DataSet for other data, or None."""
    from .checkpoints import load_checkpoint
    from .models import random_mixture, ring_mixture
    from .presets import SHIPPED, shipped_checkpoint
    from .training.data import load_dataset, mixture_for

    if name == "ring-exact":
        model = ring_mixture(8, num_classes=8)
        return model, model
    if name == "gmm32-exact":
        model = random_mixture(32, 8, num_classes=8)
        return model, model
    path = shipped_checkpoint(name) if name in SHIPPED else Path(name)
    model = load_checkpoint(path)
    info = dict(model.checkpoint_config.get("dataset") or {})
    if not info:
        return model, None
    mixture = mixture_for(info)
    if mixture is not None:
        return model, mixture
    params = {k: v for k, v in info.items() if k != "name"}
    return model, load_dataset(info["name"], **params)


def reference_samples(reference: Any, labels: torch.Tensor, seed: int) -> Optional[torch.Tensor]:
    """Real data to compare with: exact mixture draws with the same labels, or the data set."""
    from .models import GaussianMixtureModel

    if isinstance(reference, GaussianMixtureModel):
        gen = torch.Generator().manual_seed(seed)
        return reference.sample_data(len(labels), y=labels, generator=gen)[0].float()
    if reference is not None:
        return reference.x
    return None


def picture(
    samples: list[torch.Tensor], reference: Optional[torch.Tensor], nrow: int
) -> np.ndarray:
    """One grey picture: 2-D point clouds side by side (reference first), or image grids."""
    from .training.data import to_image_grid

    if samples[0].ndim == 2 and samples[0].shape[1] == 2:
        clouds = ([reference] if reference is not None else []) + samples
        bound = max(float(c.abs().quantile(0.995)) for c in clouds) * 1.15
        return side_by_side(*(density_image(c, (-bound, bound)) for c in clouds))
    if samples[0].ndim == 4 and samples[0].shape[1] == 1:
        zoom = max(1, 64 // samples[0].shape[-1])  # small images are drawn larger
        grids = [to_image_grid(s, nrow).repeat(zoom, 0).repeat(zoom, 1) for s in samples]
        return side_by_side(*grids, gap=4 * zoom)
    raise ValueError("can draw 2-D points or grey images only; use --no-png")


# ---------------------------------------------------------------------- sample
def run_sample(args: argparse.Namespace) -> int:
    model, reference = resolve_model(args.model)
    num_classes = getattr(model, "num_classes", None)
    if args.label is not None:
        labels = torch.full((args.n,), args.label, dtype=torch.long)
    elif num_classes:
        labels = torch.arange(args.n) % num_classes
    else:
        labels = None
    options = dict(solver=args.solver, dtype=args.dtype, time_shift=args.time_shift)
    if args.cfg_interval:
        options["cfg_interval"] = tuple(args.cfg_interval)
    if args.nag_interval:
        options["nag_interval"] = tuple(args.nag_interval)
    if args.eps_scaling:
        options["eps_scaling"] = {"k": args.eps_scaling[0], "b": args.eps_scaling[1]}
    if args.shift_window:
        options["time_shift_sampler"] = {
            "window": args.shift_window,
            "data_variance": args.shift_data_variance,
        }
    sampler = Sampler(
        model, args.steps, cfg_scale=args.cfg_scale, nag_scale=args.nag_scale, **options
    )
    start = time.perf_counter()
    if args.shards is not None:
        from .shards import sample_to_disk

        paths = sample_to_disk(
            sampler,
            args.n,
            args.shards,
            y=labels,
            seed=args.seed,
            shard_size=args.shard_size,
            format=args.shard_format,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
        seconds = time.perf_counter() - start
        print(
            f"nag_engine {__version__}: {args.n} samples of {args.model} in {len(paths)} "
            f"{args.shard_format} shards under {args.shards} ({seconds:.1f} s; run the same "
            "command again to finish an interrupted run)"
        )
        return 0
    x = sampler.sample(
        args.n, y=labels, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress
    )
    seconds = time.perf_counter() - start
    arrays = {"samples": x.numpy()}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    atomic_write_npz(args.out, **arrays)
    print(
        f"nag_engine {__version__}: {args.n} samples of {args.model} in {args.steps} "
        f"{args.solver} steps, cfg_scale={args.cfg_scale}, nag_scale={args.nag_scale}"
    )
    print(f"  time {seconds:.2f} s ({args.n / seconds:.0f} samples/s)")
    print(f"  wrote {args.out}")
    if args.no_png or x.ndim not in (2, 4) or (x.ndim == 2 and x.shape[1] != 2):
        return 0
    panels, caption = [x], "samples"
    if sampler.guidance.uses_cfg or sampler.guidance.uses_nag:
        plain = Sampler(model, args.steps, **options)
        panels = [plain.sample(args.n, y=labels, seed=args.seed, progress=False), x]
        caption = "unguided | guided"
    real = reference_samples(reference, labels, args.seed) if x.ndim == 2 else None
    if real is not None:
        caption = "data | " + caption
    png = args.out.with_suffix(".png")
    atomic_write_bytes(png, encode_png(picture(panels, real, nrow=num_classes or 10)))
    print(f"  wrote {png} ({caption}, same seed)")
    return 0


# ---------------------------------------------------------------------- analyze
def run_analyze(args: argparse.Namespace) -> int:
    from .analysis.noise_shift import measure_noise_shift, shift_figure
    from .analysis.settings import (
        DataSetReference,
        Scales,
        data_variance,
        resolve_estimator,
        setting_options,
    )
    from .models import GaussianMixtureModel

    model, reference = resolve_model(args.model)
    estimator = resolve_estimator(args.estimator, args.model, model, reference)
    if reference is not None and not isinstance(reference, GaussianMixtureModel):
        reference = DataSetReference(reference)
    settings = [name.strip() for name in args.settings.split(",") if name.strip()]
    scales = Scales(
        cfg_scale=args.cfg_scale,
        nag_scale=args.nag_scale,
        classifier_nag_scale=args.classifier_nag_scale,
        eps_scaling=tuple(args.eps_scaling),
        shift_window=args.shift_window,
        data_variance=data_variance(reference) or 1.0,
    )
    samplers = {
        name: Sampler(
            model, args.steps, solver=args.solver, **setting_options(name, scales, estimator)
        )
        for name in settings
    }  # built first: a bad setting fails before any sampling
    num_classes = getattr(model, "num_classes", None)
    labels = torch.arange(args.n) % num_classes if num_classes else None
    reports, rows = {}, []
    for name, sampler in samplers.items():
        start = time.perf_counter()
        report = measure_noise_shift(
            sampler,
            estimator,
            args.n,
            y=labels,
            seed=args.seed,
            reference=reference,
            batch_size=args.batch_size,
        )
        report.meta["setting"] = name
        reports[name] = report
        late = report.t <= 0.2
        rows.append(
            {
                "setting": name,
                "mean shift": f"{report.mean_shift:+.4f}",
                "shift t<=0.2": f"{float(np.mean(report.shift[late])):+.4f}" if late.any() else "",
                "final-step shift": f"{report.shift[-1]:+.4f} ± {report.shift_se[-1]:.4f}",
                "seconds": f"{time.perf_counter() - start:.1f}",
            }
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = shift_figure(reports, show_shift=True)
    atomic_write_bytes(out / "noise_shift.png", encode_png(figure))
    payload = {
        "model": args.model,
        "estimator": type(estimator).__name__,
        "settings": {name: r.to_dict() for name, r in reports.items()},
    }
    atomic_write_bytes(out / "noise_shift.json", json.dumps(payload, indent=1).encode())
    lines = []
    for i, (name, r) in enumerate(reports.items()):
        body = r.to_csv().splitlines()
        if i == 0:
            lines.append("setting," + body[0])
        lines.extend(f"{name},{line}" for line in body[1:])
    atomic_write_bytes(out / "noise_shift.csv", ("\n".join(lines) + "\n").encode())
    print(
        f"noise shift of {args.model} ({args.n} samples, {args.steps} {args.solver} steps), "
        f"read by {type(estimator).__name__}; shift = estimated level of the sampler's states "
        "minus that of forward-process samples at the same t (> 0: noisier)"
    )
    _print_table(rows)
    print(
        f"wrote {out / 'noise_shift.png'} (one column per setting, in the order above: top, "
        "estimated level vs nominal t, sampler red with ±1 std band, forward samples blue; "
        "bottom, the shift vs t with ±2 SE, shared scale), noise_shift.json, noise_shift.csv"
    )
    return 0


# ---------------------------------------------------------------------- demo
DEMO_SETTINGS = (
    ("baseline", 1.0, 0.0),
    ("cfg", None, 0.0),
    ("nag", 1.0, None),
    ("cfg+nag", None, None),
)


def _toy_metrics(x, labels, mixture, seed):
    from .analysis.metrics import energy_distance, mode_coverage

    real = reference_samples(mixture, labels, seed)
    comp = mixture.component_of(x)
    return {
        "energy_dist": energy_distance(x, real),
        "log_p_data": float(mixture.log_prob(x, 0.0).mean()),
        "in_class": float((mixture.classes[comp] == labels).double().mean()),
        "modes_covered": mode_coverage(comp, mixture.means.shape[0]),
    }


def _digit_metrics(x, labels, data, classifier):
    from .analysis.metrics import frechet_distance

    flat = x.flatten(1).clamp(-1, 1).numpy()
    accuracy = float((classifier.predict(flat) == labels.numpy()).mean())
    return {
        "FD_pixels": frechet_distance(x.flatten(1), data.x.flatten(1)),
        "class_accuracy": accuracy,
    }


def run_demo(args: argparse.Namespace) -> int:
    from .presets import SHIPPED_DENOISERS

    out = Path(args.out)
    rows = []
    started = time.perf_counter()
    for name in SHIPPED_DENOISERS:
        model, reference = resolve_model(name)
        n = args.n_toy if name == "toy2d" else args.n_digits
        labels = torch.arange(n) % model.num_classes
        classifier = None
        if name == "digits":
            from sklearn.linear_model import LogisticRegression

            classifier = LogisticRegression(max_iter=2000).fit(
                reference.x.flatten(1).numpy(), reference.y.numpy()
            )
        samples = []
        for setting, cfg, nag in DEMO_SETTINGS:
            cfg = args.cfg_scale if cfg is None else cfg
            nag = args.nag_scale if nag is None else nag
            sampler = Sampler(model, args.steps, solver=args.solver, cfg_scale=cfg, nag_scale=nag)
            x = sampler.sample(n, y=labels, seed=args.seed, progress=False)
            samples.append(x)
            if classifier is None:
                figures = _toy_metrics(x, labels, reference, args.seed)
            else:
                figures = _digit_metrics(x, labels, reference, classifier)
            rows.append({"model": name, "setting": setting, "cfg": cfg, "nag": nag, **figures})
        if name == "toy2d":
            real = reference_samples(reference, labels, args.seed)
            image = picture(samples, real, nrow=10)
        else:
            order = torch.argsort(labels[:100], stable=True)  # one class per row
            image = picture([s[:100][order] for s in samples], None, nrow=10)
        png = out / f"demo_{name}.png"
        atomic_write_bytes(png, encode_png(image))
        caption = "data | " if name == "toy2d" else ""
        print(f"wrote {png} ({caption}baseline | cfg | nag | cfg+nag)")
    _print_table(rows)
    atomic_write_bytes(out / "demo_metrics.json", json.dumps(rows, indent=2).encode())
    print(f"wrote {out / 'demo_metrics.json'}; {time.perf_counter() - started:.1f} s in all")
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    """Print rows grouped by their "model" entry (if any), one aligned table per group."""
    for model in dict.fromkeys(r.get("model", "") for r in rows):
        group = [r for r in rows if r.get("model", "") == model]
        keys = [k for k in group[0] if k != "model"]
        cells = [
            [f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in group
        ]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        if model:
            print(f"\n{model}")
        print("  " + "  ".join(k.rjust(w) for k, w in zip(keys, widths)))
        for c in cells:
            print("  " + "  ".join(v.rjust(w) for v, w in zip(c, widths)))


# ---------------------------------------------------------------------- train
def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_train(args: argparse.Namespace) -> int:
    from .presets import PRESETS, Preset
    from .training.data import load_dataset
    from .training.trainer import Trainer

    out = Path(args.out)
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key] = _parse_value(value)
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.config:
        spec = json.loads(Path(args.config).read_text())
        preset = Preset(**spec)
    else:
        if args.preset not in PRESETS:
            raise ValueError(f"unknown preset {args.preset!r}: choose one of {tuple(PRESETS)}")
        preset = PRESETS[args.preset]
    data = load_dataset(preset.dataset, **preset.dataset_params)
    checkpoint = out / "checkpoint.safetensors"
    if args.resume:
        if not checkpoint.is_file():
            raise ValueError(f"--resume: no checkpoint at {checkpoint}")
        trainer = Trainer.resume(checkpoint, data, out=out)
        if args.steps is not None:  # train on past the original budget
            trainer.config = dataclasses.replace(trainer.config, steps=args.steps)
        print(f"resuming {checkpoint} at step {trainer.step} of {trainer.config.steps}")
    elif args.finetune:
        trainer = Trainer.finetune(args.finetune, data, preset.train_config(**overrides), out=out)
        print(f"fine-tuning {args.finetune} with p_t={trainer.config.p_t}")
    else:
        trainer = Trainer(preset.build_model(), data, preset.train_config(**overrides), out=out)
    history = trainer.run(progress=not args.no_progress)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.export_dtype
    ]
    model_path = trainer.export(out / "model.safetensors", dtype=dtype)
    if history:
        first = sum(h["loss"] for h in history[:50]) / min(50, len(history))
        last = sum(h["loss"] for h in history[-50:]) / min(50, len(history))
        print(f"loss {first:.4f} (first 50 steps) -> {last:.4f} (last 50 steps)")
    print(f"wrote {checkpoint} (resumable) and {model_path} (EMA weights, for sampling)")
    return 0


# ---------------------------------------------------------------------- info
def _print_backends() -> None:
    from . import backends

    print("fused-step backends (auto: triton > cuda on GPUs, cpp on CPUs, else reference):")
    for name, why in backends.available().items():
        print(f"  {name:<10} {why}")
    cuda = torch.cuda.is_available()
    print(
        f"  auto picks {backends.select('cpu')!r} for CPU tensors"
        + (f", {backends.select('cuda')!r} for CUDA tensors" if cuda else " (no CUDA device here)")
    )


def run_info(args: argparse.Namespace) -> int:
    from .checkpoints import read_checkpoint
    from .presets import SHIPPED, shipped_checkpoint

    if args.path is None:
        _print_backends()
        return 0
    path = shipped_checkpoint(args.path) if args.path in SHIPPED else Path(args.path)
    config, tensors = read_checkpoint(path)
    params = sum(v.numel() for k, v in tensors.items() if k.startswith("model."))
    print(f"{path}  ({path.stat().st_size / 1e6:.2f} MB)")
    print(f"  architecture  {config['architecture']}  ({params / 1e6:.3f} M parameters)")
    print(f"  model         {json.dumps(config['model'])}")
    print(f"  schedule      {config.get('schedule')}   prediction {config.get('prediction')}")
    if config.get("train", {}).get("objective") == "noise_level":
        print("  role          noise-level head: log p(t | x) for analyze and classifier-based NAG")
    else:
        p_t = float(config.get("p_t") or 0.0)
        nag = "NAG supported" if p_t > 0 else "NAG NOT supported"
        print(
            f"  dropout       p_t={p_t} (noise condition), p_c={config.get('p_c')} (class): {nag}"
        )
    print(f"  trained on    {json.dumps(config.get('dataset'))}")
    weights = "EMA" if config.get("ema_weights") or config.get("has_ema") else "raw"
    resumable = "optimizer_groups" in config
    print(f"  step          {config.get('step')}   weights {weights}   resumable {resumable}")
    if config.get("finetuned_from"):
        print(f"  fine-tuned from {config['finetuned_from']}")
    return 0


# ---------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nag-engine",
        description="Sampling with Noise Awareness Guidance (NAG): demo, sample, analyze, train, "
        "info.",
        epilog="Start with `nag-engine demo`; each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"nag_engine {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="baseline / CFG / NAG / CFG+NAG on the shipped models, side by side",
        description="Loads the shipped toy2d and digits checkpoints, samples each with the same "
        "seed under baseline, CFG, NAG and CFG+NAG, writes OUT/demo_<model>.png and prints "
        "quality figures (and OUT/demo_metrics.json).",
    )
    demo.add_argument("--out", type=Path, default=Path("out"), help="folder for the pictures")
    demo.add_argument("--steps", type=int, default=24)
    demo.add_argument("--solver", default="heun", choices=tuple(SOLVERS))
    demo.add_argument("--cfg-scale", type=float, default=2.0)
    demo.add_argument("--nag-scale", type=float, default=0.5)
    demo.add_argument("--n-toy", type=int, default=2000, help="samples for toy2d")
    demo.add_argument("--n-digits", type=int, default=500, help="samples for digits")
    demo.add_argument("--seed", type=int, default=0)

    sample = commands.add_parser(
        "sample",
        help="draw samples, write .npz and a picture",
        description="Draw samples with any guidance and solver. MODEL is a shipped checkpoint "
        "(toy2d, digits), a checkpoint file, or an exact Gaussian mixture (ring-exact, "
        "gmm32-exact).",
    )
    sample.add_argument(
        "--model",
        default="toy2d",
        help="toy2d | digits | ring-exact | "
        "gmm32-exact | path to a .safetensors checkpoint (default: toy2d)",
    )
    sample.add_argument("--n", type=int, default=2000, help="number of samples")
    sample.add_argument("--steps", type=int, default=50)
    sample.add_argument("--solver", default="euler", choices=tuple(SOLVERS))
    sample.add_argument("--cfg-scale", type=float, default=1.0, help="1.0 = off")
    sample.add_argument("--nag-scale", type=float, default=0.0, help="0.0 = off")
    sample.add_argument("--cfg-interval", type=float, nargs=2, metavar=("T_LO", "T_HI"))
    sample.add_argument("--nag-interval", type=float, nargs=2, metavar=("T_LO", "T_HI"))
    sample.add_argument(
        "--time-shift",
        type=float,
        default=1.0,
        help="SD3-style timestep shift of the grid (1.0 = uniform)",
    )
    sample.add_argument(
        "--eps-scaling",
        type=float,
        nargs=2,
        metavar=("K", "B"),
        help="epsilon scaling (Ning et al.): divide predicted noise by K t + B",
    )
    sample.add_argument(
        "--shift-window",
        type=float,
        default=0.0,
        help="time-shift sampler (Li et al.): window in t (0 = off)",
    )
    sample.add_argument(
        "--shift-data-variance",
        type=float,
        default=1.0,
        help="data variance per dimension assumed by the time-shift sampler",
    )
    sample.add_argument(
        "--label", type=int, default=None, help="class of every sample (default: classes in turn)"
    )
    sample.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"))
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=int, default=None)
    sample.add_argument("--out", type=Path, default=Path("out/samples.npz"), help="NPZ to write")
    sample.add_argument("--no-png", action="store_true", help="skip the picture")
    sample.add_argument(
        "--shards",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the samples to DIR in shards instead (resumable: rerun to finish)",
    )
    sample.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    sample.add_argument("--shard-format", default="npz", choices=("npz", "png"))
    sample.add_argument("--no-progress", action="store_true")

    analyze = commands.add_parser(
        "analyze",
        help="measure noise shift per guidance setting; figure + JSON + CSV",
        description="Runs the sampler under each setting and, at every step, reads the noise "
        "level of its states with a noise-level estimator, against forward-process samples at "
        "the same nominal t. Writes OUT/noise_shift.png, .json and .csv. Settings: none, cfg, "
        "nag, cfg+nag, cnag (classifier-based NAG), cfg+cnag, eps-scaling, time-shift.",
    )
    analyze.add_argument(
        "--model", default="toy2d", help="toy2d | digits | ring-exact | gmm32-exact | PATH"
    )
    analyze.add_argument(
        "--estimator",
        default="auto",
        help="auto | exact (mixture data) | head (shipped regressor) | implicit | PATH to a "
        "noise-level head checkpoint (default auto: exact where known, else head)",
    )
    analyze.add_argument("--settings", default="none,cfg,nag,cfg+nag")
    analyze.add_argument("--steps", type=int, default=25)
    analyze.add_argument("--solver", default="euler", choices=tuple(SOLVERS))
    analyze.add_argument("--n", type=int, default=1000)
    analyze.add_argument("--cfg-scale", type=float, default=2.0)
    analyze.add_argument("--nag-scale", type=float, default=0.5)
    analyze.add_argument("--classifier-nag-scale", type=float, default=0.1)
    analyze.add_argument(
        "--eps-scaling", type=float, nargs=2, default=(0.0, 1.005), metavar=("K", "B")
    )
    analyze.add_argument("--shift-window", type=float, default=0.05)
    analyze.add_argument("--seed", type=int, default=0)
    analyze.add_argument("--batch-size", type=int, default=None)
    analyze.add_argument("--out", type=Path, default=Path("out/analyze"))

    train = commands.add_parser(
        "train",
        help="train a NAG-capable checkpoint from a preset or a config file",
        description="Trains with noise-condition and class dropout. Writes OUT/checkpoint."
        "safetensors (resumable with --resume) and OUT/model.safetensors (EMA weights).",
    )
    train.add_argument(
        "--preset",
        default="toy2d",
        help="toy2d | digits | toy2d-level | digits-level (noise-level heads; default: toy2d)",
    )
    train.add_argument(
        "--config",
        type=Path,
        help="JSON file with dataset, dataset_params, "
        "architecture, model and train (overrides --preset)",
    )
    train.add_argument("--out", type=Path, required=True, help="run folder")
    train.add_argument("--steps", type=int, default=None, help="override the step count")
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a training option, e.g. --set p_t=0.2 --set cdl_weight=0.1",
    )
    train.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.safetensors")
    train.add_argument(
        "--finetune",
        type=Path,
        metavar="CHECKPOINT",
        help="start from these weights (e.g. add NAG to a no-dropout model)",
    )
    train.add_argument(
        "--export-dtype",
        default="fp32",
        choices=("fp32", "fp16", "bf16"),
        help="dtype of the weights in OUT/model.safetensors (fp16 halves the "
        "file; the shipped checkpoints use it)",
    )
    train.add_argument("--no-progress", action="store_true")

    info = commands.add_parser(
        "info", help="describe a checkpoint, or (without PATH) the kernel backends here"
    )
    info.add_argument(
        "path",
        nargs="?",
        default=None,
        help="checkpoint file, or a shipped name (toy2d, digits, toy2d-level, digits-level)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `nag-engine` command."""
    args = _parser().parse_args(argv)
    commands = {
        "demo": run_demo,
        "sample": run_sample,
        "analyze": run_analyze,
        "train": run_train,
        "info": run_info,
    }
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"nag-engine: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
