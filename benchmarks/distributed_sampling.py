"""What the sharded writer and torch.distributed cost: samples/s of `sample_to_disk` against
`Sampler.sample` in one process (the writer's overhead), and of `torchrun` with several gloo
ranks against one process, with each rank's peak memory.

    python -m benchmarks.distributed_sampling                        # CPU: digits DiT, 2 ranks
    python -m benchmarks.distributed_sampling --model DiT-XL/2 --device cuda --num-samples 1024 \\
        --batch-size 256 --ranks 0                                   # the writer on one GPU

`--model digits` is the shipped digits checkpoint; a DiT name (DiT-S/2 ... DiT-XL/2) a randomly
initialised class-conditional DiT on 32x32x4 latents (its speed does not depend on the weights).
Prints a Markdown table and writes JSON (--out). Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import nag_engine as ne
from nag_engine.identity import model_identity
from nag_engine.images import atomic_write_bytes
from nag_engine.models.dit import DIT_CONFIGS
from nag_engine.presets import shipped_checkpoint


def build_model(name: str, device: str) -> torch.nn.Module:
    if name == "digits":
        return ne.load_checkpoint(shipped_checkpoint("digits"), device=device)
    if name not in DIT_CONFIGS:
        raise SystemExit(f"--model {name}: choose digits or one of {list(DIT_CONFIGS)}")
    torch.manual_seed(0)
    model = ne.models.DiT(input_size=32, num_classes=1000, **DIT_CONFIGS[name])
    model.supports_noise_dropout = True  # the guidance passes cost what they cost
    return model.to(device).eval()


def make_sampler(args: argparse.Namespace, device: str) -> ne.Sampler:
    model = build_model(args.model, device)
    dtype = "bf16" if device.startswith("cuda") else None
    return ne.Sampler(model, args.steps, solver="euler", cfg_scale=1.5, nag_scale=0.5, dtype=dtype)


def labels(args: argparse.Namespace, sampler: ne.Sampler) -> torch.Tensor:
    return torch.arange(args.n) % sampler.model.num_classes


def peak_memory_mb() -> float:
    """This process's peak resident memory (MB; Linux reports ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, device: str, repeats: int) -> float:
    """The best of `repeats` timed calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def writer_overhead(args: argparse.Namespace) -> dict:
    """samples/s of Sampler.sample and of sample_to_disk (npz shards) in this process."""
    sampler = make_sampler(args, args.device)
    y = labels(args, sampler)
    folder = Path(tempfile.mkdtemp(prefix="nag-shards-"))

    def in_memory() -> None:
        sampler.sample(args.n, y=y, seed=0, batch_size=args.batch_size, progress=False)

    def to_disk() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        ne.sample_to_disk(
            sampler,
            args.n,
            folder,
            y=y,
            seed=0,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            progress=False,
        )

    try:
        sample_s = time_call(in_memory, args.device, args.repeats)
        disk_s = time_call(to_disk, args.device, args.repeats)
        identity_s = time_call(lambda: model_identity(sampler.model), args.device, 1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "sample_per_s": args.n / sample_s,
        "sample_to_disk_per_s": args.n / disk_s,
        "writer_overhead": disk_s / sample_s - 1,
        "weights_digest_s": identity_s,  # once per sample_to_disk call, inside disk_s
        "sample_to_disk_s": disk_s,
    }


def rank_worker(args: argparse.Namespace) -> None:
    """One rank of a torchrun launch: sample_to_disk in the group; report time and memory."""
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    sampler = make_sampler(args, "cpu")
    y = labels(args, sampler)
    sampler.sample(args.batch_size, y=y[: args.batch_size], progress=False)  # warm-up
    torch.distributed.barrier()
    start = time.perf_counter()
    ne.sample_to_disk(
        sampler,
        args.n,
        args.folder,
        y=y,
        seed=0,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        progress=False,
    )
    seconds = time.perf_counter() - start
    report = {"rank": rank, "seconds": seconds, "peak_memory_mb": peak_memory_mb()}
    atomic_write_bytes(Path(args.folder) / f"rank{rank}.json", json.dumps(report).encode())
    torch.distributed.destroy_process_group()


def launch(args: argparse.Namespace, ranks: int, threads: int) -> dict:
    """samples/s of a torchrun launch of `ranks` gloo ranks with `threads` threads each (the
    time inside sample_to_disk, slowest rank), and each rank's peak memory."""
    folder = Path(tempfile.mkdtemp(prefix="nag-ranks-"))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        "-m",
        "benchmarks.distributed_sampling",
        "--rank-worker",
        "--folder",
        str(folder),
        "--model",
        args.model,
        "--num-samples",
        str(args.n),
        "--steps",
        str(args.steps),
        "--shard-size",
        str(args.shard_size),
        "--batch-size",
        str(args.batch_size),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        subprocess.run(command, env=env, check=True, cwd=Path(__file__).parents[1])
        reports = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(ranks)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    slowest = max(r["seconds"] for r in reports)
    return {
        "ranks": ranks,
        "threads_per_rank": threads,
        "samples_per_s": args.n / slowest,
        "peak_memory_mb": [round(r["peak_memory_mb"], 1) for r in reports],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-samples", dest="n", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2, help="0: no torchrun comparison")
    parser.add_argument("--out", type=Path, default=None, help="JSON to write")
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_worker:
        rank_worker(args)
        return
    device = args.device
    name = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"CPU ({os.cpu_count()} cores)"
    )
    result = {
        "device": name,
        "model": args.model,
        "n": args.n,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "torch": torch.__version__,
    }
    result["writer"] = writer_overhead(args)
    w = result["writer"]
    print(
        f"{args.model}, {args.n} samples, {args.steps} euler steps, CFG 1.5 + NAG 0.5, "
        f"batch {args.batch_size}, shards of {args.shard_size}, on {name}\n"
    )
    print("| run | samples/s | against Sampler.sample |")
    print("|---|---|---|")
    print(f"| Sampler.sample (in memory) | {w['sample_per_s']:.1f} | 1.00 |")
    print(
        f"| sample_to_disk (npz shards) | {w['sample_to_disk_per_s']:.1f} | "
        f"{w['sample_to_disk_per_s'] / w['sample_per_s']:.3f} |"
    )
    print(
        f"\nOf the {w['sample_to_disk_s']:.2f} s of sample_to_disk, "
        f"{w['weights_digest_s']:.2f} s hash the weights for the manifest (once per call)."
    )
    if args.ranks and device == "cpu":
        cores = os.cpu_count() or 1
        runs = [launch(args, 1, cores), launch(args, args.ranks, max(1, cores // args.ranks))]
        result["torchrun"] = runs
        base = runs[0]["samples_per_s"]
        print(
            "\n| torchrun (gloo) | threads per rank | samples/s | against 1 rank | peak memory "
            "per rank (MB) |"
        )
        print("|---|---|---|---|---|")
        for run in runs:
            print(
                f"| {run['ranks']} rank{'s' if run['ranks'] > 1 else ''} | "
                f"{run['threads_per_rank']} | {run['samples_per_s']:.1f} | "
                f"{run['samples_per_s'] / base:.2f} | "
                f"{', '.join(f'{m:.0f}' for m in run['peak_memory_mb'])} |"
            )
    if args.out is not None:
        atomic_write_bytes(args.out, json.dumps(result, indent=1).encode())


if __name__ == "__main__":
    main()
