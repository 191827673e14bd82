"""Tests for nag_engine.predictions: exact conversions between velocity, eps, x0, v and score.

Ground truth: draw (x0, eps), form x = alpha x0 + sigma eps; then the true predictions are
x0, eps, velocity = alpha' x0 + sigma' eps, v = alpha eps - sigma x0 and score = -eps / sigma.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nag_engine.predictions import (
    PREDICTIONS,
    check_prediction,
    conversion_coefficients,
    convert,
)
from nag_engine.schedules import SCHEDULES, get_schedule

PAIRS = list(itertools.product(PREDICTIONS, PREDICTIONS))
TIMES = [1e-4, 1e-2, 0.25, 0.5, 0.75, 0.99, 1 - 1e-4]


def truth(schedule, t, batch=5, dim=3, seed=0):
    """(x, {prediction: true value}) in float64; t a float or a [batch] tensor."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    eps = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    sched = get_schedule(schedule)
    tt = torch.as_tensor(t, dtype=torch.float64)
    if tt.ndim == 1:
        tt = tt.view(-1, 1)
    alpha, sigma = sched.alpha(tt), sched.sigma(tt)
    d_alpha, d_sigma = sched.d_alpha(tt), sched.d_sigma(tt)
    x = alpha * x0 + sigma * eps
    values = {
        "x0": x0,
        "eps": eps,
        "velocity": d_alpha * x0 + d_sigma * eps,
        "v": alpha * eps - sigma * x0,
        "score": -eps / sigma,
    }
    return x, values


