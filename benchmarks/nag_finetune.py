"""Adding NAG to a model trained without noise-condition dropout: where to start the new null
noise embedding, what a fine-tune step costs, and how many parameters it adds.

    python -m benchmarks.nag_finetune             # digits DiT on 2 CPU cores, ~8 min
    python -m benchmarks.nag_finetune --gpu       # + DiT-XL/2 fine-tune steps/s (CUDA, bf16)
    python -m benchmarks.nag_finetune --tiny      # a smoke test of every part (CI)

1. A base model: the `digits` preset's DiT trained with p_t = 0 (no noise dropout; cached in
   --runs). 2. Fine-tunes of it with p_t = 0.2 (`Trainer.finetune`), identical except for where
   the null noise embedding starts: the mean timestep embedding over the training times
   ("mean", nag_engine's default), zero, or the architecture's N(0, 0.02) init that a p_t = 0 run
   never touches ("random"). At fixed fine-tune steps each is scored on one fixed batch of
   (x0, t, eps) draws: the loss of the noise-unconditional pass (drop_t on every row: what NAG's
   second pass computes) and of the conditional pass. 3. The time of a fine-tune step
   (p_t = 0.2) against a plain step (p_t = 0) on the same model and batches, interleaved.
4. The parameters added. With --gpu: DiT-XL/2 (random weights: the same cost) fine-tune steps
   per second at batch 32 on 32x32x4 latents in bf16 autocast, p_t = 0.2 against 0.

Writes its marked section of benchmarks/RESULTS.md and nag_finetune.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import nag_engine as ne
from benchmarks.reproduce import markdown_table, replace_section
from nag_engine.presets import PRESETS
from nag_engine.training.data import load_dataset
from nag_engine.training.losses import forward_noise, training_target
from nag_engine.training.trainer import TrainConfig, Trainer

HERE = Path(__file__).resolve().parent
MARKER = "nag_finetune.py"
INITS = {"mean": "mean", "zero": "zero", "random": "keep"}  # label -> TrainConfig option
SIZES = {
    "full": dict(base_steps=4000, finetune_steps=500, evals=[0, 5, 10, 25, 50, 100, 200, 500],
                 eval_rows=2048, cost_steps=40),
    "tiny": dict(base_steps=6, finetune_steps=4, evals=[0, 2, 4], eval_rows=64, cost_steps=2),
}  # fmt: skip
BASE_TRAIN = dict(batch_size=128, lr=1e-3, warmup_steps=500, ema_decay=0.999, p_c=0.1)
FINETUNE_TRAIN = dict(batch_size=128, lr=2e-4, warmup_steps=50, ema_decay=0.999, p_t=0.2, p_c=0.1)


def base_model(runs: Path, steps: int) -> Path:
    """The digits DiT trained without noise dropout (cached)."""
    path = runs / f"base_{steps}.safetensors"
    if path.is_file():
        return path
    data = load_dataset("digits")
    config = TrainConfig(**{**BASE_TRAIN, "warmup_steps": min(500, steps // 4)}, p_t=0.0,
                         steps=steps)  # fmt: skip
    trainer = Trainer(PRESETS["digits"].build_model(), data, config, out=runs / "base_run")
    trainer.run(progress=sys.stderr.isatty())
    return trainer.export(path)


def evaluation_batch(rows: int, seed: int = 123) -> dict[str, torch.Tensor]:
    """Fixed (x_t, t, y, target) draws from the digits, the same for every model scored."""
    data = load_dataset("digits")
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(len(data), (rows,), generator=gen)
    x0, y = data.x[index], data.y[index]
    schedule = ne.get_schedule("linear")
    t, eps, x_t = forward_noise(x0, schedule, gen)
    return {"x_t": x_t, "t": t, "y": y, "target": training_target(x0, eps, t, schedule, "velocity")}


@torch.no_grad()
def losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """MSE of the noise-unconditional and of the conditional pass on the evaluation batch."""
    was_training = model.training
    model.eval()
    rows = len(batch["t"])
    out = {}
    for name, drop in (("uncond", True), ("cond", False)):
        flags = torch.full((rows,), drop, dtype=torch.bool)
        pred = model(batch["x_t"], batch["t"], batch["y"], drop_t=flags)
        out[name] = float(((pred - batch["target"]) ** 2).mean())
    model.train(was_training)
    return out


def init_study(base: Path, size: dict, batch: dict) -> list[dict[str, Any]]:
    """Loss curves of the fine-tunes that differ only in the null embedding's start."""
    data = load_dataset("digits")
    rows = []
    for label, option in INITS.items():
        config = TrainConfig(
            **FINETUNE_TRAIN, steps=size["finetune_steps"], null_noise_init=option, seed=1
        )
        trainer = Trainer.finetune(base, data, config)
        for step in size["evals"]:
            trainer.run(until=step, progress=False)
            rows.append({"init": label, "step": step, **losses(trainer.model, batch)})
            print(f"  init {label:>6} step {step:>4}: {rows[-1]}", file=sys.stderr)
        ema = losses(trainer.ema, batch)  # what the fine-tune exports
        rows.append({"init": label, "step": "EMA", **ema})
    return rows


