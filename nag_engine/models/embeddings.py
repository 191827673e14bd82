"""Conditioning embeddings shared by the reference denoisers.

* :func:`timestep_embedding` -- sinusoidal features of a continuous time ``t`` in [0, 1].
* :class:`TimestepEmbedder` -- sinusoidal features + 2-layer SiLU MLP, with a learned
  *null noise* embedding that replaces the whole vector on rows where ``drop`` is True.
* :class:`LabelEmbedder` -- class-label lookup table with one extra row, the learned
  *null class*, used where ``y`` is None or ``drop`` is True.
* :func:`prepare_timesteps`, :func:`prepare_mask`, :func:`prepare_labels` -- argument
  checks shared by the models' ``forward``.

"Null" is always a learned embedding, never a magic input value. Row selection uses
``torch.where`` only: no boolean indexing, no ``.item()`` and no Python branch on tensor
values, so a sampler calling the models stays free of host synchronisation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "LabelEmbedder",
    "model_timestep",
    "TimestepEmbedder",
    "prepare_labels",
    "prepare_mask",
    "prepare_timesteps",
    "timestep_embedding",
]


def model_timestep(
    t: Tensor, time_scale: float = 1000.0, time_offset: float = 0.0, time_snap: float = 0.0
) -> Tensor:
    """The network's own time input ``t * time_scale + time_offset`` as float32; values
    within ``time_snap`` of an integer are rounded to it.

    Our time t (0 = data, 1 = noise) maps to each model's convention: 1000 t for the models this
    package trains; 1000 t - 1 (snapped) for DiT/ADM checkpoints, trained at the integer DDPM
    timesteps tau = 0 .. 999 that sit at t = (tau + 1) / 1000 (the snap undoes float32's
    rounding of t so those are hit exactly); 1 - t for SiT, whose time runs from noise (0) to
    data (1)."""
    tau = t.to(torch.float32) * time_scale + time_offset  # (1000 t: off by < 1e-4)
    if time_snap > 0.0:
        nearest = torch.round(tau)
        tau = torch.where((tau - nearest).abs() <= time_snap, nearest, tau)
    return tau


def timestep_embedding(
    t: Tensor,
    dim: int,
    max_period: float = 10000.0,
    time_scale: float = 1000.0,
    time_offset: float = 0.0,
    time_snap: float = 0.0,
) -> Tensor:
    """Return float32 sinusoidal features ``[B, dim]`` of the model timestep of ``t``.

    ``t`` is a float tensor ``[B]`` (continuous time in [0, 1]), mapped by `model_timestep`
    (default ``1000 t``, the DiT convention) and always embedded in float32, whatever the input
    dtype. Layout follows DiT: ``[cos(args), sin(args)]``, zero-padded if ``dim`` is odd.
    """
    half = dim // 2
    t = model_timestep(t, time_scale, time_offset, time_snap)
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Embed continuous time ``t`` into a ``hidden_size`` vector, with a learned null.

    ``forward(t, drop)``: sinusoidal features of the model timestep (`model_timestep`: by
    default ``t * 1000``, float32) -> Linear -> SiLU -> Linear. On rows where ``drop`` is True the
    whole result is replaced by ``null_embedding`` (an ``nn.Parameter`` of width
    ``hidden_size``).
    """

    def __init__(
        self,
        hidden_size: int,
        frequency_embedding_size: int = 256,
        time_scale: float = 1000.0,
        time_offset: float = 0.0,
        time_snap: float = 0.0,
    ) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.time_scale = time_scale
        self.time_offset = time_offset
        self.time_snap = time_snap
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.null_embedding = nn.Parameter(torch.zeros(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT initialisation: N(0, 0.02) weights, zero biases; null embedding N(0, 0.02)."""
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.null_embedding, std=0.02)

    def forward(self, t: Tensor, drop: Tensor | None = None) -> Tensor:
        """Return ``[B, hidden_size]`` in the module's parameter dtype.

        ``t``: float ``[B]``; ``drop``: bool ``[B]`` or None (True = null noise embedding).
        """
        emb = self.embed(t)
        if drop is not None:
            null = self.null_embedding.to(emb.dtype)[None, :]
            emb = torch.where(drop[:, None], null, emb)
        return emb

    def embed(self, t: Tensor) -> Tensor:
        """The embedding of times ``t`` ``[B]`` without the null substitution."""
        freq = timestep_embedding(
            t,
            self.frequency_embedding_size,
            time_scale=self.time_scale,
            time_offset=self.time_offset,
            time_snap=self.time_snap,
        )
        return self.mlp(freq.to(self.mlp[0].weight.dtype))

    @torch.no_grad()
    def init_null_as_mean(self, times: Tensor) -> None:
        """Set the null noise embedding to the mean embedding over ``times`` (a sample or
        quadrature of the training time distribution): the vector the network already
        associates with "some noise level", the starting point NAG fine-tuning uses."""
        mean = self.embed(times.to(self.null_embedding.device)).float().mean(0)
        self.null_embedding.copy_(mean.to(self.null_embedding.dtype))


class LabelEmbedder(nn.Module):
    """Class-label embedding table with ``num_classes + 1`` rows; the last row is the null class.

    ``forward(y, batch_size, drop)``: if ``y`` is None every row uses the null class;
    otherwise rows where ``drop`` is True use it. Ids are not range-checked (that would
    need a host sync).
    """

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        nn.init.normal_(self.embedding_table.weight, std=0.02)

    @property
    def null_class(self) -> int:
        """Index of the learned null-class row."""
        return self.num_classes

    def forward(self, y: Tensor | None, batch_size: int, drop: Tensor | None = None) -> Tensor:
        """Return ``[batch_size, hidden_size]`` label embeddings (null class where dropped)."""
        device = self.embedding_table.weight.device
        if y is None:
            ids = torch.full((batch_size,), self.null_class, dtype=torch.long, device=device)
        else:
            ids = y.to(device=device, dtype=torch.long)
            if drop is not None:
                ids = torch.where(drop, torch.full_like(ids, self.null_class), ids)
        return self.embedding_table(ids)


def prepare_timesteps(t: Tensor | float, batch_size: int, device: torch.device) -> Tensor:
    """Check ``t`` and return it as float32 ``[batch_size]`` on ``device``.

    A 0-d tensor (or Python number) is broadcast to every row; otherwise ``t`` must be ``[B]``.
    """
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch_size)
    if t.shape != (batch_size,):
        raise ValueError(f"t must have shape [B]=[{batch_size}] (or be 0-d), got {tuple(t.shape)}")
    return t.to(torch.float32)


def prepare_mask(mask: Tensor | None, batch_size: int, name: str) -> Tensor | None:
    """Check an optional drop mask: it must be a bool tensor of shape ``[batch_size]``."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor of shape [B] or None")
    if mask.shape != (batch_size,):
        raise ValueError(f"{name} must have shape [B]=[{batch_size}], got {tuple(mask.shape)}")
    return mask


def prepare_labels(y: Tensor | None, batch_size: int, num_classes: int | None) -> Tensor | None:
    """Check class labels ``y``: None, or an integer tensor ``[batch_size]``.

    Raises ValueError if ``y`` is given to an unconditional model (``num_classes`` None).
    """
    if y is None:
        return None
    if num_classes is None:
        raise ValueError("y was given, but this model is unconditional (num_classes=None)")
    if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError("y must be an integer (long) tensor of class ids with shape [B]")
    if y.shape != (batch_size,):
        raise ValueError(f"y must have shape [B]=[{batch_size}], got {tuple(y.shape)}")
    return y
