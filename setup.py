"""Build script: the Python package, its shipped checkpoints, `kernels/` installed as
`nag_engine.kernels`, and the native kernels of csrc/ as `nag_engine._C`.

Metadata lives in pyproject.toml. `nag_engine._C` holds the C++ CPU fused step always, and the
CUDA one too when torch is a CUDA build and a CUDA toolkit is found (CUDA_HOME / nvcc). It
needs torch at build time, so install with ``pip install --no-build-isolation -e .`` (build
isolation hides the installed torch). A failed or skipped build leaves a working pure-Python
package; `nag_engine.backends.available()` then says why the native backends are missing.

Environment:
  NAG_ENGINE_NO_EXT=1       build no native extension
  NAG_ENGINE_NO_CUDA=1      build the CPU part only, even where CUDA is available
  NAG_ENGINE_REQUIRE_EXT=1  fail the install if the extension does not build (CI)
"""

import os
import warnings

from setuptools import setup

CPU_SOURCES = ["csrc/bindings.cpp", "csrc/fused_step_cpu.cpp"]
CUDA_SOURCES = ["csrc/fused_step_cuda.cu"]
CXX_FLAGS = ["-O3", "-fopenmp"]  # (the C++ standard: torch's choice)
NVCC_FLAGS = ["-O3"]  # no fast math: keep IEEE subnormals, like the reference


def _flag(name: str) -> bool:
    return os.environ.get(name, "") == "1"


def _native_build():
    """(ext_modules, cmdclass) for nag_engine._C, or ([], {}) where it cannot be built."""
    if _flag("NAG_ENGINE_NO_EXT"):
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        message = (
            "torch is not importable at build time (pip's build isolation hides it): "
            "nag_engine._C is not built. Install torch first, then this package with "
            "`pip install --no-build-isolation -e .`"
        )
        if _flag("NAG_ENGINE_REQUIRE_EXT"):
            raise RuntimeError(message) from None
        warnings.warn(message, stacklevel=1)
        return [], {}

    def cpu_extension():
        return cpp_extension.CppExtension(
            "nag_engine._C",
            CPU_SOURCES,
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args=CXX_FLAGS,
            extra_link_args=["-fopenmp"],
        )

    with_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and not _flag("NAG_ENGINE_NO_CUDA")
    )
    if with_cuda:
        extension = cpp_extension.CUDAExtension(
            "nag_engine._C",
            CPU_SOURCES + CUDA_SOURCES,
            include_dirs=[os.path.abspath("csrc")],
            define_macros=[("NAG_WITH_CUDA", None)],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    else:
        extension = cpu_extension()

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """Falls back to the CPU-only extension when the CUDA build fails (a compile error, or
        torch's nvcc / compiler version checks), and to no extension (with a warning) when that
        fails too, unless NAG_ENGINE_REQUIRE_EXT=1."""

        def build_extensions(self):
            try:
                super().build_extensions()
                return
            except Exception as err:
                if not with_cuda:
                    return self._give_up(err)
                warnings.warn(
                    f"the CUDA part of nag_engine._C failed to build ({err}); "
                    "building the CPU part only",
                    stacklevel=1,
                )
            cpu = cpu_extension()
            for attr in ("_full_name", "_links_to_dynamic", "_needs_stub", "_file_name"):
                if hasattr(self.extensions[0], attr):  # set by setuptools' finalize_options
                    setattr(cpu, attr, getattr(self.extensions[0], attr))
            self.extensions = [cpu]
            try:
                super().build_extensions()  # defines TORCH_EXTENSION_NAME for the new one too
            except Exception as err:
                self._give_up(err)

        def _give_up(self, err):
            if _flag("NAG_ENGINE_REQUIRE_EXT"):
                raise err
            warnings.warn(
                f"nag_engine._C failed to build ({err}); the package works without it "
                "(backend 'reference' or 'triton')",
                stacklevel=1,
            )

    return [extension], {"build_ext": OptionalBuildExt.with_options(use_ninja=False)}


ext_modules, cmdclass = _native_build()

setup(
    packages=[
        "nag_engine",
        "nag_engine.analysis",
        "nag_engine.backends",
        "nag_engine.cli",
        "nag_engine.models",
        "nag_engine.training",
        "nag_engine.kernels",
    ],
    package_dir={"nag_engine.kernels": "kernels"},
    package_data={"nag_engine": ["assets/*.safetensors"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
