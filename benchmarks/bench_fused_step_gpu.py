"""GPU benchmark of the fused kernels, each against a baseline measured in the same run.

1. The fused guidance + solver step (CFG + NAG with Euler: P = 3 passes in, 3 next-input
   slots out, the fp32 state read and written, the guided prediction written), for every fused
   backend that runs here (`triton`, `cuda`): achieved memory bandwidth as a fraction of a plain
   device-to-device copy of the same number of bytes, and speed against the chain of torch ops
   it replaces (`nag_engine.backends.reference_step`). Bytes moved per call:
   3 n s (outputs) + 4 n (x) + 4 n (new x) + 4 n (g) + 3 n s (next input), s = model dtype size.
2. The DiT's LayerNorm + adaLN modulation (`nag_engine.kernels.adaln.layernorm_modulate`)
   against PyTorch's `F.layer_norm` followed by the modulation, on DiT-S/B/XL token shapes.
3. The parallel sampler's fused Picard update (`nag_engine.kernels.picard`: guidance, drift,
   cumulative sum over the window, per-step error) against its torch reference, on 32x32x4
   latents with 3 passes and stochastic steps. Bytes per call: L P B D s (outputs) +
   (L + 1) B D 4 (window read) + L B D 4 (window written) + L B D 4 (noise).

    python benchmarks/bench_fused_step_gpu.py --out results.json   # needs CUDA

Prints one JSON line per measurement and a markdown table at the end (paste it, with the
device name it prints, into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nag_engine import backends
from nag_engine.models.dit import modulate

PASSES = 3
FUSED = ("triton", "cuda")
# (name, batch, tokens, hidden): DiT-S/2, B/2, XL/2 on a 32x32x4 latent (256 tokens), with the
# 3 guidance passes stacked in the batch
ADALN_SHAPES = [
    ("DiT-S/2 b64", 192, 256, 384),
    ("DiT-B/2 b64", 192, 256, 768),
    ("DiT-XL/2 b64", 192, 256, 1152),
    ("DiT-XL/2 b256", 768, 256, 1152),
]
# (name, window, batch) of the Picard update, on latents of LATENT_DIM elements
PICARD_SHAPES = [
    ("window 50, b16", 50, 16),
    ("window 100, b64", 100, 64),
    ("window 1000, b16", 1000, 16),
]
LATENT_DIM = 4 * 32 * 32


def timed(fn, reps: int, device: torch.device) -> float:
    """Median seconds per call over `reps` timed calls (CUDA events on a GPU), after warm-up."""
    for _ in range(3):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return sorted(times)[len(times) // 2]


def measure_step(state_bytes: int, dtype: torch.dtype, device: torch.device, reps: int) -> dict:
    """One size and dtype of the fused step: every fused backend against copy and torch."""
    n = state_bytes // 4
    size = torch.finfo(dtype).bits // 8
    out = torch.randn(PASSES, n, device=device).to(dtype)
    x = torch.randn(n, device=device)
    g = torch.empty(n, device=device)
    nxt = torch.empty(PASSES, n, device=device, dtype=dtype)
    weights = torch.tensor([[2.5, -1.0, -0.5, 0.0]], device=device)
    coef = torch.tensor([[1.0, -0.02, 0.0, 0.0, 1.0, 0.0]], device=device)  # COEF_COLUMNS
    stage = torch.zeros((), dtype=torch.int32, device=device)
    moved = 2 * PASSES * n * size + 12 * n
    src = torch.empty(moved // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    reps = max(5, reps // 5) if moved > 2**28 else reps

    def step(name):
        fn = backends.implementation(name)
        return lambda: fn(out, weights, coef, stage, x, g_out=g, next_input=nxt)

    t_copy = timed(lambda: dst.copy_(src), reps, device)
    t_torch = timed(step("reference"), reps, device)
    copy_bw = 2 * src.numel() / t_copy
    row = {
        "state_bytes": state_bytes,
        "dtype": str(dtype).replace("torch.", ""),
        "bytes_moved": moved,
        "copy_GBps": copy_bw / 1e9,
        "torch_chain_us": t_torch * 1e6,
    }
    for name in FUSED:
        if not _runs(device, name):
            continue
        t = timed(step(name), reps, device)
        row[f"{name}_us"] = t * 1e6
        row[f"{name}_fraction_of_copy"] = moved / t / copy_bw
        row[f"{name}_speedup_vs_torch"] = t_torch / t
    return row


def measure_adaln(
    name: str, shape: tuple, dtype: torch.dtype, device: torch.device, reps: int
) -> dict:
    """LayerNorm + modulation: the Triton kernel against F.layer_norm + modulate."""
    from nag_engine.kernels.adaln import layernorm_modulate

    batch, tokens, dim = shape
    x = torch.randn(batch, tokens, dim, device=device).to(dtype)
    mod = torch.randn(batch, 6 * dim, device=device).to(dtype)
    shift, scale = mod.chunk(6, dim=1)[:2]  # the row-strided views the DiT passes
    t_torch = timed(lambda: modulate(F.layer_norm(x, (dim,), eps=1e-6), shift, scale), reps, device)
    t_fused = timed(lambda: layernorm_modulate(x, shift, scale, 1e-6), reps, device)
    moved = 2 * x.numel() * x.element_size()
    return {
        "shape": name,
        "dtype": str(dtype).replace("torch.", ""),
        "torch_us": t_torch * 1e6,
        "fused_us": t_fused * 1e6,
        "speedup_vs_torch": t_torch / t_fused,
        "fused_GBps": moved / t_fused / 1e9,
    }


def measure_picard(
    name: str,
    window: int,
    batch: int,
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
    reps: int,
) -> dict:
    """The fused Picard update of one window against its torch reference (Triton where it
    runs here; the reference alone otherwise)."""
    out = torch.randn(window, PASSES, batch, dim, device=device).to(dtype)
    weights = torch.tensor([[2.5, -1.0, -0.5]], device=device).expand(window, PASSES)
    a = torch.full((window,), 0.999, device=device)
    b, c = torch.full_like(a, -0.01), torch.full_like(a, 0.05)
    xs = torch.randn(window + 1, batch, dim, device=device)
    z = torch.randn(window, batch, dim, device=device)
    moved = window * PASSES * batch * dim * out.element_size() + (3 * window + 1) * batch * dim * 4

    def update(backend: str):
        fn = backends.picard_implementation(backend)
        return lambda: fn(out, weights, a, b, c, xs, z)

    t_torch = timed(update("reference"), reps, device)
    row = {
        "shape": name,
        "dtype": str(dtype).replace("torch.", ""),
        "bytes_moved": moved,
        "torch_us": t_torch * 1e6,
    }
    if _runs(device, "triton"):
        t = timed(update("triton"), reps, device)
        row.update(triton_us=t * 1e6, speedup_vs_torch=t_torch / t, triton_GBps=moved / t / 1e9)
    return row


def _runs(device: torch.device, name: str) -> bool:
    try:
        backends.select(device, name)
    except ValueError:
        return False
    return True


def _size(num_bytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:g} {unit}"
    return f"{num_bytes} B"


def markdown(
    device_name: str, steps: list[dict], adaln: list[dict], picard: list[dict] = ()
) -> str:
    lines = [
        f"Device: {device_name}",
        "",
        "| state | dtype | copy GB/s | torch chain µs | "
        + " | ".join(f"{k} µs | {k} / copy | {k} speed-up" for k in FUSED)
        + " |",
        "|---" * (4 + 3 * len(FUSED)) + "|",
    ]
    for r in steps:
        cells = [
            _size(r["state_bytes"]),
            r["dtype"],
            f"{r['copy_GBps']:.0f}",
            f"{r['torch_chain_us']:.1f}",
        ]
        for k in FUSED:
            if f"{k}_us" in r:
                cells += [
                    f"{r[k + '_us']:.1f}",
                    f"{r[k + '_fraction_of_copy']:.0%}",
                    f"{r[k + '_speedup_vs_torch']:.2f}×",
                ]
            else:
                cells += ["—"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| LayerNorm + modulation | dtype | torch µs | fused µs | speed-up | fused GB/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in adaln:
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['torch_us']:.1f} | {r['fused_us']:.1f} "
            f"| {r['speedup_vs_torch']:.2f}× | {r['fused_GBps']:.0f} |"
        )
    if picard:
        lines += [
            "",
            "| Picard update | dtype | torch µs | triton µs | speed-up | triton GB/s |",
            "|---|---|---|---|---|---|",
        ]
    for r in picard:
        fused = (
            [f"{r['triton_us']:.1f}", f"{r['speedup_vs_torch']:.2f}×", f"{r['triton_GBps']:.0f}"]
            if "triton_us" in r
            else ["—"] * 3
        )
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['torch_us']:.1f} | " + " | ".join(fused) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("fused_step_gpu.json"))
    parser.add_argument("--min-bytes", type=int, default=2**16)
    parser.add_argument("--max-bytes", type=int, default=2**30)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--device", default="cuda", help="cuda (the point); cpu only to smoke-test")
    parser.add_argument("--no-adaln", action="store_true", help="skip the LayerNorm benchmark")
    parser.add_argument("--no-picard", action="store_true", help="skip the Picard benchmark")
    parser.add_argument(
        "--picard-dim", type=int, default=LATENT_DIM, help="elements per latent (Picard)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark measures GPU bandwidth")
    sizes, size = [], args.min_bytes
    while size <= args.max_bytes:
        sizes.append(size)
        size *= 4
    steps, adaln, picard = [], [], []
    for dtype in (torch.bfloat16, torch.float32):
        for state_bytes in sizes:
            steps.append(measure_step(state_bytes, dtype, device, args.reps))
            print(json.dumps(steps[-1]), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if not args.no_adaln:
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for name, *shape in ADALN_SHAPES:
                adaln.append(measure_adaln(name, tuple(shape), dtype, device, args.reps))
                print(json.dumps(adaln[-1]), flush=True)
    if not args.no_picard:
        for dtype in (torch.bfloat16, torch.float32):
            for name, window, batch in PICARD_SHAPES:
                shape = (window, batch, args.picard_dim)
                picard.append(measure_picard(name, *shape, dtype, device, args.reps))
                print(json.dumps(picard[-1]), flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke test)"
    payload = {
        "device": name,
        "torch": torch.__version__,
        "available": backends.available(),
        "fused_step": steps,
        "layernorm_modulate": adaln,
        "picard_update": picard,
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(args.out)
    print(markdown(name, steps, adaln, picard))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
