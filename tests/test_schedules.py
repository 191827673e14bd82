"""Tests for nag_engine.schedules: alpha / sigma / derivatives / log-SNR and the sampling grid.

Convention (docs/ARCHITECTURE.md §1): t in [0, 1], t = 0 is data, t = 1 is noise and
x_t = alpha(t) x0 + sigma(t) eps.
"""

from __future__ import annotations

import math

import pytest
import torch

from nag_engine.schedules import (
    SCHEDULES,
    LinearSchedule,
    Schedule,
    VPCosineSchedule,
    VPLinearSchedule,
    get_schedule,
    shift_time,
    time_grid,
)

VP_SCHEDULES = ("vp", "vp-cosine", "vp-discrete")
# vp-discrete's log-SNR is piecewise linear: its derivative jumps at the knots t = i / 1000
SMOOTH_SCHEDULES = ("linear", "vp", "vp-cosine")
INTERIOR = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)


# ----------------------------------------------------------------------------- get_schedule
@pytest.mark.parametrize("name", SCHEDULES)
def test_get_schedule_by_name(name):
    sched = get_schedule(name)
    assert isinstance(sched, Schedule)
    assert sched.name == name


def test_get_schedule_classes():
    assert isinstance(get_schedule("linear"), LinearSchedule)
    assert isinstance(get_schedule("vp"), VPLinearSchedule)
    assert isinstance(get_schedule("vp-cosine"), VPCosineSchedule)


def test_get_schedule_passes_instances_through():
    sched = VPCosineSchedule(s=0.02)
    assert get_schedule(sched) is sched


@pytest.mark.parametrize("bad", ["cosine", "Linear", "", "ddpm"])
def test_get_schedule_unknown_name_raises(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        get_schedule(bad)


# ----------------------------------------------------------------------------- closed forms
def test_linear_closed_form():
    sched = get_schedule("linear")
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    torch.testing.assert_close(sched.alpha(t), 1.0 - t, rtol=0, atol=0)
    torch.testing.assert_close(sched.sigma(t), t, rtol=0, atol=0)
    torch.testing.assert_close(sched.d_alpha(t), torch.full_like(t, -1.0), rtol=0, atol=0)
    torch.testing.assert_close(sched.d_sigma(t), torch.ones_like(t), rtol=0, atol=0)


def test_linear_sigma_does_not_alias_input():
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    s = get_schedule("linear").sigma(t)
    s.mul_(2.0)
    assert t.tolist() == [0.25, 0.5]


def test_vp_closed_form():
    # Song et al. (2021): log alpha(t) = -(b1 - b0) t^2 / 4 - b0 t / 2 with b0 = 0.1, b1 = 20.
    sched = get_schedule("vp")
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    expected = torch.exp(-0.25 * (20.0 - 0.1) * t**2 - 0.5 * 0.1 * t)
    torch.testing.assert_close(sched.alpha(t), expected, rtol=1e-14, atol=0)


def test_cosine_closed_form():
    s = 0.008
    sched = get_schedule("vp-cosine")
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)

    def f(u):
        return torch.cos((u + s) / (1 + s) * math.pi / 2)

    expected = (f(t) / f(torch.zeros((), dtype=torch.float64))).clamp(min=0)
    torch.testing.assert_close(sched.alpha(t), expected, rtol=1e-13, atol=1e-15)


def test_vp_matches_discrete_ddpm_alpha_bar():
    """alpha(i / 1000)^2 against DDPM's alpha_bar_i = prod_{j=1..i} (1 - beta_j).

    log(alpha_bar_i) = sum_j log(1 - beta_j) while the continuous schedule integrates beta:
    log alpha(i/T)^2 = -int_0^{i/T} beta(s) ds. The two differ by (a) the Riemann-sum error
    |sum_{j<=i} beta_j - int beta| and (b) the second-order terms sum_j (-log(1 - beta_j) - beta_j)
    ~ sum beta_j^2 / 2. Their sum bounds |log ratio| at every i. For i <= 300 both are small
    (beta_j <= 0.006) and the relative agreement is ~1e-3 as the brief expects; towards i = 1000
    (b) grows to ~0.07, so there only the bound is asserted.
    """
    sched = get_schedule("vp")
    steps = 1000
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    log_alpha_bar = torch.cumsum(torch.log1p(-betas), 0)  # index i - 1 holds alpha_bar_i
    riemann = torch.cumsum(betas, 0)
    second_order = torch.cumsum(-torch.log1p(-betas) - betas, 0)
    for i in (1, 10, 50, 100, 200, 300, 500, 700, 900, 1000):
        t = i / steps
        integral = 1000 * (1e-4 * t + 0.5 * (0.02 - 1e-4) * t**2)  # int_0^t beta(s) ds
        bound = abs(riemann[i - 1].item() - integral) + second_order[i - 1].item()
        log_ratio = 2 * torch.log(sched.alpha(t)).item() - log_alpha_bar[i - 1].item()
        assert abs(log_ratio) <= bound * (1 + 1e-9) + 1e-12, (i, log_ratio, bound)
        if i <= 300:
            rel = math.expm1(log_ratio)
            assert abs(rel) < 2e-3, (i, rel)


