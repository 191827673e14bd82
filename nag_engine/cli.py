"""The `nag-engine` command.

    nag-engine sample [--model ring] [--n 4000] [--steps 50] [--solver euler]
                      [--cfg-scale 1.0] [--nag-scale 0.0] [--out out/samples.npz]

Until trained checkpoints ship, the built-in models are exact Gaussian mixtures (the ground truth
the test suite uses): `ring`, 8 modes on a circle in 2-D in 4 classes, and `gmm32`, 8 modes in
32 dimensions. Writes the samples (NPZ) and, for 2-D models, a picture of exact data beside the
samples (PNG), and prints how close the samples are to the data.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import __version__
from .images import atomic_write_bytes, density_image, encode_png, side_by_side
from .models import GaussianMixtureModel, random_mixture, ring_mixture
from .sampler import Sampler
from .solvers import SOLVERS

BUILTIN_MODELS = ("ring", "gmm32")


def build_model(name: str, schedule: str, prediction: str) -> GaussianMixtureModel:
    """A built-in exact model by name."""
    if name == "ring":
        return ring_mixture(8, num_classes=4, schedule=schedule, prediction=prediction)
    if name == "gmm32":
        return random_mixture(32, 8, num_classes=4, schedule=schedule, prediction=prediction)
    raise ValueError(f"unknown model {name!r}: choose one of {BUILTIN_MODELS}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nag-engine", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"nag_engine {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("sample", help="draw samples and write them with a picture")
    p.add_argument("--model", default="ring", choices=BUILTIN_MODELS)
    p.add_argument("--schedule", default="linear", choices=("linear", "vp", "vp-cosine"))
    p.add_argument("--prediction", default="velocity", choices=("velocity", "eps", "x0"))
    p.add_argument("--n", type=int, default=4000, help="number of samples")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--solver", default="euler", choices=tuple(SOLVERS))
    p.add_argument("--cfg-scale", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--nag-scale", type=float, default=0.0, help="0.0 = off")
    p.add_argument(
        "--label", type=int, default=None, help="class of every sample (default: classes in turn)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("out/samples.npz"), help="NPZ file to write")
    p.add_argument("--no-png", action="store_true", help="skip the picture")
    p.add_argument("--no-progress", action="store_true")
    return parser


def run_sample(args: argparse.Namespace) -> int:
    model = build_model(args.model, args.schedule, args.prediction)
    sampler = Sampler(
        model, args.steps, solver=args.solver, cfg_scale=args.cfg_scale, nag_scale=args.nag_scale
    )
    labels = args.label if args.label is not None else torch.arange(args.n) % model.num_classes
    start = time.perf_counter()
    x = sampler.sample(
        args.n, y=labels, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress
    )
    seconds = time.perf_counter() - start
    y = torch.as_tensor(labels).expand(args.n)

    data, _ = model.sample_data(args.n, y=y, generator=torch.Generator().manual_seed(args.seed))
    buffer = io.BytesIO()
    np.savez(buffer, samples=x.numpy(), labels=y.numpy())
    atomic_write_bytes(args.out, buffer.getvalue())
    print(
        f"nag_engine {__version__}: {args.n} samples of '{args.model}' in {args.steps} "
        f"{args.solver} steps, cfg_scale={args.cfg_scale}, nag_scale={args.nag_scale}"
    )
    print(f"  time {seconds:.2f} s ({args.n / seconds:.0f} samples/s)")
    print(
        f"  mean log p_data: samples {float(model.log_prob(x, 0.0, y).mean()):.3f}, "
        f"exact data {float(model.log_prob(data, 0.0, y).mean()):.3f}"
    )
    print(f"  wrote {args.out}")
    if model.means.shape[1] == 2 and not args.no_png:
        png = args.out.with_suffix(".png")
        bound = float(model.means.abs().max()) + 4 * float(model.variances.sqrt().max())
        panels = [density_image(data, (-bound, bound))]
        caption = "exact data | samples"
        if sampler.guidance.uses_cfg or sampler.guidance.uses_nag:
            plain = Sampler(model, args.steps, solver=args.solver)
            unguided = plain.sample(args.n, y=labels, seed=args.seed, progress=False)
            panels.append(density_image(unguided, (-bound, bound)))
            caption = "exact data | unguided | guided"
        panels.append(density_image(x, (-bound, bound)))
        atomic_write_bytes(png, encode_png(side_by_side(*panels)))
        print(f"  wrote {png} ({caption}, same seed)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `nag-engine` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "sample":
            return run_sample(args)
    except (ValueError, TypeError) as err:
        print(f"nag-engine: error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
