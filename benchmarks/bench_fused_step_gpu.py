"""GPU benchmark of the fused guidance + solver step: achieved memory bandwidth against a plain
device-to-device copy of the same number of bytes, and speed against the chain of torch ops it
replaces (`nag_engine.backends.reference_step`), in the same run.

The measured step is CFG + NAG with Euler: P = 3 passes in, 3 next-input slots out, the fp32
state read and written, the guided prediction written. Bytes moved per call:
3 n s (outputs) + 4 n (x) + 4 n (new x) + 4 n (g) + 3 n s (next input), s = model dtype size.

    python benchmarks/bench_fused_step_gpu.py --out results.json   # needs CUDA and triton
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from nag_engine.kernels.fused_step import fused_step

from nag_engine.backends import reference_step

PASSES = 3


def timed(fn, reps: int) -> float:
    """Median seconds per call over `reps` timed calls (CUDA events), after warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    times.sort()
    return times[len(times) // 2]


def measure(state_bytes: int, dtype: torch.dtype) -> dict:
    n = state_bytes // 4
    dev = "cuda"
    size = torch.finfo(dtype).bits // 8
    out = torch.randn(PASSES, n, device=dev).to(dtype)
    x = torch.randn(n, device=dev)
    g = torch.empty(n, device=dev)
    nxt = torch.empty(PASSES, n, device=dev, dtype=dtype)
    weights = torch.tensor([[2.5, -1.0, -0.5, 0.0]], device=dev)
    coef = torch.tensor([[1.0, -0.02, 0.0, 0.0, 1.0]], device=dev)
    stage = torch.zeros((), dtype=torch.int32, device=dev)
    moved = 2 * PASSES * n * size + 12 * n
    src = torch.empty(moved // 2, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    reps = 20 if moved > 2**28 else 100

    def run_fused():
        fused_step(out, weights, coef, stage, x, g_out=g, next_input=nxt)

    def run_torch():
        reference_step(out, weights, coef, stage, x, g_out=g, next_input=nxt)

    t_copy = timed(lambda: dst.copy_(src), reps)
    t_fused = timed(run_fused, reps)
    t_torch = timed(run_torch, reps)
    copy_bw = 2 * src.numel() / t_copy
    fused_bw = moved / t_fused
    return {
        "state_bytes": state_bytes,
        "dtype": str(dtype).replace("torch.", ""),
        "bytes_moved": moved,
        "copy_GBps": copy_bw / 1e9,
        "fused_GBps": fused_bw / 1e9,
        "fraction_of_copy": fused_bw / copy_bw,
        "fused_us": t_fused * 1e6,
        "torch_chain_us": t_torch * 1e6,
        "speedup_vs_torch": t_torch / t_fused,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("fused_step_gpu.json"))
    parser.add_argument("--max-bytes", type=int, default=2**30)
    args = parser.parse_args()
    rows = []
    sizes = []
    size = 2**16
    while size <= args.max_bytes:
        sizes.append(size)
        size *= 4
    for dtype in (torch.bfloat16, torch.float32):
        for state_bytes in sizes:
            row = measure(state_bytes, dtype)
            rows.append(row)
            print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()
    payload = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "rows": rows,
    }
    args.out.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
