"""MLP denoiser for low-dimensional data (2-D toy sets, d-dimensional Gaussian mixtures).

Architecture: input Linear -> ``depth`` adaLN-Zero residual blocks conditioned on
``c = timestep embedding (+ label embedding)`` -> LayerNorm -> Linear (zero init).
A `nag_engine.models.protocol.Denoiser`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from nag_engine.models.embeddings import (
    LabelEmbedder,
    TimestepEmbedder,
    prepare_labels,
    prepare_mask,
    prepare_timesteps,
)
from nag_engine.predictions import check_prediction

__all__ = ["MLPDenoiser", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """``h + gate * MLP(LayerNorm(h) * (1 + scale) + shift)``, (shift, scale, gate) from SiLU(c).

    The modulation linear is zero-initialised (adaLN-Zero), so a fresh block is the identity.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 3 * hidden))

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        """Apply the block to ``h`` ``[B, hidden]`` under conditioning ``c`` ``[B, hidden]``."""
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class MLPDenoiser(nn.Module):
    """Residual adaLN-Zero MLP denoiser for ``x`` of shape ``[B, dim]``.

    Implements `nag_engine.models.protocol.TrainableDenoiser` (the call, the null embeddings and
    the attributes are described there).
    """

    supports_noise_dropout = True

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 4,
        num_classes: int | None = None,
        prediction: str = "velocity",
        schedule: str = "linear",
        time_embed_dim: int = 128,
    ) -> None:
        super().__init__()
        check_prediction(prediction)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes}")
        self.config: dict[str, Any] = {
            "dim": dim,
            "hidden": hidden,
            "depth": depth,
            "num_classes": num_classes,
            "prediction": prediction,
            "schedule": schedule,
            "time_embed_dim": time_embed_dim,
        }
        self.dim = dim
        self.num_classes = num_classes
        self.prediction = prediction
        self.schedule = schedule
        self.sample_shape = (dim,)

        self.input_proj = nn.Linear(dim, hidden)
        self.t_embedder = TimestepEmbedder(hidden, frequency_embedding_size=time_embed_dim)
        self.y_embedder = LabelEmbedder(num_classes, hidden) if num_classes is not None else None
        self.blocks = nn.ModuleList(ResidualBlock(hidden) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden)
        self.output_proj = nn.Linear(hidden, dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform linears, then zero the adaLN modulations and the output layer."""
        for block in self.blocks:
            for layer in block.mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.xavier_uniform_(self.input_proj.weight)
        nn.init.zeros_(self.input_proj.bias)
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def features(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        *,
        drop_t: Tensor | None = None,
        drop_y: Tensor | None = None,
    ) -> Tensor:
        """The hidden state ``[B, hidden]`` that the output layer reads (same arguments as
        ``forward``)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}], got {tuple(x.shape)}")
        batch = x.shape[0]
        t = prepare_timesteps(t, batch, x.device)
        drop_t = prepare_mask(drop_t, batch, "drop_t")
        y = prepare_labels(y, batch, self.num_classes)
        drop_y = prepare_mask(drop_y, batch, "drop_y")

        c = self.t_embedder(t, drop_t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y, batch, drop_y)
        h = self.input_proj(x.to(self.input_proj.weight.dtype))
        for block in self.blocks:
            h = block(h, c)
        return h

    def init_null_noise(self, times: Tensor) -> None:
        """Start the null noise embedding at the mean timestep embedding over ``times``."""
        self.t_embedder.init_null_as_mean(times)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        *,
        drop_t: Tensor | None = None,
        drop_y: Tensor | None = None,
    ) -> Tensor:
        """Predict the ``prediction`` target for ``x`` ``[B, dim]`` at times ``t`` ``[B]``.

        ``drop_y`` is ignored by an unconditional model; ``y`` given to one raises ValueError.
        """
        h = self.features(x, t, y, drop_t=drop_t, drop_y=drop_y)
        out = self.output_proj(self.final_norm(h))
        return out.to(x.dtype)
