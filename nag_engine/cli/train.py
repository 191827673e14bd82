"""`nag-engine train`: train a NAG-capable checkpoint from a preset or a config file, resume a
run, or fine-tune a pretrained model (--finetune) to add NAG.

Under `torchrun --nproc_per_node N -m nag_engine.cli train ...` the N processes train one run
data-parallel (the batch size stays the global batch, split over the ranks); rank 0 writes the
files and prints, and a resumed run continues on any number of ranks that divides the batch."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..dtypes import DTYPES
from .common import (
    DEVICE_HELP,
    DEVICE_OPTION,
    check_count,
    check_input,
    check_output_folder,
    one_line,
    resolve_device,
    whole_number,
)

if TYPE_CHECKING:
    import torch

    from ..distributed import Ranks


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `train` command and its options."""
    train = commands.add_parser(
        "train",
        help="train a NAG-capable checkpoint from a preset or a config file",
        description="Trains with noise-condition and class dropout. Writes OUT/checkpoint."
        "safetensors (resumable with --resume) and OUT/model.safetensors (EMA weights).",
    )
    train.add_argument(
        "--preset",
        default=None,
        help="toy2d | digits | toy2d-level | digits-level (noise-level heads; default: toy2d, "
        "or with --finetune the fine-tuning defaults)",
    )
    train.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="LATENTS",
        help="train on latents written by `nag-engine encode` (.npz or a folder of them) "
        "instead of the preset's data",
    )
    train.add_argument(*DEVICE_OPTION, **DEVICE_HELP)
    train.add_argument(
        "--config",
        type=Path,
        help="JSON file with dataset, dataset_params, "
        "architecture, model and train (overrides --preset)",
    )
    train.add_argument("--out", type=Path, required=True, help="run folder")
    train.add_argument("--steps", type=whole_number, default=None, help="override the step count")
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a training option, e.g. --set p_t=0.2 --set cdl_weight=0.1",
    )
    train.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.safetensors")
    train.add_argument(
        "--finetune",
        type=Path,
        metavar="CHECKPOINT",
        help="start from these weights: adds NAG (noise-condition dropout p_t) to a model "
        "trained without it, e.g. a converted DiT/SiT or diffusers model",
    )
    train.add_argument(
        "--export-dtype",
        default="fp32",
        choices=("fp32", "fp16", "bf16"),
        help="dtype of the weights in OUT/model.safetensors (fp16 halves the "
        "file; the shipped checkpoints use it)",
    )
    train.add_argument("--no-progress", action="store_true")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# the training options of `train --finetune` when no --preset / --config names others: a short
# run at a fine-tuning learning rate with noise-condition dropout on (the NAG paper's p_t 0.1-0.2);
# the warm-up keeps Adam's first steps, from a fresh optimizer state, from jolting the pretrained
# weights (benchmarks/nag_finetune.py: without it the conditional loss jumps in the first steps)
FINETUNE_DEFAULTS: dict[str, Any] = {
    "steps": 1000,
    "batch_size": 32,
    "lr": 1e-4,
    "warmup_steps": 100,
    "ema_decay": 0.9999,
    "p_t": 0.2,
    "checkpoint_every": 250,
}


def _dataset_from_info(info: dict[str, Any]):
    from ..training.data import load_dataset

    return load_dataset(info["name"], **{k: v for k, v in info.items() if k != "name"})


def _train_data(args: argparse.Namespace, info: Optional[dict[str, Any]], preset: Any):
    """The data to train on: --data latents, else the data set a checkpoint names, else the
    preset's."""
    from ..training.data import load_dataset

    if args.data is not None:
        try:
            return load_dataset("latents", path=str(args.data))
        except (ValueError, OSError) as err:
            raise ValueError(f"--data {args.data}: {one_line(err)}") from err
    if info:
        return _dataset_from_info(info)
    if preset is not None:
        return load_dataset(preset.dataset, **preset.dataset_params)
    raise ValueError(
        "this checkpoint names no training data (a converted model): pass --data LATENTS.npz "
        "(latents written by `nag-engine encode`)"
    )


def check(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str], Any]:
    """The options, before any data or model is loaded: the --out run folder, --steps, the
    --set items, the paths read, and the preset or --config file. Returns (overrides, the
    text each override was given as, the preset or None)."""
    from ..presets import PRESETS, Preset

    check_output_folder("--out", Path(args.out))
    overrides, given = {}, {}
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}: e.g. --set p_t=0.2")
        key, value = item.split("=", 1)
        overrides[key], given[key] = _parse_value(value), f"--set {item}"
    if args.steps is not None:
        check_count("--steps", args.steps)
        overrides["steps"], given["steps"] = args.steps, f"--steps {args.steps}"
    if args.finetune is not None:
        check_input("--finetune", args.finetune, "file", "checkpoint file")
    if args.data is not None:
        check_input("--data", args.data, "any", "latents file or folder")
    if args.config:
        check_input("--config", args.config, "file", "JSON config file")
        try:
            spec = json.loads(Path(args.config).read_text())
            if not isinstance(spec, dict):
                raise ValueError(f"it holds a {type(spec).__name__}, not an object")
            return overrides, given, Preset(**spec)
        except (ValueError, TypeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"--config {args.config}: {one_line(err)}; give a JSON object with dataset, "
                "dataset_params, architecture, model and train"
            ) from err
    if args.preset is not None or not (args.finetune or args.resume):
        name = args.preset or "toy2d"
        if name not in PRESETS:
            raise ValueError(f"--preset: unknown preset {name!r}: choose one of {tuple(PRESETS)}")
        return overrides, given, PRESETS[name]
    return overrides, given, None


