"""`nag-engine convert`: official DiT / SiT checkpoints and diffusers model folders into
nag_engine checkpoints."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..convert import FORMATS as CONVERT_FORMATS
from .common import check_input, check_output_file, positive_int, whole_number


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `convert` command and its options."""
    convert = commands.add_parser(
        "convert",
        help="official DiT / SiT checkpoints and diffusers model folders -> nag_engine",
        description="Reads a facebookresearch/DiT or willisma/SiT checkpoint (torch.save state "
        "dict or train.py checkpoint, loaded with weights_only=True; or .safetensors) or a "
        "local diffusers UNet2DModel / DiTTransformer2DModel folder, infers the architecture "
        "from the tensors and writes a nag_engine checkpoint (safetensors + config). The "
        "result samples as is; fine-tune it with `nag-engine train --finetune` to add NAG.",
    )
    convert.add_argument("src", type=Path, help="checkpoint file (dit, sit) or folder (diffusers)")
    convert.add_argument("dst", type=Path, help="the nag_engine checkpoint to write (.safetensors)")
    convert.add_argument(
        "--format",
        required=True,
        choices=CONVERT_FORMATS,
        help="dit: facebookresearch/DiT; sit: willisma/SiT; diffusers: a model or pipeline folder",
    )
    convert.add_argument(
        "--weights",
        default="ema",
        choices=("ema", "model"),
        help="which weights of a train.py checkpoint (default: ema, as DiT's sample.py)",
    )
    convert.add_argument(
        "--num-heads",
        type=positive_int,
        default=None,
        help="attention heads (only for non-preset widths)",
    )
    convert.add_argument(
        "--scheduler",
        type=Path,
        default=None,
        help="diffusers: scheduler_config.json (or its folder), if the model folder has none",
    )
    convert.add_argument(
        "--null-class",
        type=whole_number,
        default=None,
        help="diffusers UNet: the class id reserved as the null class (its last), for CFG "
        "and class dropout",
    )


def check(args: argparse.Namespace) -> None:
    """The arguments, before anything is read: SRC exists (a folder for diffusers, else a
    file), DST is a .safetensors file that can be written, and the diffusers-only options."""
    if (args.scheduler is not None or args.null_class is not None) and args.format != "diffusers":
        raise ValueError(
            "--scheduler and --null-class apply to --format diffusers only: drop them, or use "
            "--format diffusers"
        )
    kind = "folder" if args.format == "diffusers" else "file"
    check_input("SRC", args.src, kind, f"{args.format} model {kind}")
    check_output_file("DST", args.dst, suffixes=(".safetensors",), example="model.safetensors")
    if args.scheduler is not None:
        check_input("--scheduler", args.scheduler, "any", "scheduler_config.json")
    if args.null_class is not None and args.null_class < 0:
        raise ValueError(f"--null-class must be >= 0, got {args.null_class}: pass a class id")


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import read_header
    from ..convert import convert_checkpoint

    check(args)
    path = convert_checkpoint(
        args.src,
        args.dst,
        format=args.format,
        weights=args.weights,
        num_heads=args.num_heads,
        scheduler=args.scheduler,
        null_class=args.null_class,
    )
    config, shapes = read_header(path)
    params = sum(math.prod(v) for k, v in shapes.items() if k.startswith("model."))
    origin = config.get("converted_from", {})
    print(f"converted {args.src} ({args.format}) -> {path}")
    print(f"  {_describe_architecture(config)}, {params / 1e6:.2f} M parameters")
    print(f"  predicts {config['prediction']} on the {config['schedule']} schedule")
    if origin.get("learned_sigma") == "dropped":
        print("  learned-sigma channels dropped (nag_engine's DDPM uses a fixed variance)")
    print(
        "  NAG: not yet (no noise-condition dropout); add it with `nag-engine train --finetune "
        f"{path} --data LATENTS.npz --out RUN`"
    )
    return 0


def _describe_architecture(config: dict[str, Any]) -> str:
    """One line on a converted model: the preset or size of a DiT, the class of a diffusers
    model, with its input shape and classes."""
    model, origin = config["model"], config.get("converted_from", {})
    if config["architecture"] == "DiT":
        name = origin.get("preset") or "DiT (custom size)"
        shape = f"{model['in_channels']}x{model['input_size']}x{model['input_size']}"
        return (
            f"{name}: hidden {model['hidden_size']}, depth {model['depth']}, "
            f"{model['num_heads']} heads, patch {model['patch_size']}, input {shape}, "
            f"{model['num_classes']} classes"
        )
    inner = model.get("model_config", {})
    classes = inner.get("num_embeds_ada_norm") or inner.get("num_class_embeds")
    return (
        f"{model.get('model_class', config['architecture'])}: input "
        f"{inner.get('in_channels')}x{inner.get('sample_size')}, classes {classes}, null class "
        f"{model.get('null_class')}"
    )
