"""The fused step bound to one batch's static buffers, checked once (docs/ARCHITECTURE.md §4).

The sampler calls the fused step once per stage on the same state, tables, stage counter,
g_prev / g_out buffer and next-input buffer; only the model output and the noise are new
tensors each time. `BoundStep` runs the contract's full checks (`checks.prepare`) on the static
buffers when it is made, and on each call only compares the new tensors' device, shape,
strides and dtype with what it expects before launching: the wrapper's host time per eager call
falls from tens of µs to a few (benchmarks/host_overhead.py measures it). Anything unexpected
takes the full checked path, so the errors and layout copies stay exactly the contract's.
"""

from __future__ import annotations

from typing import Optional

import torch

from .checks import MAX_PASSES, StepInputs, check_same_device, prepare

Tensor = torch.Tensor
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class BoundStep:
    """``step(out, z=None, slots=0) -> x``: the fused step of `implementation` (a backend's
    fused-step function, `nag_engine.backends.implementation`) on fixed buffers.

    Each call writes the new state into x (in place), g + d x into `g_out` (if given) and x_out
    into the first `slots` pass slots of `next_input` [S, *x.shape]. `out` is [P, *x.shape]
    (P <= the tables' pass columns), `z` the step's noise or None."""

    def __init__(
        self,
        implementation,
        weights: Tensor,
        coef: Tensor,
        stage: Tensor,
        x: Tensor,
        *,
        g_prev: Optional[Tensor] = None,
        g_out: Optional[Tensor] = None,
        next_input: Optional[Tensor] = None,
    ) -> None:
        self.implementation = implementation
        self._launch = getattr(implementation, "launch", None)  # None: the reference
        self._z_dtype = getattr(implementation, "z_dtype", None)
        self.weights, self.coef, self.stage, self.x = weights, coef, stage, x
        self.g_prev, self.g_out = g_prev, g_out
        slots = 0 if next_input is None else next_input.shape[0]
        check_same_device(
            x,
            "x",
            weights=weights,
            coef=coef,
            stage=stage,
            g_prev=g_prev,
            g_out=g_out,
            next_input=next_input,
        )
        self._max_passes = min(MAX_PASSES, weights.shape[1])
        probe = torch.empty((self._max_passes, *x.shape), dtype=x.dtype, device=x.device)
        checked = prepare(  # the static buffers, once (raises ValueError like every call would)
            probe, weights, coef, x, g_prev=g_prev, g_out=g_out, next_input=next_input
        )
        self._views = [None] + [checked.next_input[:s] for s in range(1, slots + 1)]
        self._device, self._shape, self._stride = x.device, x.shape, x.stride()
        self._stacked_stride = (x.numel(), *x.stride())

    def _fits(self, out: Tensor, z: Optional[Tensor]) -> bool:
        """Whether out and z can go to the kernel as they are (else: the full checked path)."""
        if (
            out.device != self._device
            or out.dtype not in FLOAT_DTYPES
            or out.shape[1:] != self._shape
            or out.stride() != self._stacked_stride
            or not 1 <= out.shape[0] <= self._max_passes
        ):
            return False
        if z is None:
            return True
        wanted = self._z_dtype or z.dtype
        return (
            z.device == self._device
            and z.dtype == wanted
            and z.shape == self._shape
            and z.stride() == self._stride
        )

    def __call__(self, out: Tensor, z: Optional[Tensor] = None, slots: int = 0) -> Tensor:
        next_input = self._views[slots]
        if self._launch is None or not self._fits(out, z):
            return self.implementation(
                out,
                self.weights,
                self.coef,
                self.stage,
                self.x,
                g_prev=self.g_prev,
                z=z,
                g_out=self.g_out,
                next_input=next_input,
            )
        inputs = StepInputs(out, self.x, self.g_prev, z, self.g_out, next_input)
        self._launch(inputs, self.weights, self.coef, self.stage, self.x)
        return self.x
