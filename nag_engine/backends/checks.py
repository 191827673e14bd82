"""Input checks shared by every fused-step kernel (docs/ARCHITECTURE.md §4): the Triton, C++
and CUDA wrappers call `prepare` so they accept and refuse the same things.

`contract_step` wraps a kernel launch into a function with the contract's signature; it first
checks that every tensor is on the state's device (`check_same_device`).

The kernels treat every array as n elements in the state's memory order, so the state x must
be dense (contiguous or channels-last), the outputs (x_new, g_out, each slot of next_input) must
share its strides, and read-only inputs in another layout (out, g_prev, z) are copied into it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Optional

import torch

Tensor = torch.Tensor
MAX_PASSES = 4


class StepInputs(NamedTuple):
    """The step's arrays, checked and in x's layout."""

    out: Tensor
    x_new: Tensor
    g_prev: Optional[Tensor]
    z: Optional[Tensor]
    g_out: Optional[Tensor]
    next_input: Optional[Tensor]  # None when there are no slots

    @property
    def passes(self) -> int:
        return self.out.shape[0]


def is_dense(t: Tensor) -> bool:
    """Contiguous or channels-last: the elements fill one block of memory."""
    return t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last))


def in_layout(x: Tensor, t: Tensor, stacked: bool = False) -> Tensor:
    """t (or each slice of a stacked [P, *shape] t) with x's strides, copied only if needed."""
    shape = (t.shape[0], *x.shape) if stacked else x.shape
    stride = (x.numel(), *x.stride()) if stacked else x.stride()
    if tuple(t.shape) == tuple(shape) and t.stride() == tuple(stride):
        return t
    buffer = torch.empty_strided(shape, stride, dtype=t.dtype, device=t.device)
    return buffer.copy_(t)


def _same_layout(reference: Tensor, other: Tensor, name: str) -> None:
    if other.shape != reference.shape or other.stride() != reference.stride():
        raise ValueError(
            f"{name} must have the shape and strides of x {tuple(reference.shape)} / "
            f"{reference.stride()}, got {tuple(other.shape)} / {other.stride()}"
        )


def check_same_device(x: Tensor, x_name: str, **tensors: Optional[Tensor]) -> None:
    """Raise ValueError naming the first of `tensors` (None ones skipped) that is not on the
    device of the state `x` (called `x_name` in the message): a kernel reads every pointer on
    one device, and a CPU tensor handed to a CUDA launch fails there without saying which."""
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise ValueError(
                f"{name} is on {t.device} but {x_name} on {x.device}: every tensor a kernel "
                f"reads must be on the state's device"
            )


def prepare(
    out: Tensor,
    weights: Tensor,
    coef: Tensor,
    x: Tensor,
    *,
    x_new: Optional[Tensor] = None,
    g_prev: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    g_out: Optional[Tensor] = None,
    next_input: Optional[Tensor] = None,
    z_dtype: Optional[torch.dtype] = None,
) -> StepInputs:
    """Check the step's inputs and bring the read-only ones into x's layout (and z into
    `z_dtype` when given). Raises ValueError naming the problem."""
    if x.dtype != torch.float32:
        raise ValueError(f"the state x must be float32, got {x.dtype}")
    if not is_dense(x):
        raise ValueError("x must be dense (contiguous or channels-last); pass x.contiguous()")
    if out.ndim != x.ndim + 1 or not 1 <= out.shape[0] <= MAX_PASSES:
        raise ValueError(f"out must be [P, *x.shape] with 1 <= P <= 4, got {tuple(out.shape)}")
    if weights.ndim != 2 or weights.shape[1] < out.shape[0] or coef.ndim != 2 or coef.shape[1] != 6:
        raise ValueError(
            f"weights must be [stages, >= {out.shape[0]}] and coef [stages, 6] (a, b, b2, c, "
            f"keep, d), got {tuple(weights.shape)} and {tuple(coef.shape)}"
        )
    for name, t in (("x_new", x_new), ("g_prev", g_prev), ("g_out", g_out)):
        if t is not None and t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {t.dtype}")
    x_new = x if x_new is None else x_new
    out = in_layout(x, out, stacked=True)
    g_prev = None if g_prev is None else in_layout(x, g_prev)
    if z is not None:
        z = in_layout(x, z if z_dtype is None else z.to(z_dtype))
    if next_input is not None and next_input.shape[0] == 0:
        next_input = None
    for name, t in (
        ("out[p]", out[0]),
        ("x_new", x_new),
        ("g_prev", g_prev),
        ("z", z),
        ("g_out", g_out),
        ("next_input[p]", None if next_input is None else next_input[0]),
    ):
        if t is not None:
            _same_layout(x, t, name)
    n = x.numel()
    if next_input is not None and next_input.shape[0] > 1 and next_input.stride(0) != n:
        raise ValueError("the pass slots of next_input must follow each other in memory")
    return StepInputs(out, x_new, g_prev, z, g_out, next_input)


Launch = Callable[[StepInputs, Tensor, Tensor, Tensor, Tensor], None]


def contract_step(
    launch: Launch, *, name: str, doc: str, z_dtype: Optional[torch.dtype] = None
) -> Callable[..., Tensor]:
    """A fused-step function with the backend contract's signature (see
    `nag_engine.backends`): it checks and lays out the inputs with `prepare`, then calls
    ``launch(inputs, weights, coef, stage, x)``, and returns the new state."""

    def fused_step(
        out: Tensor,
        weights: Tensor,
        coef: Tensor,
        stage: Tensor,
        x: Tensor,
        *,
        x_new: Optional[Tensor] = None,
        g_prev: Optional[Tensor] = None,
        z: Optional[Tensor] = None,
        g_out: Optional[Tensor] = None,
        next_input: Optional[Tensor] = None,
    ) -> Tensor:
        check_same_device(
            x,
            "x",
            out=out,
            weights=weights,
            coef=coef,
            stage=stage,
            x_new=x_new,
            g_prev=g_prev,
            z=z,
            g_out=g_out,
            next_input=next_input,
        )
        inputs = prepare(
            out,
            weights,
            coef,
            x,
            x_new=x_new,
            g_prev=g_prev,
            z=z,
            g_out=g_out,
            next_input=next_input,
            z_dtype=z_dtype,
        )
        launch(inputs, weights, coef, stage, x)
        return inputs.x_new

    fused_step.__name__ = fused_step.__qualname__ = name
    fused_step.__doc__ = doc
    fused_step.launch = launch  # for `backends.BoundStep`, which checks once per buffer set
    fused_step.z_dtype = z_dtype
    return fused_step
