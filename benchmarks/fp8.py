"""FP8 sampling (`dtype="fp8"`) against bf16: the error of the final samples from the same
latents (max |difference|, PSNR over the [-1, 1] range), and, on a GPU, the speed.

    python -m benchmarks.fp8 --samples 512         # CPU: the error on the shipped digits DiT
    python -m benchmarks.fp8 --speed --device cuda  # + DiT-S/2 error, DiT-XL/2 speed

The error is measured on the trained digits DiT (fp32 as the reference, `--samples` samples,
with FD-digits against the real digits) and, on a GPU, on DiT-S/2 with random (non-zero)
weights (bf16 on a CPU without bf16 units takes tens of minutes there); the speed on DiT-XL/2
(random weights: speed does not depend on them) with CFG + NAG, CUDA graphs on.
Prints Markdown tables and writes JSON (--out). Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import nag_engine as ne
from nag_engine.analysis.digit_features import fd_digits, real_digits
from nag_engine.images import atomic_write_bytes
from nag_engine.models.dit import DIT_CONFIGS
from nag_engine.presets import shipped_checkpoint

GUIDANCE = dict(cfg_scale=1.5, nag_scale=0.5)


def psnr(x: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of x against reference for values in [-1, 1] (peak-to-peak 2)."""
    mse = float(((x.float() - reference.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()


def random_dit(name: str, device: str, seed: int = 0) -> torch.nn.Module:
    """A class-conditional DiT on 32x32x4 latents with every weight drawn (no zero init, so the
    blocks change the output), NAG-capable."""
    torch.manual_seed(seed)
    model = ne.models.DiT(input_size=32, num_classes=1000, **DIT_CONFIGS[name])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    model.supports_noise_dropout = True
    return model.to(device).eval()


def error_rows(model: torch.nn.Module, n: int, steps: int, labels: torch.Tensor) -> dict:
    """Samples in fp32, bf16 and fp8 from the same seed; each against fp32 and fp8 against
    bf16."""
    runs = {}
    for dtype in ("fp32", "bf16", "fp8"):
        sampler = ne.Sampler(model, steps, dtype=dtype, **GUIDANCE)
        runs[dtype] = sampler.sample(n, y=labels, seed=0, progress=False).float().cpu()
    rows = {}
    for name, x, ref in (
        ("bf16 vs fp32", runs["bf16"], runs["fp32"]),
        ("fp8 vs fp32", runs["fp8"], runs["fp32"]),
        ("fp8 vs bf16", runs["fp8"], runs["bf16"]),
    ):
        rows[name] = {"max_abs": float((x - ref).abs().max()), "psnr_db": psnr(x, ref)}
    return {"runs": runs, "rows": rows}


def speed(device: str, batch: int, steps: int) -> dict:
    """ms per CFG+NAG Euler step at DiT-XL/2 for bf16 and fp8 (CUDA graphs, best of 3)."""
    model = random_dit("DiT-XL/2", device)
    labels = torch.arange(batch) % 1000
    result = {}
    for dtype in ("bf16", "fp8"):
        sampler = ne.Sampler(model, steps, dtype=dtype, **GUIDANCE)
        sampler.sample(batch, y=labels, seed=0, progress=False)  # capture, warm-up
        best = float("inf")
        for _ in range(3):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            sampler.sample(batch, y=labels, seed=0, progress=False)
            stop.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(stop) / steps)
        result[dtype] = best
        del sampler
    result["fp8_speedup"] = result["bf16"] / result["fp8"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=1797, help="digits samples (max 1797)")
    parser.add_argument("--speed", action="store_true", help="time DiT-XL/2 (needs CUDA)")
    parser.add_argument("--batch", type=int, default=256, help="batch of the speed run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = args.device
    where = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"CPU ({os.cpu_count()} cores)"
    )
    result: dict = {"device": where, "torch": torch.__version__, "steps": args.steps}

    digits = ne.load_checkpoint(shipped_checkpoint("digits"), device=device)
    real, _ = real_digits()
    n = min(args.samples, len(real))
    digit_run = error_rows(digits, n, args.steps, torch.arange(n) % 10)
    result["digits"] = digit_run["rows"]
    result["fd_digits"] = {k: fd_digits(v) for k, v in digit_run["runs"].items()}
    models = [(f"digits DiT ({n:,})", result["digits"])]
    if device.startswith("cuda"):
        small = random_dit("DiT-S/2", device)
        result["dit_s2_random"] = error_rows(small, 16, args.steps, torch.arange(16))["rows"]
        models.append(("DiT-S/2 random (16)", result["dit_s2_random"]))

    print(f"FP8 against bf16 and fp32, {args.steps} Euler steps, CFG 1.5 + NAG 0.5, on {where}\n")
    print("| model | comparison | max abs | PSNR (dB) |")
    print("|---|---|---|---|")
    for model, rows in models:
        for name, row in rows.items():
            print(f"| {model} | {name} | {row['max_abs']:.4f} | {row['psnr_db']:.1f} |")
    fd = result["fd_digits"]
    print(f"\nFD-digits ({n:,} samples): fp32 {fd['fp32']:.3f}, bf16 {fd['bf16']:.3f}, "
          f"fp8 {fd['fp8']:.3f}")  # fmt: skip
    if args.speed:
        if not device.startswith("cuda"):
            raise SystemExit("--speed times DiT-XL/2 on a GPU: pass --device cuda")
        result["speed"] = s = speed(device, args.batch, args.steps)
        print(f"\nDiT-XL/2, batch {args.batch}, CFG + NAG, CUDA graphs: bf16 {s['bf16']:.2f} ms "
              f"per step, fp8 {s['fp8']:.2f} ms per step: {s['fp8_speedup']:.2f}x")  # fmt: skip
    if args.out is not None:
        atomic_write_bytes(args.out, json.dumps(result, indent=1).encode())


if __name__ == "__main__":
    main()
