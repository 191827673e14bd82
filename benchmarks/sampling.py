"""Sampling speed against what users would otherwise run, all in one run per model size: the
same weights, latents, labels, steps and guidance (CFG 1.5 + NAG 0.5: three passes per step,
Euler), timed through these loops.

Peers: a plain-torch DiT written like DiT's own models.py (`benchmarks/plain_dit.py`, no project
kernels), loaded with the project DiT's weights, in a loop doing per step what nag_engine's step
does: the three passes as one 3B batch (`torch.cat`), one forward in bf16, `chunk`, the guidance
combination and the Euler update (state in float32, as nag_engine keeps it).
  (p1) eager bf16;
  (p2) the whole step function (forward, guidance, update) under `torch.compile`, default mode;
  (p3) under `torch.compile(mode="max-autotune")` (Triton GEMM autotuning + CUDA graphs);
  (p4) under `torch.compile(mode="reduce-overhead")` (CUDA graphs).
nag_engine: the project DiT with the same weights in bf16, `ne.Sampler(...).sample`.
  (n1) default: fused guidance + solver step, the DiT's fused Triton kernels, CUDA graphs;
  (n2) `compile=True` (the DiT's kernels as they are, "auto");
  (n3) `compile=True` with the DiT's fused kernels off (torch.compile fuses that work itself).
Optional: (a) eager fp32, one forward per guidance term, plain DiT (the papers' reference loop;
--tiny runs it). The max |diff| column compares final latents with (a) when it ran, else (p1).

On the CPU (p3), (p4) and (n3) are skipped, each with its reason (CUDA graphs, Triton, kernels
that run on CUDA only). With --diffusers (where diffusers imports) a side comparison of other
work is added: (e) diffusers' DiTPipeline and (f) its transformer through nag_engine's adapter,
both CFG only (two passes per step) with DDIM, on diffusers' own DiTTransformer2DModel of the
same size (random weights, learned-sigma channels); (e) also steps both CFG halves and decodes
with a minimal VAE at the end. (f) is reported against (e); neither is a "peer" of the CFG + NAG
rows.

    python -m benchmarks.sampling                      # GPU: S/2, B/2 b64 20 steps; XL/2 b256 10
    python -m benchmarks.sampling --models DiT-S/2,DiT-XL/2 --diffusers --out r.json
    python -m benchmarks.sampling --models DiT-S/2 --batches 1,16,64 --variants p1,p2,n1
    python -m benchmarks.sampling --tiny               # CPU smoke configuration

Reports ms per step, images/s, peak memory (the loop's model weights plus what the loop
allocates above what was resident before its first call; compile caches and CUDA-graph pools
made in the warm-up count), model FLOP utilisation (forward FLOPs x 3 passes x steps / time /
the GPU's bf16 peak) and every row's speed against the best peer, the fastest of (p1)-(p4)
(> 1: faster). Issue 17's targets for nag_engine: >= 1.3x at DiT-S/2 batch 64, >= 1.1x at
DiT-XL/2 batch 256. Random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

import nag_engine as ne
from benchmarks.plain_dit import PlainDiT, plain_dit_from
from nag_engine import backends
from nag_engine.models import DiT
from nag_engine.models.dit import DIT_CONFIGS

CFG, NAG = 1.5, 0.5  # cfg_scale 1.0 and nag_scale 0.0 are off (docs/ARCHITECTURE.md §1)
PEERS = ("p1", "p2", "p3", "p4")
ENGINE = ("n1", "n2", "n3")
VARIANTS = ("a", *PEERS, *ENGINE)
LABELS = {
    "a": "(a) plain DiT, eager fp32, 3 forwards",
    "p1": "(p1) plain DiT, eager bf16",
    "p2": "(p2) plain DiT + torch.compile",
    "p3": '(p3) plain DiT + compile "max-autotune"',
    "p4": '(p4) plain DiT + compile "reduce-overhead"',
    "n1": "(n1) nag_engine",
    "n2": "(n2) nag_engine compile=True",
    "n3": "(n3) nag_engine compile=True, DiT kernels off",
    "e": "(e) diffusers DiTPipeline (CFG)",
    "f": "(f) its DiT via nag_engine (CFG)",
}
COMPILE_MODES = {"p2": "default", "p3": "max-autotune", "p4": "reduce-overhead"}
CUDA_GRAPH_MODES = ("max-autotune", "reduce-overhead")  # torch.compile modes with CUDA graphs
COMPILED = ("p2", "p3", "p4", "n2", "n3")
CPU_SKIPS = {
    "p3": "needs CUDA: max-autotune autotunes Triton GEMMs and captures CUDA graphs",
    "p4": "needs CUDA: reduce-overhead is CUDA graphs",
    "n3": "the DiT's fused kernels run on CUDA only, so (n2) already has them off here",
}
# (batch, steps) per model when --batches / --steps are not given: the target batches
DEFAULTS = {"DiT-S/2": (64, 20), "DiT-B/2": (64, 20), "DiT-L/2": (256, 10), "DiT-XL/2": (256, 10)}
TARGETS = {("DiT-S/2", 64): 1.3, ("DiT-XL/2", 256): 1.1}  # issue 17: nag_engine / best peer
# diffusers' DiTTransformer2DModel sizes: (heads, head dim, layers)
DIFFUSERS_SIZES = {
    "DiT-S/2": (6, 64, 12),
    "DiT-B/2": (12, 64, 12),
    "DiT-L/2": (16, 64, 24),
    "DiT-XL/2": (16, 72, 28),
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM


def make_model(name: str, tiny: bool, device: torch.device) -> DiT:
    """The project DiT of the named size on a 32x32x4 latent (or a tiny one), small random
    weights, float32."""
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


@dataclass
class PeerInputs:
    """What the peer loops read each step, made once on the device before timing (nag_engine
    builds its step tables once too)."""

    taus: list[Tensor]  # per step: the network timestep 1000 t, float32 [3B]
    dts: list[Tensor]  # per step: t_next - t, float32 0-d
    y3: Tensor  # labels of the three passes [y, null class, y]
    drop_t: Tensor  # null noise embedding on the third pass: [False, False, True]


def peer_inputs(grid: Tensor, y: Tensor, num_classes: int) -> PeerInputs:
    """The peer loops' per-step tensors for the time grid ``grid`` and labels ``y``."""
    b, device = len(y), y.device
    times = grid.to(device, torch.float32)
    taus = [(t * 1000.0).repeat(3 * b) for t in times[:-1]]  # float32, as the project DiT does
    dts = [(t_next - t).reshape(()) for t, t_next in zip(times[:-1], times[1:])]
    null = torch.full_like(y, num_classes)
    drop_t = torch.arange(3 * b, device=device) >= 2 * b
    return PeerInputs(taus, dts, torch.cat([y, null, y]), drop_t)


