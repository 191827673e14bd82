"""The reproduction report: noise shift and sample quality under NAG and its competitors.

For three models -- the exact 32-dimensional Gaussian mixture used as its own denoiser
(``gmm32-exact``: no learning error, only the solver's), the shipped 2-D toy model (``toy2d``,
trained on the 8-mode ring) and the shipped digits DiT (``digits``) -- at several step counts,
with an ODE solver (Euler) and an SDE solver (Euler-Maruyama), this measures for every setting
of `nag_engine.analysis.settings` (none, CFG, classifier-free NAG, CFG+NAG, classifier-based NAG,
epsilon scaling, time shift), with `--seeds` sampling seeds each (mean +- standard error over
seeds):

* the mean noise shift: the estimated noise level of the sampler's states minus that of
  forward-process samples at the same nominal t, averaged over the steps, and over the steps
  with t <= 0.2 (where the paper locates the shift; each sample's level averaged over those
  steps first), read by the exact posterior's mean (mixture data) or by the shipped regressor
  head (digits); for mixtures also a second reading, the level that maximises the batch's
  exact likelihood, and a flag where the two readings' late shifts differ in sign;
* sample quality: energy distance and sliced Wasserstein distance to exact data and mean exact
  log-likelihood (mixtures), FD-digits, class accuracy and k-NN precision/recall (digits), each
  beside its floor: the same metric for exact samples of the same size (mixtures) or for real
  digits against the disjoint rest of the data set (digits);

and sweeps ``nag_scale``. It writes its section of ``RESULTS.md`` (tables plus the command that
produced them; other sections of the file are kept), ``reproduce.json``, the noise-shift
figures (``noise_shift_<model>.png``, with the per-step reports they draw as
``noise_shift_<model>.json``) and the figures of the per-sample level's distribution at a few
nominal t for the baseline and NAG (``noise_level_density_<model>.png``) into the output folder.

    python benchmarks/reproduce.py                 # the full report (2 CPU cores: hours)
    python benchmarks/reproduce.py --quick         # a smoke run: small n, two step counts, 1 seed
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from nag_engine import Sampler
from nag_engine.analysis.level_density import level_density_figure
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
LATE_T_MAX = 0.2
DENSITY_TIMES = (0.8, 0.5, 0.2, 0.05)  # nominal t of the level-density figure's panels
DENSITY_SETTINGS = ("none", "nag")  # the baseline and NAG
FLOOR_DRAWS = 4  # exact sample sets (mixtures) or real subsets (digits) per floor
FLOOR_SEED = 1000  # floor draws use seeds FLOOR_SEED + k, none of the sampling seeds
REFERENCE_SEED = 12345  # the exact reference set the mixtures' quality is measured against
DEFAULTS = {"steps": "10,25,50,100", "n_mixture": 2000, "n_digits": 500, "seeds": 2}


# ----------------------------------------------------------------------------- quality
def mixture_quality(x: torch.Tensor, labels: torch.Tensor, mixture: GaussianMixtureModel) -> dict:
    """Energy and sliced Wasserstein distance of x to exact data drawn for the same labels
    (always the same set, seeded REFERENCE_SEED) and the mean exact log-likelihood of x."""
    gen = torch.Generator().manual_seed(REFERENCE_SEED)
    real = mixture.sample_data(len(x), y=labels, generator=gen)[0].float()
    return {
        "energy": energy_distance(x, real),
        "sliced_w2": sliced_wasserstein(x, real),
        "log_lik": float(mixture.log_prob(x.double(), 0.0, labels).mean()),
    }


def digit_quality(
    x: torch.Tensor, labels: torch.Tensor, reference: Optional[torch.Tensor] = None
) -> dict:
    """FD-digits, accuracy for the labels and k-NN precision / recall of digit images x against
    `reference` (default: all 1797 real digits)."""
    from nag_engine.analysis.digit_features import (
        digit_accuracy,
        digit_precision_recall,
        fd_digits,
    )

    precision, recall = digit_precision_recall(x, reference=reference)
    return {
        "fd_digits": fd_digits(x, reference=reference),
        "accuracy": digit_accuracy(x, labels),
        "precision": precision,
        "recall": recall,
    }


def quality(model_name: str, x: torch.Tensor, labels: torch.Tensor, reference: Any) -> dict:
    """Quality figures of samples x drawn for class labels."""
    if isinstance(reference, GaussianMixtureModel):
        return mixture_quality(x, labels, reference)
    return digit_quality(x, labels)


def floor_draws(reference: Any, labels: torch.Tensor) -> list[dict]:
    """The quality figures a perfect sampler would get, FLOOR_DRAWS times.

    Mixtures: exact samples of the same size and labels, drawn with seeds FLOOR_SEED + k (none
    of the sampling seeds), against the same reference set. Digits: class-balanced subsets of
    the real digits of the same size and labels against the disjoint rest of the data set (a
    reference of 1797 - n images instead of all 1797, so the floor is, if anything, a little
    high)."""
    draws = []
    for k in range(FLOOR_DRAWS):
        gen = torch.Generator().manual_seed(FLOOR_SEED + k)
        if isinstance(reference, GaussianMixtureModel):
            exact = reference.sample_data(len(labels), y=labels, generator=gen)[0].float()
            draws.append(mixture_quality(exact, labels, reference))
        else:
            subset, subset_labels, rest = real_subset(reference.x, reference.labels, labels, gen)
            draws.append(digit_quality(subset, subset_labels, reference=rest))
    return draws


def real_subset(
    images: torch.Tensor, classes: torch.Tensor, labels: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(subset, its classes, the rest of the images): as many random real images of each class
    as `labels` asks for, and every image not chosen."""
    picks = []
    for c in torch.unique(labels).tolist():
        pool = torch.nonzero(classes == c).flatten()
        count = int((labels == c).sum())
        picks.append(pool[torch.randperm(len(pool), generator=gen)[:count]])
    index = torch.cat(picks)
    rest = torch.ones(len(images), dtype=torch.bool)
    rest[index] = False
    return images[index], classes[index], images[rest]


