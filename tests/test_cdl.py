"""Tests for nag_engine.training.cdl: the noise log-ratio estimator and the contrastive loss.

Ground truth is exact: for Gaussian data and for Gaussian mixtures, log p(x) - log p_zeta(x) is
in closed form (the mixture's log_prob at the time where its schedule has log-SNR zeta, moved to
the VP state by a change of variables). Monte-Carlo checks use a tolerance of 5 standard errors
measured from independent repeats of the estimator itself, and also require that standard error
to be small, so that they cannot pass vacuously.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as D

from nag_engine.models import (
    FunctionDenoiser,
    GaussianMixtureModel,
    MLPDenoiser,
    random_mixture,
    ring_mixture,
)
from nag_engine.schedules import get_schedule
from nag_engine.training import cdl
from nag_engine.training.cdl import (
    cdl_loss,
    eps_at_log_snr,
    gaussian_log_ratio,
    noise_log_ratio,
    remap_log_snr,
)

NATIVE = [("linear", "velocity"), ("vp", "eps"), ("vp-cosine", "x0"), ("linear", "eps")]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_log_ratio(model: GaussianMixtureModel, x, zeta, y=None):
    """log p_0(x) - log p_vp,zeta(x) from the mixture's exact densities. The VP state z at
    log-SNR zeta and the model's state at t(zeta) are related by x_t = s z with
    s = sqrt(alpha^2 + sigma^2), so log p_vp(z) = log p_t(s z) + d log s."""
    sched = get_schedule(model.schedule)
    t = sched.t_from_log_snr(torch.as_tensor(zeta, dtype=torch.float64)).expand(len(x))
    scale = torch.sqrt(sched.alpha(t) ** 2 + sched.sigma(t) ** 2)
    log_p_zeta = model.log_prob(scale[:, None] * x, t, y) + x.shape[1] * torch.log(scale)
    return model.log_prob(x, 0.0, y) - log_p_zeta


def repeated(model, x, zeta, repeats, seed, **kwargs):
    """`repeats` independent estimates per row of x, in one call: [repeats, B]."""
    rows = len(x)
    zeta = torch.as_tensor(zeta, dtype=torch.float64).expand(rows).repeat(repeats)
    y = kwargs.pop("y", None)
    y = None if y is None else y.repeat(repeats)
    est = noise_log_ratio(model, x.repeat(repeats, 1), zeta, y=y, generator=gen(seed), **kwargs)
    return est.view(repeats, rows)


def assert_within_standard_errors(estimates, truth, max_se, sigmas=5.0):
    """Mean of the repeats within `sigmas` standard errors of truth; standard errors < max_se."""
    mean = estimates.mean(0)
    se = estimates.std(0) / math.sqrt(len(estimates))
    assert (se < max_se).all(), f"standard errors too large to test anything: {se}"
    z = (mean - truth) / se
    assert (z.abs() < sigmas).all(), f"estimate {mean} vs exact {truth}: z-scores {z}"


# ----------------------------------------------------------------------------- closed forms
def test_gaussian_log_ratio_matches_normal_densities():
    g = gen(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64) * 2
    zeta = torch.tensor([-6.0, -1.0, 0.0, 2.5, 9.0], dtype=torch.float64)
    v = torch.tensor([0.2, 1.0, 3.0, 0.5, 1.7], dtype=torch.float64)
    mean = torch.tensor([0.5, -1.0, 0.3], dtype=torch.float64)
    a = torch.sigmoid(zeta)[:, None]
    p = D.Independent(D.Normal(mean, v[:, None].sqrt().expand(5, 3)), 1)
    p_zeta = D.Independent(D.Normal(a.sqrt() * mean, (a * v[:, None] + 1 - a).sqrt()), 1)
    expected = p.log_prob(x) - p_zeta.log_prob(x)
    torch.testing.assert_close(gaussian_log_ratio(x, zeta, v, mean), expected)
    # N(0, I) is invariant under VP noising
    torch.testing.assert_close(gaussian_log_ratio(x, 1.3, 1.0), torch.zeros(5, dtype=x.dtype))


@pytest.mark.parametrize("zeta", [-4.0, 0.0, 3.0])
def test_remapped_denoiser_is_the_denoiser_of_the_noised_data(zeta):
    """The exact eps-denoiser of p_zeta at log-SNR lam equals
    sqrt(sig(-lam) / sig(-lam')) * (data eps-denoiser at lam' = logit(sig(lam) sig(zeta)))."""
    data = ring_mixture(prediction="velocity", schedule="linear")
    a = math.sqrt(1.0 / (1.0 + math.exp(-zeta)))
    noised_std = math.sqrt(a**2 * 0.25**2 + 1 - a**2)
    noised = GaussianMixtureModel(a * data.means, noised_std, prediction="x0", schedule="vp-cosine")
    g = gen(1)
    lam = torch.empty(64, dtype=torch.float64).uniform_(-8, 8, generator=g)
    z = torch.randn(64, 2, generator=g, dtype=torch.float64) * 2
    lam_p = remap_log_snr(lam, torch.full_like(lam, zeta))
    torch.testing.assert_close(torch.sigmoid(lam_p), torch.sigmoid(lam) * a**2)
    c = torch.sqrt(torch.sigmoid(-lam) / torch.sigmoid(-lam_p))[:, None]
    expected = eps_at_log_snr(noised, z, lam)
    remapped = eps_at_log_snr(data, z, lam_p)
    torch.testing.assert_close(c * remapped, expected, rtol=1e-8, atol=1e-10)
    # the other direction of the rescaling is wrong
    assert (remapped / c - expected).abs().max() > 1e-2


# ----------------------------------------------------------------------------- estimator
@pytest.mark.parametrize("schedule,prediction", NATIVE)
def test_gaussian_data_matches_closed_form(schedule, prediction):
    mu = torch.tensor([0.5, -1.0, 0.3], dtype=torch.float64)
    v = 0.4
    model = GaussianMixtureModel(mu[None], math.sqrt(v), prediction=prediction, schedule=schedule)
    x = torch.cat([model.sample_data(3, generator=gen(2))[0], torch.tensor([[2.0, 2.0, -2.0]])])
    x = x.repeat(3, 1)
    zeta = torch.tensor([-4.0, 0.0, 4.0], dtype=torch.float64).repeat_interleave(4)
    truth = gaussian_log_ratio(x, zeta, v, mu)
    for baseline in (None, 1.0):  # the batch-estimated N(0, vI) baseline, and no baseline
        est = repeated(model, x, zeta, 32, seed=3, num_samples=64, baseline_variance=baseline)
        assert_within_standard_errors(est, truth, max_se=0.15 + 0.02 * truth.abs())
    # with the data's own Gaussian as the control variate the residual vanishes: exact answer
    # (up to DDPM's clamp of log-SNR < -10.05 to t = 1, which biases far-off points slightly)
    est = noise_log_ratio(model, x, zeta, num_samples=2, baseline_variance=v, baseline_mean=mu)
    tol = 1e-2 if schedule == "vp" else 1e-7
    torch.testing.assert_close(est, truth, rtol=0, atol=tol)


def test_native_prediction_and_schedule_do_not_matter():
    """Same random numbers, same estimate: eps at a log-SNR does not depend on how the model is
    parametrised (DDPM's vp differs only where log-SNR < -10.05 is clamped to t = 1)."""
    x = ring_mixture().sample_data(8, generator=gen(4))[0]
    estimates = {}
    for schedule, prediction in NATIVE + [("vp", "velocity"), ("vp-cosine", "eps")]:
        model = ring_mixture(prediction=prediction, schedule=schedule)
        estimates[schedule, prediction] = noise_log_ratio(
            model, x, 0.5, num_samples=8, generator=gen(5)
        )
    ref = estimates["linear", "velocity"]
    for (schedule, _), est in estimates.items():
        tol = 1e-3 if schedule == "vp" else 1e-8
        torch.testing.assert_close(est, ref, rtol=0, atol=tol)


@pytest.mark.parametrize("zeta", [-3.0, 0.0, 3.0])
def test_ring_mixture_matches_exact_log_ratio(zeta):
    model = ring_mixture(prediction="velocity", schedule="linear")
    x0 = model.sample_data(4, generator=gen(6))[0]
    x = torch.cat([x0, torch.tensor([[0.0, 0.0], [6.0, 0.0]], dtype=torch.float64)])
    truth = exact_log_ratio(model, x, zeta)
    est = repeated(model, x, zeta, 32, seed=7, num_samples=64)
    assert_within_standard_errors(est, truth, max_se=0.2 + 0.01 * truth.abs())


def test_class_conditional_log_ratio():
    model = ring_mixture(num_classes=2, prediction="eps", schedule="vp-cosine")
    y = torch.tensor([0, 1, 0, 1])
    x = model.sample_data(4, y=y, generator=gen(8))[0]
    truth = exact_log_ratio(model, x, 1.0, y)
    assert (truth - exact_log_ratio(model, x, 1.0)).abs().max() > 0.1  # y matters here
    est = repeated(model, x, 1.0, 32, seed=9, num_samples=64, y=y)
    assert_within_standard_errors(est, truth, max_se=0.25)


def test_gaussian_baseline_reduces_variance_without_changing_the_mean():
    """On a 32-D mixture (per-coordinate variance ~0.4, far from 1) the N(0, vI) control
    variate cuts the estimator's variance; its mean stays the exact log-ratio."""
    model = random_mixture(32, spread=2.0, std=0.5, prediction="velocity", schedule="linear")
    x = model.sample_data(4, generator=gen(10))[0]
    zeta = -2.0
    truth = exact_log_ratio(model, x, zeta)
    off = repeated(model, x, zeta, 300, seed=11, num_samples=1, baseline_variance=1.0)
    on = repeated(model, x, zeta, 300, seed=11, num_samples=1)  # v estimated from the batch
    assert on.var(0).sum() < 0.6 * off.var(0).sum(), (on.var(0), off.var(0))
    for est in (on, off):
        assert_within_standard_errors(est, truth, max_se=1.5)
    diff_se = ((on - off).var(0) / len(on)).sqrt()
    assert ((on.mean(0) - off.mean(0)).abs() < 5 * diff_se).all()


def test_chunks_dtypes_and_zeta_forms_agree():
    model = ring_mixture(prediction="x0", schedule="vp-cosine")
    x = model.sample_data(6, generator=gen(12))[0]
    ref = noise_log_ratio(model, x, 1.5, num_samples=5, generator=gen(13))
    assert ref.shape == (6,) and ref.dtype == torch.float64
    chunked = noise_log_ratio(
        model, x, torch.full((6,), 1.5), num_samples=5, generator=gen(13), chunk_size=7
    )
    torch.testing.assert_close(chunked, ref, rtol=0, atol=1e-12)
    single = noise_log_ratio(model, x.float(), 1.5, num_samples=5, generator=gen(13))
    assert single.dtype == torch.float32 and torch.isfinite(single).all()
    with pytest.raises(ValueError):
        noise_log_ratio(model, x, 0.0, num_samples=0)
    with pytest.raises(ValueError):
        noise_log_ratio(model, x, 0.0, lambda_range=(5.0, -5.0))
    with pytest.raises(ValueError):
        noise_log_ratio(model, x, torch.zeros(5))


# ----------------------------------------------------------------------------- the loss
def test_cdl_loss_is_the_bce_of_its_logits(monkeypatch):
    """Clean rows come first with label 1, their noised copies (same zeta) after with label 0."""
    seen = {}

    def stub(model, x, zeta, **kwargs):
        seen.update(x=x, zeta=zeta, kwargs=kwargs)
        return x.sum(1) * 0.7 - 0.2

    monkeypatch.setattr(cdl, "noise_log_ratio", stub)
    x0 = ring_mixture().sample_data(10, generator=gen(14))[0]
    loss = cdl_loss(None, x0, zeta_range=(-2.0, 3.0), num_samples=3, generator=gen(15))
    x, zeta = seen["x"], seen["zeta"]
    torch.testing.assert_close(x[:10], x0)
    torch.testing.assert_close(zeta[:10], zeta[10:])
    assert ((zeta >= -2.0) & (zeta <= 3.0)).all() and seen["kwargs"]["num_samples"] == 3
    # the noised half is sqrt(sig(zeta)) x0 + sqrt(sig(-zeta)) eps with standard normal eps
    a = torch.sigmoid(zeta[:10])[:, None]
    eps = (x[10:] - a.sqrt() * x0) / (1 - a).sqrt()
    assert eps.abs().max() < 5 and not torch.allclose(eps, torch.zeros_like(eps))
    logits = x.sum(1) * 0.7 - 0.2
    expected = 0.5 * (F.softplus(-logits[:10]).mean() + F.softplus(logits[10:]).mean())
    torch.testing.assert_close(loss, expected)


def test_cdl_loss_prefers_the_exact_denoiser():
    exact = ring_mixture(prediction="eps", schedule="linear")
    biased = FunctionDenoiser(
        lambda x, t, y, drop_t, drop_y: exact(x, t, y) + 0.3, prediction="eps", schedule="linear"
    )
    x0 = exact.sample_data(256, generator=gen(16))[0]
    # the same zeta, noised copies and (lam, eps) draws for both models (same generator seed)
    loss_exact = cdl_loss(exact, x0, num_samples=16, generator=gen(17))
    loss_biased = cdl_loss(biased, x0, num_samples=16, generator=gen(17))
    # the Bayes loss with exact logits is 0.457 here; noisy logits only add to it
    assert torch.isfinite(loss_exact) and loss_exact < math.log(2) - 0.1  # far better than chance
    assert loss_exact < loss_biased - 0.2, (loss_exact, loss_biased)


def test_cdl_loss_gradients_reach_mlp_parameters():
    torch.manual_seed(0)
    model = MLPDenoiser(2, hidden=32, depth=2, prediction="velocity", schedule="linear")
    with torch.no_grad():  # leave the adaLN-Zero identity so that every layer carries gradient
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x0 = ring_mixture().sample_data(64, generator=gen(18))[0].float()
    loss = cdl_loss(model, x0, num_samples=2, generator=gen(19))
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        if "null" in name:
            continue  # null-noise / null-class rows are not used without drop flags
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
