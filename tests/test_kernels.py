"""The fused guidance + solver step: every backend equals the torch reference.

On a machine without a GPU the Triton kernel runs on CPU tensors under TRITON_INTERPRET=1 (set
in conftest.py); on a GPU machine the same tests run it on CUDA tensors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nag_engine import Sampler, backends
from nag_engine.models import MLPDenoiser
from nag_engine.models.analytic import ring_mixture

pytest.importorskip("triton")
from nag_engine.kernels.fused_step import fused_step  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# solver forms: (keep, uses g_prev, uses z)
FORMS = {
    "euler": (True, False, False),
    "heun-predictor": (False, False, False),
    "multistep": (True, True, False),
    "sde": (True, False, True),
    "all": (True, True, True),
}


def case(passes, dtype, n, form, slots=2, seed=0, shape=None):
    """Random inputs of one step, with the reference's results."""
    g = torch.Generator().manual_seed(seed)
    shape = shape or (n,)
    keep, uses_prev, uses_z = FORMS[form]
    stages = 3
    weights = torch.randn(stages, 4, generator=g)
    coef = torch.randn(stages, 5, generator=g)
    coef[:, 4] = float(keep)
    inputs = {
        "out": torch.randn(passes, *shape, generator=g).to(dtype),
        "weights": weights,
        "coef": coef,
        "stage": torch.tensor(1, dtype=torch.int32),
        "x": torch.randn(*shape, generator=g),
        "g_prev": torch.randn(*shape, generator=g) if uses_prev else None,
        "z": torch.randn(*shape, generator=g) if uses_z else None,
    }
    inputs = {k: v.to(DEVICE) if v is not None else None for k, v in inputs.items()}
    return inputs, slots


def run(fn, inputs, slots, dtype):
    x = inputs["x"].clone()
    g_out = torch.empty_like(x)
    next_input = torch.empty(slots, *x.shape, dtype=dtype, device=x.device)
    fn(
        inputs["out"],
        inputs["weights"],
        inputs["coef"],
        inputs["stage"],
        x,
        g_prev=inputs["g_prev"],
        z=inputs["z"],
        g_out=g_out,
        next_input=next_input,
    )
    return x, g_out, next_input


def assert_same(inputs, slots, dtype):
    x1, g1, n1 = run(fused_step, inputs, slots, dtype)
    x2, g2, n2 = run(backends.reference_step, inputs, slots, dtype)
    torch.testing.assert_close(x1, x2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-5)
    # the next input is x_out rounded to the model's dtype: equal up to one rounding step
    ulp = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps * float(x2.abs().max())
    torch.testing.assert_close(n1.float(), n2.float(), rtol=0, atol=max(ulp, 1e-5))


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("passes", [1, 2, 3, 4])
def test_kernel_equals_reference(passes, dtype, form):
    inputs, slots = case(passes, DTYPES[dtype], 1023, form)
    assert_same(inputs, slots, DTYPES[dtype])


@pytest.mark.parametrize("n", [1, 7, 1023, 4097])
@pytest.mark.parametrize("slots", [0, 1, 3])
def test_odd_sizes_and_slot_counts(n, slots):
    inputs, _ = case(3, torch.bfloat16, n, "all", seed=n)
    assert_same(inputs, slots, torch.bfloat16)


def test_keep_false_leaves_the_state_but_writes_the_next_input():
    inputs, slots = case(2, torch.float32, 100, "heun-predictor")
    before = inputs["x"].clone()
    x, _, next_input = run(fused_step, inputs, slots, torch.float32)
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    assert not torch.allclose(next_input[0], before)


def test_stage_counter_selects_the_row():
    inputs, slots = case(2, torch.float32, 64, "all")
    results = []
    for stage in range(3):
        inputs["stage"] = torch.tensor(stage, dtype=torch.int32, device=DEVICE)
        results.append(run(fused_step, inputs, slots, torch.float32)[0])
        assert_same(inputs, slots, torch.float32)
    assert not torch.allclose(results[0], results[1])