def peer_step(
    model: PlainDiT, x: Tensor, tau: Tensor, dt: Tensor, y3: Tensor, drop_t: Tensor
) -> Tensor:
    """One CFG + NAG Euler step as nag_engine takes it: the three passes as one 3B batch in the
    model's dtype, the guidance combination and the update in float32."""
    xb = x.to(model.x_embedder.proj.weight.dtype)
    cond, uncond, no_t = model(torch.cat([xb, xb, xb]), tau, y3, drop_t).float().chunk(3)
    v = cond + (CFG - 1) * (cond - uncond) + NAG * (cond - no_t)
    return x + dt * v


def loop_peer(
    step: Callable[..., Tensor], x: Tensor, inputs: PeerInputs, cuda_graphs: bool = False
) -> Tensor:
    """(p1)-(p4): ``step(x, tau, dt, y3, drop_t)`` over the grid from the latents ``x``.
    ``cuda_graphs``: the step is a torch.compile'd function that replays CUDA graphs, whose
    output is overwritten by the next replay (so it is copied out each step)."""
    for tau, dt in zip(inputs.taus, inputs.dts):
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        x = step(x, tau, dt, inputs.y3, inputs.drop_t)
        if cuda_graphs:
            x = x.clone()
    return x


def loop_reference(model: PlainDiT, x: Tensor, inputs: PeerInputs) -> Tensor:
    """(a): one forward per guidance term, in the model's dtype (fp32 here)."""
    b = len(x)
    y, null, ones = inputs.y3[:b], inputs.y3[b : 2 * b], inputs.drop_t[2 * b :]
    for tau, dt in zip(inputs.taus, inputs.dts):
        t = tau[:b]
        cond, uncond, no_t = model(x, t, y), model(x, t, null), model(x, t, y, ones)
        x = x + dt * (cond + (CFG - 1) * (cond - uncond) + NAG * (cond - no_t))
    return x


