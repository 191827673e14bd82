"""The fused guidance + solver step in Triton (docs/ARCHITECTURE.md §4).

One kernel per sampler stage: reads the stacked model output of the P passes (fp32, bf16 or
fp16), combines them with the pass weights, applies ``x_out = a x + b g + b2 g_prev + c z`` in
fp32, and writes

* the new fp32 state (``x_out`` where the stage keeps its result, else ``x``),
* ``g_out = g + d x`` (fp32; x the state read, before the update) when asked -- what the next
  stage reads as g_prev (Heun, multistep) or a callback sees; exactly ``g`` where ``d = 0``,
* ``x_out`` into every pass slot of the next model input (in the model's dtype).

The coefficients ``a, b, b2, c, keep, d`` and the pass weights are read from device tables at row
``stage`` -- a device int tensor -- so no host scalar changes from step to step and a captured
CUDA graph stays valid. Tensors are processed as flat element arrays in their memory order, so
contiguous and channels-last layouts both work as long as all of them share the same strides.

Under ``torch.compile`` the launch is the torch operator ``torch.ops.nag_engine.fused_step``
(`kernels.ops`: a triton_op on a GPU, a custom_op under the interpreter; it writes only x_new,
g_out and next_input), so a compiled step has no graph break; eagerly it launches directly.

Reference: `nag_engine.backends.reference.reference_step`. On CPU tensors the kernel runs under
``TRITON_INTERPRET=1`` (that is how the tests check it without a GPU).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from nag_engine.backends.checks import StepInputs, contract_step

from . import ops
from .ops import wrap_triton

Tensor = torch.Tensor

BLOCK = 1024


@triton.jit
def _fused_step_kernel(
    out_ptr,  # [P, n] model outputs
    w_ptr,  # [stages, w_stride] pass weights
    coef_ptr,  # [stages, 6] a, b, b2, c, keep, d
    stage_ptr,  # [] int, the row to read
    x_ptr,  # [n] fp32 state
    gprev_ptr,  # [n] fp32 previous prediction (HAS_GPREV)
    z_ptr,  # [n] noise (HAS_Z)
    xnew_ptr,  # [n] fp32 new state (may alias x_ptr)
    g_ptr,  # [n] fp32 g + d x (WRITE_G; may alias gprev_ptr)
    next_ptr,  # [PN, n] next model input
    n,
    w_stride,
    coef_stride,
    P: tl.constexpr,
    PN: tl.constexpr,
    HAS_GPREV: tl.constexpr,
    HAS_Z: tl.constexpr,
    WRITE_G: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    stage = tl.load(stage_ptr).to(tl.int64)
    row = coef_ptr + stage * coef_stride
    a = tl.load(row)
    b = tl.load(row + 1)
    keep = tl.load(row + 4)
    g = tl.zeros([BLOCK], dtype=tl.float32)
    for p in tl.static_range(P):  # accumulated in pass order, like combine_reference
        w = tl.load(w_ptr + stage * w_stride + p)
        g += w * tl.load(out_ptr + p * n + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    x_out = a * x + b * g
    if HAS_GPREV:
        b2 = tl.load(row + 2)
        x_out += b2 * tl.load(gprev_ptr + offs, mask=mask, other=0.0)
    if HAS_Z:
        c = tl.load(row + 3)
        x_out += c * tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for p in tl.static_range(PN):
        tl.store(next_ptr + p * n + offs, x_out.to(next_ptr.dtype.element_ty), mask=mask)
    if WRITE_G:
        d = tl.load(row + 5)
        tl.store(g_ptr + offs, tl.where(d != 0.0, g + d * x, g), mask=mask)
    tl.store(xnew_ptr + offs, tl.where(keep != 0.0, x_out, x), mask=mask)


def _fused_step_body(
    out: Tensor,
    weights: Tensor,
    coef: Tensor,
    stage: Tensor,
    x: Tensor,
    x_new: Tensor,
    g_prev: Optional[Tensor],
    z: Optional[Tensor],
    g_out: Optional[Tensor],
    next_input: Optional[Tensor],
) -> None:
    """The operator nag_engine::fused_step on checked inputs (see `contract_step`): writes
    x_new, g_out and next_input (which may alias x and g_prev: each element is read before it
    is written)."""
    n = x.numel()
    if n == 0:
        return
    slots = 0 if next_input is None else next_input.shape[0]
    dummy = x  # for the pointers of absent inputs (never read or written)
    wrap_triton(_fused_step_kernel)[(triton.cdiv(n, BLOCK),)](
        out,
        weights,
        coef,
        stage,
        x,
        g_prev if g_prev is not None else dummy,
        z if z is not None else dummy,
        x_new,
        g_out if g_out is not None else dummy,
        next_input if slots else dummy,
        n,
        weights.stride(0),
        coef.stride(0),
        P=out.shape[0],
        PN=slots,
        HAS_GPREV=g_prev is not None,
        HAS_Z=z is not None,
        WRITE_G=g_out is not None,
        BLOCK=BLOCK,
    )


def _fused_step_fake(
    out: Tensor,
    weights: Tensor,
    coef: Tensor,
    stage: Tensor,
    x: Tensor,
    x_new: Tensor,
    g_prev: Optional[Tensor],
    z: Optional[Tensor],
    g_out: Optional[Tensor],
    next_input: Optional[Tensor],
) -> None:
    """The operator returns nothing; it only writes its mutable arguments."""


_fused_step_op = ops.register(
    "fused_step",
    _fused_step_body,
    fake=_fused_step_fake,
    mutates_args=("x_new", "g_out", "next_input"),
    kernels=(_fused_step_kernel,),
)


def _launch(a: StepInputs, weights: Tensor, coef: Tensor, stage: Tensor, x: Tensor) -> None:
    """One launch on checked inputs (the operator ``nag_engine::fused_step`` under compile)."""
    _fused_step_op(
        out=a.out,
        weights=weights,
        coef=coef,
        stage=stage,
        x=x,
        x_new=a.x_new,
        g_prev=a.g_prev,
        z=a.z,
        g_out=a.g_out,
        next_input=a.next_input,
    )


fused_step = contract_step(
    _launch,
    name="fused_step",
    doc="""Run the fused step; returns the new state (`x_new`, default: x updated in place).

    out [P, *shape] (P = 1..4; any float dtype), weights [stages, >= P] fp32, coef [stages, 6]
    fp32 (`nag_engine.backends.COEF_COLUMNS`), stage a 0-d integer tensor on the device, x
    [*shape] fp32. g_prev, z, g_out, x_new: [*shape] (fp32; z any float); next_input
    [P', *shape] (P' >= 0). x must be dense (contiguous or channels-last); the outputs (x_new,
    g_out, each slice of next_input) must share its strides; inputs in other layouts (out,
    g_prev, z) are copied into it.""",
)
