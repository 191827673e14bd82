"""The fused Picard update of the parallel sampler in Triton (reference:
`nag_engine.backends.reference.picard_update_reference`).

For a window of L steps starting at x_s = xs[0], in one pass over memory:

    g_j      = sum_p w[j, p] out[j, p]                          (guidance combination)
    d_j      = (a_j - 1) x_j + b_j g_j + c_j z_j                (drift of step j at the old x_j)
    x_{j+1}' = x_s + sum_{i <= j} d_i                           (cumulative sum over the window)
    err[j, b] = sum over the sample's elements of (x_{j+1}' - x_{j+1})^2

xs [L + 1, B, D] (fp32) is updated in place (rows 1..L); each program owns one block of one
sample and walks the window in order, keeping the old x_{j+1} in registers before overwriting
it. The per-sample error sums come back per block and are added up in torch. Every tensor must
be on xs's device (checked before the launch, which would otherwise fail on the first foreign
pointer without naming it).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from nag_engine.backends.checks import check_same_device

Tensor = torch.Tensor
BLOCK = 1024


@triton.jit
def _picard_kernel(
    out_ptr,  # [L, P, B, D] model outputs
    w_ptr,  # [L, P] fp32
    a_ptr,  # [L] fp32
    b_ptr,
    c_ptr,
    xs_ptr,  # [L + 1, B, D] fp32, rows 1..L updated
    z_ptr,  # [L, B, D] (HAS_Z)
    err_ptr,  # [L, B, blocks] fp32 partial sums
    length,
    batch,
    dim,
    blocks,
    P: tl.constexpr,
    HAS_Z: tl.constexpr,
    BLOCK: tl.constexpr,
):
    sample = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1).to(tl.int64)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    mask = cols < dim
    row = sample * dim + cols  # offset within one [B, D] slab
    slab = batch * dim
    start = tl.load(xs_ptr + row, mask=mask, other=0.0)
    total = start
    x = start
    for j in range(length):
        g = tl.zeros([BLOCK], dtype=tl.float32)
        for p in tl.static_range(P):
            w = tl.load(w_ptr + j * P + p)
            o = tl.load(out_ptr + (j * P + p) * slab + row, mask=mask, other=0.0)
            g += w * o.to(tl.float32)
        drift = (tl.load(a_ptr + j) - 1.0) * x + tl.load(b_ptr + j) * g
        if HAS_Z:
            z = tl.load(z_ptr + j * slab + row, mask=mask, other=0.0).to(tl.float32)
            drift += tl.load(c_ptr + j) * z
        total += drift
        old = tl.load(xs_ptr + (j + 1) * slab + row, mask=mask, other=0.0)
        tl.store(xs_ptr + (j + 1) * slab + row, total, mask=mask)
        change = tl.where(mask, total - old, 0.0)
        tl.store(err_ptr + (j * batch + sample) * blocks + block, tl.sum(change * change, axis=0))
        x = old


def picard_update(
    out: Tensor,
    weights: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    xs: Tensor,
    z: Optional[Tensor] = None,
) -> Tensor:
    """Update xs[1:] in place; returns the mean squared change per element [L, B].

    out [L, P, B, *shape] (any float dtype), weights [L, P], a / b / c [L] (fp32), xs
    [L + 1, B, *shape] fp32 contiguous, z [L, B, *shape] or None, all on xs's device: CUDA, or
    the CPU under TRITON_INTERPRET=1. Raises ValueError naming a tensor on another device."""
    check_same_device(xs, "xs", out=out, weights=weights, a=a, b=b, c=c, z=z)
    if xs.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"the Triton Picard update needs CUDA tensors (or TRITON_INTERPRET=1 for CPU "
            f"tensors), got xs on {xs.device}"
        )
    length, passes, batch = out.shape[:3]
    if xs.dtype != torch.float32 or not xs.is_contiguous() or xs.shape[0] != length + 1:
        raise ValueError("xs must be a contiguous float32 [L + 1, B, ...] window of the trajectory")
    if tuple(out.shape[2:]) != tuple(xs.shape[1:]) or weights.shape != (length, passes):
        raise ValueError(
            f"out must be [L, P, B, ...] over xs {tuple(xs.shape)} with weights [L, P], got "
            f"{tuple(out.shape)} and {tuple(weights.shape)}"
        )
    dim = xs[0, 0].numel()
    blocks = triton.cdiv(dim, BLOCK)
    err = torch.empty(length, batch, blocks, device=xs.device, dtype=torch.float32)
    out, weights = out.contiguous(), weights.contiguous().float()
    z = None if z is None else z.contiguous()
    _picard_kernel[(batch, blocks)](
        out,
        weights,
        a.contiguous().float(),
        b.contiguous().float(),
        c.contiguous().float(),
        xs,
        z if z is not None else xs,
        err,
        length,
        batch,
        dim,
        blocks,
        P=passes,
        HAS_Z=z is not None,
        BLOCK=BLOCK,
    )
    return err.sum(2) / dim