def weight_bytes(*modules: nn.Module) -> int:
    """Bytes of the modules' parameters and buffers."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors)


def timed(
    fn: Callable[[], Tensor], device: torch.device, reps: int, weights: int = 0
) -> tuple[float, float, Tensor]:
    """(median seconds of `reps` runs after one warm-up, peak GiB or nan, the last output).
    Peak: ``weights`` bytes + the most allocated above what was allocated before the warm-up."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    before = torch.cuda.memory_allocated(device) if cuda else 0
    fn()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = float("nan")
    if cuda:
        peak = (torch.cuda.max_memory_allocated(device) - before + weights) / 2**30
    return sorted(times)[len(times) // 2], peak, out


def fused_step_seconds(sampler: ne.Sampler, batch: int, device: torch.device) -> float:
    """Seconds of one fused guidance + solver step (3 passes) at this batch, alone."""
    shape = (batch, *sampler.model.sample_shape)
    out = torch.randn(3, *shape, device=device).to(torch.bfloat16)
    x, g = torch.randn(shape, device=device), torch.empty(shape, device=device)
    nxt = torch.empty(3, *shape, device=device, dtype=torch.bfloat16)
    fn = backends.implementation(sampler.backend)
    stage = torch.zeros((), dtype=torch.long, device=device)
    tables = sampler.plan.tables

    def step():
        return fn(out, tables.weights, tables.coef, stage, x, g_out=g, next_input=nxt)

    return timed(step, device, 50)[0]


@dataclass
class Setup:
    """The models and inputs of one (model size, batch) measurement."""

    project: DiT  # bf16, the project DiT
    plain: PlainDiT  # bf16, the same weights
    reference: PlainDiT | None  # fp32, for (a)
    latents: Tensor
    y: Tensor
    inputs: PeerInputs
    steps: int
    engine_compile: bool | dict
    samplers: dict[str, ne.Sampler] = field(default_factory=dict)


def build_loop(key: str, s: Setup) -> tuple[Callable[[], Tensor], int]:
    """(the loop of variant ``key`` as a function of nothing, its model's weight bytes)."""
    if key == "a":
        reference = s.reference
        return (lambda: loop_reference(reference, s.latents, s.inputs)), weight_bytes(reference)
    if key in PEERS:

        def step(x, tau, dt, y3, drop_t):
            return peer_step(s.plain, x, tau, dt, y3, drop_t)

        mode = COMPILE_MODES.get(key)
        if mode is not None:
            step = torch.compile(step, mode=mode)
        graphs = mode in CUDA_GRAPH_MODES
        return (lambda: loop_peer(step, s.latents, s.inputs, graphs)), weight_bytes(s.plain)
    model = s.project if key != "n3" else copy.deepcopy(s.project).set_fused_kernels("off")
    compile_option = s.engine_compile if key != "n1" else False
    options = dict(cfg_scale=CFG, nag_scale=NAG, solver="euler", dtype="bf16")
    sampler = ne.Sampler(model, s.steps, compile=compile_option, **options)
    s.samplers[key] = sampler
    batch = len(s.y)

    def run():
        return sampler.sample(batch, y=s.y, latents=s.latents, batch_size=batch, progress=False)

    return run, weight_bytes(model)


def measure(
    name: str,
    batch: int,
    steps: int,
    device: torch.device,
    tiny: bool,
    variants: tuple[str, ...],
    reps: int,
    engine_compile: bool | dict = True,
) -> dict:
    """One row: every variant's time, memory, MFU and agreement at this model size and batch."""
    model32 = make_model(name, tiny, device)
    project = copy.deepcopy(model32).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, *model32.sample_shape, generator=gen).to(device)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    grid = ne.Sampler(project, steps, solver="euler").grid
    setup = Setup(
        project=project,
        plain=plain_dit_from(project),
        reference=plain_dit_from(model32) if "a" in variants else None,
        latents=latents,
        y=y,
        inputs=peer_inputs(grid, y, 1000),
        steps=steps,
        engine_compile=engine_compile,
    )
    del model32
    flops = project.forward_flops() * batch * 3 * steps
    row: dict = {"model": "tiny DiT" if tiny else name, "batch": batch, "steps": steps}
    outputs = {}
    with torch.no_grad():
        for key in variants:
            if device.type != "cuda" and key in CPU_SKIPS:
                row[key] = {"skipped": CPU_SKIPS[key]}
                continue
            if key in COMPILED:
                torch.compiler.reset()  # a fresh compile cache for each compiled variant
            fn, weights = build_loop(key, setup)
            seconds, peak, outputs[key] = timed(fn, device, reps, weights)
            row[key] = {
                "passes": 3,
                "images_per_s": batch / seconds,
                "ms_per_step": 1e3 * seconds / steps,
                "peak_GiB": peak,
                "tflops": flops / seconds / 1e12,
            }
            # as it goes, so that a run cut off by a time limit still shows what it measured
            print(
                f"{row['model']} b{batch}: {LABELS[key]} {1e3 * seconds / steps:.2f} ms/step",
                flush=True,
            )
    reference = next((k for k in ("a", "p1") if k in outputs), None)
    row["diff_reference"] = reference
    for key, out in outputs.items():
        diff = (out - outputs[reference]).abs().max() if reference else float("nan")
        row[key]["max_abs_diff"] = float(diff)
    timed_peers = [k for k in PEERS if k in outputs]
    row["best_peer"] = min(timed_peers, key=lambda k: row[k]["ms_per_step"], default=None)
    if row["best_peer"] is not None:
        best_ms = row[row["best_peer"]]["ms_per_step"]
        for key in outputs:
            row[key]["vs_best_peer"] = best_ms / row[key]["ms_per_step"]
    for key, sampler in setup.samplers.items():
        row[key].update(backend=sampler.backend, graphs=sampler.graph_status())
    if "n1" in setup.samplers:
        share = fused_step_seconds(setup.samplers["n1"], batch, device) * 1e3
        row["n1"]["guidance_solver_share"] = share / row["n1"]["ms_per_step"]
    return row


