"""DiT: a diffusion transformer denoiser (Peebles & Xie, "Scalable Diffusion Models with
Transformers", 2023), a `nag_engine.models.protocol.Denoiser`.

Pipeline: patchify (Conv2d, kernel = stride = patch) + fixed 2-D sin-cos positional
embedding -> ``depth`` adaLN-Zero transformer blocks conditioned on
``c = timestep embedding + label embedding`` -> final adaLN layer -> unpatchify.
No learned sigma: the output has as many channels as the input.

The blocks call ``modulate_norm`` (LayerNorm + adaLN modulation) and ``gated_add`` (the gated
residual), which run the fused Triton kernels of `nag_engine.kernels.adaln` or their plain torch
versions ``modulate`` / ``gated_residual``: the kernels by default ("auto") on CUDA tensors without
autograd, where triton imports; `DiT.set_fused_kernels("on" | "off" | "auto")` changes that.

Over 400 lines because it is the whole architecture in one file, read top to bottom like DiT's own
models.py: elementwise pieces, positional embedding, layers, the model, the paper-size presets.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.functional import scaled_dot_product_attention

from nag_engine.models.embeddings import (
    LabelEmbedder,
    TimestepEmbedder,
    prepare_labels,
    prepare_mask,
    prepare_timesteps,
)
from nag_engine.predictions import check_prediction

__all__ = [
    "ATTENTION_BACKENDS",
    "DIT_CONFIGS",
    "Attention",
    "DiT",
    "DiTBlock",
    "DiT_B_2",
    "DiT_L_2",
    "DiT_S_2",
    "DiT_XL_2",
    "FinalLayer",
    "check_attention",
    "PatchEmbed",
    "gated_add",
    "gated_residual",
    "get_2d_sincos_pos_embed",
    "modulate",
    "modulate_norm",
]

ATTENTION_BACKENDS = ("auto", "sdpa", "xformers")
FUSED_MODES = ("auto", "on", "off")


# --------------------------------------------------------------------------------------
# Fusable elementwise pieces
# --------------------------------------------------------------------------------------


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation of tokens ``x`` ``[B, N, D]``: ``x * (1 + scale) + shift`` per sample."""
    return x * (1 + scale[:, None]) + shift[:, None]


