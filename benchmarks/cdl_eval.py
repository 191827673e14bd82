"""The contrastive diffusion loss (CDL) evaluation: pairs of models identical except for the CDL
term, sampled sequentially and in parallel (Picard iterations), on the same seeds.

    python -m benchmarks.cdl_eval                         # the 2-D pair (ring), ~15 min on 2 CPUs
    python -m benchmarks.cdl_eval --sets digits           # the digits DiT pair, ~1.5 h on 2 CPUs
    python -m benchmarks.cdl_eval --render-only           # tables from cdl_eval.json again
    python -m benchmarks.cdl_eval --sets digits --floors-only  # only the floor rows, again

Each pair is trained by nag_engine's trainer (noise prediction on the DDPM "vp" schedule, as in
the paper; only `cdl_weight` differs) and cached under --runs: the ring pair from scratch, the
digits pair fine-tuned from one shared base model trained without CDL (CDL costs ~12x a plain
step there). Sets not named in --sets keep their rows from the earlier cdl_eval.json.

Samplers: DDPM 1000 steps, DDIM 50, Euler 50 and Heun 25 (probability-flow ODE), and parallel
DDPM 1000 / DDIM 50 (ParaDiGMS, window 1000 / 50, tolerance 0.1). Quality on the 2-D set:
energy distance and RBF-kernel MMD^2 to exact samples and the mean log-likelihood under the
exact mixture; on digits: FD-digits and class accuracy. Cost: Picard iterations (sequential
rounds), model evaluations per sample and wall time. Writes its marked section of
benchmarks/RESULTS.md and cdl_eval.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

import nag_engine as ne
from benchmarks.reproduce import markdown_table, replace_section
from nag_engine.analysis.metrics import energy_distance, mean_log_likelihood, mmd_rbf
from nag_engine.models import DiT, MLPDenoiser
from nag_engine.parallel import ParallelSampler
from nag_engine.training.data import load_dataset, mixture_for
from nag_engine.training.trainer import TrainConfig, Trainer

HERE = Path(__file__).resolve().parent
MARKER = "cdl_eval.py"
SETS = {
    "ring": dict(
        metrics="2d",  # energy distance, MMD and log-likelihood against the exact mixture
        data=("ring", {"n": 20000, "seed": 0}),
        model=lambda: MLPDenoiser(
            dim=2, hidden=128, depth=3, num_classes=8, prediction="eps", schedule="vp"
        ),
        train=dict(steps=3000, batch_size=512, lr=2e-3, warmup_steps=100, ema_decay=0.999, p_c=0.1),
        n=1000,
    ),
    "digits": dict(
        metrics="digits",  # FD-digits and class accuracy from the digit features
        data=("digits", {}),
        model=lambda: DiT(
            input_size=8,
            patch_size=2,
            in_channels=1,
            hidden_size=64,
            depth=4,
            num_heads=4,
            num_classes=10,
            prediction="eps",
            schedule="vp",
        ),
        train=dict(steps=8000, batch_size=128, lr=1e-3, warmup_steps=500, ema_decay=0.999, p_c=0.1),
        # CDL costs ~12x a plain step here (8 extra forwards per row), so the digits pair is
        # fine-tuned from one shared base model, as the paper does for its image models
        finetune=dict(steps=1000, batch_size=128, lr=3e-4, ema_decay=0.995, p_c=0.1, seed=1),
        n=200,
    ),
}
# (name, solver, steps, parallel options or None)
SAMPLERS = [
    ("DDPM 1000", "ddpm", 1000, None),
    ("DDIM 50", "ddim", 50, None),
    ("Euler 50", "euler", 50, None),
    ("Heun 25", "heun", 25, None),
    ("parallel DDPM 1000", "ddpm", 1000, dict(window=1000, tolerance=0.1)),
    ("parallel DDIM 50", "ddim", 50, dict(window=50, tolerance=0.1)),
]


def trained(
    name: str,
    cdl_weight: float,
    runs: Path,
    steps: Optional[int] = None,
    finetune_steps: Optional[int] = None,
) -> torch.nn.Module:
    """The cached model of set `name` with this CDL weight, training it if missing: from
    scratch, or (sets with a "finetune" budget) fine-tuned from the set's cached base model,
    which is trained without CDL first."""
    spec = SETS[name]
    path = runs / f"{name}-cdl{cdl_weight:g}.safetensors"
    if path.is_file():
        return ne.load_checkpoint(path).eval()
    data = load_dataset(spec["data"][0], **spec["data"][1])
    train, tune = budgets(name, steps, finetune_steps)
    if tune is None:
        config = TrainConfig(p_t=0.0, cdl_weight=cdl_weight, **train)
        return _fit(Trainer(spec["model"](), data, config), path)
    base = runs / f"{name}-base.safetensors"
    if not base.is_file():
        _fit(Trainer(spec["model"](), data, TrainConfig(p_t=0.0, **train)), base)
    config = TrainConfig(p_t=0.0, cdl_weight=cdl_weight, **tune)
    return _fit(Trainer.finetune(base, data, config), path)


def _fit(trainer: Trainer, path: Path) -> torch.nn.Module:
    """Run the trainer, export its EMA weights to path and load them back for sampling."""
    start = time.perf_counter()
    trainer.run(progress=True)
    print(f"trained {path.name} in {time.perf_counter() - start:.0f} s", flush=True)
    trainer.export(path)
    return ne.load_checkpoint(path).eval()


def budgets(
    name: str, steps: Optional[int], finetune_steps: Optional[int]
) -> tuple[dict, Optional[dict]]:
    """The training and fine-tuning budgets of set `name` (None: trained from scratch), with
    the command line's step overrides."""
    spec = SETS[name]
    train = {**spec["train"], **({"steps": steps} if steps else {})}
    if "finetune" not in spec:
        return train, None
    return train, {**spec["finetune"], **({"steps": finetune_steps} if finetune_steps else {})}


