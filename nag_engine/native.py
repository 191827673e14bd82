"""The native fused step (`nag_engine._C`, built from csrc/ by setup.py): C++ on CPU tensors
and, where the extension was built with CUDA, CUDA on GPU tensors.

Both wrappers take the same arguments as every other backend (DESIGN.md §4, checked by
`nag_engine.step_contract.prepare`); the CUDA kernel is launched on the current stream, so it
can be captured in a CUDA graph. If the extension is missing, `status()` says why and the
wrappers raise RuntimeError.
"""

from __future__ import annotations

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


def _call(kernel, out, weights, coef, stage, x, *, x_new, g_prev, z, g_out, next_input, extra):
    args = prepare(
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
    kernel(
        args.out,
        weights,
        coef,
        stage,
        x,
        args.x_new,
        args.g_prev,
        args.z,
        args.g_out,
        args.next_input,
        *extra,
    )
    return args.x_new


def fused_step_cpp(
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
    """The fused step in C++ on CPU tensors (OpenMP over blocks); returns the new state."""
    if status()["cpp"] is not None:
        raise RuntimeError(status()["cpp"])
    if x.device.type != "cpu":
        raise ValueError(f"backend 'cpp' needs CPU tensors, got {x.device}")
    return _call(
        _C.fused_step_cpu,
        out,
        weights,
        coef,
        stage,
        x,
        x_new=x_new,
        g_prev=g_prev,
        z=z,
        g_out=g_out,
        next_input=next_input,
        extra=(),
    )


def fused_step_cuda(
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
    """The fused step in CUDA (128-bit loads, fp32 math) on the current stream; returns the
    new state."""
    if status()["cuda"] is not None:
        raise RuntimeError(status()["cuda"])
    if x.device.type != "cuda":
        raise ValueError(f"backend 'cuda' needs CUDA tensors, got {x.device}")
    stream = torch.cuda.current_stream(x.device).cuda_stream
    return _call(
        _C.fused_step_cuda,
        out,
        weights,
        coef,
        stage,
        x,
        x_new=x_new,
        g_prev=g_prev,
        z=z,
        g_out=g_out,
        next_input=next_input,
        extra=(stream,),
    )
