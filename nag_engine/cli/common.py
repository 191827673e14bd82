"""What the `nag-engine` commands share: models and reference data by name, the picture of
samples, the --device option, argparse types and the printed tables."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..images import density_image, side_by_side


# ---------------------------------------------------------------------- models and data
def resolve_model(name: str) -> tuple[nn.Module, Optional[Any]]:
    """(model, reference) for a shipped name, an exact mixture or a checkpoint path. The
    reference is the exact mixture for mixture data, the DataSet for other data, or None."""
    from ..checkpoints import load_checkpoint
    from ..models import random_mixture, ring_mixture
    from ..presets import SHIPPED, shipped_checkpoint
    from ..training.data import load_dataset, mixture_for

    if name == "ring-exact":
        model = ring_mixture(8, num_classes=8)
        return model, model
    if name == "gmm32-exact":
        model = random_mixture(32, 8, num_classes=8)
        return model, model
    path = shipped_checkpoint(name) if name in SHIPPED else Path(name)
    model = load_checkpoint(path)
    info = dict(model.checkpoint_config.get("dataset") or {})
    if not info or info.get("name") == "latents":  # no reference picture for latents
        return model, None
    mixture = mixture_for(info)
    if mixture is not None:
        return model, mixture
    params = {k: v for k, v in info.items() if k != "name"}
    return model, load_dataset(info["name"], **params)


def reference_samples(reference: Any, labels: torch.Tensor, seed: int) -> Optional[torch.Tensor]:
    """Real data to compare with: exact mixture draws with the same labels, or the data set."""
    from ..models import GaussianMixtureModel

    if isinstance(reference, GaussianMixtureModel):
        gen = torch.Generator().manual_seed(seed)
        return reference.sample_data(len(labels), y=labels, generator=gen)[0].float()
    if reference is not None:
        return reference.x
    return None


def picture(
    samples: list[torch.Tensor],
    reference: Optional[torch.Tensor],
    nrow: int,
    labels: Optional[list[str]] = None,
) -> np.ndarray:
    """One grey picture: 2-D point clouds side by side (reference first), or image grids; with
    `labels` (one per panel) each panel's label drawn above it."""
    from ..training.data import to_image_grid

    if samples[0].ndim == 2 and samples[0].shape[1] == 2:
        clouds = ([reference] if reference is not None else []) + samples
        bound = max(float(c.abs().quantile(0.995)) for c in clouds) * 1.15
        return side_by_side(*(density_image(c, (-bound, bound)) for c in clouds), labels=labels)
    if samples[0].ndim == 4 and samples[0].shape[1] == 1:
        zoom = max(1, 64 // samples[0].shape[-1])  # small images are drawn larger
        grids = [to_image_grid(s, nrow).repeat(zoom, 0).repeat(zoom, 1) for s in samples]
        return side_by_side(*grids, gap=4 * zoom, labels=labels)
    raise ValueError("can draw 2-D points or grey images only; use --no-png")


# ---------------------------------------------------------------------- options
def resolve_device(name: str) -> torch.device:
    """The device --device names: "auto" (CUDA where available, else CPU), "cpu", "cuda" or
    "cuda:N", checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA device here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has CUDA devices 0..{count - 1}")
    return device


# the --device option of sample, train and encode (checked by resolve_device)
DEVICE_OPTION = ("--device",)
DEVICE_HELP = {"default": "auto", "help": "auto (CUDA where available), cpu, cuda, cuda:N"}


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ---------------------------------------------------------------------- output
def print_table(rows: list[dict[str, Any]]) -> None:
    """Print rows grouped by their "model" entry (if any), one aligned table per group."""
    for model in dict.fromkeys(r.get("model", "") for r in rows):
        group = [r for r in rows if r.get("model", "") == model]
        keys = [k for k in group[0] if k != "model"]
        cells = [
            [f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in group
        ]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        if model:
            print(f"\n{model}")
        print("  " + "  ".join(k.rjust(w) for k, w in zip(keys, widths)))
        for c in cells:
            print("  " + "  ".join(v.rjust(w) for v, w in zip(c, widths)))
