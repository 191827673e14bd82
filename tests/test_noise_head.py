"""The noise-level regressor head: construction, its density on t, its gradient, training and
agreement with the exact posterior of a Gaussian mixture."""

from __future__ import annotations

import math

import pytest
import torch

from nag_engine.analysis.noise_level import DifferentiableNoiseLevelEstimator, ExactPosterior
from nag_engine.checkpoints import load_checkpoint
from nag_engine.models import DiT, MLPDenoiser, NoiseLevelHead
from nag_engine.training.data import load_dataset, mixture_for
from nag_engine.training.trainer import TrainConfig, Trainer


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_dit(**kwargs) -> DiT:
    return DiT(
        input_size=4, patch_size=2, in_channels=1, hidden_size=16, depth=1, num_heads=2, **kwargs
    )


def randomise_head(head: NoiseLevelHead, seed: int) -> NoiseLevelHead:
    """The zero-initialised last layer makes a fresh head constant; give it random weights."""
    g = gen(seed)
    with torch.no_grad():
        for p in head.head[-1].parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return head


@pytest.fixture(scope="module")
def trained_head():
    """A head fine-tuned for 1,500 steps on an 8-dimensional, 4-mode mixture, with that
    mixture's exact posterior."""
    data = load_dataset("gmm", n=20000, dim=8, num_modes=4, seed=0)
    body = MLPDenoiser(dim=8, hidden=64, depth=2)
    config = TrainConfig(
        steps=1500,
        batch_size=256,
        lr=2e-3,
        warmup_steps=50,
        objective="noise_level",
        p_c=0.0,
        ema_decay=0.99,
    )
    trainer = Trainer(NoiseLevelHead.from_denoiser(body), data, config)
    trainer.run(progress=False)
    return trainer, ExactPosterior(mixture_for(data))


def test_from_denoiser_keeps_the_body_and_reads_x_alone():
    torch.manual_seed(0)
    for model, x in (
        (MLPDenoiser(dim=3, hidden=16, depth=2), torch.randn(5, 3)),
        (tiny_dit(num_classes=3), torch.randn(5, 1, 4, 4)),
    ):
        head = NoiseLevelHead.from_denoiser(model)
        body = head.body.state_dict()
        for name, value in body.items():
            torch.testing.assert_close(value, model.state_dict()[name])
        assert not any(k.startswith(("output_proj", "final_norm", "final_layer")) for k in body)
        assert isinstance(head, DifferentiableNoiseLevelEstimator)
        mu, log_var = randomise_head(head, 1)(x)
        assert mu.shape == log_var.shape == (5,)
        assert torch.isfinite(mu).all() and torch.isfinite(log_var).all()
    with pytest.raises(TypeError, match="backbones"):
        NoiseLevelHead.from_denoiser(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="log_snr_range"):
        NoiseLevelHead("MLPDenoiser", {"dim": 2}, log_snr_range=(1.0, -1.0))


def test_class_labels_change_a_conditional_head_and_are_ignored_by_an_unconditional_one():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 4, 4)
    conditional = randomise_head(NoiseLevelHead.from_denoiser(tiny_dit(num_classes=3)), 2)
    with torch.no_grad():
        conditional.body.y_embedder.embedding_table.weight.normal_()
        conditional.body.blocks[0].adaLN_modulation[-1].weight.normal_()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    assert not torch.allclose(conditional(x, y)[0], conditional(x)[0])
    unconditional = randomise_head(NoiseLevelHead.from_denoiser(tiny_dit(num_classes=None)), 2)
    torch.testing.assert_close(unconditional(x, y)[0], unconditional(x)[0])


def test_log_prob_integrates_to_the_gaussian_mass_inside_the_range():
    """Over the t-interval where the log-SNR is not clipped, the density on t integrates to
    the Gaussian's mass between the range's ends."""
    torch.manual_seed(0)
    head = randomise_head(NoiseLevelHead.from_denoiser(MLPDenoiser(dim=2, hidden=16, depth=1)), 3)
    head = head.double()
    x = torch.randn(4, 2, dtype=torch.float64)
    lo, hi = head.log_snr_range
    sched = head.schedule_obj
    t_lo = float(sched.t_from_log_snr(torch.tensor(hi, dtype=torch.float64)))
    t_hi = float(sched.t_from_log_snr(torch.tensor(lo, dtype=torch.float64)))
    ts = torch.linspace(t_lo, t_hi, 20001, dtype=torch.float64)
    with torch.no_grad():  # one call: every x at every t
        rows = head.log_prob(x.repeat(len(ts), 1), ts.repeat_interleave(len(x)))
        dens = rows.exp().view(len(ts), len(x)).T
        mu, log_var = head(x)
    integral = torch.trapezoid(dens, ts, dim=1)
    std = (0.5 * log_var.double()).exp()
    normal = torch.distributions.Normal(mu.double(), std)
    mass = normal.cdf(torch.tensor(hi)) - normal.cdf(torch.tensor(lo))
    torch.testing.assert_close(integral, mass, rtol=2e-3, atol=1e-4)


