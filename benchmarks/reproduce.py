"""The reproduction report: noise shift and sample quality under NAG and its competitors.

For three models -- the exact 32-dimensional Gaussian mixture used as its own denoiser
(``gmm32-exact``: no learning error, only the solver's), the shipped 2-D toy model (``toy2d``,
trained on the 8-mode ring) and the shipped digits DiT (``digits``) -- at several step counts,
with an ODE solver (Euler) and an SDE solver (Euler-Maruyama), this measures for every setting
of `nag_engine.analysis.settings` (none, CFG, classifier-free NAG, CFG+NAG, classifier-based NAG,
epsilon scaling, time shift):

* the mean noise shift: the estimated noise level of the sampler's states minus that of
  forward-process samples at the same nominal t, averaged over the steps, and over the steps
  with t <= 0.2 (where the paper locates the shift), read by the exact posterior (mixture data)
  or by the shipped regressor head (digits);
* sample quality: energy distance to exact data and mean exact log-likelihood (mixtures),
  FD-digits, class accuracy and k-NN precision/recall (digits);

and sweeps ``nag_scale``. It writes its section of ``RESULTS.md`` (tables plus the command that
produced them; other sections of the file are kept), ``reproduce.json`` and the noise-shift
figures (``noise_shift_<model>.png``, with the per-step reports they draw as
``noise_shift_<model>.json``) into the output folder.

    python benchmarks/reproduce.py                 # the full report (CPU: ~30 min)
    python benchmarks/reproduce.py --quick         # a smoke run: small n, two step counts
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from nag_engine import Sampler
from nag_engine.analysis.metrics import energy_distance, sliced_wasserstein
from nag_engine.analysis.noise_shift import NoiseShiftReport, measure_noise_shift
from nag_engine.analysis.settings import (
    DataSetReference,
    Scales,
    data_variance,
    resolve_estimator,
    setting_options,
)
from nag_engine.analysis.shift_figure import describe_reports, shift_bound, shift_figure
from nag_engine.cli import resolve_model
from nag_engine.images import atomic_write_bytes, write_figure
from nag_engine.models import GaussianMixtureModel

SETTINGS = ("none", "cfg", "nag", "cfg+nag", "cnag", "eps-scaling", "time-shift")
SOLVERS = ("euler", "euler-maruyama")
MODELS = ("gmm32-exact", "toy2d", "digits")


def quality(model_name: str, x: torch.Tensor, labels: torch.Tensor, reference: Any) -> dict:
    """Quality figures of samples x drawn for class labels."""
    if isinstance(reference, GaussianMixtureModel):
        gen = torch.Generator().manual_seed(12345)
        real = reference.sample_data(len(x), y=labels, generator=gen)[0].float()
        return {
            "energy": energy_distance(x, real),
            "sliced_w2": sliced_wasserstein(x, real),
            "log_lik": float(reference.log_prob(x.double(), 0.0, labels).mean()),
        }
    from nag_engine.analysis.digit_features import (
        digit_accuracy,
        digit_precision_recall,
        fd_digits,
    )

    precision, recall = digit_precision_recall(x)
    return {
        "fd_digits": fd_digits(x),
        "accuracy": digit_accuracy(x, labels),
        "precision": precision,
        "recall": recall,
    }


def run_one(
    model: torch.nn.Module,
    model_name: str,
    estimator: Any,
    reference: Any,
    steps: int,
    solver: str,
    setting: str,
    scales: Scales,
    n: int,
    seed: int,
) -> tuple[dict, NoiseShiftReport]:
    """Measure one configuration: noise shift along the way and quality of the end samples."""
    sampler = Sampler(model, steps, solver=solver, **setting_options(setting, scales, estimator))
    labels = torch.arange(n) % model.num_classes
    final: list[torch.Tensor] = []

    def keep_final(info) -> None:
        if info.step == steps - 1:
            final.append(info.x_next.clone())

    start = time.perf_counter()
    report = measure_noise_shift(
        sampler, estimator, n, y=labels, seed=seed, reference=reference, callback=keep_final
    )
    seconds = time.perf_counter() - start
    x = torch.cat(final)
    late = report.t <= 0.2
    if not late.any():  # a coarse grid: the last step stands for the late ones
        late[-1] = True
    row = {
        "model": model_name,
        "steps": steps,
        "solver": solver,
        "setting": setting,
        "nag_scale": sampler.guidance.nag_scale,
        "shift": report.mean_shift,
        "shift_late": float(np.mean(report.shift[late])),
        "shift_late_se": float(np.sqrt(np.mean(report.shift_se[late] ** 2) / late.sum())),
        "seconds": seconds,
        **quality(model_name, x, labels, reference),
    }
    return row, report


BEGIN, END = "<!-- reproduce.py: begin -->", "<!-- reproduce.py: end -->"


def replace_section(path: Path, body: str, marker: str = "reproduce.py") -> str:
    """The text of `path` with the section between `marker`'s begin / end comments replaced
    by `body` (appended when there is none), so other benchmarks' tables in the file survive."""
    begin, end = f"<!-- {marker}: begin -->", f"<!-- {marker}: end -->"
    section = f"{begin}\n{body}\n{end}"
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        return head + section + rest.split(end, 1)[1]
    return (old.rstrip() + "\n\n" if old.strip() else "") + section + "\n"


