"""`backends.BoundStep`: the fused step bound to a batch's buffers, checked once, equals the
contract's function on every call, and falls back to the full checks for anything unexpected."""

from __future__ import annotations

import pytest
import torch
from test_kernels import KERNELS, case

from nag_engine import backends
from nag_engine.backends import checks

NAMES = KERNELS + ["reference"]


def buffers(inputs, slots, dtype):
    x = inputs["x"].clone()
    g = inputs["g_prev"].clone() if inputs["g_prev"] is not None else None
    next_input = torch.zeros(slots, *x.shape, dtype=dtype)
    return x, g, next_input


def bound(name, inputs, slots, dtype):
    x, g, next_input = buffers(inputs, slots, dtype)
    step = backends.BoundStep(
        backends.implementation(name),
        inputs["weights"],
        inputs["coef"],
        inputs["stage"],
        x,
        g_prev=g,
        g_out=g,
        next_input=next_input,
    )
    return step, x, g, next_input


@pytest.mark.parametrize("used_slots", [0, 1, 2])
@pytest.mark.parametrize("form", ["euler", "multistep", "all"])
@pytest.mark.parametrize("name", NAMES)
def test_a_bound_step_equals_the_checked_function(name, form, used_slots):
    """Three calls in a row (the stage counter advancing), against the same calls made through
    the contract's function on copies of the buffers."""
    inputs, slots = case(3, torch.bfloat16, 1000, form, slots=2)
    step, x, g, next_input = bound(name, inputs, slots, torch.bfloat16)
    x2, g2, next2 = buffers(inputs, slots, torch.bfloat16)
    fused_step = backends.implementation(name)
    for stage in range(3):
        inputs["stage"].fill_(stage)
        out = torch.randn(3, *x.shape).to(torch.bfloat16)
        z = torch.randn(x.shape) if inputs["z"] is not None else None
        assert step(out, z, used_slots) is x
        fused_step(
            out,
            inputs["weights"],
            inputs["coef"],
            inputs["stage"],
            x2,
            g_prev=g2,
            z=z,
            g_out=g2,
            next_input=next2[:used_slots] if used_slots else None,
        )
        assert torch.equal(x, x2)
        assert g is None or torch.equal(g, g2)
        assert torch.equal(next_input, next2)  # slots past used_slots untouched in both


@pytest.mark.parametrize("name", KERNELS)
def test_fitting_calls_skip_the_checks(name, monkeypatch):
    """The static buffers are checked when the step is made, not on each call."""
    inputs, slots = case(2, torch.float32, 64, "all")
    step, x, _, _ = bound(name, inputs, slots, torch.float32)
    calls = []
    real = checks.prepare
    monkeypatch.setattr(checks, "prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(3):
        step(inputs["out"], inputs["z"], slots)
    assert calls == []
    step(inputs["out"].transpose(0, 1).contiguous().transpose(0, 1), inputs["z"], slots)
    assert calls == [1]  # an output in another layout: the checked path, which copies it


@pytest.mark.parametrize("name", NAMES)
def test_unexpected_outputs_get_the_contracts_errors_and_copies(name):
    inputs, slots = case(2, torch.float32, 64, "sde")
    step, x, _, _ = bound(name, inputs, slots, torch.float32)
    with pytest.raises((ValueError, RuntimeError)):
        step(torch.randn(2, 65), inputs["z"], slots)  # the wrong shape
    strided = torch.randn(64, 2).t()  # [2, 64] not in x's layout: copied, same result
    expected = x.clone()
    backends.reference_step(
        strided, inputs["weights"], inputs["coef"], inputs["stage"], expected, z=inputs["z"]
    )
    step(strided, inputs["z"], 0)
    torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", KERNELS)
def test_bad_static_buffers_are_refused_when_the_step_is_made(name):
    inputs, slots = case(2, torch.float32, 64, "all")
    with pytest.raises(ValueError, match="x must be float32"):
        bound(name, {**inputs, "x": inputs["x"].double()}, slots, torch.float32)
    with pytest.raises(ValueError, match="next_input is on meta but x on cpu"):
        backends.BoundStep(
            backends.implementation(name),
            inputs["weights"],
            inputs["coef"],
            inputs["stage"],
            inputs["x"],
            next_input=torch.empty(1, 64, device="meta"),
        )
