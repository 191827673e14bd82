"""CPU smoke version of `python -m benchmarks.sampling` under pytest-benchmark: a tiny DiT,
batch 4, 4 Euler steps of CFG + NAG through (a) the plain DiT's eager fp32 loop, (p1) the plain
DiT's eager bf16 loop (three passes as one batch) and (n1) nag_engine; the ratio table against
(p1), the one peer cheap on a CPU, is printed at the end. The torch.compile peers and the GPU
configuration are the script's job."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch

import nag_engine as ne
from benchmarks.plain_dit import plain_dit_from
from benchmarks.sampling import (
    CFG,
    NAG,
    loop_peer,
    loop_reference,
    make_model,
    peer_inputs,
    peer_step,
)

STEPS, BATCH = 4, 4
PEER = "(p1) plain DiT eager bf16"


@pytest.fixture(scope="module")
def setup():
    model32 = make_model("tiny", True, torch.device("cpu"))
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(BATCH, *model32.sample_shape, generator=gen)
    y = torch.randint(0, 1000, (BATCH,), generator=gen)
    sampler = ne.Sampler(model16, STEPS, cfg_scale=CFG, nag_scale=NAG, solver="euler", dtype="bf16")
    inputs = peer_inputs(sampler.grid, y, 1000)
    return plain_dit_from(model32), plain_dit_from(model16), latents, y, sampler, inputs


@pytest.mark.parametrize("variant", ["(a) plain DiT eager fp32", PEER, "(n1) nag_engine"])
def test_sampling_loop(benchmark, record, setup, variant):
    plain32, plain16, latents, y, sampler, inputs = setup
    runs = {
        "(a) plain DiT eager fp32": lambda: loop_reference(plain32, latents, inputs),
        PEER: lambda: loop_peer(partial(peer_step, plain16), latents, inputs),
        "(n1) nag_engine": lambda: sampler.sample(BATCH, y=y, latents=latents, progress=False),
    }
    benchmark.group = "sampling tiny DiT"
    with torch.no_grad():
        benchmark(runs[variant])
    record(f"tiny DiT, batch {BATCH}, {STEPS} steps", variant, benchmark, PEER)
