"""The native fused step (`nag_engine._C`, built from csrc/ by setup.py): C++ on CPU tensors
and, where the extension was built with CUDA, CUDA on GPU tensors.

Both wrappers take the same arguments as every other backend (DESIGN.md §4, checked by
`nag_engine.step_contract.prepare`); the CUDA kernel is launched on the current stream, so it
can be captured in a CUDA graph. If the extension is missing, `status()` says why and the
wrappers raise RuntimeError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from .step_contract import prepare

Tensor = torch.Tensor

try:
    from . import _C
except ImportError as err:  # not built (pure-Python install) or built for another torch
    _C = None
    _IMPORT_ERROR = f"nag_engine._C is not built ({err}); reinstall with " + (
        "`pip install --no-build-isolation -e .` and a C++ compiler"
    )
else:
    _IMPORT_ERROR = None


def status() -> dict[str, Optional[str]]:
    """{"cpp": None or why not, "cuda": None or why not}: can each native kernel run here."""
    if _C is None:
        return {"cpp": _IMPORT_ERROR, "cuda": _IMPORT_ERROR}
    if not _C.with_cuda:
        cuda = "nag_engine._C was built without CUDA (CPU torch or no CUDA toolkit at build time)"
    elif not torch.cuda.is_available():
        cuda = "no CUDA device"
    else:
        cuda = None
    return {"cpp": None, "cuda": cuda}


def _native_step(name: str, device_type: str, doc: str) -> Callable[..., Tensor]:
    """The backend-contract wrapper of `_C.fused_step_<cpu|cuda>` for backend `name`."""

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
        why = status()[name]
        if why is not None:
            raise RuntimeError(why)
        if x.device.type != device_type:
            raise ValueError(
                f"backend {name!r} needs {device_type.upper()} tensors, got {x.device}"
            )
        a = prepare(
            out,
            weights,
            coef,
            x,
            x_new=x_new,
            g_prev=g_prev,
            z=z,
            g_out=g_out,
            next_input=next_input,
            z_dtype=torch.float32,
        )
        kernel = getattr(_C, f"fused_step_{device_type}")
        stream = (torch.cuda.current_stream(x.device).cuda_stream,) if device_type == "cuda" else ()
        kernel(
            a.out, weights, coef, stage, x, a.x_new, a.g_prev, a.z, a.g_out, a.next_input, *stream
        )
        return a.x_new

    fused_step.__name__ = fused_step.__qualname__ = f"fused_step_{name}"
    fused_step.__doc__ = doc
    return fused_step


fused_step_cpp = _native_step(
    "cpp",
    "cpu",
    "The fused step in C++ on CPU tensors (OpenMP over blocks); returns the new state.",
)
fused_step_cuda = _native_step(
    "cuda",
    "cuda",
    "The fused step in CUDA (128-bit loads, fp32 math) on the current stream, so it can be "
    "captured in a CUDA graph; returns the new state.",
)