def training_protocol(name: str, steps: Optional[int], finetune_steps: Optional[int]) -> str:
    """How the pair of set `name` was trained, in words for the table."""
    train, tune = budgets(name, steps, finetune_steps)
    if tune is None:
        return f"{train['steps']} steps from scratch"
    return (
        f"a shared base of {train['steps']} steps without CDL, then {tune['steps']} "
        "fine-tuning steps each"
    )


RING_BANDWIDTH = 0.25  # the ring's mode width: an MMD kernel that sees each mode's shape


def quality(name: str, x: torch.Tensor, labels: Optional[torch.Tensor], reference: Any) -> dict:
    if SETS[name]["metrics"] == "2d":
        exact, data_x = reference
        return {
            "energy": energy_distance(x, data_x),
            "mmd": mmd_rbf(x, data_x, bandwidth=RING_BANDWIDTH),
            "log_p": mean_log_likelihood(exact, x),
        }
    from nag_engine.analysis.digit_features import digit_accuracy, fd_digits

    return {"fd_digits": fd_digits(x), "accuracy": digit_accuracy(x, labels)}


def evaluate(name: str, model, reference, seed: int) -> list[dict]:
    spec = SETS[name]
    n = spec["n"]
    labels = torch.arange(n) % model.num_classes if getattr(model, "num_classes", None) else None
    rows = []
    for label, solver, steps, parallel in SAMPLERS:
        start = time.perf_counter()
        if parallel is None:
            sampler = ne.Sampler(model, steps, solver=solver)
            x = sampler.sample(n, y=labels, seed=seed, progress=False)
            row = {"iterations": steps, "evals": len(sampler.stages)}
        else:
            runner = ParallelSampler(model, steps, solver=solver, **parallel)
            x, stats = runner.run(n, y=labels, seed=seed, progress=False)
            row = {"iterations": stats.iterations, "evals": stats.model_evals}
        row.update(sampler=label, seconds=time.perf_counter() - start)
        row.update(quality(name, x, labels, reference))
        rows.append(row)
        print(json.dumps({"set": name, **row}), flush=True)
    return rows


FLOOR_SUBSETS = 8  # real-digit subsets behind the digits floor row


def floor_row(name: str, reference: Any, seed: int) -> list[dict]:
    """What a perfect sampler scores at this n. 2-D: the metrics of a second exact sample set.
    Digits: FD-digits and accuracy of class-balanced subsets of the real digits (n / 10 per
    class, as the samplers are asked for), mean and standard deviation over FLOOR_SUBSETS
    subsets: FD-digits at a few hundred samples is biased and noisy, and this is its spread."""
    n = SETS[name]["n"]
    if SETS[name]["metrics"] == "2d":
        exact, _ = reference
        floor = exact.sample_data(n, generator=torch.Generator().manual_seed(seed + 2))[0]
        return [
            {
                "cdl": "—",
                "sampler": "exact samples (floor)",
                **quality(name, floor, None, reference),
            }
        ]
    from nag_engine.analysis.digit_features import real_digits

    images, labels = real_digits()
    gen = torch.Generator().manual_seed(seed + 2)
    wanted = torch.arange(n) % 10
    fds, accuracies = [], []
    for _ in range(FLOOR_SUBSETS):
        picks = []
        for digit in range(10):
            rows = torch.nonzero(labels == digit).flatten()
            count = int((wanted == digit).sum())
            picks.append(rows[torch.randperm(len(rows), generator=gen)[:count]])
        index = torch.cat(picks)
        scores = quality(name, images[index], labels[index], reference)
        fds.append(scores["fd_digits"])
        accuracies.append(scores["accuracy"])
    fd = torch.tensor(fds, dtype=torch.float64)
    return [
        {
            "cdl": "—",
            "sampler": f"real digits, {FLOOR_SUBSETS} class-balanced subsets (floor)",
            "fd_digits": float(fd.mean()),
            "fd_sd": float(fd.std()),
            "accuracy": sum(accuracies) / len(accuracies),
        }
    ]


