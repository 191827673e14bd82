"""The fused guidance + solver step: its one contract, its reference, its input checks, the
choice of implementation and the native wrappers (docs/ARCHITECTURE.md §4).

    fused_step(out, weights, coef, stage, x, *, x_new, g_prev, z, g_out, next_input) -> state

With w = weights[stage] and (a, b, b2, c, keep, d) = coef[stage] (`COEF_COLUMNS`), read on the
device at the stage counter: g = sum_p w_p out_p; x_out = a x + b g + b2 g_prev + c z;
g_out <- g + d x; every pass slot of next_input <- x_out; the state <- x_out where keep.

Implementations (`BACKENDS`):

* ``"triton"``: `nag_engine.kernels.fused_step`, for CUDA tensors (or CPU tensors under
  ``TRITON_INTERPRET=1``, which is how the tests check it);
* ``"cuda"``: the CUDA kernel of the native extension `nag_engine._C` (csrc/), for CUDA tensors
  where the extension was built with CUDA (`backends.native`);
* ``"cpp"``: the C++ kernel of `nag_engine._C`, for CPU tensors (OpenMP over blocks);
* ``"reference"``: plain torch, anywhere (`backends.reference`).

``auto`` picks, for CUDA tensors, Triton, else the CUDA extension, else the reference; for CPU
tensors the C++ kernel, else the reference. Override with the ``backend=`` argument of the
sampler or the environment variable ``NAG_ENGINE_BACKEND``; `available()` reports what can run
here and why not. The Triton, C++ and CUDA wrappers share one set of input checks
(`backends.checks`); `BoundStep` binds one backend to a batch's static buffers, checked once,
which is how the sampler calls it. The fused Picard update of the parallel sampler lives here too
(`picard_implementation`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Optional

import torch

from .bound import BoundStep as BoundStep
from .reference import picard_update_reference, reference_step

Tensor = torch.Tensor
COEF_COLUMNS = ("a", "b", "b2", "c", "keep", "d")
BACKENDS = ("triton", "cuda", "cpp", "reference")
ENV_VAR = "NAG_ENGINE_BACKEND"


@functools.cache
def _triton_status() -> Optional[str]:
    """None if the Triton kernels import, else why not."""
    try:
        from ..kernels import fused_step  # noqa: F401
    except Exception as err:  # ImportError, or triton failing to initialise
        return f"{type(err).__name__}: {err}"
    return None


def available() -> dict[str, str]:
    """{backend: "yes" or why it cannot run here}."""
    from . import native

    status = _triton_status()
    triton = "yes" if status is None else status
    if status is None and not torch.cuda.is_available():
        interpret = os.environ.get("TRITON_INTERPRET") == "1"
        triton = "yes (TRITON_INTERPRET=1: CPU tensors)" if interpret else "no CUDA device"
    native_status = native.status()
    cuda, cpp = (native_status[k] or "yes" for k in ("cuda", "cpp"))
    return {"triton": triton, "cuda": cuda, "cpp": cpp, "reference": "yes"}


def _why_not(name: str, device: torch.device) -> Optional[str]:
    """None if backend `name` can run on tensors of `device`, else why not."""
    from . import native

    if name == "reference":
        return None
    if name == "triton":
        if _triton_status() is not None:
            return _triton_status()
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            return "it needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)"
        return None
    wanted = "cuda" if name == "cuda" else "cpu"
    if device.type != wanted:
        return f"it needs {wanted.upper()} tensors, got {device.type}"
    return native.status()[name]


def select(device: torch.device | str, backend: Optional[str] = None) -> str:
    """The backend for tensors on `device`: `backend` if given, else $NAG_ENGINE_BACKEND, else
    auto. A named backend that cannot run raises ValueError saying why."""
    device = torch.device(device)
    name = backend or os.environ.get(ENV_VAR) or "auto"
    if name == "auto":
        order = ("triton", "cuda") if device.type == "cuda" else ("cpp",)
        return next((n for n in order if _why_not(n, device) is None), "reference")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose 'auto' or one of {BACKENDS}")
    why = _why_not(name, device)
    if why is not None:
        raise ValueError(
            f"backend {name!r} cannot run on {device.type} tensors here: {why}; use "
            "backend='auto' or 'reference'"
        )
    return name


def implementation(name: str) -> Callable[..., Tensor]:
    """The fused-step function of a backend name (see `select`)."""
    if name == "triton":
        from ..kernels.fused_step import fused_step

        return fused_step
    if name == "cuda":
        from .native import fused_step_cuda

        return fused_step_cuda
    if name == "cpp":
        from .native import fused_step_cpp

        return fused_step_cpp
    if name == "reference":
        return reference_step
    raise ValueError(f"unknown backend {name!r}: choose one of {BACKENDS}")


def step_tables(columns: dict[str, Tensor], plan) -> tuple[Tensor, Tensor]:
    """(coef [stages, 6] with the `COEF_COLUMNS`, weights [stages, max passes]) float32 device
    tables from a StageTable's device columns (``StageTable.tensors``) and a GuidancePlan."""
    coef = torch.stack([columns[name].float() for name in COEF_COLUMNS], dim=1)
    return coef, plan.weight_table(coef.device).to(torch.float32)


def picard_backend(step_backend: str) -> str:
    """The Picard-update implementation that goes with a fused-step backend: Triton with
    Triton, else the torch reference (the update has no C++ / CUDA-extension version)."""
    return "triton" if step_backend == "triton" else "reference"


def picard_implementation(name: str) -> Callable[..., Tensor]:
    """The fused Picard update of the parallel sampler (see `nag_engine.parallel`)."""
    if name == "triton":
        from ..kernels.picard import picard_update

        return picard_update
    if name == "reference":
        return picard_update_reference
    raise ValueError(f"unknown Picard backend {name!r}: choose 'triton' or 'reference'")