def test_vp_log_snr_at_one_is_ddpm_value():
    # DDPM's linear schedule ends at log(alpha_bar / (1 - alpha_bar)) ~ -10.05.
    assert get_schedule("vp").log_snr(1.0).item() == pytest.approx(-10.05, abs=0.01)


# ----------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("name", SCHEDULES)
def test_endpoints(name):
    sched = get_schedule(name)
    assert sched.alpha(0.0).item() == 1.0
    assert sched.sigma(0.0).item() == 0.0
    assert sched.sigma(1.0).item() == pytest.approx(1.0, abs=1e-4)
    assert 0.0 <= sched.alpha(1.0).item() < 0.01


@pytest.mark.parametrize("name", VP_SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_variance_preserving(name, dtype):
    sched = get_schedule(name)
    t = torch.linspace(0.0, 1.0, 1001, dtype=dtype)
    total = sched.alpha(t) ** 2 + sched.sigma(t) ** 2
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=tol)


@pytest.mark.parametrize("name", SCHEDULES)
def test_alpha_decreasing_sigma_increasing(name):
    sched = get_schedule(name)
    t = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    assert (sched.alpha(t).diff() < 0).all()
    assert (sched.sigma(t).diff() > 0).all()


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_no_nan_at_endpoints(name, dtype):
    sched = get_schedule(name)
    t = torch.tensor([0.0, 1.0], dtype=dtype)
    for fn in (sched.alpha, sched.sigma, sched.d_alpha):
        assert torch.isfinite(fn(t)).all(), fn.__name__
    assert not torch.isnan(sched.d_sigma(t)).any()  # +inf at t = 0 for the VP schedules
    log_snr = sched.log_snr(t)
    assert not torch.isnan(log_snr).any()
    assert log_snr[0].item() == math.inf
    if name == "linear":
        assert log_snr[1].item() == -math.inf


