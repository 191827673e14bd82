"""The CUDA fused-step kernel's per-thread body run on the host (tests/csrc/, built here with
nvcc) equals the torch reference: index arithmetic, coalesced 4-element groups,
masked tails, unaligned fallbacks, dtype conversions and in-place aliasing are checked on a
machine without a GPU. (On a GPU machine tests/test_kernels.py runs the kernel itself.)"""

from __future__ import annotations

import ctypes
import subprocess

import pytest
import torch
from test_csrc_build import CSRC, tool
from test_kernels import DTYPES, FORMS, assert_same, case, run

from nag_engine import backends
from nag_engine.backends.checks import StepInputs, contract_step

EMULATOR = CSRC.parent / "tests" / "csrc" / "emulate_fused_step_cuda.cu"
TILE = 256 * 2 * 4  # elements per block of the CUDA launch (THREADS * GROUPS * GROUP)
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


class NagStepArgs(ctypes.Structure):
    """csrc/fused_step.h's argument block."""

    _fields_ = [
        ("out", ctypes.c_void_p),
        ("out_dtype", ctypes.c_int),
        ("passes", ctypes.c_int),
        ("weights", ctypes.c_void_p),
        ("w_stride", ctypes.c_longlong),
        ("coef", ctypes.c_void_p),
        ("coef_stride", ctypes.c_longlong),
        ("stages", ctypes.c_longlong),
        ("stage", ctypes.c_void_p),
        ("stage_int64", ctypes.c_int),
        ("x", ctypes.c_void_p),
        ("g_prev", ctypes.c_void_p),
        ("z", ctypes.c_void_p),
        ("x_new", ctypes.c_void_p),
        ("g_out", ctypes.c_void_p),
        ("next", ctypes.c_void_p),
        ("next_dtype", ctypes.c_int),
        ("next_slots", ctypes.c_int),
        ("n", ctypes.c_longlong),
    ]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The emulator library, compiled for the host with nvcc."""
    nvcc = tool("nvcc")
    lib = tmp_path_factory.mktemp("emulator") / "emulate_fused_step_cuda.so"
    cmd = [nvcc, "-std=c++17", "-O2", "-shared", "-Xcompiler", "-fPIC,-Wall,-Wextra"]
    cmd += ["-I", str(CSRC), str(EMULATOR), "-o", str(lib)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stderr
    return ctypes.CDLL(str(lib))


def step_args(a: StepInputs, weights, coef, stage, x) -> NagStepArgs:
    """The argument block the binding builds (csrc/bindings.cpp make_args)."""

    def ptr(t):
        return None if t is None else t.data_ptr()

    slots = 0 if a.next_input is None else a.next_input.shape[0]
    return NagStepArgs(
        out=ptr(a.out),
        out_dtype=DTYPE_CODES[a.out.dtype],
        passes=a.out.shape[0],
        weights=ptr(weights),
        w_stride=weights.stride(0),
        coef=ptr(coef),
        coef_stride=coef.stride(0),
        stages=min(coef.shape[0], weights.shape[0]),
        stage=ptr(stage),
        stage_int64=int(stage.dtype == torch.int64),
        x=ptr(x),
        g_prev=ptr(a.g_prev),
        z=ptr(a.z),
        x_new=ptr(a.x_new),
        g_out=ptr(a.g_out),
        next=ptr(a.next_input) if slots else None,
        next_dtype=DTYPE_CODES[a.next_input.dtype] if slots else DTYPE_CODES[a.out.dtype],
        next_slots=slots,
        n=x.numel(),
    )


def emulated_step(emulator):
    """The CUDA kernel, emulated on the host, with the backends' contract (`contract_step`)."""

    def launch(a: StepInputs, weights, coef, stage, x) -> None:
        args = step_args(a, weights, coef, stage, x)
        assert emulator.nag_emulate_fused_step_cuda(ctypes.byref(args)) == 0, "the kernel traps"

    return contract_step(launch, name="emulated_cuda", doc="", z_dtype=torch.float32)


