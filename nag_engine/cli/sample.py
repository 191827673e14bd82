"""`nag-engine sample`: draw samples with any guidance and solver; write .npz, a picture of
the samples (2-D points, grey images) or a grid of (VAE-decoded) colour images, or shards."""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__, distributed
from ..images import add_title, atomic_write_npz, write_png
from ..sampler import Sampler
from ..schedules import SPACINGS
from ..solvers import DDPM_VARIANCES, SOLVERS
from .common import (
    DEVICE_HELP,
    DEVICE_OPTION,
    check_count,
    check_input,
    check_memory,
    check_output_file,
    check_output_folder,
    check_seed_option,
    check_steps_option,
    finite_float,
    load_model_option,
    picture,
    positive_int,
    reference_samples,
    resolve_device,
    whole_number,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `sample` command and its options."""
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
        "--num-samples",
        "--n",
        dest="n",
        type=whole_number,
        default=2000,
        help="number of samples (under torchrun write --num-samples: torchrun takes --n for an "
        "abbreviation of its own options)",
    )
    sample.add_argument("--steps", type=whole_number, default=50)
    sample.add_argument("--solver", default="euler", choices=tuple(SOLVERS))
    sample.add_argument("--cfg-scale", type=finite_float, default=1.0, help="1.0 = off")
    sample.add_argument("--nag-scale", type=finite_float, default=0.0, help="0.0 = off")
    sample.add_argument("--cfg-interval", type=finite_float, nargs=2, metavar=("T_LO", "T_HI"))
    sample.add_argument("--nag-interval", type=finite_float, nargs=2, metavar=("T_LO", "T_HI"))
    sample.add_argument(
        "--nag-null-class",
        action="store_true",
        help="the NAG pass drops the class too: (null t, null c) instead of (null t, c)",
    )
    sample.add_argument(
        "--time-shift",
        type=finite_float,
        default=1.0,
        help="SD3-style timestep shift of the grid (1.0 = uniform)",
    )
    sample.add_argument(
        "--eps-scaling",
        type=finite_float,
        nargs=2,
        metavar=("K", "B"),
        help="epsilon scaling (Ning et al.): divide predicted noise by K t + B",
    )
    sample.add_argument(
        "--shift-window",
        type=finite_float,
        default=0.0,
        help="time-shift sampler (Li et al.): window in t (0 = off)",
    )
    sample.add_argument(
        "--shift-data-variance",
        type=finite_float,
        default=1.0,
        help="data variance per dimension assumed by the time-shift sampler",
    )
    sample.add_argument(
        "--label",
        type=whole_number,
        default=None,
        help="class of every sample (default: classes in turn)",
    )
    sample.add_argument(
        "--dtype",
        default=None,
        choices=("fp32", "bf16", "fp16", "fp8"),
        help="the model's compute dtype; fp8: bf16 with the transformer blocks' matmuls in "
        "float8 (Hopper / Ada GPUs)",
    )
    sample.add_argument("--seed", type=whole_number, default=0)
    sample.add_argument("--batch-size", type=whole_number, default=None)
    sample.add_argument("--out", type=Path, default=Path("out/samples.npz"), help="NPZ to write")
    sample.add_argument("--no-png", action="store_true", help="skip the picture")
    sample.add_argument(
        "--shards",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the samples to DIR in shards instead (resumable: rerun to finish)",
    )
    sample.add_argument("--shard-size", type=whole_number, default=1000, help="samples per shard")
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


def _sampler_options(args: argparse.Namespace) -> dict[str, Any]:
    options = dict(solver=args.solver, dtype=args.dtype, time_shift=args.time_shift)
    if args.spacing != "uniform":
        options["spacing"] = args.spacing
    if args.variance is not None:
        options["variance"] = args.variance
    if args.cfg_interval:
        options["cfg_interval"] = tuple(args.cfg_interval)
    if args.nag_interval:
        options["nag_interval"] = tuple(args.nag_interval)
    if args.nag_null_class:
        options["nag_null_class"] = True
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


def check(args: argparse.Namespace) -> None:
    """The options alone, before anything is loaded: counts, seed, combinations, and the paths
    written (not a folder for a file, not under a file, writable) and read."""
    check_count("--n", args.n)
    _check_samples_fit(args, 16 if args.shards is not None else 32, "samples")  # at the least
    check_steps_option(args.steps)
    check_seed_option(args.seed)
    if args.batch_size is not None:
        check_count("--batch-size", args.batch_size)
    check_count("--shard-size", args.shard_size)
    if args.time_shift <= 0:
        raise ValueError(
            f"--time-shift must be > 0, got {args.time_shift}: pass a shift > 0 (1 = off)"
        )
    for option, interval in (
        ("--cfg-interval", args.cfg_interval),
        ("--nag-interval", args.nag_interval),
    ):
        if interval and not 0 <= interval[0] <= interval[1] <= 1:
            raise ValueError(
                f"{option} {interval[0]:g} {interval[1]:g}: give T_LO T_HI with "
                "0 <= T_LO <= T_HI <= 1"
            )
    if args.shift_window < 0:
        raise ValueError(f"--shift-window {args.shift_window:g}: pass a window >= 0 (0 = off)")
    if args.shift_data_variance <= 0:
        raise ValueError(f"--shift-data-variance {args.shift_data_variance:g}: pass a variance > 0")
    if args.variance is not None and args.solver != "ddpm":
        raise ValueError("--variance sets the noise of the ddpm solver: add --solver ddpm")
    if args.grid is not None and args.shards is not None:
        raise ValueError("--grid draws the samples of one file: use it without --shards")
    if args.shards is not None:
        check_output_folder("--shards", args.shards)
    elif distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        raise ValueError(
            "under torchrun the ranks share the work by shards: pass --shards DIR (each rank "
            "writes its own shards into DIR)"
        )
    else:
        check_output_file("--out", args.out, suffixes=(".npz",), example="samples.npz")
        png = args.out.with_suffix(".png")
        if not args.no_png and png.is_dir():
            raise ValueError(
                f"--out {args.out}: its picture would go to {png}, which is a folder: choose "
                "another --out, or pass --no-png"
            )
    if args.grid is not None:
        check_output_file("--grid", args.grid, suffixes=(".png",), example="grid.png")
    if args.vae is not None:
        check_input("--vae", args.vae, "folder", "VAE folder")


def check_against_model(args: argparse.Namespace, model: Any, shape: tuple[int, ...]) -> None:
    """What depends on the model, before any sampling: --label among its classes, and n
    samples of its shape (kept in memory unless --shards) fitting in this machine's memory."""
    num_classes = getattr(model, "num_classes", None)
    if args.label is not None and not num_classes:
        raise ValueError(f"--label {args.label}: {args.model} has no classes; drop --label")
    if args.label is not None and not 0 <= args.label < num_classes:
        raise ValueError(
            f"--label {args.label}: {args.model} has classes 0..{num_classes - 1}; pass one of them"
        )
    size = math.prod(shape)
    per_sample = 16  # the labels, ours and the sampler's copy
    if args.shards is None:
        per_sample += 16 * size  # the batches and the joined result (and an unguided panel)
        if args.vae is not None and len(shape) == 3:
            per_sample += 2 * 3 * 64 * shape[1] * shape[2]  # decoded uint8 images, 8x larger
    _check_samples_fit(args, per_sample, f"samples of shape {list(shape)}")


def _check_samples_fit(args: argparse.Namespace, per_sample: int, what: str) -> None:
    kept = "written in shards" if args.shards is not None else "kept in memory"
    fix = "" if args.shards is not None else ", or write them to disk in parts with --shards DIR"
    check_memory("--n", args.n, lambda n: n * per_sample, f"{what} {kept}", fix)


def run(args: argparse.Namespace) -> int:
    check(args)
    device = distributed.rank_device(resolve_device(args.device))
    if args.shards is not None:  # under torchrun: join its process group (else: one process)
        distributed.init_from_environment(device)
    try:
        return _run(args, device)
    finally:
        distributed.finish()


def _run(args: argparse.Namespace, device: torch.device) -> int:
    from ..vae import VAE, image_grid, to_uint8

    model, reference = load_model_option(args.model)
    model.to(device)
    num_classes = getattr(model, "num_classes", None)
    options = _sampler_options(args)
    sampler = Sampler(
        model, args.steps, cfg_scale=args.cfg_scale, nag_scale=args.nag_scale, **options
    )
    vae, shape = None, sampler.plan.resolve_shape()
    check_against_model(args, model, shape)
    if args.label is not None:
        labels = torch.full((args.n,), args.label, dtype=torch.long)
    elif num_classes:
        labels = torch.arange(args.n) % num_classes
    else:
        labels = None
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
        from ..shards import sample_to_disk

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
        ranks = distributed.current()
        if not ranks.is_main:
            return 0
        on = f" on {ranks.world_size} ranks" if ranks.distributed else ""
        print(
            f"nag_engine {__version__}: {args.n} samples of {args.model} in {len(paths)} "
            f"{args.shard_format} shards under {args.shards}{on} ({seconds:.1f} s{decoded}; "
            "run the same command again to finish an interrupted run)"
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
