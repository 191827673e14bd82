"""Sampling speed against what users would otherwise run: the same DiT, latents, steps and
guidance (CFG + NAG, three passes per step, Euler) through four loops, timed in one run:

(a) eager fp32, one forward per guidance term (the papers' reference loops);
(b) diffusers-style bf16: `torch.cat` of the three inputs, one forward, `chunk`, combine, step;
(c) (b) with the model under `torch.compile`;
(d) nag_engine: bf16, fused guidance + step kernel, fused DiT kernels, CUDA graphs (and
    `torch.compile` with --compile-d).

    python -m benchmarks.sampling                      # GPU: DiT-S/B/XL, batch 1/16/64/256
    python -m benchmarks.sampling --tiny               # CPU smoke configuration, ratios only
    python -m benchmarks.sampling --models DiT-S/2 --batches 64 --out r.json
    python -m benchmarks.sampling --diffusers          # + diffusers' DiT through its own loop

With --diffusers (where the diffusers package imports), diffusers' own `DiTTransformer2DModel`
of the same size (random weights, bf16) is also timed through (e) diffusers' `DiTPipeline`
(DDIM, CFG: two passes per step; its VAE is a minimal one) and (f) the same transformer through
nag_engine's adapter (`nag_engine.models.DiffusersDiT`, DDIM, CFG).

Reports images/s, ms per step, peak memory, model FLOP utilisation (forward FLOPs x 3 passes x
steps / time / the GPU's bf16 peak) and, for (d), the share of the step spent in the fused
guidance + solver kernel. Random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

import nag_engine as ne
from nag_engine import backends
from nag_engine.models import DiT
from nag_engine.models.dit import DIT_CONFIGS

CFG, NAG = 1.5, 0.5  # cfg_scale 1.0 and nag_scale 0.0 are off (docs/ARCHITECTURE.md §1)
VARIANTS = ("a", "b", "c", "d", "e", "f")
LABELS = {
    "a": "(a) eager fp32, 3 forwards",
    "b": "(b) diffusers-style bf16",
    "c": "(c) (b) + torch.compile",
    "d": "(d) nag_engine",
    "e": "(e) diffusers DiTPipeline (CFG)",
    "f": "(f) its DiT via nag_engine (CFG)",
}
# diffusers' DiTTransformer2DModel sizes: (heads, head dim, layers)
DIFFUSERS_SIZES = {
    "DiT-S/2": (6, 64, 12),
    "DiT-B/2": (12, 64, 12),
    "DiT-L/2": (16, 64, 24),
    "DiT-XL/2": (16, 72, 28),
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM


def make_model(name: str, tiny: bool, device: torch.device) -> DiT:
    """A DiT of the named size on a 32x32x4 latent (or a tiny one), small random weights."""
    config = (
        dict(input_size=8, hidden_size=64, depth=2, num_heads=2, patch_size=2)
        if tiny
        else dict(input_size=32, **DIT_CONFIGS[name])
    )
    torch.manual_seed(0)
    model = DiT(in_channels=4, num_classes=1000, **config)
    with torch.no_grad():  # adaLN-Zero starts at zero output: give every layer some weight
        for p in model.parameters():
            if p.ndim >= 2 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model.to(device).eval()


def euler_pairs(grid: torch.Tensor) -> list[tuple[float, float]]:
    times = [float(t) for t in grid]
    return list(zip(times[:-1], times[1:]))


def loop_eager(model, x, y, grid):
    """(a): one forward per guidance term, fp32."""
    ones = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for t, t_next in euler_pairs(grid):
        tt = torch.full((len(x),), t, device=x.device)
        cond = model(x, tt, y)
        uncond = model(x, tt, y, drop_y=ones)
        no_t = model(x, tt, y, drop_t=ones)
        v = cond + (CFG - 1) * (cond - uncond) + NAG * (cond - no_t)
        x = x + (t_next - t) * v
    return x


def loop_batched(model, x, y, grid):
    """(b)/(c): the diffusers pattern -- cat the three inputs, one forward, chunk, combine."""
    b = len(x)
    false, true = (torch.full((b,), v, dtype=torch.bool, device=x.device) for v in (False, True))
    y_in = torch.cat([y, y, y])
    drop_y = torch.cat([false, true, false])
    drop_t = torch.cat([false, false, true])
    x = x.to(torch.bfloat16)
    for t, t_next in euler_pairs(grid):
        x_in = torch.cat([x, x, x])
        t_in = torch.full((3 * b,), t, device=x.device)
        cond, uncond, no_t = model(x_in, t_in, y_in, drop_t=drop_t, drop_y=drop_y).chunk(3)
        v = cond + (CFG - 1) * (cond - uncond) + NAG * (cond - no_t)
        x = x + (t_next - t) * v
    return x.float()


def timed(fn: Callable[[], torch.Tensor], device: torch.device, reps: int) -> tuple[float, float]:
    """(median seconds of `reps` runs after one warm-up, peak memory in GiB or nan)."""
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return sorted(times)[len(times) // 2], peak


def fused_step_seconds(sampler, batch: int, device: torch.device, reps: int = 50) -> float:
    """Seconds of one fused guidance + solver step (3 passes) at this batch, alone."""
    shape = (batch, *sampler.model.sample_shape)
    out = torch.randn(3, *shape, device=device).to(torch.bfloat16)
    x, g = torch.randn(shape, device=device), torch.empty(shape, device=device)
    nxt = torch.empty(3, *shape, device=device, dtype=torch.bfloat16)
    fn = backends.implementation(sampler.backend)
    stage = torch.zeros((), dtype=torch.long, device=device)
    tables = sampler.plan.tables

    def step():
        fn(out, tables.weights, tables.coef, stage, x, g_out=g, next_input=nxt)

    seconds, _ = timed(step, device, reps)
    return seconds


def measure(name, batch, steps, device, tiny, variants, reps, compile_d) -> dict:
    model32 = make_model(name, tiny, device)
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, *model32.sample_shape, generator=gen).to(device)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    options = dict(cfg_scale=CFG, nag_scale=NAG, solver="euler", dtype="bf16", compile=compile_d)
    sampler = ne.Sampler(model16, steps, **options)
    grid = sampler.grid.to(torch.float32)
    runs = {
        "a": lambda: loop_eager(model32, latents, y, grid),
        "b": lambda: loop_batched(model16, latents, y, grid),
        "d": lambda: sampler.sample(batch, y=y, latents=latents, batch_size=batch, progress=False),
    }
    if "c" in variants:
        compiled = torch.compile(model16)
        runs["c"] = lambda: loop_batched(compiled, latents, y, grid)
    flops = model32.forward_flops() * batch * 3 * steps
    row = {"model": "tiny DiT" if tiny else name, "batch": batch, "steps": steps}
    results = {}
    with torch.no_grad():
        for key in variants:
            seconds, peak = timed(runs[key], device, reps)
            results[key] = runs[key]()
            row[key] = {
                "images_per_s": batch / seconds,
                "ms_per_step": 1e3 * seconds / steps,
                "peak_GiB": peak,
                "tflops": flops / seconds / 1e12,
            }
    if "a" in results:
        for key in results:
            row[key]["max_abs_diff_vs_a"] = float((results[key] - results["a"]).abs().max())
        for key in variants:
            row[key]["speedup_vs_a"] = row["a"]["ms_per_step"] / row[key]["ms_per_step"]
    if "d" in variants:
        share = fused_step_seconds(sampler, batch, device) * 1e3 / row["d"]["ms_per_step"]
        row["d"].update(
            backend=sampler.backend, graphs=sampler.graph_status(), guidance_solver_share=share
        )
    return row


def measure_diffusers(name, batch, steps, device, tiny, reps) -> dict:
    """(e) diffusers' DiTPipeline against (f) its transformer through nag_engine, CFG only."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    from nag_engine.models import DiffusersDiT

    heads, head_dim, layers = (2, 16, 2) if tiny else DIFFUSERS_SIZES[name]
    torch.manual_seed(0)
    transformer = (
        DiTTransformer2DModel(
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            num_layers=layers,
            sample_size=8 if tiny else 32,
            in_channels=4,
            out_channels=8,
            patch_size=2,
            num_embeds_ada_norm=1000,
            norm_num_groups=8,
        )
        .to(device, torch.bfloat16)
        .eval()
    )
    vae = AutoencoderKL(
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
    ).to(device, torch.bfloat16)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(1)
    labels = [int(i) for i in torch.randint(0, 1000, (batch,), generator=gen)]
    cfg = CFG  # diffusers' guidance_scale is the same convention: uncond + s (cond - uncond)
    # a copy: the wrapper's hooks must not run inside diffusers' own pipeline (e)
    model = DiffusersDiT(copy.deepcopy(transformer))
    sampler = ne.Sampler(model, steps, solver="ddim", cfg_scale=cfg, dtype="bf16")
    y = torch.tensor(labels, device=device)
    runs = {
        "e": lambda: (
            pipe(
                class_labels=labels, guidance_scale=cfg, num_inference_steps=steps, output_type="pt"
            ).images
        ),
        "f": lambda: sampler.sample(batch, y=y, batch_size=batch, progress=False),
    }
    row = {}
    with torch.no_grad():
        for key, fn in runs.items():
            seconds, peak = timed(fn, device, reps)
            row[key] = {
                "images_per_s": batch / seconds,
                "ms_per_step": 1e3 * seconds / steps,
                "peak_GiB": peak,
                "tflops": float("nan"),
            }
    row["f"]["speedup_vs_e"] = row["e"]["ms_per_step"] / row["f"]["ms_per_step"]
    return row


