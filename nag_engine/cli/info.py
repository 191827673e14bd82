"""`nag-engine info`: what a checkpoint is; without a path, the fused-step kernel backends
available here."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `info` command and its argument."""
    info = commands.add_parser(
        "info", help="describe a checkpoint, or (without PATH) the kernel backends here"
    )
    info.add_argument(
        "path",
        nargs="?",
        default=None,
        help="checkpoint file, or a shipped name (toy2d, digits, toy2d-level, digits-level)",
    )


def _print_backends() -> None:
    from .. import backends

    print("fused-step backends (auto: triton > cuda on GPUs, cpp on CPUs, else reference):")
    for name, why in backends.available().items():
        print(f"  {name:<10} {why}")
    cuda = torch.cuda.is_available()
    print(
        f"  auto picks {backends.select('cpu')!r} for CPU tensors"
        + (f", {backends.select('cuda')!r} for CUDA tensors" if cuda else " (no CUDA device here)")
    )


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import read_header
    from ..presets import SHIPPED, shipped_checkpoint

    if args.path is None:
        _print_backends()
        return 0
    path = shipped_checkpoint(args.path) if args.path in SHIPPED else Path(args.path)
    config, shapes = read_header(path)
    params = sum(math.prod(v) for k, v in shapes.items() if k.startswith("model."))
    print(f"{path}  ({path.stat().st_size / 1e6:.2f} MB)")
    print(f"  architecture  {config['architecture']}  ({params / 1e6:.3f} M parameters)")
    print(f"  model         {json.dumps(config['model'])}")
    print(f"  schedule      {config.get('schedule')}   prediction {config.get('prediction')}")
    if config.get("train", {}).get("objective") == "noise_level":
        print("  role          noise-level head: log p(t | x) for analyze and classifier-based NAG")
    else:
        p_t = float(config.get("p_t") or 0.0)
        nag = "NAG supported" if p_t > 0 else "NAG NOT supported"
        print(
            f"  dropout       p_t={p_t} (noise condition), p_c={config.get('p_c')} (class): {nag}"
        )
    data = config.get("dataset")
    print(f"  trained on    {json.dumps(data) if data else '(not recorded: a converted model)'}")
    weights = "EMA" if config.get("ema_weights") or config.get("has_ema") else "raw"
    resumable = "optimizer_groups" in config
    step = config.get("step")
    print(
        f"  step          {step if step is not None else '-'}   weights {weights}   "
        f"resumable {resumable}"
    )
    if config.get("finetuned_from"):
        print(f"  fine-tuned from {config['finetuned_from']}")
    origin = config.get("converted_from")
    if origin:
        name = origin.get("file") or origin.get("folder")
        details = ", ".join(
            f"{k} {v}" for k, v in origin.items() if k not in ("file", "folder", "sha256")
        )
        print(f"  converted from {name} ({details})")
    return 0
