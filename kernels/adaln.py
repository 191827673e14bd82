"""Fused DiT hot paths in Triton, forward only (sampling): LayerNorm + adaLN modulation, and the
gated residual.

* ``layernorm_modulate(x, shift, scale, eps)``: ``LayerNorm(x) * (1 + scale) + shift`` for tokens
  x [B, N, D] with per-sample shift / scale [B, D] (a LayerNorm without affine weights, as in
  DiT's adaLN-Zero blocks); statistics in fp32, several token rows per program
  (`layernorm_tiling`).
* ``gated_residual(x, gate, y)``: ``x + gate * y`` with a per-sample gate [B, D].

References: ``nag_engine.models.dit.modulate(F.layer_norm(x, (D,), eps=eps), shift, scale)`` and
``nag_engine.models.dit.gated_residual``. Tokens are made contiguous; per-sample tensors may be
row-strided views (the chunks of the adaLN projection); outputs have x's dtype.

Under ``torch.compile`` both are the torch operators ``torch.ops.nag_engine.layernorm_modulate``
and ``torch.ops.nag_engine.gated_residual`` (`kernels.ops`: a triton_op on a GPU, a custom_op
under the interpreter, each with a fake implementation), so a compiled DiT forward has no graph
break; eagerly they launch directly. Inference only: no autograd formula.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import ops
from .ops import wrap_triton

Tensor = torch.Tensor


@triton.jit
def _layernorm_modulate_kernel(
    x_ptr,
    shift_ptr,
    scale_ptr,
    y_ptr,
    rows,
    tokens,
    dim,
    shift_stride,
    scale_stride,
    eps,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # ROWS token rows (row = b * tokens + n) per program, as a [ROWS, BLOCK_D] tile: small
    # rows (DiT-S: 384 values) would leave one-row programs too little to keep in flight
    first = tl.program_id(0).to(tl.int64) * ROWS
    row = first + tl.arange(0, ROWS)[:, None]
    cols = tl.arange(0, BLOCK_D)[None, :]
    mask = (row < rows) & (cols < dim)
    sample = row // tokens  # rows of one tile may belong to two samples
    x = tl.load(x_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1)[:, None] / dim
    centred = tl.where(mask, x - mean, 0.0)
    var = tl.sum(centred * centred, axis=1)[:, None] / dim
    normed = centred / tl.sqrt(var + eps)
    shift = tl.load(shift_ptr + sample * shift_stride + cols, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + sample * scale_stride + cols, mask=mask, other=0.0)
    shift, scale = shift.to(tl.float32), scale.to(tl.float32)
    y = normed * (1.0 + scale) + shift
    tl.store(y_ptr + row * dim + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def layernorm_tiling(dim: int, element_size: int) -> tuple[int, int, int]:
    """(BLOCK_D, ROWS, num_warps) of the LayerNorm + adaLN launch for rows of `dim` elements:
    whole rows padded to a power of two, rows per program until a tile holds about 16 KiB of
    input, and warps by the tile's size as in Triton's fused layer-norm tutorial (one warp per
    256 bytes, 1 to 8)."""
    block_d = triton.next_power_of_2(dim)
    rows = max(1, min(16, (16384 // element_size) // block_d))
    warps = max(1, min(8, block_d * rows * element_size // 256))
    return block_d, rows, warps


@triton.jit
def _gated_residual_kernel(
    x_ptr, gate_ptr, y_ptr, out_ptr, tokens, dim, gate_stride, BLOCK_D: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    sample = row // tokens
    cols = tl.arange(0, BLOCK_D)
    mask = cols < dim
    x = tl.load(x_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + sample * gate_stride + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * dim + cols, (x + gate * y).to(out_ptr.dtype.element_ty), mask=mask)


def _check(x: Tensor, per_sample: dict[str, Tensor]) -> tuple[int, int, int]:
    if x.ndim != 3:
        raise ValueError(f"x must be tokens [B, N, D], got shape {tuple(x.shape)}")
    batch, tokens, dim = x.shape
    for name, t in per_sample.items():
        if t.shape != (batch, dim):
            raise ValueError(f"{name} must be [B, D] = [{batch}, {dim}], got {tuple(t.shape)}")
    return batch, tokens, dim


def _rows(t: Tensor) -> Tensor:
    """A per-sample [B, D] tensor the kernels can index as row * stride(0) + column: the chunks
    of DiT's adaLN projection are such views already (no copy)."""
    return t if t.stride(1) == 1 else t.contiguous()


def _layernorm_modulate_body(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """The operator nag_engine::layernorm_modulate (shapes checked by `layernorm_modulate`)."""
    batch, tokens, dim = x.shape
    x, shift, scale = x.contiguous(), _rows(shift), _rows(scale)
    y = torch.empty_like(x)
    if x.numel():
        block_d, rows, warps = layernorm_tiling(dim, x.element_size())
        wrap_triton(_layernorm_modulate_kernel)[(triton.cdiv(batch * tokens, rows),)](
            x,
            shift,
            scale,
            y,
            batch * tokens,
            tokens,
            dim,
            shift.stride(0),
            scale.stride(0),
            eps,
            ROWS=rows,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return y


def _gated_residual_body(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """The operator nag_engine::gated_residual (shapes checked by `gated_residual`)."""
    batch, tokens, dim = x.shape
    x, gate, y = x.contiguous(), _rows(gate), y.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        wrap_triton(_gated_residual_kernel)[(batch * tokens,)](
            x, gate, y, out, tokens, dim, gate.stride(0), BLOCK_D=triton.next_power_of_2(dim)
        )
    return out


def _layernorm_modulate_fake(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """What the operator returns, without running it: a contiguous tensor like x."""
    return x.new_empty(x.shape)


def _gated_residual_fake(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """What the operator returns, without running it: a contiguous tensor like x."""
    return x.new_empty(x.shape)


_layernorm_modulate_op = ops.register(
    "layernorm_modulate",
    _layernorm_modulate_body,
    fake=_layernorm_modulate_fake,
    mutates_args=(),
    kernels=(_layernorm_modulate_kernel,),
)
_gated_residual_op = ops.register(
    "gated_residual",
    _gated_residual_body,
    fake=_gated_residual_fake,
    mutates_args=(),
    kernels=(_gated_residual_kernel,),
)


def layernorm_modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm(x) (no affine weights) * (1 + scale) + shift, per sample; x [B, N, D]. The
    operator ``torch.ops.nag_engine.layernorm_modulate`` under torch.compile; contiguous."""
    _check(x, {"shift": shift, "scale": scale})
    return _layernorm_modulate_op(x, shift, scale, float(eps))


def gated_residual(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """x + gate * y with a per-sample gate [B, D]; x, y [B, N, D]. The operator
    ``torch.ops.nag_engine.gated_residual`` under torch.compile; the result is contiguous."""
    _check(x, {"gate": gate})
    if y.shape != x.shape:
        raise ValueError(f"y must have x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    return _gated_residual_op(x, gate, y)