def markdown(device_name: str, peak_tflops: float | None, rows: list[dict]) -> str:
    lines = [
        f"Device: {device_name}" + (f" (bf16 peak {peak_tflops:g} TFLOP/s)" if peak_tflops else ""),
        "",
        "| model | batch | loop | images/s | ms/step | speed-up vs (a) | peak GiB | MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for key in VARIANTS:
            if key not in row:
                continue
            r = row[key]
            known = peak_tflops and r["tflops"] == r["tflops"]  # (nan: not counted)
            mfu = f"{r['tflops'] / peak_tflops:.1%}" if known else "—"
            if "speedup_vs_a" in r:
                speedup = f"{r['speedup_vs_a']:.2f}×"
            elif "speedup_vs_e" in r:
                speedup = f"{r['speedup_vs_e']:.2f}× vs (e)"
            else:
                speedup = "—"
            lines.append(
                f"| {row['model']} | {row['batch']} | {LABELS[key]} | {r['images_per_s']:.2f} "
                f"| {r['ms_per_step']:.2f} | {speedup} | {r['peak_GiB']:.2f} | {mfu} |"
            )
        if "d" in row:
            lines.append(
                f"| | | (d): guidance + solver share of the step "
                f"{row['d']['guidance_solver_share']:.1%}, backend {row['d']['backend']}, "
                f"{row['d']['graphs']} | | | | | |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="DiT-S/2,DiT-B/2,DiT-XL/2")
    parser.add_argument("--batches", default="1,16,64,256")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--variants", default="a,b,c,d")
    parser.add_argument("--tiny", action="store_true", help="tiny DiT, batch 4, 4 steps (CPU)")
    parser.add_argument("--compile-d", action="store_true", help="torch.compile inside (d) too")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak for MFU")
    parser.add_argument("--diffusers", action="store_true", help="add (e) and (f), see above")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    variants = tuple(v for v in args.variants.split(",") if v)
    if set(variants) - set("abcd"):
        parser.error("--variants takes a subset of a,b,c,d (--diffusers adds e,f)")
    if args.diffusers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            parser.error("--diffusers needs the diffusers package (pip install diffusers)")
    if args.tiny:
        models, batches, steps = ["tiny"], [4], min(args.steps, 4)
    else:
        models, batches, steps = (
            args.models.split(","),
            [int(b) for b in args.batches.split(",")],
            args.steps,
        )
        unknown = set(models) - set(DIT_CONFIGS)
        if unknown:
            parser.error(f"unknown models {sorted(unknown)}: choose from {list(DIT_CONFIGS)}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    rows = []
    for model in models:
        for batch in batches:
            row = measure(
                model, batch, steps, device, args.tiny, variants, args.reps, args.compile_d
            )
            if args.diffusers:
                row.update(measure_diffusers(model, batch, steps, device, args.tiny, args.reps))
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    print(markdown(name, peak, rows))
    if args.out is not None:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"device": name, "peak_tflops": peak, "rows": rows}, indent=1))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
