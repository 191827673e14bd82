"""Adapters that give foreign denoisers the model protocol of nag_engine
(`nag_engine.models.protocol.Denoiser`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import nn

from ..predictions import check_prediction

Tensor = torch.Tensor


class FunctionDenoiser(nn.Module):
    """Wraps a plain function `fn(x, t, y, drop_t, drop_y) -> prediction` as a model.

    The function receives the protocol's arguments unchanged (drop flags may be None); the
    wrapper only declares the attributes of `nag_engine.models.protocol.Denoiser`."""

    def __init__(
        self,
        fn: Callable[..., Tensor],
        *,
        prediction: str = "velocity",
        schedule: str = "linear",
        num_classes: Optional[int] = None,
        supports_noise_dropout: bool = False,
        sample_shape: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.prediction = check_prediction(prediction)
        self.schedule = schedule
        self.num_classes = num_classes
        self.supports_noise_dropout = supports_noise_dropout
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Optional[Tensor] = None,
        *,
        drop_t: Optional[Tensor] = None,
        drop_y: Optional[Tensor] = None,
    ) -> Tensor:
        return self.fn(x, t, y, drop_t, drop_y)