def wide(emulator, inputs, slots, dtype) -> bool:
    """Whether the launch for these inputs takes the wide (vectorised) accesses."""
    seen = []

    def launch(a, weights, coef, stage, x):
        seen.append(
            emulator.nag_emulate_uses_wide_accesses(
                ctypes.byref(step_args(a, weights, coef, stage, x))
            )
        )

    run(contract_step(launch, name="probe", doc="", z_dtype=torch.float32), inputs, slots, dtype)
    return bool(seen[0])


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("passes", [1, 3, 4])
def test_the_cuda_kernel_body_equals_the_reference(emulator, passes, dtype, form):
    """Several blocks, aligned (wide accesses) and with a tail of 3 (element accesses)."""
    for n in (2 * TILE + 12, 2 * TILE + 3):
        inputs, slots = case(passes, DTYPES[dtype], n, form, seed=n + passes)
        assert wide(emulator, inputs, slots, DTYPES[dtype]) == (n % 4 == 0)
        assert_same(emulated_step(emulator), inputs, slots, DTYPES[dtype])


@pytest.mark.parametrize("n", [1, 4, 5, 1023, TILE - 1, TILE, TILE + 1, 3 * TILE + 4])
@pytest.mark.parametrize("slots", [0, 1, 3])
def test_every_size_and_slot_count(emulator, n, slots):
    inputs, _ = case(3, torch.bfloat16, n, "all", seed=n)
    assert_same(emulated_step(emulator), inputs, slots, torch.bfloat16)


@pytest.mark.parametrize("next_dtype", list(DTYPES))
@pytest.mark.parametrize("out_dtype", list(DTYPES))
def test_the_next_input_may_have_another_dtype_than_the_output(emulator, out_dtype, next_dtype):
    inputs, slots = case(2, DTYPES[out_dtype], TILE + 8, "all", seed=3)
    assert_same(emulated_step(emulator), inputs, slots, DTYPES[next_dtype])


def test_unaligned_arrays_take_the_element_path_and_stay_correct(emulator):
    """Views starting one element into their storage: no 16-byte alignment, so no wide access."""
    inputs, slots = case(2, torch.float32, TILE + 1, "all", seed=5)
    for name in ("x", "g_prev", "z"):
        inputs[name] = inputs[name][1:]
    inputs["out"] = inputs["out"][:, 1:].contiguous()
    assert not wide(emulator, inputs, slots, torch.float32)
    assert_same(emulated_step(emulator), inputs, slots, torch.float32)


def test_nothing_outside_the_arrays_is_written_and_aliases_read_before_written(emulator):
    """Outputs inside larger buffers: the elements after n keep their values; g_out over g_prev
    and the state updated in place give the reference's results."""
    n = TILE + 6
    inputs, slots = case(3, torch.float16, n, "dpm-multistep", seed=7)
    storage = torch.full((3, n + 64), 7.0)
    x, g_prev = storage[0, :n], storage[1, :n]
    x.copy_(inputs["x"])
    g_prev.copy_(inputs["g_prev"])
    step = emulated_step(emulator)
    step(
        inputs["out"],
        inputs["weights"],
        inputs["coef"],
        inputs["stage"],
        x,
        g_prev=g_prev,
        g_out=g_prev,
    )
    x_ref, g_ref = inputs["x"].clone(), inputs["g_prev"].clone()
    backends.reference_step(
        inputs["out"],
        inputs["weights"],
        inputs["coef"],
        inputs["stage"],
        x_ref,
        g_prev=g_ref,
        g_out=g_ref,
    )
    torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_prev, g_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(storage[:, n:], torch.full((3, 64), 7.0))


def test_a_stage_outside_the_tables_traps(emulator):
    inputs, slots = case(1, torch.float32, 64, "all")
    inputs["stage"] = torch.tensor(3, dtype=torch.int64)  # the tables have 3 rows
    step = emulated_step(emulator)
    with pytest.raises(AssertionError, match="traps"):
        run(step, inputs, slots, torch.float32)