def assert_close_scaled(actual, expected, rtol=1e-8):
    """Relative closeness with an absolute floor proportional to the tensor's scale (entries
    near zero are compared against the size of the whole tensor)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


# ----------------------------------------------------------------------------- exact conversions
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("t", TIMES)
def test_all_pairs_recover_truth(schedule, t):
    x, values = truth(schedule, t)
    for src, dst in PAIRS:
        out = convert(values[src], x, t, schedule, src, dst)
        assert out.dtype == torch.float64
        assert out.shape == x.shape
        try:
            assert_close_scaled(out, values[dst])
        except AssertionError as err:
            raise AssertionError(f"{src} -> {dst} at t={t} on {schedule}: {err}") from None


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("t", TIMES)
def test_coefficients_are_affine_map(schedule, t):
    x, values = truth(schedule, t)
    for src, dst in PAIRS:
        a, b = conversion_coefficients(src, dst, schedule, t)
        assert a.dtype == b.dtype == torch.float64
        assert a.ndim == b.ndim == 0
        assert_close_scaled(a * x + b * values[src], values[dst])


@pytest.mark.parametrize("name", PREDICTIONS)
def test_same_type_is_identity(name):
    for t in (0.0, 0.5, 1.0):
        a, b = conversion_coefficients(name, name, "vp", t)
        assert a.item() == 0.0
        assert b.item() == 1.0


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("t", [1e-3, 0.3, 0.9, 0.999])
def test_round_trip_is_identity(schedule, t):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    out = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    for src, dst in PAIRS:
        there = convert(out, x, t, schedule, src, dst)
        back = convert(there, x, t, schedule, dst, src)
        assert_close_scaled(back, out, rtol=1e-7)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_round_trip_coefficients_compose_to_identity(schedule):
    t = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    for src, dst in PAIRS:
        a1, b1 = conversion_coefficients(src, dst, schedule, t)
        a2, b2 = conversion_coefficients(dst, src, schedule, t)
        # src' = a2 x + b2 (a1 x + b1 out) = (a2 + b2 a1) x + b2 b1 out
        torch.testing.assert_close(a2 + b2 * a1, torch.zeros_like(t), rtol=0, atol=1e-9)
        torch.testing.assert_close(b2 * b1, torch.ones_like(t), rtol=1e-10, atol=0)


# ----------------------------------------------------------------------------- forms of t
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_t_as_float_or_zero_dim_tensor(schedule):
    t = 0.37
    x, values = truth(schedule, t)
    for src, dst in PAIRS:
        ref = convert(values[src], x, t, schedule, src, dst)
        for t_form in (torch.tensor(t, dtype=torch.float64), torch.tensor(t, dtype=torch.float32)):
            got = convert(values[src], x, t_form, schedule, src, dst)
            tol = 0 if t_form.dtype == torch.float64 else 1e-5
            assert_close_scaled(got, ref, rtol=max(tol, 1e-15))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_t_per_row(schedule):
    t = torch.tensor([0.02, 0.3, 0.5, 0.8, 0.97], dtype=torch.float64)
    x, values = truth(schedule, t, batch=5, dim=3)
    for src, dst in PAIRS:
        got = convert(values[src], x, t, schedule, src, dst)
        assert_close_scaled(got, values[dst])
        for i in range(len(t)):
            row = convert(values[src][i : i + 1], x[i : i + 1], float(t[i]), schedule, src, dst)
            torch.testing.assert_close(got[i : i + 1], row, rtol=1e-14, atol=0)


def test_t_per_row_with_image_shaped_tensors():
    gen = torch.Generator().manual_seed(2)
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    x0 = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    tv = t.view(2, 1, 1, 1)
    x = (1 - tv) * x0 + tv * eps
    v = eps - x0
    torch.testing.assert_close(convert(v, x, t, "linear", "velocity", "x0"), x0)
    torch.testing.assert_close(convert(v, x, t, "linear", "velocity", "eps"), eps)


def test_float32_tensors_stay_float32():
    x, values = truth("linear", 0.4)
    out = convert(values["velocity"].float(), x.float(), 0.4, "linear", "velocity", "x0")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, values["x0"].float(), rtol=1e-5, atol=1e-6)
    a, b = conversion_coefficients("velocity", "x0", "linear", torch.tensor([0.4, 0.5]))
    assert a.shape == b.shape == (2,)


def test_schedule_object_accepted():
    x, values = truth("vp-cosine", 0.6)
    sched = get_schedule("vp-cosine")
    got = convert(values["eps"], x, 0.6, sched, "eps", "velocity")
    assert_close_scaled(got, values["velocity"])


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "src, dst", [("v_pred", "x0"), ("x0", "noise"), ("Velocity", "eps"), ("", "x0")]
)
def test_unknown_prediction_raises(src, dst):
    x = torch.zeros(2, 3)
    bad = src if src not in PREDICTIONS else dst
    with pytest.raises(ValueError, match=repr(bad)):
        convert(x, x, 0.5, "linear", src, dst)
    with pytest.raises(ValueError, match=repr(bad)):
        conversion_coefficients(src, dst, "linear", 0.5)


def test_check_prediction():
    for name in PREDICTIONS:
        assert check_prediction(name) == name
    with pytest.raises(ValueError, match="model.prediction"):
        check_prediction("v_pred", "model.prediction")


def test_unknown_schedule_raises():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="'cosine'"):
        convert(x, x, 0.5, "cosine", "eps", "x0")


# ----------------------------------------------------------------------------- endpoints
# (schedule, t, src, dst, expected as a function of the exact (x0, eps)) for conversions that
# divide by nothing that vanishes at the endpoint.
ENDPOINT_CASES = [
    ("linear", 0.0, "x0", "x0", lambda x0, eps: x0),
    ("vp", 0.0, "x0", "x0", lambda x0, eps: x0),
    ("vp-cosine", 0.0, "x0", "x0", lambda x0, eps: x0),
    ("linear", 0.0, "eps", "x0", lambda x0, eps: x0),
    ("vp", 0.0, "eps", "x0", lambda x0, eps: x0),
    ("linear", 0.0, "velocity", "x0", lambda x0, eps: x0),
    ("linear", 0.0, "velocity", "eps", lambda x0, eps: eps),
    ("linear", 1.0, "velocity", "x0", lambda x0, eps: x0),
    ("linear", 1.0, "velocity", "eps", lambda x0, eps: eps),
    ("linear", 1.0, "x0", "eps", lambda x0, eps: eps),
    ("linear", 1.0, "x0", "score", lambda x0, eps: -eps),
    ("linear", 1.0, "eps", "eps", lambda x0, eps: eps),
    ("vp", 1.0, "eps", "x0", lambda x0, eps: x0),
]


@pytest.mark.parametrize("schedule, t, src, dst, expected", ENDPOINT_CASES)
def test_endpoint_conversions_stay_finite(schedule, t, src, dst, expected):
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    sched = get_schedule(schedule)
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    x = alpha * x0 + sigma * eps
    source = {
        "x0": x0,
        "eps": eps,
        "velocity": sched.d_alpha(t) * x0 + sched.d_sigma(t) * eps,
    }[src]
    a, b = conversion_coefficients(src, dst, schedule, t)
    assert torch.isfinite(a) and torch.isfinite(b)
    out = convert(source, x, t, schedule, src, dst)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected(x0, eps), rtol=1e-10, atol=1e-12)


def test_endpoint_per_row_times_including_zero_and_one():
    # A [B] time vector mixing both endpoints: x0 -> x0 and velocity -> x0 on linear stay finite.
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    x, values = truth("linear", t, batch=3)
    for src in ("x0", "velocity"):
        out = convert(values[src], x, t, "linear", src, "x0")
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, values["x0"], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- properties
@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    t=st.floats(0.01, 0.99),
    schedule=st.sampled_from(SCHEDULES),
    src=st.sampled_from(PREDICTIONS),
    dst=st.sampled_from(PREDICTIONS),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_conversion_recovers_truth(t, schedule, src, dst, seed):
    x, values = truth(schedule, t, batch=3, dim=2, seed=seed)
    assert_close_scaled(convert(values[src], x, t, schedule, src, dst), values[dst])


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    t=st.floats(0.01, 0.99),
    schedule=st.sampled_from(SCHEDULES),
    src=st.sampled_from(PREDICTIONS),
    mid=st.sampled_from(PREDICTIONS),
    dst=st.sampled_from(PREDICTIONS),
)
def test_property_conversions_compose(t, schedule, src, mid, dst):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    out = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    direct = convert(out, x, t, schedule, src, dst)
    via = convert(convert(out, x, t, schedule, src, mid), x, t, schedule, mid, dst)
    assert_close_scaled(via, direct, rtol=1e-8)