def gated_residual(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """Gated residual update ``x + gate * y`` with a per-sample ``gate`` ``[B, D]``."""
    return x + gate[:, None] * y


# Optional imports (triton kernels, xformers), tried once each: {name: (module or function,
# None) or (None, why not)}. A plain dict rather than functools.cache, which torch.compile warns
# about (it traces through the cache wrapper); it reads a dict without complaint.
_OPTIONAL_IMPORTS: dict[str, tuple[Any, str | None]] = {}


def _adaln_kernels() -> tuple[ModuleType | None, str | None]:
    """(nag_engine.kernels.adaln, None), or (None, why not) where triton does not import."""
    if "adaln" not in _OPTIONAL_IMPORTS:
        try:
            from nag_engine.kernels import adaln
        except Exception as err:  # ImportError, or triton failing to initialise
            _OPTIONAL_IMPORTS["adaln"] = (None, f"{type(err).__name__}: {err}")
        else:
            _OPTIONAL_IMPORTS["adaln"] = (adaln, None)
    return _OPTIONAL_IMPORTS["adaln"]


def _fused_kernels(mode: str, x: Tensor) -> ModuleType | None:
    """The adaln kernel module when tokens ``x`` take the fused path under ``mode``, else None.

    "auto": CUDA tensors, autograd off, triton importable. "on": always (RuntimeError where it
    cannot run or autograd is on: the kernels are forward only)."""
    if mode == "off":
        return None
    if mode == "auto" and (not x.is_cuda or torch.is_grad_enabled()):
        return None  # (decided before importing triton)
    kernels, why = _adaln_kernels()
    if mode == "auto":
        return kernels
    if kernels is None:
        raise RuntimeError(f"fused DiT kernels need triton: {why}")
    if torch.is_grad_enabled():
        raise RuntimeError(
            "the fused DiT kernels are forward only: run under torch.no_grad() or use "
            "set_fused_kernels('auto')"
        )
    return kernels


def modulate_norm(
    norm: nn.LayerNorm, x: Tensor, shift: Tensor, scale: Tensor, fused: str
) -> Tensor:
    """``modulate(norm(x), shift, scale)``: one fused kernel where the ``fused`` mode takes it
    for ``x`` (see `DiT.set_fused_kernels`), else plain torch."""
    kernels = _fused_kernels(fused, x)
    if kernels is not None:
        return kernels.layernorm_modulate(x, shift, scale, norm.eps)
    return modulate(norm(x), shift, scale)


def gated_add(x: Tensor, gate: Tensor, y: Tensor, fused: str) -> Tensor:
    """``gated_residual(x, gate, y)``: one fused kernel where the ``fused`` mode takes it for
    ``x`` (see `DiT.set_fused_kernels`), else plain torch."""
    kernels = _fused_kernels(fused, x)
    if kernels is not None:
        return kernels.gated_residual(x, gate, y)
    return gated_residual(x, gate, y)


# --------------------------------------------------------------------------------------
# Positional embedding
# --------------------------------------------------------------------------------------


def _1d_sincos(embed_dim: int, pos: Tensor) -> Tensor:
    """``[len(pos), embed_dim]`` = ``[sin(pos * omega), cos(pos * omega)]`` (float64)."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64, device=pos.device)
    omega = 1.0 / 10000 ** (omega / (embed_dim / 2.0))
    out = pos.reshape(-1)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> Tensor:
    """Fixed 2-D sin-cos positional embedding, float32 ``[grid_size**2, embed_dim]``.

    Tokens are in row-major order. The first half of the channels encodes the column
    index and the second half the row index, matching the MAE / DiT reference layout
    (so pretrained ``pos_embed`` tensors agree bit for bit).
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float64, device="cpu")
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([_1d_sincos(embed_dim // 2, cols), _1d_sincos(embed_dim // 2, rows)], dim=1)
    return emb.to(torch.float32)


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Image ``[B, C, H, W]`` -> tokens ``[B, (H/p)*(W/p), D]`` via Conv2d(kernel=stride=p)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """Patchify and flatten to a token sequence."""
        return self.proj(x).flatten(2).transpose(1, 2)


def _xformers_attention() -> Callable[..., Tensor] | None:
    """xformers.ops.memory_efficient_attention, or None where xformers does not import."""
    if "xformers" not in _OPTIONAL_IMPORTS:
        try:
            from xformers.ops import memory_efficient_attention
        except Exception as err:  # ImportError, or a build for another torch
            _OPTIONAL_IMPORTS["xformers"] = (None, f"{type(err).__name__}: {err}")
        else:
            _OPTIONAL_IMPORTS["xformers"] = (memory_efficient_attention, None)
    return _OPTIONAL_IMPORTS["xformers"][0]


def check_attention(backend: str) -> str:
    """Validate an attention backend name; "xformers" must be importable."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend == "xformers" and _xformers_attention() is None:
        raise ValueError(
            "attention='xformers' needs the xformers package (pip install xformers, built for "
            "your torch); use attention='sdpa' or 'auto'"
        )
    return backend


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection: PyTorch SDPA, or xformers'
    memory-efficient attention ("auto": xformers on CUDA tensors where it is installed)."""

    def __init__(self, hidden_size: int, num_heads: int, attention: str = "sdpa") -> None:
        super().__init__()
        self.backend = check_attention(attention)
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def _uses_xformers(self, x: Tensor) -> bool:
        if self.backend == "auto":
            return x.is_cuda and _xformers_attention() is not None
        return self.backend == "xformers"

    def forward(self, x: Tensor) -> Tensor:
        """Self-attention over tokens ``x`` ``[B, N, D]``."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        if self._uses_xformers(x):
            q, k, v = qkv.unbind(2)  # each [B, N, heads, head_dim]: xformers' layout
            out = _xformers_attention()(q, k, v)
            return self.proj(out.reshape(b, n, d))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        out = scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (attention + GELU-tanh MLP)."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, attention: str = "sdpa"
    ) -> None:
        super().__init__()
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, attention)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_hidden, hidden_size),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.fused = "auto"  # fused kernel mode, set through DiT.set_fused_kernels

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Apply the block to tokens ``x`` ``[B, N, D]`` under conditioning ``c`` ``[B, D]``."""
        mod = self.adaLN_modulation(c).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        h = modulate_norm(self.norm1, x, shift_msa, scale_msa, self.fused)
        x = gated_add(x, gate_msa, self.attn(h), self.fused)
        h = modulate_norm(self.norm2, x, shift_mlp, scale_mlp, self.fused)
        return gated_add(x, gate_mlp, self.mlp(h), self.fused)


class FinalLayer(nn.Module):
    """adaLN (shift/scale) + linear projection of each token to ``patch*patch*out_channels``."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.fused = "auto"

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Project tokens ``[B, N, D]`` to ``[B, N, p*p*C]``."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate_norm(self.norm_final, x, shift, scale, self.fused))


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Diffusion transformer over latents / images ``x`` ``[B, in_channels, size, size]``.

    Implements `nag_engine.models.protocol.TrainableDenoiser` (the call, the null embeddings and
    the attributes are described there).

    ``time_scale``, ``time_offset``, ``time_snap``: how our t becomes the network's timestep
    (`embeddings.model_timestep`; the defaults give ``1000 t``). Converted DiT / SiT checkpoints
    (`nag_engine.convert`) set them to their own conventions.
    """

    supports_noise_dropout = True

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int | None = 1000,
        prediction: str = "velocity",
        schedule: str = "linear",
        attention: str = "sdpa",
        time_scale: float = 1000.0,
        time_offset: float = 0.0,
        time_snap: float = 0.0,
    ) -> None:
        super().__init__()
        check_prediction(prediction)
        check_attention(attention)
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by heads {num_heads}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes}")
        self.config: dict[str, Any] = {
            "input_size": input_size,
            "patch_size": patch_size,
            "in_channels": in_channels,
            "hidden_size": hidden_size,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "num_classes": num_classes,
            "prediction": prediction,
            "schedule": schedule,
            "attention": attention,
            "time_scale": time_scale,
            "time_offset": time_offset,
            "time_snap": time_snap,
        }
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.num_classes = num_classes
        self.prediction = prediction
        self.schedule = schedule
        self.sample_shape = (in_channels, input_size, input_size)
        self.attention = attention

        self.grid_size = input_size // patch_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(
            hidden_size, time_scale=time_scale, time_offset=time_offset, time_snap=time_snap
        )
        self.y_embedder = (
            LabelEmbedder(num_classes, hidden_size) if num_classes is not None else None
        )
        # computed on the CPU (fast even when the model is built on meta), then placed where
        # the model is built
        pos = get_2d_sincos_pos_embed(hidden_size, self.grid_size)
        self.register_buffer("pos_embed", pos[None].to(torch.get_default_device()))
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, attention) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT initialisation: xavier linears, zero adaLN modulations and zero output layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        self.t_embedder.reset_parameters()  # N(0, 0.02), undoing the xavier pass above
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def init_null_noise(self, times: Tensor) -> None:
        """Start the null noise embedding at the mean timestep embedding over ``times`` (the
        model's training times): see `TimestepEmbedder.init_null_as_mean`."""
        self.t_embedder.init_null_as_mean(times)

    def set_attention(self, backend: str) -> DiT:
        """Switch the attention implementation ("auto", "sdpa", "xformers"); weights are
        unchanged. Returns self."""
        check_attention(backend)
        for block in self.blocks:
            block.attn.backend = backend
        self.attention = self.config["attention"] = backend
        return self

    def set_fused_kernels(self, mode: str) -> DiT:
        """Where LayerNorm + modulation and the gated residual run as fused Triton kernels:
        "auto" (default: CUDA tensors without autograd, where triton imports), "on" (always;
        forward only, so RuntimeError under autograd), "off" (plain torch). Returns self."""
        if mode not in FUSED_MODES:
            raise ValueError(f"fused kernel mode must be one of {FUSED_MODES}, got {mode!r}")
        if mode == "on" and _adaln_kernels()[0] is None:
            raise RuntimeError(f"fused DiT kernels need triton: {_adaln_kernels()[1]}")
        for layer in (*self.blocks, self.final_layer):
            layer.fused = mode
        return self

    def unpatchify(self, x: Tensor) -> Tensor:
        """Tokens ``[B, N, p*p*C]`` -> image ``[B, C, H, W]``."""
        p, g, c = self.patch_size, self.grid_size, self.out_channels
        x = x.reshape(x.shape[0], g, g, p, p, c)
        x = torch.einsum("bhwpqc->bchpwq", x)
        return x.reshape(x.shape[0], c, g * p, g * p)

    def features(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        *,
        drop_t: Tensor | None = None,
        drop_y: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(tokens ``[B, N, hidden]``, conditioning ``[B, hidden]``): what the final layer reads
        (same arguments as ``forward``)."""
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must have shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}"
            )
        batch = x.shape[0]
        t = prepare_timesteps(t, batch, x.device)
        drop_t = prepare_mask(drop_t, batch, "drop_t")
        y = prepare_labels(y, batch, self.num_classes)
        drop_y = prepare_mask(drop_y, batch, "drop_y")

        c = self.t_embedder(t, drop_t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y, batch, drop_y)
        dtype = self.x_embedder.proj.weight.dtype
        h = self.x_embedder(x.to(dtype)) + self.pos_embed.to(dtype)
        for block in self.blocks:
            h = block(h, c)
        return h, c

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        *,
        drop_t: Tensor | None = None,
        drop_y: Tensor | None = None,
    ) -> Tensor:
        """Predict the ``prediction`` target for ``x`` at times ``t`` ``[B]``.

        ``drop_y`` is ignored by an unconditional model; ``y`` given to one raises ValueError.
        """
        h, c = self.features(x, t, y, drop_t=drop_t, drop_y=drop_y)
        out = self.unpatchify(self.final_layer(h, c))
        return out.to(x.dtype)

    def forward_macs(self) -> int:
        """Multiply-accumulates of one sample's forward pass (matmuls / convolution only).

        This is the convention of the DiT paper's "Gflops" column (DiT-XL/2 at 32x32x4:
        118.6). Counted: patch-embed conv, timestep MLP, per block the qkv / out / MLP
        projections, ``Q K^T`` and ``A V``, the adaLN linears, and the final layer.
        Normalisation, softmax, activations and elementwise ops are not counted.
        """
        n = self.grid_size**2
        d = self.hidden_size
        m = int(d * self.mlp_ratio)
        patch_dim = self.patch_size**2 * self.in_channels
        freq = self.t_embedder.frequency_embedding_size
        macs = n * patch_dim * d  # patch embedding
        macs += freq * d + d * d  # timestep MLP
        per_block = n * (3 * d * d + d * d + 2 * d * m)  # qkv, out proj, MLP
        per_block += 2 * n * n * d  # Q K^T and A V
        per_block += d * 6 * d  # adaLN modulation
        macs += self.depth * per_block
        macs += d * 2 * d + n * d * self.patch_size**2 * self.out_channels  # final layer
        return macs

    def forward_flops(self) -> int:
        """Forward FLOPs per sample, ``2 * forward_macs()`` (one MAC = 2 FLOPs; use for MFU).

        Note: this is twice the number the DiT paper reports as "Gflops" (which counts MACs).
        """
        return 2 * self.forward_macs()


# --------------------------------------------------------------------------------------
# Presets (paper sizes)
# --------------------------------------------------------------------------------------

DIT_CONFIGS: dict[str, dict[str, Any]] = {
    "DiT-S/2": {"hidden_size": 384, "depth": 12, "num_heads": 6, "patch_size": 2},
    "DiT-B/2": {"hidden_size": 768, "depth": 12, "num_heads": 12, "patch_size": 2},
    "DiT-L/2": {"hidden_size": 1024, "depth": 24, "num_heads": 16, "patch_size": 2},
    "DiT-XL/2": {"hidden_size": 1152, "depth": 28, "num_heads": 16, "patch_size": 2},
}


def DiT_S_2(**kwargs: Any) -> DiT:
    """DiT-S/2 (hidden 384, depth 12, 6 heads); ``kwargs`` override any argument."""
    return DiT(**{**DIT_CONFIGS["DiT-S/2"], **kwargs})


def DiT_B_2(**kwargs: Any) -> DiT:
    """DiT-B/2 (hidden 768, depth 12, 12 heads); ``kwargs`` override any argument."""
    return DiT(**{**DIT_CONFIGS["DiT-B/2"], **kwargs})


def DiT_L_2(**kwargs: Any) -> DiT:
    """DiT-L/2 (hidden 1024, depth 24, 16 heads); ``kwargs`` override any argument."""
    return DiT(**{**DIT_CONFIGS["DiT-L/2"], **kwargs})


def DiT_XL_2(**kwargs: Any) -> DiT:
    """DiT-XL/2 (hidden 1152, depth 28, 16 heads); ``kwargs`` override any argument."""
    return DiT(**{**DIT_CONFIGS["DiT-XL/2"], **kwargs})
