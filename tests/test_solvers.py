"""Solvers: stage tables, the reference guided step, ground-truth distributions and orders."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import N_SAMPLES, log_slope, mode_statistics

import nag_engine as ne
from nag_engine.backends.reference import reference_step
from nag_engine.models import ring_mixture
from nag_engine.predictions import conversion_coefficients
from nag_engine.schedules import get_schedule, time_grid
from nag_engine.solvers import build_stages

COMBOS = [("linear", "velocity"), ("vp", "eps"), ("vp-cosine", "x0")]
# enough steps that discretisation bias stays well inside the sampling noise of 4,000 samples
SOLVER_STEPS = {
    "euler": 100,
    "heun": 50,
    "euler-maruyama": 200,
    "ddim": 100,
    "ddpm": 300,
    "dpm++2m": 50,
}


@pytest.mark.parametrize("solver", list(SOLVER_STEPS))
@pytest.mark.parametrize("schedule,prediction", COMBOS)
def test_solver_reaches_the_data_distribution(solver, schedule, prediction, calibrated_tolerances):
    model = ring_mixture(8, radius=2.0, std=0.25, schedule=schedule, prediction=prediction)
    x = ne.sample(model, N_SAMPLES, SOLVER_STEPS[solver], solver=solver, seed=7, progress=False)
    stats = mode_statistics(model, x)
    assert stats["chi2_p"] > 1e-3, stats
    assert stats["mean_err"] < calibrated_tolerances["mean_err"], (stats, calibrated_tolerances)
    assert stats["std_err"] < calibrated_tolerances["std_err"], (stats, calibrated_tolerances)


def test_a_collapsed_sampler_fails_the_statistics(ring, calibrated_tolerances):
    """The check above can fail: samples from a too-narrow mixture are rejected."""
    narrow = ring_mixture(8, radius=2.0, std=0.2)
    x = narrow.sample_data(N_SAMPLES, generator=torch.Generator().manual_seed(0))[0]
    assert mode_statistics(ring, x)["std_err"] > calibrated_tolerances["std_err"]


@functools.cache
def _order_setup(schedule: str, prediction: str):
    """Model, latents and a 1,500-step Heun reference solution of the probability-flow ODE."""
    model = ring_mixture(8, schedule=schedule, prediction=prediction)
    latents = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    run = dict(latents=latents, progress=False, t_max=0.99)
    return model, run, ne.sample(model, 300, 1500, solver="heun", **run)


@pytest.mark.parametrize("schedule,prediction", [("linear", "velocity"), ("vp-cosine", "x0")])
@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("ddim", 1)])
def test_ode_solver_order(schedule, prediction, solver, order):
    model, run, reference = _order_setup(schedule, prediction)
    steps = [16, 32, 64]
    errors = [
        float((ne.sample(model, 300, n, solver=solver, **run) - reference).norm(dim=1).mean())
        for n in steps
    ]
    assert errors[0] > errors[1] > errors[2]
    assert abs(-log_slope(steps, errors) - order) < 0.3, errors


def test_euler_on_linear_velocity_is_x_plus_dt_v():
    grid = time_grid(4)
    table = build_stages("euler", "linear", "velocity", grid)
    assert table.a == [1.0] * 4
    assert table.b == pytest.approx([-0.25] * 4)
    assert table.keep == [True] * 4 and not table.stochastic and not table.uses_g_prev


def test_heun_stage_structure():
    table = build_stages("heun", "linear", "velocity", time_grid(5))
    # predictor + corrector per step, Euler on the last step that lands on t = 0
    assert len(table) == 2 * 5 - 1
    assert table.keep == [False, True] * 4 + [True]
    assert table.step == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert table.uses_g_prev
    # corrector of a velocity model on the linear schedule: x + dt/2 (g1 + g2)
    assert table.a[1] == pytest.approx(1.0) and table.b[1] == pytest.approx(-0.1)
    assert table.b2[1] == pytest.approx(-0.1)


@pytest.mark.parametrize("schedule", ["linear", "vp", "vp-cosine"])
@pytest.mark.parametrize("prediction", ["velocity", "eps", "x0", "v"])
def test_rows_are_the_expanded_formulas_bit_for_bit(schedule, prediction):
    """The rows written as maths (`Lin`) give exactly the floats of the expanded products."""
    grid = [float(t) for t in time_grid(9, shift=3.0, t_max=0.97)]
    sched = get_schedule(schedule)

    def coef(target, t):
        return tuple(float(v) for v in conversion_coefficients(prediction, target, sched, t))

    heun = build_stages("heun", schedule, prediction, grid)
    em = build_stages("euler-maruyama", schedule, prediction, grid, diffusion_scale=0.7)
    rows_heun, rows_em = [], []
    for t, t_next in zip(grid[:-1], grid[1:]):
        (av, bv), dt = coef("velocity", t), t_next - t
        a1, b1 = 1.0 + dt * av, dt * bv
        rows_heun.append((a1, b1, 0.0))
        if t_next > 0.0:
            (an, bn), h = coef("velocity", t_next), 0.5 * dt
            rows_heun.append((1.0 + h * av + h * an * a1, h * bn, h * bv + h * an * b1))
        (a_s, b_s), w = coef("score", t), 0.7 * float(sched.sigma(t))
        rows_em.append((1.0 + dt * (av - 0.5 * w * a_s), dt * (bv - 0.5 * w * b_s), 0.0))
    assert list(zip(heun.a, heun.b, heun.b2)) == rows_heun
    assert list(zip(em.a, em.b, em.b2)) == rows_em
    assert heun.d == [0.0] * len(heun) and em.d == [0.0] * len(em)


def test_ddpm_is_ddim_with_eta_one():
    grid = time_grid(10)
    ddpm = build_stages("ddpm", "vp", "eps", grid)
    ddim1 = build_stages("ddim", "vp", "eps", grid, eta=1.0)
    assert ddpm == ddim1
    ddim0 = build_stages("ddim", "vp", "eps", grid)
    assert not ddim0.stochastic and ddpm.stochastic
    assert ddpm.c[-1] == 0.0  # no noise on the step that lands on the data


def test_ddpm_noise_is_the_posterior_standard_deviation():
    """c_k equals sqrt(beta_tilde) of DDPM's posterior q(x_n | x_t, x0) for vp."""
    sched = get_schedule("vp")
    grid = time_grid(10)
    table = build_stages("ddpm", sched, "eps", grid)
    for k in range(9):
        a2, a2n = float(sched.alpha(grid[k])) ** 2, float(sched.alpha(grid[k + 1])) ** 2
        beta = 1 - a2 / a2n
        assert table.c[k] == pytest.approx(math.sqrt((1 - a2n) / (1 - a2) * beta), rel=1e-9)