def measure_diffusers(
    name: str, batch: int, steps: int, device: torch.device, tiny: bool, reps: int
) -> dict:
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
    # diffusers' guidance_scale is the same convention: uncond + s (cond - uncond)
    # a copy: the wrapper's hooks must not run inside diffusers' own pipeline (e)
    model = DiffusersDiT(copy.deepcopy(transformer))
    sampler = ne.Sampler(model, steps, solver="ddim", cfg_scale=CFG, dtype="bf16")
    y = torch.tensor(labels, device=device)

    def run_e():
        return pipe(
            class_labels=labels, guidance_scale=CFG, num_inference_steps=steps, output_type="pt"
        ).images

    runs = {
        "e": (run_e, weight_bytes(transformer, vae)),
        "f": (
            lambda: sampler.sample(batch, y=y, batch_size=batch, progress=False),
            weight_bytes(model),
        ),
    }
    row = {}
    with torch.no_grad():
        for key, (fn, weights) in runs.items():
            seconds, peak, _ = timed(fn, device, reps, weights)
            row[key] = {
                "passes": 2,
                "images_per_s": batch / seconds,
                "ms_per_step": 1e3 * seconds / steps,
                "peak_GiB": peak,
                "tflops": float("nan"),
            }
    row["f"]["speedup_vs_e"] = row["e"]["ms_per_step"] / row["f"]["ms_per_step"]
    return row


