"""Training presets: the recipes that produce the shipped checkpoints, and where they live.

Each preset names a data set, a model and a training configuration; `nag-engine train --preset
NAME` runs it. The shipped files in `nag_engine/assets/` were produced by exactly these recipes
(see README for the commands).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from .models.dit import DiT
from .models.mlp import MLPDenoiser
from .training.trainer import TrainConfig


@dataclass(frozen=True)
class Preset:
    """A data set, a model and a training configuration."""

    dataset: str
    dataset_params: dict[str, Any]
    architecture: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)

    def build_model(self) -> nn.Module:
        cls = {"MLPDenoiser": MLPDenoiser, "DiT": DiT}[self.architecture]
        return cls(**self.model)

    def train_config(self, **overrides: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.train, **overrides})


PRESETS: dict[str, Preset] = {
    "toy2d": Preset(
        dataset="ring",
        dataset_params={"n": 20000, "seed": 0},
        architecture="MLPDenoiser",
        model={
            "dim": 2,
            "hidden": 128,
            "depth": 3,
            "num_classes": 8,
            "prediction": "velocity",
            "schedule": "linear",
        },
        train={
            "steps": 6000,
            "batch_size": 512,
            "lr": 2e-3,
            "warmup_steps": 200,
            "ema_decay": 0.999,
            "p_t": 0.2,
            "p_c": 0.1,
            "checkpoint_every": 1000,
        },
    ),
    "digits": Preset(
        dataset="digits",
        dataset_params={},
        architecture="DiT",
        model={
            "input_size": 8,
            "patch_size": 2,
            "in_channels": 1,
            "hidden_size": 64,
            "depth": 4,
            "num_heads": 4,
            "num_classes": 10,
            "prediction": "velocity",
            "schedule": "linear",
        },
        train={
            "steps": 8000,
            "batch_size": 128,
            "lr": 1e-3,
            "warmup_steps": 500,
            "ema_decay": 0.999,
            "p_t": 0.2,
            "p_c": 0.1,
            "checkpoint_every": 2000,
        },
    ),
}

SHIPPED = ("toy2d", "digits")


def shipped_checkpoint(name: str) -> Path:
    """Path of a checkpoint shipped inside the package ("toy2d" or "digits")."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped checkpoint {name!r}: choose one of {SHIPPED}")
    path = Path(str(resources.files("nag_engine") / "assets" / f"{name}.safetensors"))
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped checkpoint {path} is missing; reinstall nag_engine or rebuild it with "
            f"`nag-engine train --preset {name} --out runs/{name}`"
        )
    return path