# ----------------------------------------------------------------------------- runs
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
    keep_levels_at: tuple[float, ...] = (),
) -> tuple[dict, NoiseShiftReport]:
    """Measure one configuration with one seed: noise shift along the way (both readings
    where the estimator has a likelihood) and quality of the end samples."""
    sampler = Sampler(model, steps, solver=solver, **setting_options(setting, scales, estimator))
    labels = torch.arange(n) % model.num_classes
    final: list[torch.Tensor] = []

    def keep_final(info) -> None:
        if info.step == steps - 1:
            final.append(info.x_next.clone())

    start = time.perf_counter()
    report = measure_noise_shift(
        sampler,
        estimator,
        n,
        y=labels,
        seed=seed,
        reference=reference,
        callback=keep_final,
        late_t_max=LATE_T_MAX,
        keep_levels_at=keep_levels_at,
    )
    seconds = time.perf_counter() - start
    row = {
        "seed": seed,
        "nag_scale": sampler.guidance.nag_scale,
        "shift": report.mean_shift,
        "shift_late": report.late_shift,
        "shift_late_se": report.late_shift_se,
        "ml_shift": report.mean_ml_shift,
        "ml_shift_late": report.late_ml_shift,
        "ml_shift_late_se": report.late_ml_shift_se,
        "seconds": seconds,
        **quality(model_name, torch.cat(final), labels, reference),
    }
    return row, report


SUMMARISED = (
    "shift",
    "shift_late",
    "ml_shift",
    "ml_shift_late",
    "energy",
    "sliced_w2",
    "log_lik",
    "fd_digits",
    "accuracy",
    "precision",
    "recall",
)


def mean_and_se(values: list[float]) -> tuple[float, Optional[float]]:
    """Mean and standard error of the mean (ddof 1; None for a single value)."""
    data = np.asarray(values, np.float64)
    se = float(data.std(ddof=1) / math.sqrt(len(data))) if len(data) > 1 else None
    return float(data.mean()), se


def summarise(per_seed: list[dict]) -> dict:
    """One row from the rows of several seeds: every figure of SUMMARISED that they hold as
    its mean over seeds plus `<name>_se` (standard error over seeds); the within-run standard
    errors of the late shifts pooled into the error of the seed mean (`<name>_se_within`)."""
    row: dict[str, Any] = {"seeds": [r["seed"] for r in per_seed]}
    for name in SUMMARISED:
        values = [r.get(name) for r in per_seed]
        if values and all(v is not None for v in values):
            row[name], row[f"{name}_se"] = mean_and_se(values)
    for name in ("shift_late", "ml_shift_late"):
        within = [r.get(f"{name}_se") for r in per_seed]
        if all(v is not None for v in within):
            row[f"{name}_se_within"] = float(np.sqrt(np.sum(np.square(within))) / len(within))
    row["seconds"] = float(sum(r["seconds"] for r in per_seed))
    row["per_seed"] = per_seed
    return row


