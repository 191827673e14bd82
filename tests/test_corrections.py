"""Epsilon scaling and the time-shift sampler: identities, direction of effect, no syncs."""

from __future__ import annotations

import pytest
import torch

import nag_engine as ne
from nag_engine.corrections import EpsilonScaledModel, TimeShift
from nag_engine.models import FunctionDenoiser, random_mixture, ring_mixture
from nag_engine.predictions import convert
from nag_engine.schedules import get_schedule


@pytest.mark.parametrize("solver", ["euler", "heun", "ddpm"])
def test_neutral_settings_reproduce_the_plain_sampler_exactly(solver):
    model = ring_mixture(8, schedule="vp", prediction="eps")
    plain = ne.sample(model, 64, 8, solver=solver, seed=1, progress=False)
    for options in (
        dict(eps_scaling={"k": 0.0, "b": 1.0}),
        dict(time_shift_sampler={"window": 0.0}),
    ):
        assert torch.equal(
            ne.sample(model, 64, 8, solver=solver, seed=1, progress=False, **options), plain
        )


@pytest.mark.parametrize(
    "schedule,prediction", [("vp", "eps"), ("linear", "velocity"), ("vp-cosine", "x0")]
)
def test_epsilon_scaling_divides_the_predicted_noise(schedule, prediction):
    model = ring_mixture(8, schedule=schedule, prediction=prediction)
    scaled = EpsilonScaledModel(model, get_schedule(schedule), k=0.02, b=1.01)
    x, t = torch.randn(32, 2, dtype=torch.float64), torch.rand(32, dtype=torch.float64) * 0.9 + 0.05
    eps = convert(model(x, t), x, t, schedule, prediction, "eps")
    eps_scaled = convert(scaled(x, t), x, t, schedule, prediction, "eps")
    torch.testing.assert_close(eps_scaled, eps / (0.02 * t + 1.01).view(-1, 1))
    # x0 stays consistent with x and the scaled noise
    x0 = convert(scaled(x, t), x, t, schedule, prediction, "x0")
    sched = get_schedule(schedule)
    torch.testing.assert_close(
        sched.alpha(t).view(-1, 1) * x0 + sched.sigma(t).view(-1, 1) * eps_scaled, x
    )


def test_epsilon_scaling_is_finite_at_t_one_and_changes_samples():
    model = ring_mixture(8)  # linear / velocity: alpha(1) = 0
    x = ne.sample(model, 64, 8, eps_scaling={"k": 0.0, "b": 1.05}, progress=False)
    assert torch.isfinite(x).all()
    plain = ne.sample(model, 64, 8, progress=False)
    assert not torch.allclose(x, plain) and (x - plain).abs().max() < 0.5
    with pytest.raises(ValueError, match="eps_scaling"):
        ne.sample(model, 4, 2, eps_scaling={"k": 0.0, "b": -1.0}, progress=False)
    with pytest.raises(ValueError, match="eps_scaling"):
        ne.sample(model, 4, 2, eps_scaling={"lam": 1.0}, progress=False)


def test_time_shift_picks_the_time_whose_variance_matches():
    sched = get_schedule("vp")
    shift = TimeShift(sched, window=0.2, data_variance=0.25, candidates=401)
    t = torch.tensor(0.5)
    # a state noisier than the nominal level gets a later time, a cleaner one an earlier time
    noisy = torch.randn(4, 4096) * 1.5
    clean = torch.randn(4, 4096) * 0.5
    assert torch.allclose(shift(noisy, t), torch.tensor(0.7)) and torch.allclose(
        shift(clean, t), torch.tensor(0.3)
    )
    # a state with exactly the marginal variance of t = 0.5 stays at 0.5 (grid step 0.001)
    level = 0.25 * float(sched.alpha(0.5)) ** 2 + float(sched.sigma(0.5)) ** 2
    matched = torch.randn(4, 200_000) * level**0.5
    assert (shift(matched, t) - 0.5).abs().max() < 0.02


def test_time_shift_sampler_evaluates_rows_at_their_own_times():
    seen = []

    def record(x, t, y, dt, dy):
        seen.append(t.clone())
        return -x

    model = FunctionDenoiser(
        record, schedule="vp", prediction="eps", sample_shape=(64,), supports_noise_dropout=True
    )
    ne.sample(model, 6, 4, time_shift_sampler={"window": 0.1}, nag_scale=1.0, progress=False)
    assert len(seen) == 4
    for t in seen:
        assert t.shape == (12,)  # two passes of 6 rows
        torch.testing.assert_close(t[:6], t[6:])  # each sample has one time for all its passes


def test_time_shift_sampler_keeps_quality_on_the_exact_model():
    model = random_mixture(32, 8, schedule="vp", prediction="eps", std=0.5)
    x = ne.sample(
        model,
        500,
        25,
        solver="ddim",
        time_shift_sampler={
            "window": 0.05,
            "data_variance": float(model.sample_data(2000)[0].var()),
        },
        progress=False,
    )
    assert torch.isfinite(x).all()
    assert float(model.log_prob(x, 0.0).mean()) > float(
        model.log_prob(torch.randn(500, 32), 0.0).mean()
    )


@pytest.mark.parametrize(
    "options,error,match",
    [
        (dict(eps_scaling={"k": float("inf")}), ValueError, r"eps_scaling\['k'\] must be finite"),
        (dict(eps_scaling={"b": float("nan")}), ValueError, r"eps_scaling\['b'\] must be finite"),
        (dict(eps_scaling={"k": "0.1"}), TypeError, r"eps_scaling\['k'\] must be a number"),
        (dict(eps_scaling={"k": 0.1, "c": 1}), ValueError, "keys 'k' and 'b'"),
        (dict(eps_scaling={"k": -2.0}), ValueError, "k t \\+ b > 0"),
        (
            dict(time_shift_sampler={"window": 0.1, "data_variance": float("nan")}),
            ValueError,
            r"time_shift_sampler\['data_variance'\] must be finite",
        ),
        (
            dict(time_shift_sampler={"window": float("inf")}),
            ValueError,
            r"time_shift_sampler\['window'\] must be finite",
        ),
        (
            dict(time_shift_sampler={"window": "0.1"}),
            TypeError,
            r"time_shift_sampler\['window'\] must be a number",
        ),
        (
            dict(time_shift_sampler={"window": 0.1, "candidates": 2.5}),
            TypeError,
            r"time_shift_sampler\['candidates'\] must be an int",
        ),
        (dict(time_shift_sampler={"window": 0.1, "data_variance": -1}), ValueError, ">= 0"),
    ],
)
def test_bad_correction_parameters_are_refused_by_name(options, error, match):
    with pytest.raises(error, match=match):
        ne.Sampler(ring_mixture(4), 4, **options)