def test_ddim_last_step_returns_the_x0_prediction():
    grid = time_grid(6)
    table = build_stages("ddim", "vp", "eps", grid)
    a0, b0 = conversion_coefficients("eps", "x0", "vp", grid[-2])
    assert table.a[-1] == pytest.approx(float(a0)) and table.b[-1] == pytest.approx(float(b0))


@pytest.mark.parametrize("solver", ["euler", "heun", "euler-maruyama", "ddim", "ddpm", "dpm++2m"])
@pytest.mark.parametrize("schedule", ["linear", "vp", "vp-cosine"])
@pytest.mark.parametrize("prediction", ["velocity", "eps", "x0"])
def test_coefficients_are_finite_from_t_max_to_zero(solver, schedule, prediction):
    model = ring_mixture(4, schedule=schedule, prediction=prediction)
    sampler = ne.Sampler(model, 7, solver=solver)
    for column in ("a", "b", "b2", "c", "d"):
        assert all(math.isfinite(v) for v in getattr(sampler.stages, column))
    assert sampler.grid[-1] == 0.0
    x = sampler.sample(16, progress=False)
    assert torch.isfinite(x).all()


def test_singular_coefficients_get_a_clear_error():
    # the sbdm diffusion of the linear schedule is infinite at t = 1
    with pytest.raises(ValueError, match="not finite at t=1"):
        build_stages("euler-maruyama", "linear", "velocity", time_grid(4), diffusion="sbdm")
    # below t = 1 it is fine
    table = build_stages(
        "euler-maruyama", "linear", "velocity", time_grid(4, t_max=0.99), diffusion="sbdm"
    )
    assert table.stochastic


def test_unknown_solver_and_options():
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        build_stages("rk4", "linear", "velocity", time_grid(4))
    with pytest.raises(TypeError, match="unknown option"):
        build_stages("euler", "linear", "velocity", time_grid(4), eta=0.5)
    with pytest.raises(ValueError, match="diffusion"):
        build_stages("euler-maruyama", "linear", "velocity", time_grid(4), diffusion="wild")
    with pytest.raises(ValueError, match="eta"):
        build_stages("ddim", "vp", "eps", time_grid(4), eta=-1.0)


def test_the_reference_step_matches_the_formula():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64).to(torch.bfloat16)
    x, g_prev, z = (torch.randn(5, 4, generator=gen) for _ in range(3))
    weights = torch.tensor([[0.0, 0.0, 0.0], [2.5, -0.5, -1.0]])  # stage 1 is the one used
    coef = torch.tensor([[0.0] * 6, [0.9, -0.1, 0.05, 0.3, 1.0, 0.25]])  # a b b2 c keep d
    stage = torch.tensor(1)
    next_input = torch.empty(2, 5, 4, dtype=torch.bfloat16)
    new_x, g_out = x.clone(), torch.empty(5, 4)
    reference_step(
        out, weights, coef, stage, new_x, g_prev=g_prev, z=z, g_out=g_out, next_input=next_input
    )
    expected_g = 2.5 * out[0].float() - 0.5 * out[1].float() - 1.0 * out[2].float()
    expected = 0.9 * x - 0.1 * expected_g + 0.05 * g_prev + 0.3 * z
    torch.testing.assert_close(g_out, expected_g + 0.25 * x)
    torch.testing.assert_close(new_x, expected)
    assert new_x.dtype == torch.float32
    for p in range(2):
        torch.testing.assert_close(next_input[p], expected.to(torch.bfloat16))
    kept = x.clone()
    reference_step(out, weights, coef * torch.tensor([1.0, 1, 1, 1, 0, 1]), stage, kept)
    assert torch.equal(kept, x)  # keep = 0: the state stays