def floor_row(model_name: str, reference: Any, n: int, num_classes: int) -> dict:
    """The floor of every quality figure (mean and standard error over FLOOR_DRAWS draws)."""
    labels = torch.arange(n) % num_classes
    draws = floor_draws(reference, labels)
    row: dict[str, Any] = {"model": model_name, "draws": len(draws)}
    for name in draws[0]:
        row[name], row[f"{name}_se"] = mean_and_se([d[name] for d in draws])
    return row


def run_setting(
    common: tuple,
    steps: int,
    solver: str,
    setting: str,
    scales: Scales,
    n: int,
    seeds: list[int],
    keep_levels_at: tuple[float, ...] = (),
) -> tuple[dict, NoiseShiftReport]:
    """One configuration with every seed: the summarised row and the first seed's report
    (which keeps per-sample levels at `keep_levels_at`)."""
    per_seed, first = [], None
    for k, seed in enumerate(seeds):
        keep = keep_levels_at if k == 0 else ()
        row, report = run_one(*common, steps, solver, setting, scales, n, seed, keep)
        per_seed.append(row)
        first = report if first is None else first
    assert first is not None
    row = {"model": common[1], "steps": steps, "solver": solver, "setting": setting}
    row["nag_scale"] = per_seed[0]["nag_scale"]
    row.update(summarise(per_seed))
    return row, first


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