def step_cost(make_model, data, steps: int, device: torch.device, **train: Any) -> dict:
    """Median seconds of a fine-tune step (p_t = 0.2) and a plain step (p_t = 0) of models from
    `make_model`, interleaved on the same data so drift and warm-up hit both alike."""
    times: dict[str, list[float]] = {"p_t=0.2": [], "p_t=0": []}
    trainers = {}
    for label, p_t in (("p_t=0.2", 0.2), ("p_t=0", 0.0)):
        config = TrainConfig(**{**FINETUNE_TRAIN, **train, "steps": 10**6, "p_t": p_t})
        trainers[label] = Trainer(make_model(), data, config, device=device)
    for trainer in trainers.values():  # warm-up
        trainer.run(until=trainer.step + 2, progress=False)
    for _ in range(steps):
        for label, trainer in trainers.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.run(until=trainer.step + 1, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[label].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "step_ms_finetune": 1e3 * median["p_t=0.2"],
        "step_ms_plain": 1e3 * median["p_t=0"],
        "ratio": median["p_t=0.2"] / median["p_t=0"],
        "steps_per_s": 1.0 / median["p_t=0.2"],
    }


def added_parameters() -> list[dict[str, Any]]:
    """The one null noise vector against the model's size (DiT-XL/2 counted on the meta device)."""
    from nag_engine.models import DiT_XL_2

    rows = []
    with torch.device("meta"):
        xl = DiT_XL_2(input_size=32, in_channels=4)
    for name, model in (("digits DiT", PRESETS["digits"].build_model()), ("DiT-XL/2", xl)):
        total = sum(p.numel() for p in model.parameters())
        added = model.t_embedder.null_embedding.numel()
        rows.append({"model": name, "parameters": total, "added": added, "share": added / total})
    return rows


def gpu_steps(steps: int) -> dict[str, Any]:
    """DiT-XL/2 fine-tune steps per second at batch 32 in bf16 autocast (CUDA)."""
    from nag_engine.models import DiT_XL_2
    from nag_engine.training.data import DataSet

    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(256, 4, 32, 32, generator=gen)
    labels = torch.randint(1000, (256,), generator=gen)
    data = DataSet("latents", latents, labels, 1000, (4, 32, 32), {"name": "random-latents"})
    row = step_cost(
        lambda: DiT_XL_2(input_size=32, in_channels=4, prediction="eps", schedule="vp-discrete"),
        data,
        steps,
        torch.device("cuda"),
        batch_size=32,
        bf16=True,
    )
    return {"device": torch.cuda.get_device_name(), "batch": 32, "dtype": "bf16", **row}


def steps_to_reach(curve: list[dict[str, Any]]) -> str:
    """A sentence: by which scored step the "mean" start is as good as each other start is at
    the end of its fine-tune."""
    last = max(r["step"] for r in curve)
    mean = sorted((r["step"], r["uncond"]) for r in curve if r["init"] == "mean")
    parts = []
    for label in INITS:
        if label == "mean":
            continue
        final = next(r["uncond"] for r in curve if r["init"] == label and r["step"] == last)
        reached = [step for step, loss in mean if loss <= final]
        when = f"by step {reached[0]}" if reached else f"not within {last} steps"
        parts.append(f"{label}'s {final:.4f} {when}")
    return (
        f"Where the other starts end after {last} steps, the mean start is already (at the "
        "scored steps): " + "; ".join(parts) + "."
    )