@pytest.mark.parametrize("name", SCHEDULES)
def test_python_float_gives_float64_and_dtype_is_kept(name):
    sched = get_schedule(name)
    for fn in (sched.alpha, sched.sigma, sched.d_alpha, sched.d_sigma, sched.log_snr):
        assert fn(0.3).dtype == torch.float64
        assert fn(0.3).ndim == 0
        out32 = fn(torch.tensor([0.3, 0.6], dtype=torch.float32))
        assert out32.dtype == torch.float32
        assert out32.shape == (2,)
        torch.testing.assert_close(
            out32.double(), fn(torch.tensor([0.3, 0.6]).double()), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("name", SCHEDULES)
def test_derivatives_match_autograd(name):
    sched = get_schedule(name)
    t = INTERIOR.clone().requires_grad_(True)
    (grad_alpha,) = torch.autograd.grad(sched.alpha(t).sum(), t)
    (grad_sigma,) = torch.autograd.grad(sched.sigma(t).sum(), t)
    with torch.no_grad():
        torch.testing.assert_close(sched.d_alpha(INTERIOR), grad_alpha, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sched.d_sigma(INTERIOR), grad_sigma, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", SMOOTH_SCHEDULES)
def test_derivatives_match_central_differences(name):
    # Central difference error: h^2 f''' / 6 + rounding eps / h; h = 1e-5 keeps both < 1e-8.
    sched = get_schedule(name)
    h = 1e-5
    for fn, dfn in ((sched.alpha, sched.d_alpha), (sched.sigma, sched.d_sigma)):
        fd = (fn(INTERIOR + h) - fn(INTERIOR - h)) / (2 * h)
        torch.testing.assert_close(dfn(INTERIOR), fd, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("name", SCHEDULES)
def test_log_snr_definition_and_monotone(name):
    sched = get_schedule(name)
    t = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    lam = sched.log_snr(t)
    assert (lam.diff() < 0).all()  # includes the +inf at t = 0
    inner = t[1:-1]
    expected = torch.log(sched.alpha(inner) ** 2 / sched.sigma(inner) ** 2)
    torch.testing.assert_close(lam[1:-1], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", SCHEDULES)
def test_t_from_log_snr_round_trip(name):
    sched = get_schedule(name)
    t = torch.linspace(1e-3, 1 - 1e-3, 999, dtype=torch.float64)
    torch.testing.assert_close(sched.t_from_log_snr(sched.log_snr(t)), t, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", SCHEDULES)
def test_log_snr_of_t_from_log_snr(name):
    sched = get_schedule(name)
    lo = max(sched.log_snr(1.0).item(), -20.0) + 0.1
    lam = torch.linspace(lo, 15.0, 500, dtype=torch.float64)
    t = sched.t_from_log_snr(lam)
    assert ((t > 0) & (t < 1)).all()
    torch.testing.assert_close(sched.log_snr(t), lam, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", SCHEDULES)
def test_t_from_log_snr_at_infinity(name):
    sched = get_schedule(name)
    assert sched.t_from_log_snr(math.inf).item() == pytest.approx(0.0, abs=1e-12)
    if name == "linear":
        assert sched.t_from_log_snr(-math.inf).item() == 1.0


# ----------------------------------------------------------------------------- time grid
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_time_grid_default(steps):
    grid = time_grid(steps)
    assert grid.dtype == torch.float64
    assert grid.shape == (steps + 1,)
    assert grid[0].item() == 1.0
    assert grid[-1].item() == 0.0
    assert (grid.diff() < 0).all()
    expected = 1.0 - torch.arange(steps + 1, dtype=torch.float64) / steps
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-15)  # shift = 1 is uniform


def test_time_grid_custom_range_without_shift():
    grid = time_grid(6, t_max=0.9, t_min=0.3)
    assert grid[0].item() == 0.9
    assert grid[-1].item() == pytest.approx(0.3, abs=1e-15)
    torch.testing.assert_close(
        grid.diff(), torch.full((6,), -0.1, dtype=torch.float64), rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("shift", [1.5, 2.9, 3, 7.3])
def test_time_grid_shift_moves_points_up(shift):
    steps = 10
    base = time_grid(steps)
    grid = time_grid(steps, shift=shift)
    assert grid.shape == (steps + 1,)
    assert grid[0].item() == 1.0
    assert grid[-1].item() == 0.0
    assert (grid.diff() < 0).all()
    assert (grid[1:-1] > base[1:-1]).all()  # every interior point moved to higher noise
    assert (grid > 0.5).sum() > (base > 0.5).sum()  # more points at high t
    # SD3 shift: t' = s t / (1 + (s - 1) t)
    torch.testing.assert_close(grid, shift * base / (1 + (shift - 1) * base), rtol=1e-14, atol=0)


@pytest.mark.parametrize("shift", [0.25, 0.5])
def test_time_grid_shift_below_one_moves_points_down(shift):
    base = time_grid(10)
    grid = time_grid(10, shift=shift)
    assert (grid.diff() < 0).all()
    assert (grid[1:-1] < base[1:-1]).all()
    assert grid[-1].item() == 0.0


def test_shift_time_properties():
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    torch.testing.assert_close(shift_time(t, 1.0), t, rtol=0, atol=0)
    # shifting by a then by b equals shifting by a * b (the shift is a Moebius map)
    torch.testing.assert_close(
        shift_time(shift_time(t, 2.0), 1.5), shift_time(t, 3.0), rtol=1e-14, atol=1e-15
    )
    with pytest.raises(ValueError):
        shift_time(t, 0.0)


@pytest.mark.parametrize("steps", [0, -1])
def test_time_grid_rejects_non_positive_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        time_grid(steps)


@pytest.mark.parametrize("steps", [2.0, "4", True, None])
def test_time_grid_rejects_non_int_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        time_grid(steps)


@pytest.mark.parametrize(
    "t_max, t_min",
    [(0.5, 0.5), (0.3, 0.6), (1.2, 0.0), (1.0, -0.1), (math.nan, 0.0), (1.0, math.nan)],
)
def test_time_grid_rejects_bad_range(t_max, t_min):
    with pytest.raises(ValueError, match="t_min"):
        time_grid(4, t_max=t_max, t_min=t_min)


@pytest.mark.parametrize("shift", [0.0, -1.0])
def test_time_grid_rejects_non_positive_shift(shift):
    with pytest.raises(ValueError, match="shift"):
        time_grid(4, shift=shift)


# ----------------------------------------------------------------------------- known bugs
def test_time_grid_shift_keeps_requested_endpoints():
    grid = time_grid(4, shift=3.0, t_max=0.8, t_min=0.1)
    assert grid[0].item() == pytest.approx(0.8)
    assert grid[-1].item() == pytest.approx(0.1)


# Regression tests: the committed shift_time computed s t / (1 + (s - 1) t), which is not exactly
# 1 at t = 1 for s < 1 (shift=0.1 gave 1.0000000000000002, outside [0, 1]) and let nan / inf
# through the `shift <= 0` check (a grid full of NaN).
@pytest.mark.parametrize("shift", [0.1, 0.3, 1 / 3, 0.001, 1.7, 123.456])
def test_time_grid_shift_keeps_exact_unit_interval(shift):
    grid = time_grid(5, shift=shift)
    assert grid[0].item() == 1.0
    assert grid[-1].item() == 0.0
    assert ((grid >= 0) & (grid <= 1)).all()


@pytest.mark.parametrize("shift", [math.nan, math.inf, -math.inf])
def test_time_grid_rejects_non_finite_shift(shift):
    with pytest.raises(ValueError, match="shift"):
        time_grid(4, shift=shift)
