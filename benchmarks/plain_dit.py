"""A plain-torch DiT written the way facebookresearch/DiT's `models.py` is, as the baseline a user
would otherwise run: no project kernels, no fused LayerNorm, nothing but torch modules.

Same layers and module names as DiT's `models.py` (with timm's `PatchEmbed` / `Attention` /
`Mlp` written out: a strided Conv2d, a fused qkv Linear with `F.scaled_dot_product_attention`,
fc1 -> GELU(tanh) -> fc2): TimestepEmbedder, LabelEmbedder (its last row is the null class
that CFG's unconditional pass uses, as in DiT's `sample.py`), DiTBlock with adaLN-Zero
(LayerNorm without affine + `modulate`, gated residuals), FinalLayer and `unpatchify`.

One addition: the TimestepEmbedder holds a learned null-noise vector, and `forward` takes an
optional `drop_t` mask that replaces the timestep embedding by it on those rows -- NAG's
noise-unconditional pass, one `torch.where` on a ``[B, hidden]`` tensor.

The forward takes the network's own timestep (``tau = 1000 t`` for the project's DiT) and
integer labels; `plain_dit_from` builds one from a project `nag_engine.models.DiT` with its
weights, so both compute the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nag_engine.models import DiT
from nag_engine.models.dit import get_2d_sincos_pos_embed

__all__ = ["PlainDiT", "plain_dit_from", "plain_state_dict"]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation of tokens ``[B, N, D]`` by per-sample ``shift``/``scale`` ``[B, D]``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the timestep -> Linear -> SiLU -> Linear (plus a null-noise row)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size
        self.null_embedding = nn.Parameter(torch.zeros(hidden_size))

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        """float32 ``[B, dim]`` = ``[cos(t * freqs), sin(t * freqs)]`` (GLIDE / DiT layout)."""
        half = dim // 2
        exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
        freqs = torch.exp(-math.log(max_period) * exponent)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: Tensor, drop_t: Tensor | None = None) -> Tensor:
        """``[B, hidden]`` embedding of timesteps ``t``; the null-noise vector where ``drop_t``."""
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        t_emb = self.mlp(t_freq.to(self.mlp[0].weight.dtype))
        if drop_t is not None:
            t_emb = torch.where(drop_t[:, None], self.null_embedding[None], t_emb)
        return t_emb


class LabelEmbedder(nn.Module):
    """Class-label table with ``num_classes + 1`` rows; label ``num_classes`` is the null class."""

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        self.num_classes = num_classes

    def forward(self, labels: Tensor) -> Tensor:
        """``[B, hidden]`` embeddings of integer ``labels`` ``[B]``."""
        return self.embedding_table(labels)


class PatchEmbed(nn.Module):
    """Image ``[B, C, H, W]`` -> tokens ``[B, (H/p)(W/p), D]`` by a Conv2d with stride p."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """Patchify and flatten."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention: fused qkv Linear, SDPA, output projection (timm's layout)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Self-attention over tokens ``[B, N, D]``."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP to the last dimension."""
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Tokens ``x`` ``[B, N, D]`` under conditioning ``c`` ``[B, D]``."""
        mod = self.adaLN_modulation(c).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN modulation + a Linear to ``patch * patch * out_channels`` per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Tokens ``[B, N, D]`` -> ``[B, N, p * p * C]``."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class PlainDiT(nn.Module):
    """DiT over latents ``[B, in_channels, input_size, input_size]``, class-conditional, with
    as many output channels as input channels (no learned sigma)."""

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.in_channels = self.out_channels = in_channels
        self.patch_size = patch_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        pos_embed = get_2d_sincos_pos_embed(hidden_size, input_size // patch_size)
        self.register_buffer("pos_embed", pos_embed[None])  # fixed sin-cos, as in DiT
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def unpatchify(self, x: Tensor) -> Tensor:
        """Tokens ``[B, N, p * p * C]`` -> images ``[B, C, H, W]``."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, drop_t: Tensor | None = None) -> Tensor:
        """Prediction for ``x`` at network timesteps ``t`` ``[B]`` and labels ``y`` ``[B]``
        (``num_classes`` = the null class); ``drop_t`` ``[B]`` bool: null noise embedding."""
        dtype = self.x_embedder.proj.weight.dtype
        x = self.x_embedder(x.to(dtype)) + self.pos_embed
        c = self.t_embedder(t, drop_t) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


def plain_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A project DiT's state dict under PlainDiT's names (the blocks' ``mlp.0`` / ``mlp.2`` are
    ``mlp.fc1`` / ``mlp.fc2``; every other name is the same)."""
    renamed = {}
    for name, tensor in state.items():
        if name.startswith("blocks."):
            name = name.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.2.", ".mlp.fc2.")
        renamed[name] = tensor
    return renamed


def plain_dit_from(model: DiT) -> PlainDiT:
    """A PlainDiT with ``model``'s size, weights, dtype and device.

    It takes the network timestep ``tau = 1000 t`` where ``model`` takes ``t``, the null class
    as label ``num_classes`` where ``model`` takes ``drop_y``, and ``drop_t`` as ``model`` does.
    ValueError for an unconditional model or one with another time convention."""
    config = model.config
    if config["num_classes"] is None:
        raise ValueError("plain_dit_from needs a class-conditional DiT (num_classes set)")
    if (config["time_scale"], config["time_offset"], config["time_snap"]) != (1000.0, 0.0, 0.0):
        raise ValueError("plain_dit_from needs a DiT whose timestep is 1000 t (the default)")
    weight = model.x_embedder.proj.weight
    plain = PlainDiT(
        input_size=config["input_size"],
        patch_size=config["patch_size"],
        in_channels=config["in_channels"],
        hidden_size=config["hidden_size"],
        depth=config["depth"],
        num_heads=config["num_heads"],
        mlp_ratio=config["mlp_ratio"],
        num_classes=config["num_classes"],
    )
    plain.load_state_dict(plain_state_dict(model.state_dict()))
    return plain.to(weight.device, weight.dtype).eval()
