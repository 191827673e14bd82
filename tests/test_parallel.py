"""Parallel sampling by Picard iteration (ParaDiGMS): it converges to the sequential trajectory
with the same seed, degenerates to the sequential sampler, never needs more rounds than steps,
and applies guidance exactly as the sequential sampler does."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import nag_engine as ne
from nag_engine import backends
from nag_engine.models import MLPDenoiser, ring_mixture
from nag_engine.parallel import ParallelSampler, noise_variances

GUIDED = dict(cfg_scale=2.0, nag_scale=0.5)


@pytest.fixture(scope="module")
def mixture():
    return ring_mixture(8, num_classes=4, time_points=64)


def sequential(model, steps, n=48, **kw):
    return ne.Sampler(model, steps, **kw).sample(n, y=torch.arange(n) % 4, seed=5, progress=False)


def parallel(model, steps, n=48, window=8, tolerance=0.0, **kw):
    runner = ParallelSampler(model, steps, window=window, tolerance=tolerance, **kw)
    return runner.run(n, y=torch.arange(n) % 4, seed=5, progress=False)


@pytest.mark.parametrize("solver", ["euler", "ddim", "euler-maruyama", "ddpm"])
def test_zero_tolerance_gives_the_sequential_trajectory(mixture, solver):
    expected = sequential(mixture, 12, solver=solver, **GUIDED)
    x, stats = parallel(mixture, 12, window=5, solver=solver, **GUIDED)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    assert stats.iterations == 12  # nothing counts as converged early at tolerance 0


@pytest.mark.parametrize("solver", ["euler", "euler-maruyama"])
def test_window_one_is_the_sequential_sampler(mixture, solver):
    expected = sequential(mixture, 10, solver=solver, **GUIDED)
    x, stats = parallel(mixture, 10, window=1, tolerance=0.5, solver=solver, **GUIDED)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    assert stats.iterations == 10 and stats.model_evals == stats.sequential_evals == 30


def test_a_tolerance_trades_rounds_for_accuracy(mixture):
    expected = sequential(mixture, 40, solver="euler-maruyama", **GUIDED)
    errors, rounds = [], []
    for tolerance in (0.01, 0.1, 1.0):
        x, stats = parallel(
            mixture, 40, window=40, tolerance=tolerance, solver="euler-maruyama", **GUIDED
        )
        errors.append(float((x - expected).abs().max()))
        rounds.append(stats.iterations)
    assert rounds[0] >= rounds[1] >= rounds[2] and rounds[2] < 40  # fewer sequential rounds
    assert errors[0] <= errors[1] <= errors[2] and errors[0] < 1e-3
    # the samples stay those of the sequential sampler, closer the tighter the tolerance
    assert errors[1] < 0.05


@settings(max_examples=12, deadline=None)
@given(steps=st.integers(1, 12), window=st.integers(1, 14), tolerance=st.floats(0, 2))
def test_rounds_never_exceed_steps(steps, window, tolerance):
    model = ring_mixture(4, num_classes=4, time_points=32)
    x, stats = parallel(model, steps, n=6, window=window, tolerance=tolerance, solver="ddpm")
    assert 1 <= stats.iterations <= steps and torch.isfinite(x).all()
    assert stats.model_evals <= stats.iterations * min(window, steps) * 3


def test_guidance_with_intervals_matches_the_sequential_sampler(mixture):
    kw = dict(
        solver="euler",
        cfg_scale=2.5,
        nag_scale=0.7,
        cfg_interval=(0.3, 0.9),
        nag_interval=(0.0, 0.5),
    )
    expected = sequential(mixture, 16, **kw)
    x, _ = parallel(mixture, 16, window=6, **kw)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(expected, sequential(mixture, 16, solver="euler"), atol=1e-3)


def test_a_network_and_the_function_api():
    torch.manual_seed(0)
    model = MLPDenoiser(2, hidden=32, depth=2, num_classes=4).eval()
    expected = sequential(model, 8, solver="euler", **GUIDED)
    x = ne.sample(
        model,
        48,
        8,
        y=torch.arange(48) % 4,
        seed=5,
        solver="euler",
        progress=False,
        parallel=dict(window=8, tolerance=0.0),
        **GUIDED,
    )
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)  # sample() returns a Tensor
    _, stats = parallel(model, 8, solver="euler", **GUIDED)
    assert isinstance(stats, ne.ParallelStats) and stats.wall_time > 0


def test_one_read_back_per_iteration(mixture, monkeypatch):
    counts = []
    for steps in (6, 12):
        runner = ParallelSampler(mixture, steps, window=steps, tolerance=0.0, solver="euler")
        reads = {"n": 0}
        original = torch.Tensor.__int__

        def counting(self, _reads=reads, _original=original):
            _reads["n"] += 1
            return _original(self)

        monkeypatch.setattr(torch.Tensor, "__int__", counting)
        _, stats = runner.run(4, seed=1, progress=False)
        monkeypatch.undo()
        counts.append(reads["n"] - stats.iterations)
    assert counts[0] == counts[1]  # everything else is per call, not per iteration


def test_bad_input(mixture):
    with pytest.raises(ValueError, match="one-stage solver"):
        ParallelSampler(mixture, 5, solver="heun")
    with pytest.raises(ValueError, match="one-stage solver.*reads the previous stage"):
        ParallelSampler(mixture, 8, solver="dpm++2m")  # multistep: not one-stage
    with pytest.raises(ValueError, match="window"):
        ParallelSampler(mixture, 5, window=0)
    with pytest.raises(ValueError, match="tolerance"):
        ParallelSampler(mixture, 5, tolerance=-1)
    with pytest.raises(ValueError, match="callback"):
        ne.sample(mixture, 4, 5, parallel={}, callback=lambda info: None)
    variances = noise_variances(ne.Sampler(mixture, 5).plan)
    assert variances.shape == (5,) and (variances > 0).all()


class Anywhere(nn.Module):
    """A tensor-free denoiser (it runs on any device) whose output lands on `output_device`,
    or on its input's device when that is None."""

    prediction = "velocity"
    num_classes = 4
    supports_noise_dropout = True
    sample_shape = (3,)

    def __init__(self, output_device=None):
        super().__init__()
        self.output_device = output_device

    def forward(self, x, t, y=None, *, drop_t=None, drop_y=None):
        if self.output_device is None:
            return -x
        return torch.zeros(x.shape, dtype=x.dtype, device=self.output_device)


