"""The CUDA half of csrc/ compiles (CI has nvcc but CPU-only torch, so setup.py builds only the
C++ part there): the kernel with nvcc, and the CUDA binding with the host compiler against
torch's headers. Where the tools are missing the tests skip, unless NAG_ENGINE_REQUIRE_EXT=1
(CI), where they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
REQUIRED = os.environ.get("NAG_ENGINE_REQUIRE_EXT") == "1"


def tool(name: str) -> str:
    path = shutil.which(name) or (
        str(Path("/usr/local/cuda/bin") / name)
        if (Path("/usr/local/cuda/bin") / name).exists()
        else None
    )
    if path is None:
        if REQUIRED:
            pytest.fail(f"{name} is not on PATH (NAG_ENGINE_REQUIRE_EXT=1)")
        pytest.skip(f"{name} is not on PATH")
    return path


def compile_ok(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)}\n{log}"
    return log


def test_cuda_kernel_compiles_with_nvcc_without_warnings(tmp_path):
    nvcc = tool("nvcc")
    obj = tmp_path / "fused_step_cuda.o"
    log = compile_ok(
        [nvcc, "-std=c++17", "-O3", "-arch=sm_90", "-Xcompiler", "-Wall,-Wextra"]
        + ["-I", str(CSRC), "-c", str(CSRC / "fused_step_cuda.cu"), "-o", str(obj)]
    )
    assert "warning" not in log.lower(), log
    assert obj.stat().st_size > 0


def test_cuda_binding_compiles_against_torch_headers():
    from torch.utils.cpp_extension import include_paths

    cxx = tool(os.environ.get("CXX", "c++"))
    includes = [f"-I{p}" for p in include_paths()]
    includes += [f"-I{sysconfig.get_paths()['include']}", f"-I{CSRC}"]
    compile_ok(
        [cxx, "-std=c++20", "-fsyntax-only", "-DNAG_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C"]
        + includes
        + [str(CSRC / "bindings.cpp")]
    )
