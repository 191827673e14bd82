"""The `nag-engine` command: demo, sample, analyze, train, convert, encode, evaluate, export, info.

nag-engine demo                       compare baseline / CFG / NAG / CFG+NAG on the shipped
                                      models, write one PNG per model, print a quality table
nag-engine sample --model toy2d       samples (+ PNG) from a shipped model, a checkpoint
                                      file or an exact mixture (ring-exact, gmm32-exact)
nag-engine analyze --model toy2d      measure noise shift per guidance setting (PNG, JSON, CSV)
nag-engine train --preset toy2d       train a NAG-capable checkpoint (resumable); --finetune CKPT
                                      --data LATENTS adds NAG to a pretrained model
nag-engine convert IN OUT --format F  official DiT / SiT checkpoints, diffusers folders -> ours
nag-engine encode IMAGES OUT --vae D  images -> training latents through a VAE
nag-engine evaluate SAMPLES --ref R   FID, Inception Score, precision/recall (--inception PATH)
nag-engine export SAMPLES OUT.npz     samples -> an ADM batch .npz for the ADM evaluation suite
nag-engine info [PATH]                what a checkpoint is; without PATH, the kernel backends here

One module per command (demo, sample, analyze, train, convert, encode, evaluate, export, info),
each with `add_parser(commands)` and `run(args)`; common.py holds what they share. This module
assembles the parser and runs the chosen command.

Bad input fails before any work with exit status 2 and one line on stderr, `nag-engine
COMMAND: error: ...`, naming the option and the fix: argparse's usage errors (CommandParser),
and the ValueError / TypeError / OSError that a command's checks (run first, before any model
load or sampling) or the library's argument checks raise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

import torch

from .. import __version__, distributed
from . import analyze, convert, demo, encode, evaluate, export, info, sample, train
from .common import (
    DEVICE_HELP,
    DEVICE_OPTION,
    CommandParser,
    one_line,
    picture,
    positive_int,
    print_table,
    reference_samples,
    resolve_device,
    resolve_model,
)

__all__ = [
    "DEVICE_HELP",
    "DEVICE_OPTION",
    "main",
    "picture",
    "positive_int",
    "print_table",
    "reference_samples",
    "resolve_device",
    "resolve_model",
]

# the commands in the order --help lists them
COMMANDS = {
    "demo": demo,
    "sample": sample,
    "analyze": analyze,
    "train": train,
    "convert": convert,
    "encode": encode,
    "evaluate": evaluate,
    "export": export,
    "info": info,
}


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="nag-engine",
        description="Sampling with Noise Awareness Guidance (NAG): demo, sample, analyze, train, "
        "convert, encode, evaluate, export, info.",
        epilog="Start with `nag-engine demo`; each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"nag_engine {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_parser(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `nag-engine` command."""
    args = _parser().parse_args(argv)
    prefix = f"nag-engine {args.command}{distributed.rank_label()}: error:"
    try:
        return COMMANDS[args.command].run(args)
    except (ValueError, TypeError, OSError, ImportError, distributed.DistributedRunError) as err:
        print(f"{prefix} {one_line(err)}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError:
        print(
            f"{prefix} the GPU ran out of memory; lower --batch-size (and "
            "--decode-batch-size for a VAE), or use --dtype bf16",
            file=sys.stderr,
        )
        return 2
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and "allocate" not in str(err):
            raise
        print(
            f"{prefix} this machine ran out of memory ({one_line(err)[:200]}); ask for less: "
            "lower --n or --batch-size",
            file=sys.stderr,
        )
        return 2