class Stop(Exception):
    """Ends a run at the first Picard update."""


def test_every_tensor_reaches_the_picard_update_on_the_states_device(monkeypatch):
    """With the state on a device other than the default one ("meta": shapes without data),
    the model outputs, the pass weights, the step coefficients and the noise handed to the
    Picard update are all on that device: none is made on the default device on the way."""
    seen = {}

    def first_update(name):
        def record(out, weights, a, b, c, xs, z=None):
            named = dict(out=out, weights=weights, a=a, b=b, c=c, xs=xs, z=z)
            seen.update({k: v.device for k, v in named.items() if v is not None})
            raise Stop  # meta tensors hold no data to iterate on

        return record

    monkeypatch.setattr(backends, "picard_implementation", first_update)
    runner = ParallelSampler(
        Anywhere(), 6, window=3, solver="ddpm", backend="reference", device="meta", **GUIDED
    )
    with pytest.raises(Stop):
        runner.run(4, y=torch.arange(4), seed=0, progress=False)
    assert set(seen) == {"out", "weights", "a", "b", "c", "xs", "z"}
    assert set(seen.values()) == {torch.device("meta")}


def test_a_model_output_on_another_device_is_refused():
    """A model that hands back its output on the default device while the state lives on
    another one fails at the model, by name, not inside the Picard update."""
    runner = ParallelSampler(Anywhere(output_device="cpu"), 6, window=3, device="meta", **GUIDED)
    with pytest.raises(ValueError, match="model returned its output on cpu for an input on meta"):
        runner.run(4, y=torch.arange(4), seed=0, progress=False)