def test_non_contiguous_inputs_and_channels_last():
    g = torch.Generator().manual_seed(3)
    inputs, slots = case(2, torch.float16, 0, "all", shape=(3, 4, 5, 6))
    # a strided view of a bigger tensor, and noise in another layout
    big = torch.randn(2, 3, 4, 5, 12, generator=g).to(torch.float16).to(DEVICE)
    inputs["out"] = big[..., ::2]
    inputs["z"] = inputs["z"].transpose(2, 3).contiguous().transpose(2, 3)
    assert not inputs["out"].is_contiguous() and not inputs["z"].is_contiguous()
    assert_same(inputs, slots, torch.float16)
    # a channels-last state with channels-last outputs
    last = {k: v for k, v in inputs.items()}
    last["x"] = inputs["x"].to(memory_format=torch.channels_last)
    x = last["x"].clone(memory_format=torch.channels_last)
    g_out = torch.empty_like(x)
    next_input = torch.empty(2, *x.shape, dtype=torch.float16, device=x.device)
    next_input = next_input.as_strided(next_input.shape, (x.numel(), *x.stride()))
    fused_step(
        last["out"],
        last["weights"],
        last["coef"],
        last["stage"],
        x,
        g_prev=last["g_prev"],
        z=last["z"],
        g_out=g_out,
        next_input=next_input,
    )
    x_ref, g_ref, _ = run(backends.reference_step, inputs, slots, torch.float16)
    torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused():
    inputs, slots = case(2, torch.float32, 16, "euler")
    with pytest.raises(ValueError, match="1 <= P <= 4"):
        fused_step(
            inputs["out"].repeat(3, 1),
            inputs["weights"],
            inputs["coef"],
            inputs["stage"],
            inputs["x"],
        )
    with pytest.raises(ValueError, match="float32"):
        fused_step(
            inputs["out"], inputs["weights"], inputs["coef"], inputs["stage"], inputs["x"].double()
        )
    with pytest.raises(ValueError, match="strides"):
        fused_step(
            inputs["out"],
            inputs["weights"],
            inputs["coef"],
            inputs["stage"],
            inputs["x"],
            g_out=torch.empty(32, device=DEVICE)[::2],
        )


@settings(max_examples=25, deadline=None)
@given(
    passes=st.integers(1, 4),
    n=st.integers(1, 300),
    form=st.sampled_from(list(FORMS)),
    dtype=st.sampled_from(list(DTYPES)),
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_reference_property(passes, n, form, dtype, seed):
    inputs, slots = case(passes, DTYPES[dtype], n, form, seed=seed)
    assert_same(inputs, slots, DTYPES[dtype])


@pytest.mark.parametrize("solver", ["euler", "heun", "euler-maruyama", "ddim"])
def test_sampling_gives_the_same_samples_on_every_backend(solver):
    torch.manual_seed(0)
    model = MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=3).to(DEVICE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    runs = {}
    for name in ("reference", "triton"):
        sampler = Sampler(model, 6, solver=solver, cfg_scale=1.5, nag_scale=0.5, backend=name)
        assert sampler.backend == name
        runs[name] = sampler.sample(32, y=1, seed=4, progress=False)
    torch.testing.assert_close(runs["triton"], runs["reference"], rtol=1e-5, atol=1e-5)


def test_backend_selection(monkeypatch):
    assert backends.select("cpu", "reference") == "reference"
    with pytest.raises(ValueError, match="unknown backend"):
        backends.select("cpu", "fortran")
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.select(DEVICE) == "reference"
    monkeypatch.delenv(backends.ENV_VAR)
    assert backends.select(DEVICE) == ("triton" if DEVICE == "cuda" else "reference")
    assert set(backends.available()) == set(backends.BACKENDS)
    with pytest.raises(ValueError, match="backend"):
        Sampler(ring_mixture(4), 3, backend="fortran")