def markdown_table(rows: list[dict], columns: list[str], formats: dict[str, str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(format(v, formats[c]) if c in formats and v != "" else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quality_columns(model_name: str) -> tuple[list[str], dict[str, str]]:
    base = ["steps", "solver", "setting", "shift", "shift_late ± se"]
    fmt = {"shift": "+.4f", "shift_late": "+.4f", "nag_scale": ".2f"}
    if model_name == "digits":
        extra = ["fd_digits", "accuracy", "precision", "recall"]
        fmt.update({"fd_digits": ".3f", "accuracy": ".3f", "precision": ".3f", "recall": ".3f"})
    else:
        extra = ["energy", "sliced_w2", "log_lik"]
        fmt.update({"energy": ".4f", "sliced_w2": ".4f", "log_lik": ".3f"})
    return base + extra, fmt


def measure(args: argparse.Namespace) -> dict:
    """Run every configuration; returns the payload that `render` turns into markdown (also
    written as reproduce.json) and writes the figures."""
    step_counts = [int(s) for s in args.steps.split(",")]
    sweep = [float(s) for s in args.sweep.split(",")]
    out = args.out
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    rows: list[dict] = []
    sweep_rows: list[dict] = []
    estimators: dict[str, str] = {}
    figures: dict[str, dict] = {}
    for model_name in args.models.split(","):
        model, reference = resolve_model(model_name)
        estimator = resolve_estimator("auto", model_name, model, reference)
        estimators[model_name] = type(estimator).__name__
        if not isinstance(reference, GaussianMixtureModel):
            reference = DataSetReference(reference)
        scales = Scales(data_variance=data_variance(reference) or 1.0)
        n = args.n_digits if model_name == "digits" else args.n_mixture
        common = (model, model_name, estimator, reference)
        figure_reports: dict[str, NoiseShiftReport] = {}
        for steps in step_counts:
            for solver in SOLVERS:
                for setting in SETTINGS:
                    row, report = run_one(*common, steps, solver, setting, scales, n, args.seed)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if steps == args.sweep_steps and solver == "euler":
                        figure_reports[setting] = report
        for scale in sweep:
            swept = Scales(**{**scales.__dict__, "nag_scale": scale})
            for setting in ("nag", "cfg+nag"):
                row, _ = run_one(*common, args.sweep_steps, "euler", setting, swept, n, args.seed)
                sweep_rows.append(row)
                print(json.dumps(row), flush=True)
        if figure_reports:
            figures[model_name] = write_shift_figure(out, model_name, figure_reports)
    return {
        "command": "python benchmarks/reproduce.py " + " ".join(args.argv),
        "seconds": time.perf_counter() - started,
        "torch": torch.__version__,
        "scales": json.loads(json.dumps(Scales().__dict__)),  # as it reads back
        "n_mixture": args.n_mixture,
        "n_digits": args.n_digits,
        "sweep_steps": args.sweep_steps,
        "estimators": estimators,
        "figures": figures,
        "rows": rows,
        "sweep": sweep_rows,
    }


def write_shift_figure(out: Path, model_name: str, reports: dict[str, NoiseShiftReport]) -> dict:
    """Write OUT/noise_shift_<model>.png (`shift_figure` of the reports, one per setting) and
    the reports it draws as OUT/noise_shift_<model>.json (so `--render-only` can redraw it);
    returns the figure's entry of the payload."""
    data = {name: report.to_dict() for name, report in reports.items()}
    atomic_write_bytes(out / f"noise_shift_{model_name}.json", json.dumps(data).encode())
    title = f"Noise shift of {model_name}: {describe_reports(reports)}"
    write_figure(out / f"noise_shift_{model_name}.png", shift_figure(reports, title=title))
    return {"settings": list(reports), "bound": shift_bound(reports)}


def redraw_figures(out: Path, payload: dict) -> None:
    """Redraw the noise-shift figures of the payload from the reports saved beside them."""
    for model_name in payload["figures"]:
        path = out / f"noise_shift_{model_name}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            reports = {k: NoiseShiftReport.from_json(json.dumps(v)) for k, v in data.items()}
            write_shift_figure(out, model_name, reports)


def render(payload: dict) -> str:
    """The markdown section of RESULTS.md for a payload of `measure`."""
    for row in payload["rows"] + payload["sweep"]:
        row["shift_late ± se"] = f"{row['shift_late']:+.4f} ± {row['shift_late_se']:.4f}"
    text = [
        "## Reproduction report: noise shift and quality (tables written by reproduce.py)",
        "",
        f"Produced by `{payload['command'].strip()}` in {payload['seconds']:.0f} s on CPU "
        f"(torch {payload['torch']}); all numbers are from this one run. Scales: "
        f"{payload['scales']}. Samples: {payload['n_mixture']} per mixture run, "
        f"{payload['n_digits']} per digits run, classes in turn, the same seed in every setting.",
        "",
        "Columns: `shift` = mean over steps of (estimated noise level of the sampler's states "
        "- estimated level of forward-process samples at the same nominal t); > 0 means the "
        "states look noisier than they should. `shift_late` = the same over the steps with "
        "t <= 0.2, with its standard error. Estimators: "
        + ", ".join(f"{k}: {v}" for k, v in payload["estimators"].items())
        + ".",
        "",
    ]
    for model_name in payload["estimators"]:
        columns, fmt = quality_columns(model_name)
        model_rows = [r for r in payload["rows"] if r["model"] == model_name]
        text += [f"### {model_name}", "", markdown_table(model_rows, columns, fmt), ""]
        text += [
            f"nag_scale sweep ({payload['sweep_steps']} Euler steps):",
            "",
            markdown_table(
                [r for r in payload["sweep"] if r["model"] == model_name],
                ["setting", "nag_scale"] + columns[3:],
                fmt,
            ),
            "",
        ]
        figure = payload["figures"].get(model_name)
        if figure:
            text += [
                f"![noise shift, {model_name}](noise_shift_{model_name}.png)",
                "",
                f"*Noise shift of {model_name}, {payload['sweep_steps']} Euler steps, settings "
                f"{', '.join(figure['settings'])} (one colour each). Right: the shift of every "
                "setting against nominal t (1 on the left, 0 on the right, as sampling runs) "
                "with a ±2 SE band. Left: estimated noise level of sampler states (solid) and "
                "forward-process samples (dashed) against t. Per-step data: "
                f"noise_shift_{model_name}.json.*",
                "",
            ]
    return "\n".join(text)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small n, steps 10 and 25")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", default="10,25,50,100")
    parser.add_argument("--sweep", default="0.25,0.5,1.0,2.0", help="nag_scale values")
    parser.add_argument("--sweep-steps", type=int, default=25)
    parser.add_argument("--n-mixture", type=int, default=2000)
    parser.add_argument("--n-digits", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite RESULTS.md from OUT/reproduce.json and redraw the noise-shift figures from "
        "OUT/noise_shift_<model>.json",
    )
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.quick:
        args.steps, args.n_mixture, args.n_digits, args.sweep = "10,25", 400, 200, "0.5,1.0"
    args.out.mkdir(parents=True, exist_ok=True)
    data_path = args.out / "reproduce.json"
    if args.render_only:
        payload = json.loads(data_path.read_text())
        redraw_figures(args.out, payload)
    else:
        payload = measure(args)
        atomic_write_bytes(data_path, json.dumps(payload, indent=1).encode())
    path = args.out / "RESULTS.md"
    atomic_write_bytes(path, replace_section(path, render(payload)).encode())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
