"""Host time of one eager fused-step call at small sizes, per backend: the checked function
(`backends.implementation(name)`, every input checked on every call) against the step bound to
its buffers (`backends.BoundStep`, what the sampler calls: checked once), with one tiny torch
in-place op (``x.mul_(1.0)``) as the floor of "one operator from Python" in the same run.

    python -m benchmarks.host_overhead                  # CPU tensors: cpp and reference
    python -m benchmarks.host_overhead --device cuda    # CUDA tensors: triton, cuda, reference

The state is [B, 4, 8, 8] fp32 (B = 4 by default: 1,024 elements, so the fixed cost dominates),
CFG + NAG (3 passes), with noise (z), g_out and 3 next-input slots. Each figure is the least over
--repeats of the mean over --calls back-to-back calls, in µs, with the device synchronised
only around each timing (on a GPU at this size the launch queue is host-bound, so the time is
host time). Prints a Markdown table and writes JSON (--out). Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nag_engine import backends
from nag_engine.images import atomic_write_bytes


def inputs(device: str, batch: int) -> dict:
    g = torch.Generator().manual_seed(0)
    shape = (batch, 4, 8, 8)
    tensors = {
        "out": torch.randn(3, *shape, generator=g).to(torch.bfloat16),
        "weights": torch.randn(4, 4, generator=g),
        "coef": torch.rand(4, 6, generator=g),
        "stage": torch.tensor(1),
        "x": torch.randn(*shape, generator=g),
        "z": torch.randn(*shape, generator=g),
        "g_out": torch.empty(*shape),
        "next_input": torch.empty(3, *shape, dtype=torch.bfloat16),
    }
    return {k: v.to(device) for k, v in tensors.items()}


def per_call_us(fns: dict, device: str, calls: int, repeats: int) -> dict:
    """{name: the least over repeats of the mean wall time of `calls` calls of fns[name], in
    µs}. The functions take turns within each repeat, so load from elsewhere on the machine
    falls on all of them alike; the least, because such load only ever adds time."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for fn in fns.values():  # warm-up (Triton compiles on the first call)
        for _ in range(min(calls, 200)):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: min(values) for name, values in times.items()}


def measure(device: str, batch: int, calls: int, repeats: int) -> list[dict]:
    t = inputs(device, batch)
    rows = []
    for name in backends.BACKENDS:
        try:
            backends.select(device, name)
        except ValueError as err:
            print(f"skipping {name}: {err}")
            continue
        fused_step = backends.implementation(name)

        def checked(fused_step=fused_step):
            fused_step(
                t["out"],
                t["weights"],
                t["coef"],
                t["stage"],
                t["x"],
                z=t["z"],
                g_out=t["g_out"],
                next_input=t["next_input"],
            )

        bound = backends.BoundStep(
            fused_step,
            t["weights"],
            t["coef"],
            t["stage"],
            t["x"],
            g_out=t["g_out"],
            next_input=t["next_input"],
        )
        us = per_call_us(
            {
                "checked": checked,
                "bound": lambda b=bound: b(t["out"], t["z"], 3),
                "floor": lambda: t["x"].mul_(1.0),
            },
            device,
            calls,
            repeats,
        )
        rows.append(
            dict(
                backend=name,
                checked_us=us["checked"],
                bound_us=us["bound"],
                floor_us=us["floor"],
                bound_over_floor=us["bound"] / us["floor"],
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device_name = (
        torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    )
    rows = measure(args.device, args.batch, args.calls, args.repeats)
    n = args.batch * 4 * 8 * 8
    print(
        f"\nhost time per eager fused-step call, {device_name}, state {n} fp32 elements, "
        f"torch {torch.__version__}, {args.threads} thread(s)\n"
    )
    print("| backend | checked call µs | bound call µs | x.mul_(1.0) µs | bound / mul_ |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['checked_us']:.1f} | {r['bound_us']:.1f} | "
            f"{r['floor_us']:.1f} | {r['bound_over_floor']:.2f} |"
        )
    if args.out is not None:
        record = dict(
            device=device_name, torch=torch.__version__, elements=n, threads=args.threads, rows=rows
        )
        atomic_write_bytes(args.out, (json.dumps(record, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
