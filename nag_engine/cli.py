"""The `nag-engine` command: demo, sample, analyze, train, convert, encode, info.

nag-engine demo                       compare baseline / CFG / NAG / CFG+NAG on the shipped
                                      models, write one PNG per model, print a quality table
nag-engine sample --model toy2d       samples (+ PNG) from a shipped model, a checkpoint
                                      file or an exact mixture (ring-exact, gmm32-exact)
nag-engine analyze --model toy2d      measure noise shift per guidance setting (PNG, JSON, CSV)
nag-engine train --preset toy2d       train a NAG-capable checkpoint (resumable); --finetune CKPT
                                      --data LATENTS adds NAG to a pretrained model
nag-engine convert IN OUT --format F  official DiT / SiT checkpoints, diffusers folders -> ours
nag-engine encode IMAGES OUT --vae D  images -> training latents through a VAE
nag-engine info [PATH]                what a checkpoint is; without PATH, the kernel backends here
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from . import __version__
from .convert import FORMATS as CONVERT_FORMATS
from .images import (
    add_title,
    atomic_write_bytes,
    atomic_write_npz,
    density_image,
    side_by_side,
    write_figure,
    write_png,
)
from .sampler import Sampler
from .schedules import SPACINGS
from .solvers import DDPM_VARIANCES, SOLVERS

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
    if not info or info.get("name") == "latents":  # no reference picture for latents
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
    samples: list[torch.Tensor],
    reference: Optional[torch.Tensor],
    nrow: int,
    labels: Optional[list[str]] = None,
) -> np.ndarray:
    """One grey picture: 2-D point clouds side by side (reference first), or image grids; with
    `labels` (one per panel) each panel's label drawn above it."""
    from .training.data import to_image_grid

    if samples[0].ndim == 2 and samples[0].shape[1] == 2:
        clouds = ([reference] if reference is not None else []) + samples
        bound = max(float(c.abs().quantile(0.995)) for c in clouds) * 1.15
        return side_by_side(*(density_image(c, (-bound, bound)) for c in clouds), labels=labels)
    if samples[0].ndim == 4 and samples[0].shape[1] == 1:
        zoom = max(1, 64 // samples[0].shape[-1])  # small images are drawn larger
        grids = [to_image_grid(s, nrow).repeat(zoom, 0).repeat(zoom, 1) for s in samples]
        return side_by_side(*grids, gap=4 * zoom, labels=labels)
    raise ValueError("can draw 2-D points or grey images only; use --no-png")


# ---------------------------------------------------------------------- sample
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """The device --device names: "auto" (CUDA where available, else CPU), "cpu", "cuda" or
    "cuda:N", checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA device here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has CUDA devices 0..{count - 1}")
    return device


# the --device option of sample, train and encode (checked by resolve_device)
DEVICE_OPTION = ("--device",)
DEVICE_HELP = {"default": "auto", "help": "auto (CUDA where available), cpu, cuda, cuda:N"}


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _sampler_options(args: argparse.Namespace) -> dict[str, Any]:
    options = dict(solver=args.solver, dtype=args.dtype, time_shift=args.time_shift)
    if args.spacing != "uniform":
        options["spacing"] = args.spacing
    if args.variance is not None:
        if args.solver != "ddpm":
            raise ValueError("--variance sets the noise of the ddpm solver: add --solver ddpm")
        options["variance"] = args.variance
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
    return options


def _is_picture(x: torch.Tensor) -> bool:
    """Points in 2-D or grey images: what `picture` draws side by side."""
    return (x.ndim == 2 and x.shape[1] == 2) or (x.ndim == 4 and x.shape[1] == 1)


def run_sample(args: argparse.Namespace) -> int:
    from .vae import VAE, image_grid, to_uint8

    device = resolve_device(args.device)
    if args.grid is not None and args.grid.suffix.lower() != ".png":
        raise ValueError(f"--grid writes a PNG picture: give a .png path, got {args.grid}")
    model, reference = resolve_model(args.model)
    model.to(device)
    num_classes = getattr(model, "num_classes", None)
    if args.label is not None:
        labels = torch.full((args.n,), args.label, dtype=torch.long)
    elif num_classes:
        labels = torch.arange(args.n) % num_classes
    else:
        labels = None
    options = _sampler_options(args)
    sampler = Sampler(
        model, args.steps, cfg_scale=args.cfg_scale, nag_scale=args.nag_scale, **options
    )
    if args.grid is not None and args.shards is not None:
        raise ValueError("--grid draws the samples of one file: use it without --shards")
    vae, shape = None, sampler._resolve_shape(None)
    if args.vae is not None:  # checked before any sampling: folder, weights, latent shape
        vae = VAE.load(args.vae, device=device, dtype=sampler.dtype)
        vae.batch_size = args.decode_batch_size
        vae.check_latents(shape)
    elif args.grid is not None and not (len(shape) == 3 and shape[0] in (1, 3)):
        raise ValueError(
            f"--grid draws images, but the samples have shape {list(shape)}: for latents pass "
            "--vae DIR to decode them"
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
            decoder=vae,
        )
        seconds = time.perf_counter() - start
        decoded = f", {vae.decode_seconds:.1f} s of it decoding" if vae is not None else ""
        print(
            f"nag_engine {__version__}: {args.n} samples of {args.model} in {len(paths)} "
            f"{args.shard_format} shards under {args.shards} ({seconds:.1f} s{decoded}; run the "
            "same command again to finish an interrupted run)"
        )
        return 0
    parts, images = [], []
    for batch in sampler.stream(
        args.n, y=labels, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress
    ):  # latents are decoded batch by batch as they come out of the sampler
        parts.append(batch.samples.cpu())
        if vae is not None:
            images.append(vae.decode_uint8(batch.samples))
    x = torch.cat(parts)
    seconds = time.perf_counter() - start
    arrays = {"samples": x.numpy()}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    if images:
        arrays["images"] = np.concatenate(images)
    atomic_write_npz(args.out, **arrays)
    print(
        f"nag_engine {__version__}: {args.n} samples of {args.model} in {args.steps} "
        f"{args.solver} steps, cfg_scale={args.cfg_scale}, nag_scale={args.nag_scale}"
    )
    if vae is not None:
        sampling = seconds - vae.decode_seconds
        print(
            f"  time {sampling:.2f} s sampling ({args.n / sampling:.1f} samples/s) + "
            f"{vae.decode_seconds:.2f} s decoding ({device}, {str(vae.dtype).split('.')[-1]})"
        )
    else:
        print(f"  time {seconds:.2f} s ({args.n / seconds:.0f} samples/s) on {device}")
    print(f"  wrote {args.out}" + (" (latents and decoded images)" if images else ""))
    pictures_only = (images or (x.ndim == 4 and x.shape[1] == 3)) and not args.no_png
    if args.grid is not None or pictures_only:  # (decoded) colour images: a grid
        grid_path = args.grid if args.grid is not None else args.out.with_suffix(".png")
        pictures = arrays["images"] if images else to_uint8(x)
        count = min(len(pictures), args.grid_max)
        nrow = max(1, round(count**0.5))
        grid = image_grid(pictures[:count], nrow)
        setting = f"{args.steps} {args.solver} steps, cfg {args.cfg_scale}, nag {args.nag_scale}"
        write_png(grid_path, add_title(grid, [str(args.model), f"{setting}, seed {args.seed}"]))
        print(f"  wrote {grid_path} (the first {count} images, {nrow} per row)")
        return 0
    if args.no_png:
        return 0
    if not _is_picture(x):
        print(f"  (no picture: samples of shape {list(x.shape[1:])}; --vae DIR decodes latents)")
        return 0
    panels, caption = [x], "samples"
    if sampler.guidance.uses_cfg or sampler.guidance.uses_nag:
        plain = Sampler(model, args.steps, **options)
        panels = [plain.sample(args.n, y=labels, seed=args.seed, progress=False).cpu(), x]
        caption = "unguided | guided"
    real = reference_samples(reference, labels, args.seed) if x.ndim == 2 else None
    if real is not None:
        caption = "data | " + caption
    png = args.out.with_suffix(".png")
    image = picture(panels, real, nrow=num_classes or 10, labels=caption.split(" | "))
    setting = f"{args.steps} {args.solver} steps, cfg {args.cfg_scale}, nag {args.nag_scale}"
    what = "2-D samples, log density (dark = dense)" if x.ndim == 2 else f"{len(x)} samples"
    write_png(png, add_title(image, [f"{args.model}: {what}", f"{setting}, seed {args.seed}"]))
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
    figure = shift_figure(
        reports,
        title=f"Noise shift of {args.model}: {args.steps} {args.solver} steps, {args.n} samples "
        f"per setting, read by {type(estimator).__name__}",
    )
    write_figure(out / "noise_shift.png", figure)
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
        f"wrote {out / 'noise_shift.png'} (left: estimated level vs nominal t, sampler states "
        "solid, forward samples dashed; right: the shift of every setting vs t with ±2 SE "
        "bands), noise_shift.json, noise_shift.csv"
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
        panel_labels = [f"{r['setting']} (cfg {r['cfg']:g}, nag {r['nag']:g})" for r in rows[-4:]]
        if name == "toy2d":
            real = reference_samples(reference, labels, args.seed)
            image = picture(samples, real, nrow=10, labels=["data"] + panel_labels)
        else:
            order = torch.argsort(labels[:100], stable=True)  # one class per row
            image = picture([s[:100][order] for s in samples], None, nrow=10, labels=panel_labels)
        png = out / f"demo_{name}.png"
        what = "2-D samples, log density (dark = dense)" if name == "toy2d" else "rows: classes 0-9"
        title = f"{name}: {what}; {args.steps} {args.solver} steps, seed {args.seed}"
        write_png(png, add_title(image, title))
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


# the training options of `train --finetune` when no --preset / --config names others: a short
# run at a fine-tuning learning rate with noise-condition dropout on (the NAG paper's p_t 0.1-0.2);
# the warm-up keeps Adam's first steps, from a fresh optimizer state, from jolting the pretrained
# weights (benchmarks/nag_finetune.py: without it the conditional loss jumps in the first steps)
FINETUNE_DEFAULTS: dict[str, Any] = {
    "steps": 1000,
    "batch_size": 32,
    "lr": 1e-4,
    "warmup_steps": 100,
    "ema_decay": 0.9999,
    "p_t": 0.2,
    "checkpoint_every": 250,
}


def _dataset_from_info(info: dict[str, Any]):
    from .training.data import load_dataset

    return load_dataset(info["name"], **{k: v for k, v in info.items() if k != "name"})


def _train_data(args: argparse.Namespace, info: Optional[dict[str, Any]], preset: Any):
    """The data to train on: --data latents, else the data set a checkpoint names, else the
    preset's."""
    from .training.data import load_dataset

    if args.data is not None:
        return load_dataset("latents", path=str(args.data))
    if info:
        return _dataset_from_info(info)
    if preset is not None:
        return load_dataset(preset.dataset, **preset.dataset_params)
    raise ValueError(
        "this checkpoint names no training data (a converted model): pass --data LATENTS.npz "
        "(latents written by `nag-engine encode`)"
    )


def run_train(args: argparse.Namespace) -> int:
    from .checkpoints import read_header
    from .presets import PRESETS, Preset
    from .training.trainer import TrainConfig, Trainer

    device = resolve_device(args.device)
    out = Path(args.out)
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key] = _parse_value(value)
    if args.steps is not None:
        overrides["steps"] = args.steps
    preset = None
    if args.config:
        spec = json.loads(Path(args.config).read_text())
        preset = Preset(**spec)
    elif args.preset is not None or not (args.finetune or args.resume):
        name = args.preset or "toy2d"
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: choose one of {tuple(PRESETS)}")
        preset = PRESETS[name]
    checkpoint = out / "checkpoint.safetensors"
    if args.resume:
        if not checkpoint.is_file():
            raise ValueError(f"--resume: no checkpoint at {checkpoint}")
        saved, _ = read_header(checkpoint)
        data = _train_data(args, saved.get("dataset"), preset)
        trainer = Trainer.resume(checkpoint, data, out=out, device=device)
        if args.steps is not None:  # train on past the original budget
            trainer.config = dataclasses.replace(trainer.config, steps=args.steps)
        print(f"resuming {checkpoint} at step {trainer.step} of {trainer.config.steps}")
    elif args.finetune:
        source, _ = read_header(args.finetune)  # a clear error for a bad file, first
        data = _train_data(args, source.get("dataset"), preset)
        classes = (source.get("model") or {}).get("num_classes")
        if data.num_classes is not None and classes and data.num_classes != classes:
            print(
                f"note: the data has {data.num_classes} classes, the model {classes}; its labels "
                "are taken as the model's class ids (if the folders are a subset of the "
                "model's classes, encode with --classes naming them all in id order)"
            )
        if preset is not None:
            train_config = preset.train_config(**overrides)
        else:
            base = {**FINETUNE_DEFAULTS, "p_c": float(source.get("p_c") or 0.0)}
            train_config = TrainConfig.from_dict({**base, **overrides})
        trainer = Trainer.finetune(args.finetune, data, train_config, out=out, device=device)
        adds = float(source.get("p_t") or 0.0) == 0.0 and train_config.p_t > 0
        what = (
            f"adding NAG (p_t={train_config.p_t}; null noise embedding starts as "
            f"{train_config.null_noise_init})"
            if adds
            else f"p_t={train_config.p_t}"
        )
        print(f"fine-tuning {args.finetune} on {data.info.get('name')} ({len(data)}): {what}")
    else:
        data = _train_data(args, None, preset)
        trainer = Trainer(
            preset.build_model(), data, preset.train_config(**overrides), out=out, device=device
        )
    history = trainer.run(progress=not args.no_progress)
    model_path = trainer.export(out / "model.safetensors", dtype=DTYPES[args.export_dtype])
    if history:
        k = max(1, min(50, len(history) // 4))
        first = sum(h["loss"] for h in history[:k]) / k
        last = sum(h["loss"] for h in history[-k:]) / k
        print(f"loss {first:.4f} (first {k} steps) -> {last:.4f} (last {k} steps)")
    print(f"wrote {checkpoint} (resumable) and {model_path} (EMA weights, for sampling)")
    return 0


# ---------------------------------------------------------------------- convert, encode
def run_convert(args: argparse.Namespace) -> int:
    from .checkpoints import read_header
    from .convert import convert_checkpoint

    if (args.scheduler is not None or args.null_class is not None) and args.format != "diffusers":
        raise ValueError("--scheduler and --null-class apply to --format diffusers only")
    path = convert_checkpoint(
        args.src,
        args.dst,
        format=args.format,
        weights=args.weights,
        num_heads=args.num_heads,
        scheduler=args.scheduler,
        null_class=args.null_class,
    )
    config, shapes = read_header(path)
    params = sum(math.prod(v) for k, v in shapes.items() if k.startswith("model."))
    origin = config.get("converted_from", {})
    print(f"converted {args.src} ({args.format}) -> {path}")
    print(f"  {_describe_architecture(config)}, {params / 1e6:.2f} M parameters")
    print(f"  predicts {config['prediction']} on the {config['schedule']} schedule")
    if origin.get("learned_sigma") == "dropped":
        print("  learned-sigma channels dropped (nag_engine's DDPM uses a fixed variance)")
    print(
        "  NAG: not yet (no noise-condition dropout); add it with `nag-engine train --finetune "
        f"{path} --data LATENTS.npz --out RUN`"
    )
    return 0


def _describe_architecture(config: dict[str, Any]) -> str:
    """One line on a converted model: the preset or size of a DiT, the class of a diffusers
    model, with its input shape and classes."""
    model, origin = config["model"], config.get("converted_from", {})
    if config["architecture"] == "DiT":
        name = origin.get("preset") or "DiT (custom size)"
        shape = f"{model['in_channels']}x{model['input_size']}x{model['input_size']}"
        return (
            f"{name}: hidden {model['hidden_size']}, depth {model['depth']}, "
            f"{model['num_heads']} heads, patch {model['patch_size']}, input {shape}, "
            f"{model['num_classes']} classes"
        )
    inner = model.get("model_config", {})
    classes = inner.get("num_embeds_ada_norm") or inner.get("num_class_embeds")
    return (
        f"{model.get('model_class', config['architecture'])}: input "
        f"{inner.get('in_channels')}x{inner.get('sample_size')}, classes {classes}, null class "
        f"{model.get('null_class')}"
    )


def run_encode(args: argparse.Namespace) -> int:
    from .vae import encode_images, read_class_list

    device = resolve_device(args.device)
    classes = read_class_list(args.classes) if args.classes is not None else None
    start = time.perf_counter()
    summary = encode_images(
        args.images,
        args.out,
        args.vae,
        size=args.size,
        batch_size=args.batch_size,
        mode=args.latent,
        seed=args.seed,
        classes=classes,
        part_size=args.part_size,
        device=device,
        dtype=DTYPES[args.dtype],
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    labelled = f"{summary['classes']} classes" if summary["classes"] else "unlabelled"
    shape = summary["latent_shape"]
    parts = ""
    if summary["parts_written"] is not None:
        parts = f"; {summary['parts_written']} parts written, {summary['parts_on_disk']} were done"
    print(
        f"encoded {summary['images']} images of {args.images} into {args.out}: latents "
        f"{shape if shape else '(all on disk already)'}, {labelled}{parts} ({seconds:.1f} s on "
        f"{device})"
    )
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
    from .checkpoints import read_header
    from .presets import SHIPPED, shipped_checkpoint

    if args.path is None:
        _print_backends()
        return 0
    path = shipped_checkpoint(args.path) if args.path in SHIPPED else Path(args.path)
    config, shapes = read_header(path)
    params = sum(math.prod(v) for k, v in shapes.items() if k.startswith("model."))
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
    data = config.get("dataset")
    print(f"  trained on    {json.dumps(data) if data else '(not recorded: a converted model)'}")
    weights = "EMA" if config.get("ema_weights") or config.get("has_ema") else "raw"
    resumable = "optimizer_groups" in config
    step = config.get("step")
    print(
        f"  step          {step if step is not None else '-'}   weights {weights}   "
        f"resumable {resumable}"
    )
    if config.get("finetuned_from"):
        print(f"  fine-tuned from {config['finetuned_from']}")
    origin = config.get("converted_from")
    if origin:
        name = origin.get("file") or origin.get("folder")
        details = ", ".join(
            f"{k} {v}" for k, v in origin.items() if k not in ("file", "folder", "sha256")
        )
        print(f"  converted from {name} ({details})")
    return 0


# ---------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nag-engine",
        description="Sampling with Noise Awareness Guidance (NAG): demo, sample, analyze, train, "
        "convert, encode, info.",
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
    sample.add_argument(
        "--n", "--num-samples", dest="n", type=int, default=2000, help="number of samples"
    )
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
    sample.add_argument(
        "--spacing",
        default="uniform",
        choices=SPACINGS,
        help="time grid: uniform in t (default), or for a discrete-time model (vp-discrete: "
        "converted DiT, diffusers) the training timesteps as DiT's sample.py (adm), ADM's "
        "ddimN / diffusers' default (leading) or diffusers' trailing spacing pick them",
    )
    sample.add_argument(
        "--variance",
        default=None,
        choices=DDPM_VARIANCES,
        help="noise of the ddpm solver: the posterior's (small, default) or the forward "
        "step's (large)",
    )
    sample.add_argument(
        "--vae",
        type=Path,
        default=None,
        metavar="DIR",
        help="decode latent samples with the diffusers AutoencoderKL saved in DIR (local "
        "folder; the latent scale comes from its config)",
    )
    sample.add_argument(
        "--grid", type=Path, default=None, help="write a PNG grid of the (decoded) images"
    )
    sample.add_argument(
        "--grid-max", type=positive_int, default=64, help="images in the grid at most"
    )
    sample.add_argument(
        "--decode-batch-size", type=positive_int, default=16, help="latents per VAE decode call"
    )
    sample.add_argument(*DEVICE_OPTION, **DEVICE_HELP)
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
        default=None,
        help="toy2d | digits | toy2d-level | digits-level (noise-level heads; default: toy2d, "
        "or with --finetune the fine-tuning defaults)",
    )
    train.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="LATENTS",
        help="train on latents written by `nag-engine encode` (.npz or a folder of them) "
        "instead of the preset's data",
    )
    train.add_argument(*DEVICE_OPTION, **DEVICE_HELP)
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
        help="start from these weights: adds NAG (noise-condition dropout p_t) to a model "
        "trained without it, e.g. a converted DiT/SiT or diffusers model",
    )
    train.add_argument(
        "--export-dtype",
        default="fp32",
        choices=("fp32", "fp16", "bf16"),
        help="dtype of the weights in OUT/model.safetensors (fp16 halves the "
        "file; the shipped checkpoints use it)",
    )
    train.add_argument("--no-progress", action="store_true")

    convert = commands.add_parser(
        "convert",
        help="official DiT / SiT checkpoints and diffusers model folders -> nag_engine",
        description="Reads a facebookresearch/DiT or willisma/SiT checkpoint (torch.save state "
        "dict or train.py checkpoint, loaded with weights_only=True; or .safetensors) or a "
        "local diffusers UNet2DModel / DiTTransformer2DModel folder, infers the architecture "
        "from the tensors and writes a nag_engine checkpoint (safetensors + config). The "
        "result samples as is; fine-tune it with `nag-engine train --finetune` to add NAG.",
    )
    convert.add_argument("src", type=Path, help="checkpoint file (dit, sit) or folder (diffusers)")
    convert.add_argument("dst", type=Path, help="the nag_engine checkpoint to write (.safetensors)")
    convert.add_argument(
        "--format",
        required=True,
        choices=CONVERT_FORMATS,
        help="dit: facebookresearch/DiT; sit: willisma/SiT; diffusers: a model or pipeline folder",
    )
    convert.add_argument(
        "--weights",
        default="ema",
        choices=("ema", "model"),
        help="which weights of a train.py checkpoint (default: ema, as DiT's sample.py)",
    )
    convert.add_argument(
        "--num-heads",
        type=positive_int,
        default=None,
        help="attention heads (only for non-preset widths)",
    )
    convert.add_argument(
        "--scheduler",
        type=Path,
        default=None,
        help="diffusers: scheduler_config.json (or its folder), if the model folder has none",
    )
    convert.add_argument(
        "--null-class",
        type=int,
        default=None,
        help="diffusers UNet: the class id reserved as the null class (its last), for CFG "
        "and class dropout",
    )

    encode = commands.add_parser(
        "encode",
        help="encode an image folder into training latents with a VAE",
        description="Encodes IMAGES (a folder with one subfolder per class, a flat folder, or "
        "an ADM .npz with arr_0 uint8 [N, H, W, 3]) with the diffusers AutoencoderKL in "
        "--vae DIR, after DiT's centre crop to --size, into OUT (latents times the VAE's "
        "scale, labels, class names) for `nag-engine train --data OUT`. OUT.npz is written "
        "atomically at the end; OUT a folder gets parts written as they complete, and rerunning "
        "the command resumes an interrupted run.",
    )
    encode.add_argument("images", type=Path)
    encode.add_argument("out", type=Path)
    encode.add_argument(
        "--vae",
        type=Path,
        required=True,
        metavar="DIR",
        help="a local diffusers AutoencoderKL folder (config.json + weights)",
    )
    encode.add_argument("--size", type=positive_int, default=256, help="image size (default 256)")
    encode.add_argument("--batch-size", type=positive_int, default=32)
    encode.add_argument(
        "--latent",
        default="sample",
        choices=("sample", "mean"),
        help="one seeded draw from the VAE posterior per image (default; DiT's training draws "
        "afresh every step) or the posterior mean",
    )
    encode.add_argument(
        "--classes",
        type=Path,
        default=None,
        metavar="FILE",
        help="a text file naming the model's class folders in id order, one per line (e.g. "
        "the 1,000 ImageNet synsets), when IMAGES holds only some of them; default: the "
        "sorted subfolders are classes 0, 1, ...",
    )
    encode.add_argument(
        "--part-size",
        type=positive_int,
        default=10_000,
        help="with OUT a folder: images per part file, each written as it completes (a rerun "
        "skips the parts on disk; default 10,000)",
    )
    encode.add_argument("--seed", type=int, default=0)
    encode.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    encode.add_argument(*DEVICE_OPTION, **DEVICE_HELP)
    encode.add_argument("--no-progress", action="store_true")

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
        "convert": run_convert,
        "encode": run_encode,
        "info": run_info,
    }
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"nag-engine: error: {err}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError:
        print(
            "nag-engine: error: the GPU ran out of memory; lower --batch-size (and "
            "--decode-batch-size for a VAE), or use --dtype bf16",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
