"""The discrete DDPM schedule (`vp-discrete`), its respaced grids, the DDPM variances and the
v prediction type: exact against the discrete process, and samplers on it reach the data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import N_SAMPLES, mode_statistics
from official_reference import adm_space_timesteps

import nag_engine as ne
from nag_engine.models import ring_mixture
from nag_engine.schedules import DiscreteVPSchedule, get_schedule, respaced_timesteps
from nag_engine.solvers import build_stages


def _alpha_bar(kind: str, start: float, end: float, steps: int) -> np.ndarray:
    """alpha_bar_tau = prod_{s <= tau} (1 - beta_s), from diffusers' definitions of the betas."""
    if kind == "linear":
        betas = np.linspace(start, end, steps, dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, steps, dtype=np.float64) ** 2
    else:
        f = [math.cos((i / steps + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(steps + 1)]
        betas = np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(steps)])
    return np.cumprod(1.0 - betas)


@pytest.mark.parametrize(
    "kind,start,end",
    [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012), ("squaredcos_cap_v2", 1e-4, 0.02)],
)
def test_alpha_bar_is_exact_at_the_training_timesteps(kind, start, end):
    sched = DiscreteVPSchedule(kind, start, end, 1000)
    t = (torch.arange(1000, dtype=torch.float64) + 1) / 1000  # tau = 0 .. 999
    expected = torch.from_numpy(_alpha_bar(kind, start, end, 1000))
    torch.testing.assert_close(sched.alpha(t) ** 2, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(sched.alpha(t) ** 2 + sched.sigma(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(sched.timestep(t), torch.arange(1000, dtype=torch.float64))


def test_the_data_end_and_the_first_knot():
    sched = get_schedule("vp-discrete")
    assert sched.alpha(0.0).item() == 1.0 and sched.sigma(0.0).item() == 0.0
    assert math.isfinite(sched.d_alpha(0.0).item()) and math.isfinite(sched.d_sigma(0.0).item())
    # continuous at the first knot t = 1 / 1000 from both sides, and sigma / alpha ~ t below it
    first = 1e-3
    for fn in (sched.alpha, sched.sigma, sched.log_snr):
        assert fn(first * (1 - 1e-14)).item() == pytest.approx(fn(first).item(), rel=1e-9)
        assert fn(first * (1 + 1e-14)).item() == pytest.approx(fn(first).item(), rel=1e-9)
    ratio = sched.sigma(torch.tensor([2e-4, 4e-4])) / sched.alpha(torch.tensor([2e-4, 4e-4]))
    assert ratio[1].item() == pytest.approx(2 * ratio[0].item(), rel=1e-9)


def test_derivatives_inside_segments_and_the_side_taken_at_knots():
    sched = get_schedule("vp-discrete")
    t = (torch.arange(3, 997, 37, dtype=torch.float64) + 0.5) / 1000  # mid-segment (and below)
    t = torch.cat([torch.tensor([3e-4], dtype=torch.float64), t])
    h = 1e-7
    for fn, dfn in ((sched.alpha, sched.d_alpha), (sched.sigma, sched.d_sigma)):
        fd = (fn(t + h) - fn(t - h)) / (2 * h)
        torch.testing.assert_close(dfn(t), fd, rtol=1e-6, atol=1e-9)
    # at a knot the derivative is the data-side segment's, in float64 and float32 alike
    for knot in (0.003, 0.37):
        knot = torch.tensor([knot], dtype=torch.float64)
        left = (sched.sigma(knot) - sched.sigma(knot - 1e-8)) / 1e-8
        right = (sched.sigma(knot + 1e-8) - sched.sigma(knot)) / 1e-8
        assert abs(left - right).item() > 1e-9  # the slopes differ, so the side matters
        torch.testing.assert_close(sched.d_sigma(knot), left, rtol=1e-5, atol=0)
        torch.testing.assert_close(sched.d_sigma(knot.float()).double(), left, rtol=1e-5, atol=0)


def test_t_from_log_snr_inverts_log_snr_everywhere():
    sched = get_schedule("vp-discrete")
    t = torch.cat(
        [
            torch.logspace(-7, -3, 50, dtype=torch.float64),
            torch.linspace(1e-3, 1.0, 1999, dtype=torch.float64),
        ]
    )
    torch.testing.assert_close(sched.t_from_log_snr(sched.log_snr(t)), t, rtol=1e-9, atol=1e-15)
    assert sched.t_from_log_snr(math.inf).item() == 0.0
    # within float32 rounding of a knot the value extends the data-side segment a little
    near_knots = torch.linspace(1e-3, 1.0, 999).double()
    back = sched.t_from_log_snr(sched.log_snr(near_knots))
    torch.testing.assert_close(back, near_knots, rtol=1e-6, atol=0)


def test_the_spec_round_trips_and_bad_specs_name_the_format():
    for spec in ("vp-discrete", "vp-discrete:scaled_linear:0.00085:0.012:1000"):
        sched = get_schedule(spec)
        assert sched.name == spec and get_schedule(sched.name).betas.equal(sched.betas)
    with pytest.raises(ValueError, match="vp-discrete:BETA_SCHEDULE"):
        get_schedule("vp-discrete:linear:abc")
    with pytest.raises(ValueError, match="beta_schedule"):
        DiscreteVPSchedule("sigmoid")


@pytest.mark.parametrize("steps", [1, 7, 50, 250, 1000])
def test_adm_spacing_is_dits_respacing(steps):
    assert respaced_timesteps(1000, steps, "adm") == adm_space_timesteps(1000, str(steps))


@pytest.mark.parametrize("steps", [10, 25, 50, 250])
def test_leading_spacing_is_adms_ddim_striding(steps):
    assert respaced_timesteps(1000, steps, "leading") == adm_space_timesteps(1000, f"ddim{steps}")


def test_trailing_spacing_and_the_grid_it_gives():
    assert respaced_timesteps(1000, 4, "trailing") == [249, 499, 749, 999]
    grid = get_schedule("vp-discrete").respaced(4, "trailing")
    assert grid.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match="spacing"):
        respaced_timesteps(1000, 4, "even")


def test_a_spacing_needs_a_discrete_schedule_and_fixes_the_grid():
    model = ring_mixture(4, schedule="vp-discrete", prediction="eps")
    sampler = ne.Sampler(model, 10, spacing="leading")
    assert sampler.grid.tolist() == [0.901, 0.801, 0.701, 0.601, 0.501, 0.401, 0.301, 0.201,
                                     0.101, 0.001, 0.0]  # fmt: skip
    with pytest.raises(ValueError, match="discrete-time schedule"):
        ne.Sampler(ring_mixture(4), 10, spacing="adm")
    with pytest.raises(ValueError, match="time_shift"):
        ne.Sampler(model, 10, spacing="adm", time_shift=2.0)


def test_ddpm_variances_on_the_discrete_process():
    """small = the posterior variance beta_tilde, large = the step's beta, no noise at the end."""
    sched = get_schedule("vp-discrete")
    grid = sched.respaced(20, "leading")
    ab = sched.alpha(grid) ** 2
    beta = 1 - ab[:-1] / ab[1:]
    small = build_stages("ddpm", sched, "eps", grid)
    large = build_stages("ddpm", sched, "eps", grid, variance="large")
    posterior = beta * (1 - ab[1:]) / (1 - ab[:-1])
    torch.testing.assert_close(torch.tensor(small.c[:-1]).double() ** 2, posterior[:-1])
    torch.testing.assert_close(torch.tensor(large.c[:-1]).double() ** 2, beta[:-1])
    assert small.c[-1] == large.c[-1] == 0.0
    assert (small.a, small.b) == (large.a, large.b)  # the same posterior mean
    with pytest.raises(ValueError, match="variance"):
        build_stages("ddpm", sched, "eps", grid, variance="learned")


@pytest.mark.parametrize(
    "solver,steps,options,prediction",
    [
        ("ddim", 100, {}, "eps"),
        ("ddim", 100, {}, "v"),
        ("ddpm", 300, {}, "eps"),
        ("ddpm", 300, {"variance": "large"}, "eps"),
        ("ddpm", 300, {"variance": "large"}, "v"),
        ("euler", 100, {}, "eps"),
        ("heun", 50, {}, "v"),
    ],
)
def test_samplers_on_the_discrete_schedule_reach_the_data(
    solver, steps, options, prediction, calibrated_tolerances
):
    model = ring_mixture(8, radius=2.0, std=0.25, schedule="vp-discrete", prediction=prediction)
    spacing = "adm" if solver.startswith("dd") else "uniform"
    x = ne.sample(
        model, N_SAMPLES, steps, solver=solver, seed=5, spacing=spacing, progress=False, **options
    )
    stats = mode_statistics(model, x)
    assert stats["chi2_p"] > 1e-3, stats
    assert stats["mean_err"] < calibrated_tolerances["mean_err"], stats
    assert stats["std_err"] < calibrated_tolerances["std_err"], stats


def test_v_and_eps_models_of_one_mixture_give_one_trajectory():
    """The exact mixture predicting v or eps is the same denoiser: DDIM must not tell them apart
    (the v conversions are exact)."""
    latents = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    runs = {
        kind: ne.sample(
            ring_mixture(8, schedule="vp-discrete", prediction=kind),
            64,
            20,
            solver="ddim",
            spacing="leading",
            latents=latents,
            progress=False,
        )
        for kind in ("eps", "v", "x0")
    }
    torch.testing.assert_close(runs["v"], runs["eps"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(runs["x0"], runs["eps"], rtol=1e-4, atol=1e-4)
