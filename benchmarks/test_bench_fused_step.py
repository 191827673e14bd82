"""CPU micro-benchmarks of the fused guidance + solver step against the chain of torch ops it
replaces, in one run (the ratio table is printed at the end):

* "torch chain": what an eager sampling loop writes -- combine the three CFG + NAG passes
  (out_c + s_cfg (out_c - out_u) + s_nag (out_c - out_n)) in fp32, take the Euler step, and
  build the next model input with torch.cat + a dtype cast;
* "reference": nag_engine's table-driven torch reference (`backends.reference_step`);
* "cpp": the C++ kernel of nag_engine._C (where built).

    python -m pytest benchmarks/test_bench_fused_step.py -q            # add --ratio-json F

Timings say nothing about correctness: tests/test_kernels.py checks that.
"""

from __future__ import annotations

import pytest
import torch

from nag_engine import backends

PASSES = 3
CFG, NAG = 1.5, 0.5
A, B = 1.0, -0.02
SIZES = {"16K": 2**14, "256K": 2**18, "4M": 2**22}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VARIANTS = ["torch chain", "reference"] + (["cpp"] if backends.available()["cpp"] == "yes" else [])


def inputs(n: int, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    weights = torch.tensor([[1 + CFG + NAG, -CFG, -NAG, 0.0]])
    return {
        "out": torch.randn(PASSES, n, generator=g).to(dtype),
        "weights": weights,
        "coef": torch.tensor([[A, B, 0.0, 0.0, 1.0, 0.0]]),  # COEF_COLUMNS
        "stage": torch.zeros((), dtype=torch.int32),
        "x": torch.randn(n, generator=g),
        "g": torch.empty(n),
        "next": torch.empty(PASSES, n, dtype=dtype),
    }


def torch_chain(t: dict) -> None:
    out_c, out_u, out_n = t["out"].float().unbind(0)
    g = out_c + CFG * (out_c - out_u) + NAG * (out_c - out_n)
    t["x"].copy_(A * t["x"] + B * g)
    t["g"].copy_(g)
    t["next"].copy_(torch.cat([t["x"].unsqueeze(0)] * PASSES).to(t["next"].dtype))


def kernel_call(name: str):
    fn = backends.implementation(name)

    def call(t: dict) -> None:
        fn(
            t["out"],
            t["weights"],
            t["coef"],
            t["stage"],
            t["x"],
            g_out=t["g"],
            next_input=t["next"],
        )

    return call


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("size", list(SIZES))
def test_fused_step(benchmark, record, size, dtype, variant):
    t = inputs(SIZES[size], DTYPES[dtype])
    call = torch_chain if variant == "torch chain" else kernel_call(variant)
    benchmark.group = f"fused step {size} {dtype}"
    benchmark(call, t)
    record(f"CFG+NAG Euler, {size} elements, {dtype}", variant, benchmark, "torch chain")