def reference_for(name: str, n: int, seed: int):
    if SETS[name]["metrics"] != "2d":
        return None  # the digit metrics carry their own reference
    exact = mixture_for(load_dataset(SETS[name]["data"][0], **SETS[name]["data"][1]))
    gen = torch.Generator().manual_seed(seed + 1)
    return exact, exact.sample_data(n, generator=gen)[0]


def render(payload: dict) -> str:
    parts = [
        "## Contrastive diffusion loss (CDL): sequential and parallel sampling",
        "",
        "Written by `python -m benchmarks.cdl_eval` (the command per set below). Pairs of "
        f"models identical except for the CDL term (`cdl_weight` {payload['cdl_weight']}); one "
        "seed for every sampler. `iterations` = sequential rounds of model calls (the step "
        "count for sequential samplers, Picard iterations for parallel ones); `evals` = model "
        "evaluations per sample. 2-D quality against exact samples of the same size: energy "
        f"distance, MMD² with a Gaussian kernel of width {RING_BANDWIDTH} (the mode width; "
        "U-statistic, so ≈ 0 or slightly negative at the floor), mean log-likelihood under "
        "the exact mixture. Digits quality: FD-digits (Fréchet distance of the digit "
        "features to the data set's, lower is better; `fd_sd` its spread over real subsets "
        "of the same size) and the accuracy of the digit classifier on the requested class.",
    ]
    for name, run in payload["sets"].items():
        if "energy" in run["rows"][0]:
            columns = ["sampler", "cdl", "energy", "mmd", "log_p", "iterations", "evals", "seconds"]
            formats = {"energy": ".4f", "mmd": ".2e", "log_p": ".3f", "seconds": ".1f"}
        else:
            columns = ["sampler", "cdl", "fd_digits", "fd_sd", "accuracy"]
            columns += ["iterations", "evals", "seconds"]
            formats = {"fd_digits": ".2f", "fd_sd": ".2f", "accuracy": ".3f", "seconds": ".1f"}
        parts += [
            "",
            f"**{name}** — {run['n']} samples; trained {run['training']}; `{run['command']}` "
            f"on {run['machine']}.",
            "",
            markdown_table(run["rows"], columns, formats),
        ]
    return "\n".join(parts)


def _write_json(payload: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="ring", help=f"comma-separated, from {list(SETS)}")
    parser.add_argument("--cdl-weight", type=float, default=0.1)
    parser.add_argument("--train-steps", type=int, default=None, help="override the budget")
    parser.add_argument(
        "--finetune-steps", type=int, default=None, help="override the fine-tuning budget"
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/cdl_eval"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=HERE / "cdl_eval.json")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument(
        "--floors-only",
        action="store_true",
        help="recompute only the floor rows of --sets in the existing JSON (no models run)",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        payload = json.loads(args.json.read_text())
    elif args.floors_only:
        payload = json.loads(args.json.read_text())
        for name in [s for s in args.sets.split(",") if s]:
            run = payload["sets"][name]
            if run["n"] != SETS[name]["n"]:
                parser.error(f"{name} was run with n={run['n']}, now {SETS[name]['n']}: rerun it")
            reference = reference_for(name, run["n"], args.seed)
            models = [r for r in run["rows"] if r["cdl"] != "—"]
            run["rows"] = floor_row(name, reference, args.seed) + models
        _write_json(payload, args.json)
    else:
        names = [s for s in args.sets.split(",") if s]
        unknown = set(names) - set(SETS)
        if unknown:
            parser.error(f"unknown sets {sorted(unknown)}: choose from {list(SETS)}")
        # sets not run this time keep their earlier rows (the digits pair takes an hour)
        payload = {"cdl_weight": args.cdl_weight, "sets": {}}
        if args.json.is_file():
            earlier = json.loads(args.json.read_text())
            if earlier.get("cdl_weight") == args.cdl_weight:
                payload["sets"] = earlier["sets"]
        args.runs.mkdir(parents=True, exist_ok=True)
        given = sys.argv[1:] if argv is None else argv
        command = " ".join(["python -m benchmarks.cdl_eval", *given])
        for name in names:
            reference = reference_for(name, SETS[name]["n"], args.seed)
            rows = []
            for weight in (0.0, args.cdl_weight):
                model = trained(name, weight, args.runs, args.train_steps, args.finetune_steps)
                for row in evaluate(name, model, reference, args.seed):
                    rows.append({"cdl": "yes" if weight else "no", **row})
            order = [s[0] for s in SAMPLERS]  # each sampler's pair side by side (stable sort)
            rows.sort(key=lambda r: order.index(r["sampler"]))
            payload["sets"][name] = {
                "command": command,
                "machine": f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}",
                "n": SETS[name]["n"],
                "training": training_protocol(name, args.train_steps, args.finetune_steps),
                "rows": floor_row(name, reference, args.seed) + rows,
            }
        _write_json(payload, args.json)
    body = render(payload)
    text = replace_section(args.results, body, marker=MARKER)
    tmp = args.results.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.results)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
