"""The native fused step (`nag_engine._C`, built from csrc/ by setup.py): C++ on CPU tensors
and, where the extension was built with CUDA, CUDA on GPU tensors.

Both wrappers take the same arguments as every other backend (docs/ARCHITECTURE.md §4, checked by
`nag_engine.backends.checks.prepare`); the CUDA kernel is launched on the current stream, so it
can be captured in a CUDA graph. If the extension is missing, `status()` says why and the
wrappers raise RuntimeError.
"""

from __future__ import annotations

from typing import Optional

import torch

from .checks import Launch, StepInputs, contract_step

Tensor = torch.Tensor

try:
    from .. import _C
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


def _launcher(name: str, device_type: str) -> Launch:
    """Launches `_C.fused_step_<cpu|cuda>` for backend `name` on checked inputs."""

    def launch(a: StepInputs, weights: Tensor, coef: Tensor, stage: Tensor, x: Tensor) -> None:
        if _C is None:
            raise RuntimeError(_IMPORT_ERROR)
        if x.device.type != device_type:
            raise ValueError(
                f"backend {name!r} needs {device_type.upper()} tensors, got {x.device}"
            )
        args = (a.out, weights, coef, stage, x, a.x_new, a.g_prev, a.z, a.g_out, a.next_input)
        if device_type == "cpu":
            _C.fused_step_cpu(*args)
            return
        if not _C.with_cuda:
            raise RuntimeError(status()["cuda"])
        _C.fused_step_cuda(*args)  # on x's device and its current stream

    return launch


fused_step_cpp = contract_step(
    _launcher("cpp", "cpu"),
    name="fused_step_cpp",
    doc="The fused step in C++ on CPU tensors (OpenMP over blocks); returns the new state.",
    z_dtype=torch.float32,
)
fused_step_cuda = contract_step(
    _launcher("cuda", "cuda"),
    name="fused_step_cuda",
    doc="The fused step in CUDA (128-bit loads, fp32 math) on x's device and its current "
    "stream, so it can be captured in a CUDA graph; returns the new state.",
    z_dtype=torch.float32,
)