def markdown_table(
    rows: list[dict], columns: list[str], formats: Optional[dict[str, str]] = None
) -> str:
    """A markdown table of rows (missing cells blank); a column named in `formats` is formatted
    with its format spec, the others as str (cells that are already strings)."""
    formats = formats or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(format(v, formats[c]) if c in formats and v != "" else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def with_se(row: dict, name: str, fmt: str) -> str:
    """A summarised figure as "mean ± se" ("mean" alone without a finite se; "—" if absent)."""
    value = row.get(name)
    if value is None:
        return "—"
    se = row.get(f"{name}_se")
    text = format(value, fmt)
    return text if se is None or not math.isfinite(se) else f"{text} ± {se:.4f}"


def late_cell(row: dict, name: str) -> str:
    """A late shift: mean ± se over seeds, the pooled within-run se in brackets ("edge" where
    a late step's likelihood peaked at an end of the t range searched: no within-run se)."""
    if row.get(name) is None:
        return "—"
    within = row[f"{name}_se_within"]
    bracket = f"{within:.4f}" if math.isfinite(within) else "edge"
    return f"{with_se(row, name, '+.4f')} [{bracket}]"


def signs_cell(row: dict) -> str:
    """ "≠" where the two readings' late shifts differ in sign, "≠ *" where moreover both are
    more than two within-run standard errors from 0; blank where they agree, "—" without the
    likelihood reading."""
    mean, ml = row.get("shift_late"), row.get("ml_shift_late")
    if mean is None or ml is None:
        return "—"
    if np.sign(mean) == np.sign(ml):
        return ""
    clear = abs(mean) > 2 * row["shift_late_se_within"] and (
        abs(ml) > 2 * row["ml_shift_late_se_within"]
    )
    return "≠ *" if clear else "≠"


QUALITY = {
    "mixture": [("energy", ".4f"), ("sliced_w2", ".4f"), ("log_lik", ".3f")],
    "digits": [("fd_digits", ".3f"), ("accuracy", ".3f"), ("precision", ".3f"), ("recall", ".3f")],
}
SHIFT_COLUMNS = ["shift", "late shift, posterior mean", "late shift, max. likelihood", "signs"]


def table_cells(row: dict, kind: str) -> dict:
    """The string cells of one summarised row."""
    cells = {
        "steps": row["steps"],
        "solver": row["solver"],
        "setting": row["setting"],
        "nag_scale": f"{row['nag_scale']:.2f}",
        "shift": with_se(row, "shift", "+.4f"),
        "late shift, posterior mean": late_cell(row, "shift_late"),
        "late shift, max. likelihood": late_cell(row, "ml_shift_late"),
        "signs": signs_cell(row),
    }
    cells.update({name: with_se(row, name, fmt) for name, fmt in QUALITY[kind]})
    return cells


def floor_cells(floor: dict, kind: str, first_column: str) -> dict:
    """The floor row's cells: its name in `first_column`, the quality floors ± se."""
    what = "exact samples" if kind == "mixture" else "real digits vs the rest"
    cells: dict[str, Any] = {first_column: f"**floor** ({what}, {floor['draws']} draws)"}
    cells.update({name: with_se(floor, name, fmt) for name, fmt in QUALITY[kind]})
    return cells


def measure(args: argparse.Namespace) -> dict:
    """Run every configuration; returns the payload that `render` turns into markdown (also
    written as reproduce.json) and writes the figures."""
    step_counts = [int(s) for s in args.steps.split(",")]
    sweep = [float(s) for s in args.sweep.split(",")]
    seeds = [args.seed + k for k in range(args.seeds)]
    out = args.out
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    rows: list[dict] = []
    sweep_rows: list[dict] = []
    floors: dict[str, dict] = {}
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
        floors[model_name] = floor_row(model_name, reference, n, model.num_classes)
        print(json.dumps(floors[model_name]), flush=True)
        common = (model, model_name, estimator, reference)
        figure_reports: dict[str, NoiseShiftReport] = {}
        for steps in step_counts:
            for solver in SOLVERS:
                for setting in SETTINGS:
                    pictured = steps == args.sweep_steps and solver == "euler"
                    keep = DENSITY_TIMES if pictured and setting in DENSITY_SETTINGS else ()
                    row, report = run_setting(
                        common, steps, solver, setting, scales, n, seeds, keep
                    )
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if pictured:
                        figure_reports[setting] = report
        for scale in sweep:
            swept = Scales(**{**scales.__dict__, "nag_scale": scale})
            for setting in ("nag", "cfg+nag"):
                row, _ = run_setting(common, args.sweep_steps, "euler", setting, swept, n, seeds)
                sweep_rows.append(row)
                print(json.dumps(row), flush=True)
        if figure_reports:
            figures[model_name] = write_figures(out, model_name, figure_reports)
    return {
        "command": "python benchmarks/reproduce.py " + " ".join(args.argv),
        "seconds": time.perf_counter() - started,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "scales": json.loads(json.dumps(Scales().__dict__)),  # as it reads back
        "steps": args.steps,
        "n_mixture": args.n_mixture,
        "n_digits": args.n_digits,
        "seeds": seeds,
        "sweep_steps": args.sweep_steps,
        "late_t_max": LATE_T_MAX,
        "estimators": estimators,
        "floors": floors,
        "figures": figures,
        "rows": rows,
        "sweep": sweep_rows,
    }


def rounded(value: Any, digits: int = 6) -> Any:
    """`value` (nested lists / dicts of floats) with floats rounded, to keep JSON files small."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    return value


def write_figures(out: Path, model_name: str, reports: dict[str, NoiseShiftReport]) -> dict:
    """Write OUT/noise_shift_<model>.png (`shift_figure` of the reports, one per setting), the
    reports it draws as OUT/noise_shift_<model>.json (so `--render-only` can redraw it; the kept
    per-sample levels rounded to 6 decimals) and OUT/noise_level_density_<model>.png (the level
    densities of the baseline and NAG); returns the figures' entry of the payload."""
    data = {name: report.to_dict() for name, report in reports.items()}
    for entry in data.values():
        entry["kept_levels"] = rounded(entry["kept_levels"])
    atomic_write_bytes(out / f"noise_shift_{model_name}.json", json.dumps(data).encode())
    title = f"Noise shift of {model_name}: {describe_reports(reports)}"
    write_figure(out / f"noise_shift_{model_name}.png", shift_figure(reports, title=title))
    pictured = {
        density_label(name, reports[name]): reports[name]
        for name in DENSITY_SETTINGS
        if name in reports
    }
    density = bool(pictured) and all(r.kept_levels for r in pictured.values())
    if density:
        first = next(iter(pictured.values()))
        level_density_figure(
            pictured,
            out / f"noise_level_density_{model_name}.png",
            title=f"Estimated noise level of single samples at fixed nominal t, {model_name}: "
            f"{describe_reports(pictured)}, seed {first.meta.get('seed')}",
        )
    return {"settings": list(reports), "bound": shift_bound(reports), "density": density}


def density_label(setting: str, report: NoiseShiftReport) -> str:
    """The legend name of a setting in the level-density figure."""
    if setting == "none":
        return "none (baseline)"
    return f"{setting} (nag_scale {report.meta.get('nag_scale', 0.0):g})"


def redraw_figures(out: Path, payload: dict) -> None:
    """Redraw the figures of the payload from the reports saved beside them."""
    for model_name in payload["figures"]:
        path = out / f"noise_shift_{model_name}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            reports = {k: NoiseShiftReport.from_json(json.dumps(v)) for k, v in data.items()}
            write_figures(out, model_name, reports)


def disagreement_sentence(rows: list[dict]) -> str:
    """One sentence: where the two readings' late shifts differ in sign."""
    read = [r for r in rows if r.get("ml_shift_late") is not None]
    differ = [r for r in read if signs_cell(r)]
    if not read:
        return "No model here has the likelihood reading."
    if not differ:
        return f"The two readings agree in sign in all {len(read)} rows that have both."
    clear = [r for r in differ if signs_cell(r) == "≠ *"]
    by_model = ", ".join(
        f"{m}: {sum(r['model'] == m for r in differ)} of {sum(r['model'] == m for r in read)}"
        for m in dict.fromkeys(r["model"] for r in read)
    )
    named = "; ".join(
        f"{r['model']} {r['steps']} {r['solver']} {r['setting']}"
        + (f" {r['nag_scale']:.2f}" if "nag" in r["setting"].split("+") else "")
        for r in clear
    )
    return (
        f"The two readings' late shifts differ in sign in {len(differ)} of {len(read)} rows "
        f"({by_model}); in {len(clear)} of them both are more than two within-run standard "
        "errors from 0 (marked ≠ *"
        + (f": {named})." if clear else ").")
        + " Elsewhere a differing sign is within the noise of at least one reading."
    )


def render(payload: dict) -> str:
    """The markdown section of RESULTS.md for a payload of `measure`."""
    seeds = payload["seeds"]
    reduced = {
        "steps": payload["steps"],
        "n_mixture": payload["n_mixture"],
        "n_digits": payload["n_digits"],
        "seeds": len(seeds),
    } != DEFAULTS
    text = [
        "## Reproduction report: noise shift and quality (tables written by reproduce.py)",
        "",
        f"Produced by `{payload['command'].strip()}` in {payload['seconds']:.0f} s on CPU "
        f"(torch {payload['torch']}, {payload['threads']} thread(s)); all numbers are from this "
        + "one run"
        + (
            ", a reduced configuration (the full one is `--steps 10,25,50,100 --n-mixture 2000 "
            "--n-digits 500 --seeds 2`, too long for 2 CPU cores)"
            if reduced
            else ""
        )
        + f". Scales: {payload['scales']}. Samples: {payload['n_mixture']} per mixture run, "
        f"{payload['n_digits']} per digits run, classes in turn; sampling seeds "
        f"{', '.join(map(str, seeds))} in every setting (settings are paired by seed).",
        "",
        "Columns: `shift` = mean over steps of (estimated noise level of the sampler's states "
        "- estimated level of forward-process samples at the same nominal t); > 0 means the "
        f"states look noisier than they should. `late shift` = the same over the steps with "
        f"t <= {payload['late_t_max']}, each sample's level averaged over those steps first. "
        "Two readings of the level: the estimator's posterior mean per sample (every model), and "
        "the level that maximises the exact likelihood of the whole batch of states at a step "
        "(mixtures only; '—' where the estimator has no likelihood). Every figure is the mean "
        "over the seeds ± its standard error over seeds; in brackets, the standard error of "
        "that mean from within the runs (per sample, pooled over seeds), the steadier estimate "
        "with few seeds. `signs`: ≠ where the two readings' late shifts differ in sign, "
        "≠ * where both are also more than two within-run standard errors from 0. [edge]: at "
        "some late step the batch likelihood was highest at an end of the t range searched "
        "(10⁻⁴ … 1), so the reading has no within-run standard error there. Near t → 0 "
        "the posterior mean mixes 'sharper' with 'cleaner' (the within-mode variance "
        "(1 - t)² s² + t² of the linear schedule is smallest at t = s² / (1 + s²), 0.08 for "
        "s = 0.3, and grows again as t → 0), so there its sign can depend on the reading. "
        + disagreement_sentence(payload["rows"] + payload["sweep"]),
        "",
        "Quality: the **floor** row of each table is the same metric for exact samples of the "
        "same size and labels against the same reference set (mixtures; for `log_lik` it is "
        "the data's own value, which sharpened samples exceed), or for class-balanced real "
        "digits of the same size against the disjoint rest of the data set (digits), mean ± "
        "standard error over its draws. Estimators: "
        + ", ".join(f"{k}: {v}" for k, v in payload["estimators"].items())
        + ".",
        "",
    ]
    for model_name in payload["estimators"]:
        text += render_model(payload, model_name)
    return "\n".join(text)


def render_model(payload: dict, model_name: str) -> list[str]:
    """The tables, figures and captions of one model."""
    kind = "digits" if model_name == "digits" else "mixture"
    quality_names = [name for name, _ in QUALITY[kind]]
    floor = payload["floors"][model_name]
    rows = [table_cells(r, kind) for r in payload["rows"] if r["model"] == model_name]
    sweep = [table_cells(r, kind) for r in payload["sweep"] if r["model"] == model_name]
    columns = ["steps", "solver", "setting"] + SHIFT_COLUMNS + quality_names
    sweep_columns = ["setting", "nag_scale"] + SHIFT_COLUMNS + quality_names
    text = [
        f"### {model_name}",
        "",
        markdown_table([floor_cells(floor, kind, "setting")] + rows, columns),
        "",
        f"nag_scale sweep ({payload['sweep_steps']} Euler steps):",
        "",
        markdown_table([floor_cells(floor, kind, "setting")] + sweep, sweep_columns),
        "",
    ]
    figure = payload["figures"].get(model_name)
    if figure:
        text += [
            f"![noise shift, {model_name}](noise_shift_{model_name}.png)",
            "",
            f"*Noise shift of {model_name}, {payload['sweep_steps']} Euler steps, settings "
            f"{', '.join(figure['settings'])} (one colour each), seed {payload['seeds'][0]}. "
            "Right: the shift of every setting against nominal t (1 on the left, 0 on the "
            "right, as sampling runs) with a ±2 SE band. Left: estimated noise level of sampler "
            "states (solid) and forward-process samples (dashed) against t. Per-step data: "
            f"noise_shift_{model_name}.json.*",
            "",
        ]
    if figure and figure.get("density"):
        text += [
            f"![level density, {model_name}](noise_level_density_{model_name}.png)",
            "",
            f"*The noise-shift picture of {model_name} ({payload['sweep_steps']} Euler steps, "
            f"seed {payload['seeds'][0]}): at the step nearest each nominal t (dotted line), "
            "the density (Gaussian KDE) of the estimated level of single samples among the "
            "sampler's states, baseline and NAG (solid), and among forward-process samples "
            "(dashed). A solid curve right of the dashed one: states that look noisier than "
            "data noised to t; left: cleaner. The estimator's own bias moves both alike, so "
            "compare the curves, not the curve with the dotted line.*",
            "",
        ]
    return text


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small n, steps 10 and 25, 1 seed")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", default=DEFAULTS["steps"])
    parser.add_argument("--sweep", default="0.25,0.5,1.0,2.0", help="nag_scale values")
    parser.add_argument("--sweep-steps", type=int, default=25)
    parser.add_argument("--n-mixture", type=int, default=DEFAULTS["n_mixture"])
    parser.add_argument("--n-digits", type=int, default=DEFAULTS["n_digits"])
    parser.add_argument(
        "--seeds", type=int, default=DEFAULTS["seeds"], help="sampling seeds per setting"
    )
    parser.add_argument("--seed", type=int, default=0, help="the first sampling seed")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite RESULTS.md from OUT/reproduce.json and redraw the figures from "
        "OUT/noise_shift_<model>.json",
    )
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.quick:
        args.steps, args.n_mixture, args.n_digits, args.sweep = "10,25", 400, 200, "0.5,1.0"
        args.seeds = 1
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
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