def markdown(device_name: str, peak_tflops: float | None, rows: list[dict]) -> str:
    """The rows as a markdown table, each (model, batch) closed by its best-peer summary."""
    lines = [
        f"Device: {device_name}" + (f" (bf16 peak {peak_tflops:g} TFLOP/s)" if peak_tflops else ""),
        "",
        "vs best peer: the fastest of (p1)-(p4)'s ms/step over the row's (> 1: faster). "
        "(e)/(f): CFG only, DDIM, diffusers' transformer -- (f) is compared with (e) alone.",
        "",
        "| model | batch | loop | passes | ms/step | images/s | vs best peer | peak GiB | MFU "
        "| max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        head = f"| {row['model']} | {row['batch']} |"
        for key in (*VARIANTS, "e", "f"):
            r = row.get(key)
            if r is None:
                continue
            if "skipped" in r:
                lines.append(f"{head} {LABELS[key]} | — | skipped: {r['skipped']} | | | | | |")
                continue
            known = peak_tflops and r["tflops"] == r["tflops"]  # (nan: not counted)
            mfu = f"{r['tflops'] / peak_tflops:.1%}" if known else "—"
            if "vs_best_peer" in r:
                ratio = f"{r['vs_best_peer']:.2f}×"
            elif "speedup_vs_e" in r:
                ratio = f"{r['speedup_vs_e']:.2f}× vs (e)"
            else:
                ratio = "—"
            diff = f"{r['max_abs_diff']:.2g}" if "max_abs_diff" in r else "—"
            lines.append(
                f"{head} {LABELS[key]} | {r['passes']} | {r['ms_per_step']:.2f} "
                f"| {r['images_per_s']:.2f} | {ratio} | {r['peak_GiB']:.2f} | {mfu} | {diff} |"
            )
        lines.append(f"{head} {summary(row)} | | | | | | | |")
    return "\n".join(lines)


def summary(row: dict) -> str:
    """One line: the best peer, nag_engine's best ratio against it (and the issue's target)."""
    best = row.get("best_peer")
    if best is None:
        return "no peer loop timed"
    text = f"best peer {LABELS[best].split()[0]} {row[best]['ms_per_step']:.2f} ms/step"
    engine = [k for k in ENGINE if "vs_best_peer" in row.get(k, {})]
    if engine:
        top = max(engine, key=lambda k: row[k]["vs_best_peer"])
        text += f"; nag_engine best {LABELS[top].split()[0]} {row[top]['vs_best_peer']:.2f}×"
        target = TARGETS.get((row["model"], row["batch"]))
        if target is not None:
            met = "met" if row[top]["vs_best_peer"] >= target else "not met"
            text += f" (issue 17 target ≥ {target}×: {met})"
    if "guidance_solver_share" in row.get("n1", {}):
        n1 = row["n1"]
        text += (
            f"; (n1) guidance + solver {n1['guidance_solver_share']:.1%} of the step, "
            f"backend {n1['backend']}, {n1['graphs']}"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    """Parse the options, measure every (model, batch), print the JSON rows and the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="DiT-S/2,DiT-B/2,DiT-XL/2")
    parser.add_argument(
        "--batches", default=None, help="comma list (default: per model, see --steps)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help=f"default per model, (batch, steps): {DEFAULTS}"
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--variants", default=None, help=f"subset of {','.join(VARIANTS)} (default all but a)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny DiT, batch 4, 4 steps (CPU)")
    parser.add_argument(
        "--engine-compile-mode",
        default="default",
        choices=["default", "max-autotune-no-cudagraphs"],
        help="torch.compile mode of (n2)/(n3) (nag_engine captures its own CUDA graphs)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak for MFU")
    parser.add_argument("--diffusers", action="store_true", help="add (e) and (f), see above")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    default_variants = VARIANTS if args.tiny else VARIANTS[1:]
    variants = tuple(args.variants.split(",")) if args.variants else default_variants
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    if set(variants) - set(VARIANTS):
        parser.error(f"--variants takes a subset of {','.join(VARIANTS)} (--diffusers adds e,f)")
    if args.diffusers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            parser.error("--diffusers needs the diffusers package (pip install diffusers)")
    if args.tiny:
        runs = [("tiny", 4, min(args.steps or 4, 4))]
    else:
        models = args.models.split(",")
        unknown = set(models) - set(DIT_CONFIGS)
        if unknown:
            parser.error(f"unknown models {sorted(unknown)}: choose from {list(DIT_CONFIGS)}")
        batches = [int(b) for b in args.batches.split(",")] if args.batches else None
        runs = [
            (m, b, args.steps or DEFAULTS[m][1])
            for m in models
            for b in batches or [DEFAULTS[m][0]]
        ]
    mode = args.engine_compile_mode
    engine_compile = True if mode == "default" else {"mode": mode}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    rows = []
    for model, batch, steps in runs:
        row = measure(model, batch, steps, device, args.tiny, variants, args.reps, engine_compile)
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
