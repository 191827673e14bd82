"""Training presets: the recipes that produce the shipped checkpoints, and where they live.

Each preset names a data set, a model and a training configuration; `nag-engine train --preset
NAME` runs it. The shipped files in `nag_engine/assets/` were produced by exactly these recipes
(see README for the commands). A preset names its architecture as in
`nag_engine.models.ARCHITECTURES`, the registry that checkpoints use too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from torch import nn

from .models import ARCHITECTURES, NoiseLevelHead
from .training.config import TrainConfig, seeded_init


@dataclass(frozen=True)
class Preset:
    """A data set, a model and a training configuration."""

    dataset: str
    dataset_params: dict[str, Any]
    architecture: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    # a noise-level head preset names the shipped denoiser whose body it starts from
    head_of: Optional[str] = None

    def build_model(self, seed: int = 0) -> nn.Module:
        """A freshly initialised model (a noise-level head on the shipped denoiser it names),
        its initial weights drawn from `seed` (the run's `TrainConfig.seed`)."""
        if self.head_of is not None:
            from .checkpoints import load_checkpoint

            denoiser = load_checkpoint(shipped_checkpoint(self.head_of))
            with seeded_init(seed):
                return NoiseLevelHead.from_denoiser(denoiser, **self.model)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}: known are {tuple(ARCHITECTURES)}"
            )
        with seeded_init(seed):
            return ARCHITECTURES[self.architecture](**self.model)

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The training configuration, with ``overrides`` replacing its entries."""
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
    # the noise-level regressors (the NAG paper's estimator for classifier-based NAG and for
    # measuring noise shift), fine-tuned from the shipped denoisers on forward-process pairs
    "toy2d-level": Preset(
        dataset="ring",
        dataset_params={"n": 20000, "seed": 0},
        architecture="NoiseLevelHead",
        model={"log_snr_range": (-10.0, 10.0)},
        train={
            "objective": "noise_level",
            "steps": 3000,
            "batch_size": 512,
            "lr": 1e-3,
            "warmup_steps": 100,
            "ema_decay": 0.995,
            "p_c": 0.2,
            "checkpoint_every": 1000,
        },
        head_of="toy2d",
    ),
    "digits-level": Preset(
        dataset="digits",
        dataset_params={},
        architecture="NoiseLevelHead",
        model={"log_snr_range": (-10.0, 10.0)},
        train={
            "objective": "noise_level",
            "steps": 3000,
            "batch_size": 128,
            "lr": 5e-4,
            "warmup_steps": 100,
            "ema_decay": 0.995,
            "p_c": 0.2,
            "checkpoint_every": 1000,
        },
        head_of="digits",
    ),
}

SHIPPED_DENOISERS = ("toy2d", "digits")
SHIPPED = SHIPPED_DENOISERS + tuple(f"{name}-level" for name in SHIPPED_DENOISERS)


def shipped_checkpoint(name: str) -> Path:
    """Path of a checkpoint shipped inside the package (one of `SHIPPED`)."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped checkpoint {name!r}: choose one of {SHIPPED}")
    path = Path(str(resources.files("nag_engine") / "assets" / f"{name}.safetensors"))
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped checkpoint {path} is missing; reinstall nag_engine or rebuild it with "
            f"`nag-engine train --preset {name} --out runs/{name}`"
        )
    return path
