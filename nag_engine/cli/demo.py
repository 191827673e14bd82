"""`nag-engine demo`: baseline / CFG / NAG / CFG+NAG on the shipped models, one picture per
model and a table of quality figures."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

from ..images import add_title, atomic_write_bytes, write_png
from ..sampler import Sampler
from ..solvers import SOLVERS
from .common import (
    check_count,
    check_memory,
    check_output_folder,
    check_seed_option,
    check_steps_option,
    finite_float,
    picture,
    print_table,
    reference_samples,
    resolve_model,
    whole_number,
)

DEMO_SETTINGS = (
    ("baseline", 1.0, 0.0),
    ("cfg", None, 0.0),
    ("nag", 1.0, None),
    ("cfg+nag", None, None),
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `demo` command and its options."""
    demo = commands.add_parser(
        "demo",
        help="baseline / CFG / NAG / CFG+NAG on the shipped models, side by side",
        description="Loads the shipped toy2d and digits checkpoints, samples each with the same "
        "seed under baseline, CFG, NAG and CFG+NAG, writes OUT/demo_<model>.png and prints "
        "quality figures (and OUT/demo_metrics.json).",
    )
    demo.add_argument("--out", type=Path, default=Path("out"), help="folder for the pictures")
    demo.add_argument("--steps", type=whole_number, default=24)
    demo.add_argument("--solver", default="heun", choices=tuple(SOLVERS))
    demo.add_argument("--cfg-scale", type=finite_float, default=2.0)
    demo.add_argument("--nag-scale", type=finite_float, default=0.5)
    demo.add_argument("--n-toy", type=whole_number, default=2000, help="samples for toy2d")
    demo.add_argument("--n-digits", type=whole_number, default=500, help="samples for digits")
    demo.add_argument("--seed", type=whole_number, default=0)


# the files the demo writes in --out
OUTPUTS = ("demo_toy2d.png", "demo_digits.png", "demo_metrics.json")


def _need(n: int, size: int, pairwise: bool) -> int:
    """Bytes (about) of n samples of `size` numbers under the four settings, their labels, the
    metrics' float64 copies, and for toy2d the n x n distance matrices of the energy distance."""
    return n * (4 * 4 * size + 16 * size + 16) + (16 * n * n if pairwise else 0)


def check(args: argparse.Namespace, sizes: Optional[dict[str, int]] = None) -> None:
    """The options, before any model is loaded: step and sample counts (and that they fit in
    memory, assuming samples of one number until `sizes` gives each model's), the seed, and the
    --out folder and the files it gets."""
    check_steps_option(args.steps)
    check_seed_option(args.seed)
    for option, n, name in (
        ("--n-toy", args.n_toy, "toy2d"),
        ("--n-digits", args.n_digits, "digits"),
    ):
        check_count(option, n)
        size = (sizes or {}).get(name, 1)
        what = f"{name} samples and their metrics" + ("" if sizes else " (at the least)")
        check_memory(option, n, lambda v, s=size, p=name == "toy2d": _need(v, s, p), what)
    out = Path(args.out)
    check_output_folder("--out", out, files=OUTPUTS)


def _toy_metrics(x, labels, mixture, seed):
    from ..analysis.metrics import energy_distance, mode_coverage

    real = reference_samples(mixture, labels, seed)
    comp = mixture.component_of(x)
    return {
        "energy_dist": energy_distance(x, real),
        "log_p_data": float(mixture.log_prob(x, 0.0).mean()),
        "in_class": float((mixture.classes[comp] == labels).double().mean()),
        "modes_covered": mode_coverage(comp, mixture.means.shape[0]),
    }


def _digit_metrics(x, labels, data, classifier):
    from ..analysis.metrics import frechet_distance

    flat = x.flatten(1).clamp(-1, 1).numpy()
    accuracy = float((classifier.predict(flat) == labels.numpy()).mean())
    return {
        "FD_pixels": frechet_distance(x.flatten(1), data.x.flatten(1)),
        "class_accuracy": accuracy,
    }


def run(args: argparse.Namespace) -> int:
    from ..presets import SHIPPED_DENOISERS

    check(args)
    out = Path(args.out)
    rows = []
    started = time.perf_counter()
    loaded = {name: resolve_model(name) for name in SHIPPED_DENOISERS}
    sizes = {name: math.prod(Sampler(m, 1).plan.resolve_shape()) for name, (m, _) in loaded.items()}
    check(args, sizes)  # again, with the models' sample sizes, before any sampling
    for name, (model, reference) in loaded.items():
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
    print_table(rows)
    atomic_write_bytes(out / "demo_metrics.json", json.dumps(rows, indent=2).encode())
    print(f"wrote {out / 'demo_metrics.json'}; {time.perf_counter() - started:.1f} s in all")
    return 0