def test_grad_log_prob_matches_finite_differences():
    torch.manual_seed(0)
    for model, shape in (
        (MLPDenoiser(dim=3, hidden=16, depth=2), (4, 3)),
        (tiny_dit(num_classes=None), (4, 1, 4, 4)),
    ):
        head = randomise_head(NoiseLevelHead.from_denoiser(model), 4).double()
        with torch.no_grad():
            for p in head.body.parameters():  # a non-trivial body (adaLN gates start at zero)
                p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype))
        x = torch.randn(shape, dtype=torch.float64)
        t = torch.tensor([0.2, 0.4, 0.6, 0.9], dtype=torch.float64)
        grad = head.grad_log_prob(x, t)
        assert grad.shape == x.shape
        g = gen(5)
        for _ in range(3):
            v = torch.randn(shape, generator=g, dtype=torch.float64)
            h = 1e-6
            with torch.no_grad():
                fd = (head.log_prob(x + h * v, t) - head.log_prob(x - h * v, t)) / (2 * h)
            torch.testing.assert_close((grad * v).flatten(1).sum(1), fd, rtol=1e-5, atol=1e-7)
        assert grad.abs().sum() > 0


def test_estimate_matches_monte_carlo_moments_of_t():
    torch.manual_seed(0)
    head = randomise_head(NoiseLevelHead.from_denoiser(MLPDenoiser(dim=2, hidden=16, depth=1)), 6)
    x = torch.randn(3, 2)
    est = head.estimate(x)
    with torch.no_grad():
        mu, log_var = head(x)
    lam = mu.double() + (0.5 * log_var.double()).exp() * torch.randn(
        200000, 3, generator=gen(7), dtype=torch.float64
    )
    t = head.schedule_obj.t_from_log_snr(lam.clamp(*head.log_snr_range))
    torch.testing.assert_close(est.mean, t.mean(0), rtol=0, atol=3e-3)
    torch.testing.assert_close(est.std, t.std(0), rtol=0, atol=3e-3)


def test_trained_head_agrees_with_the_exact_posterior(trained_head):
    """On forward samples of the training mixture at five noise levels the fine-tuned head's
    posterior mean of t is within 0.04 of the exact posterior's per row on average (measured
    0.016-0.021) and its spread within 0.05 (measured: 0.02-0.04 wider); an untrained head is
    far off (its mean is the same for every x)."""
    trainer, exact = trained_head
    head = trainer.ema
    mixture = exact.mixture
    g = gen(11)
    x0, _ = mixture.sample_data(2000, generator=g)
    for t in (0.05, 0.2, 0.5, 0.8, 0.95):
        t64 = torch.tensor(t, dtype=torch.float64)
        sched = mixture.schedule_obj
        x = (sched.alpha(t64) * x0 + sched.sigma(t64) * torch.randn(x0.shape, generator=g)).float()
        a, b = exact.estimate(x), head.estimate(x)
        assert float((a.mean - b.mean).abs().mean()) < 0.04, t
        assert abs(float(a.std.mean() - b.std.mean())) < 0.05, t
    fresh = NoiseLevelHead.from_denoiser(MLPDenoiser(dim=8, hidden=64, depth=2))
    assert float((exact.estimate(x).mean - fresh.estimate(x).mean).abs().mean()) > 0.1


def test_head_checkpoint_round_trip_and_objective_checks(trained_head, tmp_path):
    trainer, _ = trained_head
    path = trainer.export(tmp_path / "head.safetensors")
    loaded = load_checkpoint(path)
    assert isinstance(loaded, NoiseLevelHead) and not loaded.supports_noise_dropout
    x = torch.randn(7, 8)
    torch.testing.assert_close(loaded.estimate(x).mean, trainer.ema.estimate(x).mean)
    data = load_dataset("gmm", n=500, dim=8, num_modes=4, seed=0)
    with pytest.raises(ValueError, match="noise_level"):
        Trainer(MLPDenoiser(dim=8), data, TrainConfig(steps=1, objective="noise_level"))
    with pytest.raises(ValueError, match="noise_level"):
        Trainer(NoiseLevelHead.from_denoiser(MLPDenoiser(dim=8)), data, TrainConfig(steps=1))
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="classify")
    # fine-tuning a denoiser checkpoint with the noise_level objective builds a head on it
    denoiser = MLPDenoiser(dim=8, hidden=32, depth=1)
    source = Trainer(denoiser, data, TrainConfig(steps=1, p_t=0.0)).export(tmp_path / "d.st")
    tuned = Trainer.finetune(source, data, TrainConfig(steps=2, objective="noise_level"))
    assert isinstance(tuned.model, NoiseLevelHead)
    tuned.run(progress=False)
    assert math.isfinite(tuned.history[-1]["loss"])
