"""The training configuration: every option of a run besides the model and the data, checked
up front so a bad value fails before any work, naming the option."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .losses import TIME_DISTRIBUTIONS

OBJECTIVES = ("denoise", "noise_level")
NULL_NOISE_INITS = ("mean", "zero", "keep")
MAX_SEED = 2**63 - 2  # the noise generator is seeded with seed + 1, torch takes < 2**64


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Inside, torch's global CPU generator is seeded with `seed`, so the weights a model
    creates there are a function of the seed; the caller's generator state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Everything that determines a training run besides the model and the data."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    p_t: float = 0.1  # noise-condition dropout
    p_c: float = 0.1  # class dropout
    time_distribution: str = "uniform"
    time_mean: float = 0.0
    time_std: float = 1.0
    objective: str = "denoise"  # or "noise_level": fine-tune a NoiseLevelHead (p_t is unused)
    cdl_weight: float = 0.0  # weight of the contrastive diffusion loss
    cdl_samples: int = 4  # log-SNR samples per point in the CDL estimate (1 is very noisy)
    checkpoint_every: int = 0  # 0: only at the end
    eval_every: int = 0  # 0: never
    seed: int = 0
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on CPU)
    # where Trainer.finetune starts the null noise embedding when it adds NAG to a model trained
    # without noise dropout: "mean" (the mean timestep embedding over the training times; see
    # benchmarks/RESULTS.md for why), "zero", or "keep" (whatever the checkpoint holds)
    null_noise_init: str = "mean"

    def __post_init__(self) -> None:
        """Every field checked up front, each error naming the option."""
        for name, minimum in (
            ("steps", 1),
            ("batch_size", 1),
            ("warmup_steps", 0),
            ("cdl_samples", 1),
            ("checkpoint_every", 0),
            ("eval_every", 0),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be a whole number, got {value!r}")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")
        if self.seed > MAX_SEED:
            raise ValueError(f"seed must lie in [0, {MAX_SEED}], got {self.seed}")
        for name, low, high in (
            ("lr", 0.0, None),
            ("weight_decay", 0.0, None),
            ("grad_clip", 0.0, None),
            ("p_t", 0.0, 1.0),
            ("p_c", 0.0, 1.0),
            ("time_mean", None, None),
            ("time_std", 0.0, None),
            ("cdl_weight", 0.0, None),
            ("ema_decay", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise ValueError(f"{name} must be {bounds}, got {value}")
        if self.lr == 0.0 or self.time_std == 0.0 or self.ema_decay == 1.0:
            raise ValueError(
                "lr and time_std must be > 0 and ema_decay < 1, got "
                f"lr={self.lr}, time_std={self.time_std}, ema_decay={self.ema_decay}"
            )
        if not isinstance(self.bf16, bool):
            raise TypeError(f"bf16 must be true or false, got {self.bf16!r}")
        if self.time_distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(
                f"time_distribution must be one of {TIME_DISTRIBUTIONS}, got "
                f"{self.time_distribution!r}"
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "noise_level" and self.cdl_weight > 0:
            raise ValueError("cdl_weight applies to denoisers; set it to 0 for a noise-level head")
        if self.null_noise_init not in NULL_NOISE_INITS:
            raise ValueError(
                f"null_noise_init must be one of {NULL_NOISE_INITS}, got {self.null_noise_init!r}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from a dict (a preset, a checkpoint's "train" entry, --set options); unknown
        keys are refused."""
        # checkpoints from earlier versions (the shipped ones too) hold an "extra" dict, a
        # removed, never-read field: ignored
        values = {k: v for k, v in values.items() if k != "extra"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)
