"""diffusers' `DiTTransformer2DModel` in the nag_engine model protocol, so a DiT from the
diffusers ecosystem samples through nag_engine (and can be timed against diffusers' own
`DiTPipeline` loop: `python -m benchmarks.sampling --diffusers`).

DiT was trained as a DDPM: noise prediction on the linear-beta schedule over 1000 steps (our
"vp" schedule, with t = timestep / 1000), a learned variance in the second half of its output
channels (dropped here), and class 1000 (= num_classes) as the null class for CFG. It was
trained without noise-condition dropout, so it runs CFG but not classifier-free NAG.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class DiffusersDiT(nn.Module):
    """Wraps a `diffusers.DiTTransformer2DModel` (class-conditional) as a nag_engine model."""

    prediction = "eps"
    schedule = "vp"
    supports_noise_dropout = False

    def __init__(self, transformer: nn.Module, num_train_timesteps: int = 1000) -> None:
        super().__init__()
        config = getattr(transformer, "config", None)
        if config is None or getattr(config, "num_embeds_ada_norm", None) is None:
            raise TypeError(
                "DiffusersDiT wraps a class-conditional diffusers DiTTransformer2DModel "
                f"(config.num_embeds_ada_norm set), got {type(transformer).__name__}"
            )
        self.transformer = transformer
        self.channels = config.in_channels
        self.learned_sigma = config.out_channels == 2 * config.in_channels
        self.num_classes = int(config.num_embeds_ada_norm)
        self.sample_shape = (config.in_channels, config.sample_size, config.sample_size)
        self.num_train_timesteps = num_train_timesteps

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Optional[Tensor] = None,
        *,
        drop_t: Optional[Tensor] = None,
        drop_y: Optional[Tensor] = None,
    ) -> Tensor:
        """Noise prediction for x at times t [B]; rows with drop_y (or y=None) get the null
        class. drop_t is refused: the model has no unconditional-noise pass."""
        if drop_t is not None:
            raise ValueError("diffusers' DiT was trained without noise-condition dropout: no NAG")
        null = torch.full((len(x),), self.num_classes, dtype=torch.long, device=x.device)
        labels = null if y is None else y.to(torch.long)
        if drop_y is not None:
            labels = torch.where(drop_y, null, labels)
        dtype = next(self.transformer.parameters()).dtype
        timestep = t.to(torch.float32).expand(len(x)) * self.num_train_timesteps
        out = self.transformer(x.to(dtype), timestep=timestep, class_labels=labels).sample
        return out[:, : self.channels].to(x.dtype)
