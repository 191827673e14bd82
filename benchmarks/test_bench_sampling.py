"""CPU smoke version of `python -m benchmarks.sampling` under pytest-benchmark: a tiny DiT,
batch 4, 4 Euler steps of CFG + NAG through (a) the eager fp32 loop, (b) the diffusers-style
bf16 loop and (d) nag_engine; the ratio table against (a) is printed at the end. The GPU
configuration and (c) (torch.compile) are the script's job."""

from __future__ import annotations

import copy

import pytest
import torch

import nag_engine as ne
from benchmarks.sampling import CFG, NAG, loop_batched, loop_eager, make_model

STEPS, BATCH = 4, 4


@pytest.fixture(scope="module")
def setup():
    model32 = make_model("tiny", True, torch.device("cpu"))
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(BATCH, *model32.sample_shape, generator=gen)
    y = torch.randint(0, 1000, (BATCH,), generator=gen)
    sampler = ne.Sampler(model16, STEPS, cfg_scale=CFG, nag_scale=NAG, solver="euler", dtype="bf16")
    return model32, model16, latents, y, sampler


@pytest.mark.parametrize("variant", ["(a) eager fp32", "(b) diffusers bf16", "(d) nag_engine"])
def test_sampling_loop(benchmark, record, setup, variant):
    model32, model16, latents, y, sampler = setup
    grid = sampler.grid.float()
    runs = {
        "(a) eager fp32": lambda: loop_eager(model32, latents, y, grid),
        "(b) diffusers bf16": lambda: loop_batched(model16, latents, y, grid),
        "(d) nag_engine": lambda: sampler.sample(BATCH, y=y, latents=latents, progress=False),
    }
    benchmark.group = "sampling tiny DiT"
    with torch.no_grad():
        benchmark(runs[variant])
    record(f"tiny DiT, batch {BATCH}, {STEPS} steps", variant, benchmark, "(a) eager fp32")