def _train_config(build: Any, overrides: dict[str, Any], given: dict[str, str], base: str) -> Any:
    """`build(**overrides)`, the training configuration (a TrainConfig), with an error naming
    the --set (or --steps) it refuses, or else `base` (where the other options come from)."""
    try:
        return build(**overrides)
    except (ValueError, TypeError) as err:
        for key, value in overrides.items():  # the option at fault, if one alone is
            try:
                build(**{key: value})
            except (ValueError, TypeError):
                raise ValueError(f"{given[key]}: {one_line(err)}; fix or drop it") from err
        raise ValueError(
            f"{base if not overrides else '--set / --steps'}: {one_line(err)}"
        ) from err


def _origin(args: argparse.Namespace) -> str:
    """Where the training options come from: the --config file or the --preset."""
    return f"--config {args.config}" if args.config else f"--preset {args.preset or 'toy2d'}"


def run(args: argparse.Namespace) -> int:
    from .. import distributed

    # under torchrun: one GPU per process (cuda -> cuda:LOCAL_RANK), then join its group
    device = distributed.rank_device(resolve_device(args.device))
    overrides, given, preset = check(args)
    ranks = distributed.init_from_environment(device)
    try:
        return _train(args, device, overrides, given, preset, ranks)
    finally:
        distributed.finish()


def _train(
    args: argparse.Namespace,
    device: torch.device,
    overrides: dict[str, Any],
    given: dict[str, str],
    preset: Any,
    ranks: Ranks,
) -> int:
    """The run `run` prepared, on this process's device and ranks."""
    from ..checkpoints import read_header
    from ..training.replicas import check_batch_split
    from ..training.trainer import TrainConfig, Trainer

    def say(text: str) -> None:  # the run's messages, once: from rank 0
        if ranks.is_main:
            print(text)

    out = Path(args.out)
    checkpoint = out / "checkpoint.safetensors"
    if args.resume:
        if not checkpoint.is_file():
            raise ValueError(
                f"--resume: no checkpoint at {checkpoint}: name the run folder that holds it "
                "with --out, or start a new run without --resume"
            )
        saved, _ = read_header(checkpoint)
        batch_size = (saved.get("train") or {}).get("batch_size")
        if isinstance(batch_size, int):
            check_batch_split(batch_size, ranks.world_size)
        data = _train_data(args, saved.get("dataset"), preset)
        trainer = Trainer.resume(checkpoint, data, out=out, device=device)
        if args.steps is not None:  # train on past the original budget
            trainer.config = dataclasses.replace(trainer.config, steps=args.steps)
        say(f"resuming {checkpoint} at step {trainer.step} of {trainer.config.steps}")
    elif args.finetune:
        try:  # a clear error for a bad file, first
            source, _ = read_header(args.finetune)
        except (ValueError, OSError) as err:
            raise ValueError(f"--finetune {args.finetune}: {one_line(err)}") from err
        if preset is not None:
            train_config = _train_config(preset.train_config, overrides, given, _origin(args))
        else:
            base = {**FINETUNE_DEFAULTS, "p_c": float(source.get("p_c") or 0.0)}

            def build(**values: Any) -> TrainConfig:
                return TrainConfig.from_dict({**base, **values})

            train_config = _train_config(build, overrides, given, "the fine-tuning defaults")
        check_batch_split(train_config.batch_size, ranks.world_size)
        data = _train_data(args, source.get("dataset"), preset)
        classes = (source.get("model") or {}).get("num_classes")
        if data.num_classes is not None and classes and data.num_classes != classes:
            say(
                f"note: the data has {data.num_classes} classes, the model {classes}; its labels "
                "are taken as the model's class ids (if the folders are a subset of the "
                "model's classes, encode with --classes naming them all in id order)"
            )
        trainer = Trainer.finetune(args.finetune, data, train_config, out=out, device=device)
        adds = float(source.get("p_t") or 0.0) == 0.0 and train_config.p_t > 0
        what = (
            f"adding NAG (p_t={train_config.p_t}; null noise embedding starts as "
            f"{train_config.null_noise_init})"
            if adds
            else f"p_t={train_config.p_t}"
        )
        say(f"fine-tuning {args.finetune} on {data.info.get('name')} ({len(data)}): {what}")
    else:
        train_config = _train_config(preset.train_config, overrides, given, _origin(args))
        check_batch_split(train_config.batch_size, ranks.world_size)
        data = _train_data(args, None, preset)
        trainer = Trainer(
            preset.build_model(train_config.seed), data, train_config, out=out, device=device
        )
    history = trainer.run(progress=not args.no_progress)
    model_path = trainer.export(out / "model.safetensors", dtype=DTYPES[args.export_dtype])
    if history:
        k = max(1, min(50, len(history) // 4))
        first = sum(h["loss"] for h in history[:k]) / k
        last = sum(h["loss"] for h in history[-k:]) / k
        say(f"loss {first:.4f} (first {k} steps) -> {last:.4f} (last {k} steps)")
    say(f"wrote {checkpoint} (resumable) and {model_path} (EMA weights, for sampling)")
    if ranks.distributed:
        say(f"trained on {ranks.world_size} ranks, global batch {trainer.config.batch_size}")
    return 0