def render(payload: dict[str, Any]) -> str:
    size = payload["size"]
    curve = [r for r in payload["init"] if r["step"] != "EMA"]
    ema = {r["init"]: r for r in payload["init"] if r["step"] == "EMA"}
    steps = sorted({r["step"] for r in curve})
    columns = ["null init"] + [f"step {s}" for s in steps] + ["EMA"]
    tables = {}
    for kind in ("uncond", "cond"):
        rows = []
        for label in INITS:
            by_step = {r["step"]: r[kind] for r in curve if r["init"] == label}
            rows.append(
                {
                    "null init": label,
                    **{f"step {s}": by_step[s] for s in steps},
                    "EMA": ema[label][kind],
                }
            )
        tables[kind] = markdown_table(rows, columns, {c: ".4f" for c in columns[1:]})
    uncond, cond = tables["uncond"], tables["cond"]
    cost = payload["cost"]
    reach = steps_to_reach(curve)
    params = markdown_table(
        payload["params"],
        ["model", "parameters", "added", "share"],
        {"parameters": ",d", "added": ",d", "share": ".2e"},
    )
    gpu = payload.get("gpu")
    gpu_line = (
        f"DiT-XL/2 fine-tune on {gpu['device']}, batch 32, bf16: {gpu['steps_per_s']:.2f} steps/s "
        f"({gpu['step_ms_finetune']:.1f} ms; a plain step {gpu['step_ms_plain']:.1f} ms, ratio "
        f"{gpu['ratio']:.3f})."
        if gpu
        else "DiT-XL/2 fine-tune steps/s at batch 32 in bf16: **unmeasured** (no GPU in the run "
        "that wrote this section; `python -m benchmarks.nag_finetune --gpu` measures it, "
        "`benchmarks/gpu_checks.sh finetune` runs it on a GPU machine)."
    )
    return f"""## Adding NAG by fine-tuning: the null noise embedding's start, cost, parameters

`{payload["command"]}` on {payload["machine"]} ({payload["seconds"]:.0f} s). Base: the `digits`
preset's DiT trained {size["base_steps"]} steps **without** noise dropout (p_t = 0). Fine-tunes:
`Trainer.finetune` with p_t = 0.2, p_c = 0.1, lr 2e-4 (50 warm-up steps), batch 128, identical
but for where the null noise embedding starts. Scored on one fixed batch of {size["eval_rows"]}
(x0, t, eps) draws from the digits (velocity MSE) with the raw weights at each step, and with
the EMA weights the fine-tune exports at its end (column EMA).

Loss of the **noise-unconditional pass** (every row `drop_t`: NAG's second pass):

{uncond}

Loss of the conditional pass (the model NAG starts from; the fine-tune must not hurt it):

{cond}

{reach}

Cost of a step ({payload["cost_device"]}, median of {size["cost_steps"]} interleaved steps,
batch 128): fine-tune (p_t = 0.2) {cost["step_ms_finetune"]:.1f} ms, plain (p_t = 0)
{cost["step_ms_plain"]:.1f} ms, ratio **{cost["ratio"]:.3f}** (noise dropout adds one
`torch.where` on the time embedding and nothing else).

Parameters added (one vector in the timestep-embedding space per model):

{params}

{gpu_line}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    parser.add_argument("--gpu", action="store_true", help="also time DiT-XL/2 on CUDA")
    parser.add_argument("--gpu-only", action="store_true", help="only the DiT-XL/2 timing")
    parser.add_argument("--runs", type=Path, default=Path("runs/nag_finetune"))
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    json_path = args.out / "nag_finetune.json"
    if args.render_only:
        payload = json.loads(json_path.read_text())
    elif args.gpu_only:  # merged into the CPU run's payload where --out holds one
        gpu = gpu_steps(20)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "nag_finetune_gpu.json").write_text(json.dumps(gpu, indent=1))
        print(
            f"DiT-XL/2 fine-tune on {gpu['device']}, batch 32, bf16: {gpu['steps_per_s']:.2f} "
            f"steps/s (plain step {gpu['step_ms_plain']:.1f} ms, ratio {gpu['ratio']:.3f})"
        )
        if not json_path.is_file():
            return 0
        payload = {**json.loads(json_path.read_text()), "gpu": gpu}
    else:
        size = SIZES["tiny" if args.tiny else "full"]
        start = time.perf_counter()
        base = base_model(args.runs, size["base_steps"])
        batch = evaluation_batch(size["eval_rows"])
        payload = {
            "command": "python -m benchmarks.nag_finetune" + (" --tiny" if args.tiny else ""),
            "machine": f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}",
            "size": size,
            "init": init_study(base, size, batch),
            "cost": step_cost(
                lambda: ne.load_checkpoint(base),
                load_dataset("digits"),
                size["cost_steps"],
                torch.device("cpu"),
            ),
            "cost_device": "CPU",
            "params": added_parameters(),
        }
        if args.gpu:
            payload["gpu"] = gpu_steps(20)
        payload["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(payload, indent=1))
    results = args.out / "RESULTS.md"
    results.write_text(replace_section(results, render(payload), MARKER))
    print(render(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
