"""The denoising loss: dropout rates, targets, and its minimum at the exact denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from nag_engine.models import FunctionDenoiser, ring_mixture
from nag_engine.training.losses import denoising_loss, sample_time


class Recorder(FunctionDenoiser):
    """Returns zeros and records the drop flags and times it was called with."""

    def __init__(self, prediction="velocity"):
        super().__init__(
            self._zeros,
            prediction=prediction,
            num_classes=4,
            supports_noise_dropout=True,
            sample_shape=(2,),
        )
        self.seen = {}

    def _zeros(self, x, t, y, drop_t, drop_y):
        self.seen = {"t": t, "drop_t": drop_t, "drop_y": drop_y, "y": y}
        return torch.zeros_like(x)


def test_dropout_rates_are_honoured():
    model = Recorder()
    n, p_t, p_c = 100_000, 0.15, 0.1
    x0 = torch.randn(n, 2)
    y = torch.randint(0, 4, (n,))
    out = denoising_loss(model, x0, y, generator=torch.Generator().manual_seed(0), p_t=p_t, p_c=p_c)
    drop_t, drop_y = model.seen["drop_t"], model.seen["drop_y"]
    assert torch.equal(drop_t, out.drop_t) and torch.equal(drop_y, out.drop_y)
    for rate, p in (
        (drop_t.float().mean(), p_t),
        (drop_y.float().mean(), p_c),
        ((drop_t & drop_y).float().mean(), p_t * p_c),
    ):
        assert abs(float(rate) - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(model.seen["y"], y)  # labels are kept; dropping is the model's job


def test_no_dropout_passes_no_flags():
    model = Recorder()
    denoising_loss(model, torch.randn(8, 2), generator=torch.Generator().manual_seed(0))
    assert model.seen["drop_t"] is None and model.seen["drop_y"] is None


@pytest.mark.parametrize("distribution", ["uniform", "logit-normal"])
def test_time_sampling(distribution):
    t = sample_time(200_000, torch.Generator().manual_seed(1), distribution=distribution)
    assert float(t.min()) >= 1e-3 and float(t.max()) < 1.0
    if distribution == "uniform":
        assert abs(float(t.mean()) - 0.5005) < 0.003
    else:  # sigmoid of N(0, 1): symmetric around 1/2, concentrated in the middle
        assert (
            abs(float(t.mean()) - 0.5) < 0.003
            and float(((t > 0.25) & (t < 0.75)).float().mean()) > 0.7
        )
    with pytest.raises(ValueError, match="unknown time distribution"):
        sample_time(4, torch.Generator(), distribution="beta")


def _perturbed(exact, delta):
    def forward(x, t, y, drop_t, drop_y):
        base = exact(x, t, y, drop_t=drop_t, drop_y=drop_y)
        return base + delta(x, t)

    return FunctionDenoiser(
        forward,
        prediction=exact.prediction,
        schedule=exact.schedule,
        num_classes=exact.num_classes,
        supports_noise_dropout=True,
        sample_shape=(2,),
    )


@pytest.mark.parametrize(
    "schedule,prediction", [("linear", "velocity"), ("vp", "eps"), ("vp-cosine", "x0")]
)
def test_exact_denoiser_has_the_lowest_loss(schedule, prediction):
    exact = ring_mixture(8, num_classes=4, schedule=schedule, prediction=prediction, time_points=64)
    n = 40_000
    x0, comp = exact.sample_data(n, generator=torch.Generator().manual_seed(0))
    x0, y = x0.float(), exact.classes[comp]

    def loss_of(model):
        gen = torch.Generator().manual_seed(42)  # common random numbers for every model
        return float(denoising_loss(model, x0, y, generator=gen, p_t=0.2, p_c=0.2).loss)

    best = loss_of(exact)
    perturbations = [
        lambda x, t: 0.05 * torch.ones_like(x),
        lambda x, t: 0.05 * x,
        lambda x, t: -0.05 * torch.sin(3 * x) * t.view(-1, 1),
        lambda x, t: 0.05 * x.flip(1) * (1 - t.view(-1, 1)),
    ]
    for delta in perturbations:
        assert loss_of(_perturbed(exact, delta)) > best


def test_bad_loss_settings():
    model = Recorder()
    gen = torch.Generator()
    with pytest.raises(ValueError, match="p_t"):
        denoising_loss(model, torch.zeros(2, 2), generator=gen, p_t=1.5)
    plain = FunctionDenoiser(lambda x, t, y, dt, dy: x, sample_shape=(2,))
    with pytest.raises(ValueError, match="null noise embedding"):
        denoising_loss(plain, torch.zeros(2, 2), generator=gen, p_t=0.1)
    with pytest.raises(ValueError, match="cannot train a 'score' model"):
        denoising_loss(Recorder("score"), torch.zeros(2, 2), generator=gen)
