"""`nag-engine analyze`: measure the noise shift of the sampler's states per guidance setting;
write a figure, JSON and CSV and print a table."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..images import atomic_write_bytes, write_figure
from ..sampler import Sampler
from ..solvers import SOLVERS
from .common import (
    check_count,
    check_input,
    check_memory,
    check_output_folder,
    check_seed_option,
    check_steps_option,
    finite_float,
    load_model_option,
    one_line,
    print_table,
    whole_number,
)

ESTIMATORS = ("auto", "exact", "head", "implicit")  # or a path
OUTPUTS = ("noise_shift.png", "noise_shift.json", "noise_shift.csv")  # written in --out


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `analyze` command and its options."""
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
    analyze.add_argument("--steps", type=whole_number, default=25)
    analyze.add_argument("--solver", default="euler", choices=tuple(SOLVERS))
    analyze.add_argument("--n", type=whole_number, default=1000)
    analyze.add_argument("--cfg-scale", type=finite_float, default=2.0)
    analyze.add_argument("--nag-scale", type=finite_float, default=0.5)
    analyze.add_argument("--classifier-nag-scale", type=finite_float, default=0.1)
    analyze.add_argument(
        "--eps-scaling", type=finite_float, nargs=2, default=(0.0, 1.005), metavar=("K", "B")
    )
    analyze.add_argument("--shift-window", type=finite_float, default=0.05)
    analyze.add_argument("--seed", type=whole_number, default=0)
    analyze.add_argument("--batch-size", type=whole_number, default=None)
    analyze.add_argument("--out", type=Path, default=Path("out/analyze"))


def _need(n: int, steps: int, size: int) -> int:
    """Bytes (about) that measuring n samples of `size` numbers over `steps` steps holds: labels,
    the per-step levels of both sides (float64, with copies for the quantiles), the samples and
    the forward-process draws (float64)."""
    return n * (16 + 41 * steps + 48 * size)


def check(args: argparse.Namespace) -> list[str]:
    """The options, before any model is loaded: counts (and that they fit in memory, assuming
    samples of one number), the seed, the settings (returned as a list), the estimator's path and
    the --out folder and the files it gets."""
    from ..analysis.settings import SETTINGS

    check_count("--n", args.n)
    check_steps_option(args.steps)
    check_memory("--n", args.n, lambda n: _need(n, args.steps, 1), "the measurements")
    check_seed_option(args.seed)
    if args.batch_size is not None:
        check_count("--batch-size", args.batch_size)
    settings = [name.strip() for name in args.settings.split(",") if name.strip()]
    if not settings:
        raise ValueError(
            f"--settings {args.settings!r} names no setting: pass a comma-separated list such as "
            "none,cfg,nag,cfg+nag"
        )
    for name in settings:
        if name not in SETTINGS:
            raise ValueError(
                f"--settings: unknown setting {name!r}: choose from {', '.join(SETTINGS)}"
            )
    if args.estimator not in ESTIMATORS:
        check_input("--estimator", Path(args.estimator), "file", "noise-level head checkpoint")
    out = Path(args.out)
    check_output_folder("--out", out, files=OUTPUTS)
    return settings


def run(args: argparse.Namespace) -> int:
    from ..analysis.noise_shift import measure_noise_shift
    from ..analysis.settings import (
        DataSetReference,
        Scales,
        data_variance,
        resolve_estimator,
        setting_options,
    )
    from ..analysis.shift_figure import shift_figure
    from ..models import GaussianMixtureModel

    settings = check(args)
    model, reference = load_model_option(args.model)
    try:
        estimator = resolve_estimator(args.estimator, args.model, model, reference)
    except (ValueError, OSError) as err:  # named by the option, unless the message does
        text = one_line(err)
        named = text if "--estimator" in text else f"--estimator {args.estimator}: {text}"
        raise ValueError(named) from err
    if reference is not None and not isinstance(reference, GaussianMixtureModel):
        reference = DataSetReference(reference)
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
    size = math.prod(next(iter(samplers.values())).plan.resolve_shape())
    what = f"the measurements of samples of {size} numbers"
    check_memory("--n", args.n, lambda n: _need(n, args.steps, size), what)
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
    print_table(rows)
    print(
        f"wrote {out / 'noise_shift.png'} (left: estimated level vs nominal t, sampler states "
        "solid, forward samples dashed; right: the shift of every setting vs t with ±2 SE "
        "bands), noise_shift.json, noise_shift.csv"
    )
    return 0
