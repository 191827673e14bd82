"""Tests for nag_engine.models.analytic: the exact Gaussian-mixture denoiser used as ground truth.

Every closed form of the model is checked against something computed independently here:
torch.distributions densities, autograd, Tweedie's formula, importance sampling, brute-force
integrals over t and calibration of the noise posterior.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D

from nag_engine.models.analytic import GaussianMixtureModel, random_mixture, ring_mixture
from nag_engine.predictions import PREDICTIONS, convert
from nag_engine.schedules import SCHEDULES, get_schedule

PRED_TYPES = ("velocity", "eps", "x0")
TIMES = (0.05, 0.3, 0.6, 0.95)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def small_mixture(**kwargs):
    """4 components in 2-D with unequal weights, per-coordinate stds and 2 classes."""
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.0], [0.5, -2.0]], dtype=torch.float64)
    stds = torch.tensor([[0.3, 0.5], [0.4, 0.2], [0.25, 0.25], [0.6, 0.3]], dtype=torch.float64)
    weights = torch.tensor([1.0, 2.0, 3.0, 1.5], dtype=torch.float64)
    classes = torch.tensor([0, 1, 0, 1])
    return GaussianMixtureModel(means, stds, weights, classes, **kwargs)


def reference_log_prob(model, x, t, components=None):
    """log p_t(x) from torch.distributions: sum_k w_k N(alpha mu_k, alpha^2 s_k^2 + sigma^2)."""
    sched = get_schedule(model.schedule)
    alpha, sigma = sched.alpha(float(t)), sched.sigma(float(t))
    logw = model.log_weights
    means, variances = model.means, model.variances
    if components is not None:
        logw, means, variances = logw[components], means[components], variances[components]
    mix = D.Categorical(logits=logw)
    comp = D.Independent(D.Normal(alpha * means, (alpha**2 * variances + sigma**2).sqrt()), 1)
    return D.MixtureSameFamily(mix, comp).log_prob(x)


def forward_samples(model, t, n, seed, y=None):
    """x_t = alpha x0 + sigma eps for clean draws x0 of the model's mixture."""
    g = gen(seed)
    x0, _ = model.sample_data(n, y=y, generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sched = get_schedule(model.schedule)
    return sched.alpha(t) * x0 + sched.sigma(t) * eps


# ----------------------------------------------------------------------------- densities
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("t", (0.0,) + TIMES)
def test_log_prob_matches_torch_distributions(schedule, t):
    model = small_mixture(schedule=schedule)
    x = 2.0 * torch.randn(16, 2, generator=gen(0), dtype=torch.float64)
    torch.testing.assert_close(
        model.log_prob(x, t), reference_log_prob(model, x, t), rtol=1e-12, atol=1e-12
    )


def test_log_prob_per_row_times():
    model = small_mixture(schedule="vp")
    x = torch.randn(4, 2, generator=gen(1), dtype=torch.float64)
    t = torch.tensor([0.1, 0.4, 0.7, 0.9], dtype=torch.float64)
    expected = torch.stack([model.log_prob(x[i : i + 1], float(t[i]))[0] for i in range(4)])
    torch.testing.assert_close(model.log_prob(x, t), expected, rtol=1e-14, atol=1e-14)


def _grid_integral(model, t, y=None, half_width=4.5, h=0.03):
    # A Riemann sum of a smooth, rapidly decaying density converges faster than any power of h
    # (for a Gaussian of std s the error is ~ exp(-2 pi^2 s^2 / h^2), here < 1e-40); the callers
    # choose boxes whose edges are > 7 stds from every mode (outside mass < 1e-11), so the sum
    # should be 1 to ~1e-10; 1e-6 leaves room for rounding.
    axis = torch.arange(-half_width, half_width + h / 2, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], 1)
    labels = None if y is None else torch.full((len(points),), y)
    return (model.log_prob(points, t, labels).exp().sum() * h * h).item()


@pytest.mark.parametrize("t, half_width, h", [(0.0, 4.5, 0.03), (0.3, 7.5, 0.05)])
def test_log_prob_at_t_integrates_to_one(t, half_width, h):
    # at t = 0.3 (vp) the modes sit at radius 1.26 with std 0.79: the box must be wider
    model = ring_mixture(8, radius=2.0, std=0.25, schedule="vp")
    assert _grid_integral(model, t, half_width=half_width, h=h) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("y", [0, 1])
def test_class_conditional_log_prob_integrates_to_one(y):
    model = small_mixture()
    total = _grid_integral(model, 0.0, y=y, half_width=5.0, h=0.02)
    assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("t", (0.0,) + TIMES)
def test_score_is_gradient_of_log_prob(schedule, t):
    model = small_mixture(schedule=schedule)
    x = (2.0 * torch.randn(8, 2, generator=gen(2), dtype=torch.float64)).requires_grad_(True)
    (grad,) = torch.autograd.grad(model.log_prob(x, t).sum(), x)
    torch.testing.assert_close(model.score(x.detach(), t), grad, rtol=1e-10, atol=1e-10)
    y = torch.tensor([0, 1] * 4)
    (grad_y,) = torch.autograd.grad(model.log_prob(x, t, y).sum(), x)
    torch.testing.assert_close(model.score(x.detach(), t, y), grad_y, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- predictions
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("t", TIMES)
def test_tweedie_x0_and_eps(schedule, t):
    sched = get_schedule(schedule)
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    x = forward_samples(small_mixture(schedule=schedule), t, 16, seed=3)
    tt = torch.full((len(x),), t, dtype=torch.float64)
    score = small_mixture(schedule=schedule).score(x, t)
    x0_model = small_mixture(schedule=schedule, prediction="x0")
    eps_model = small_mixture(schedule=schedule, prediction="eps")
    torch.testing.assert_close(
        x0_model(x, tt), (x + sigma**2 * score) / alpha, rtol=1e-9, atol=1e-9
    )
    torch.testing.assert_close(eps_model(x, tt), -sigma * score, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("t", TIMES)
def test_prediction_types_agree_after_conversion(schedule, t):
    models = {p: small_mixture(schedule=schedule, prediction=p) for p in PRED_TYPES}
    x = forward_samples(models["x0"], t, 12, seed=4)
    tt = torch.full((len(x),), t, dtype=torch.float64)
    y = torch.tensor([0, 1, 1] * 4)
    outs = {p: m(x, tt, y) for p, m in models.items()}
    for src in PRED_TYPES:
        for dst in PRED_TYPES:
            got = convert(outs[src], x, tt, schedule, src, dst)
            torch.testing.assert_close(got, outs[dst], rtol=1e-8, atol=1e-8)
    score = convert(outs["velocity"], x, tt, schedule, "velocity", "score")
    torch.testing.assert_close(score, models["x0"].score(x, t, y), rtol=1e-8, atol=1e-8)


def test_x0_matches_importance_sampling_estimate():
    """E[x0 | x_t] by self-normalised importance sampling from the data: independent of the
    model's closed form (weights are N(x_t; alpha x0_i, sigma^2) of clean draws x0_i)."""
    model = ring_mixture(8, radius=2.0, std=0.25, prediction="x0", schedule="linear")
    t = 0.5
    alpha, sigma = 1 - t, t
    x = forward_samples(model, t, 5, seed=5)
    x0, _ = model.sample_data(200_000, generator=gen(6))
    out = model(x, torch.full((5,), t, dtype=torch.float64))
    for i in range(len(x)):
        logw = -((x[i] - alpha * x0) ** 2).sum(1) / (2 * sigma**2)
        w = torch.softmax(logw, 0)
        est = (w[:, None] * x0).sum(0)
        # delta-method standard error of a ratio estimator
        se = ((w[:, None] ** 2) * (x0 - est) ** 2).sum(0).sqrt()
        assert ((out[i] - est).abs() < 6 * se + 1e-12).all(), (out[i], est, se)
        assert (se < 0.02).all()  # the check is meaningful: the estimate is precise


def test_output_dtype_follows_input():
    model = small_mixture(prediction="eps")
    x = torch.randn(3, 2, generator=gen(7))
    out = model(x, torch.full((3,), 0.4))
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out.double(), model(x.double(), torch.full((3,), 0.4)), rtol=1e-6, atol=1e-6
    )
    # a scalar t is broadcast to all rows
    torch.testing.assert_close(
        model(x.double(), torch.tensor(0.4)), model(x.double(), torch.full((3,), 0.4))
    )


# ----------------------------------------------------------------------------- conditioning
def _class_submodel(model, c, **kwargs):
    keep = model.classes == c
    return GaussianMixtureModel(
        model.means[keep],
        model.variances[keep].sqrt(),
        model.log_weights[keep].exp(),
        **kwargs,
    )


@pytest.mark.parametrize("prediction", PRED_TYPES)
@pytest.mark.parametrize("schedule", ["linear", "vp"])
def test_class_conditional_equals_submixture(prediction, schedule):
    model = small_mixture(prediction=prediction, schedule=schedule)
    x = 1.5 * torch.randn(10, 2, generator=gen(8), dtype=torch.float64)
    t = torch.rand(10, generator=gen(9), dtype=torch.float64)
    for c in (0, 1):
        sub = _class_submodel(model, c, prediction=prediction, schedule=schedule)
        y = torch.full((10,), c)
        torch.testing.assert_close(model(x, t, y), sub(x, t), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(
            model.log_prob(x, 0.3, y), sub.log_prob(x, 0.3), rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(
            model.score(x, 0.3, y), sub.score(x, 0.3), rtol=1e-10, atol=1e-10
        )
        torch.testing.assert_close(
            model.noise_posterior(x, y)[1], sub.noise_posterior(x)[1], rtol=1e-9, atol=1e-9
        )


def test_mixed_labels_are_per_row():
    model = small_mixture(prediction="x0")
    x = torch.randn(6, 2, generator=gen(10), dtype=torch.float64)
    t = torch.full((6,), 0.4, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    out = model(x, t, y)
    for i in range(6):
        torch.testing.assert_close(out[i : i + 1], model(x[i : i + 1], t[i : i + 1], y[i : i + 1]))


def test_drop_y_rows_equal_unconditional_rows():
    model = small_mixture(prediction="velocity")
    x = torch.randn(6, 2, generator=gen(11), dtype=torch.float64)
    t = torch.rand(6, generator=gen(12), dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    drop_y = torch.tensor([True, False, True, True, False, False])
    out = model(x, t, y, drop_y=drop_y)
    uncond = model(x, t)
    cond = model(x, t, y)
    torch.testing.assert_close(out[drop_y], uncond[drop_y], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[~drop_y], cond[~drop_y], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(cond, uncond)  # conditioning matters for these points


# ----------------------------------------------------------------------------- dropped t
def _brute_force_without_t(model, x, y=None, points=2000):
    """E[prediction | x] with t ~ training prior: p(t | x) proportional to prior(t) p_t(x) on a
    fine midpoint grid, averaging the t-conditional prediction. The prior is written out here."""
    tg = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    spec = model.time_distribution
    if spec == "uniform":
        log_prior = torch.zeros_like(tg)
    else:
        _, mean, std = spec
        logit = torch.log(tg / (1 - tg))
        log_prior = -0.5 * ((logit - mean) / std) ** 2 - torch.log(tg * (1 - tg))
    rows = len(x)
    xr = x.repeat_interleave(points, 0)
    tr = tg.repeat(rows)
    yr = None if y is None else y.repeat_interleave(points, 0)
    log_post = (model.log_prob(xr, tr, yr).view(rows, points) + log_prior).log_softmax(1)
    pred = model(xr, tr, yr).view(rows, points, -1)
    return (log_post.exp().unsqueeze(-1) * pred).sum(1)


@pytest.mark.parametrize(
    "schedule, prediction, time_distribution",
    [
        ("linear", "velocity", "uniform"),
        ("vp", "x0", "uniform"),
        ("vp-cosine", "eps", ("logit-normal", 0.0, 1.0)),
    ],
)
def test_drop_t_is_noise_unconditional_denoiser(schedule, prediction, time_distribution):
    model = small_mixture(
        schedule=schedule, prediction=prediction, time_distribution=time_distribution
    )
    x = 1.5 * torch.randn(4, 2, generator=gen(13), dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    t = torch.rand(4, generator=gen(14), dtype=torch.float64)
    drop = torch.ones(4, dtype=torch.bool)
    expected = _brute_force_without_t(model, x, y)
    # the model integrates on 512 midpoints, the reference on 2000: both O(h^2) accurate
    torch.testing.assert_close(model(x, t, y, drop_t=drop), expected, rtol=2e-4, atol=2e-4)
    expected_uncond = _brute_force_without_t(model, x)
    torch.testing.assert_close(model(x, t, drop_t=drop), expected_uncond, rtol=2e-4, atol=2e-4)


def test_drop_t_rows_ignore_t_and_other_rows_do_not():
    model = small_mixture(prediction="velocity")
    x = torch.randn(6, 2, generator=gen(15), dtype=torch.float64)
    drop = torch.tensor([True, False, True, False, True, False])
    t1 = torch.rand(6, generator=gen(16), dtype=torch.float64)
    t2 = torch.rand(6, generator=gen(17), dtype=torch.float64)
    out1 = model(x, t1, drop_t=drop)
    out2 = model(x, t2, drop_t=drop)
    assert torch.equal(out1[drop], out2[drop])
    assert not torch.allclose(out1[~drop], out2[~drop])
    torch.testing.assert_close(out1[~drop], model(x, t1)[~drop], rtol=0, atol=0)
    # the unconditional answer differs from every conditional one
    assert not torch.allclose(out1[drop], model(x, t1)[drop])


def test_drop_t_and_drop_y_together():
    model = small_mixture(prediction="x0")
    x = torch.randn(4, 2, generator=gen(18), dtype=torch.float64)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    both = torch.ones(4, dtype=torch.bool)
    out = model(x, t, y, drop_t=both, drop_y=both)
    torch.testing.assert_close(out, model(x, t, drop_t=both), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- noise posterior
def test_noise_posterior_is_normalised_log_distribution():
    model = small_mixture()
    x = torch.randn(5, 2, generator=gen(19), dtype=torch.float64)
    grid, log_post = model.noise_posterior(x)
    assert log_post.shape == (5, len(grid))
    assert ((grid > 0) & (grid < 1)).all()
    assert (grid.diff() > 0).all()
    torch.testing.assert_close(
        log_post.logsumexp(1), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-12
    )
    # proportional to p_t(x) under the uniform prior
    lp = torch.stack([model.log_prob(x, float(tj)) for tj in grid[::64]], 1)
    diff = log_post[:, ::64] - lp
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff), rtol=0, atol=1e-9)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_noise_posterior_concentrates_in_high_dimension(t):
    model = random_mixture(32, schedule="linear")
    x = forward_samples(model, t, 16, seed=20)
    grid, log_post = model.noise_posterior(x)
    post = log_post.exp()
    mean = (post * grid).sum(1)
    std = (post * (grid - mean[:, None]) ** 2).sum(1).sqrt()
    z = (mean - t) / std
    prior_std = 1 / math.sqrt(12)
    assert (std < 0.4 * prior_std).all()  # far narrower than the prior
    assert ((mean - t).abs() < 0.15).all()
    assert (z.abs() < 6).all(), z
    assert z.abs().median() < 2, z


@pytest.mark.parametrize("time_distribution", ["uniform", ("logit-normal", -0.5, 0.8)])
def test_noise_posterior_is_calibrated(time_distribution):
    """Draw t from the prior on the model's grid, x_t from the forward process; under the exact
    posterior the randomised PIT u = P(T < t | x) + V P(T = t | x), V ~ U(0, 1), is exactly
    Uniform(0, 1). Compare with a Kolmogorov-Smirnov bound (0.1% critical value)."""
    model = small_mixture(schedule="vp", time_distribution=time_distribution)
    grid = model.time_grid
    if time_distribution == "uniform":
        log_prior = torch.zeros_like(grid)
    else:
        _, mean, std = time_distribution
        logit = torch.log(grid / (1 - grid))
        log_prior = -0.5 * ((logit - mean) / std) ** 2 - torch.log(grid * (1 - grid))
    n = 1000
    g = gen(21)
    idx = torch.multinomial(torch.softmax(log_prior, 0), n, replacement=True, generator=g)
    t = grid[idx]
    x0, _ = model.sample_data(n, generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sched = get_schedule("vp")
    x = sched.alpha(t)[:, None] * x0 + sched.sigma(t)[:, None] * eps
    _, log_post = model.noise_posterior(x)
    post = log_post.exp()
    below = torch.cumsum(post, 1).gather(1, idx[:, None]).squeeze(1) - post[torch.arange(n), idx]
    u = below + torch.rand(n, generator=g, dtype=torch.float64) * post[torch.arange(n), idx]
    u, _ = torch.sort(u)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - u, u - (i - 1) / n).max().item()
    assert ks < 1.95 / math.sqrt(n), ks


def test_logit_normal_prior_changes_noise_posterior():
    uniform = small_mixture(schedule="linear")
    logit_normal = small_mixture(schedule="linear", time_distribution=("logit-normal", 0.0, 1.0))
    x = torch.randn(4, 2, generator=gen(22), dtype=torch.float64)
    grid, lp_u = uniform.noise_posterior(x)
    grid2, lp_ln = logit_normal.noise_posterior(x)
    assert torch.equal(grid, grid2)
    zeros = torch.zeros(4, dtype=torch.float64)
    torch.testing.assert_close(lp_ln.logsumexp(1), zeros, rtol=0, atol=1e-12)
    assert (lp_ln - lp_u).abs().max() > 0.5
    # the two differ exactly by the log prior density (up to a per-row constant)
    logit = torch.log(grid / (1 - grid))
    log_prior = -0.5 * logit**2 - torch.log(grid) - torch.log1p(-grid)
    diff = lp_ln - lp_u - log_prior
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff), rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- clean data
def test_sample_data_component_statistics():
    model = small_mixture()
    n = 40_000
    x0, comp = model.sample_data(n, generator=gen(23))
    assert x0.shape == (n, 2) and x0.dtype == torch.float64
    weights = model.log_weights.exp()
    stds = model.variances.sqrt()
    for k in range(4):
        sel = x0[comp == k]
        nk = len(sel)
        p = weights[k].item()
        assert abs(nk / n - p) < 5 * math.sqrt(p * (1 - p) / n)
        assert ((sel.mean(0) - model.means[k]).abs() < 5 * stds[k] / math.sqrt(nk)).all()
        # standard error of a sample std of a normal: s / sqrt(2 (n - 1))
        assert ((sel.std(0) - stds[k]).abs() < 5 * stds[k] / math.sqrt(2 * (nk - 1))).all()
    # pooled over components and coordinates, the standardised residuals are N(0, 1): this pins
    # the spread to ~1% where a single component's std is only pinned to ~5%
    z = ((x0 - model.means[comp]) / stds[comp]).flatten()
    assert abs(z.mean().item()) < 5 / math.sqrt(z.numel())
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / z.numel())
    z, _ = torch.sort(z)
    m = z.numel()
    cdf = torch.special.ndtr(z)
    i = torch.arange(1, m + 1, dtype=torch.float64)
    assert torch.maximum(i / m - cdf, cdf - (i - 1) / m).max().item() < 1.95 / math.sqrt(m)


@pytest.mark.parametrize("c", [0, 1])
def test_sample_data_with_class(c):
    model = small_mixture()
    n = 20_000
    x0, comp = model.sample_data(n, y=torch.full((n,), c), generator=gen(24))
    in_class = model.classes == c
    assert in_class[comp].all()
    weights = model.log_weights.exp() * in_class
    weights = weights / weights.sum()
    for k in torch.nonzero(in_class).flatten().tolist():
        p = weights[k].item()
        assert abs((comp == k).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
        sel = x0[comp == k]
        se = model.variances[k].sqrt() / math.sqrt(len(sel))
        assert ((sel.mean(0) - model.means[k]).abs() < 5 * se).all()


def test_sample_data_is_reproducible_with_generator():
    model = small_mixture()
    a = model.sample_data(100, generator=gen(25))
    b = model.sample_data(100, generator=gen(25))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_component_of_recovers_components():
    model = ring_mixture(8, radius=2.0, std=0.05)  # modes 1.53 apart: > 15 stds
    x0, comp = model.sample_data(2000, generator=gen(26))
    assert torch.equal(model.component_of(x0), comp)
    assert torch.equal(model.component_of(model.means), torch.arange(8))


# ----------------------------------------------------------------------------- helpers
def test_ring_mixture_layout():
    model = ring_mixture(6, radius=3.0, std=0.1, num_classes=3)
    torch.testing.assert_close(model.means.norm(dim=1), torch.full((6,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(model.means[0], torch.tensor([3.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(model.variances, torch.full((6, 2), 0.01, dtype=torch.float64))
    assert model.classes.tolist() == [0, 1, 2, 0, 1, 2]
    assert model.num_classes == 3
    assert model.sample_shape == (2,)
    uniform = torch.full((6,), 1 / 6, dtype=torch.float64)
    torch.testing.assert_close(model.log_weights.exp(), uniform)


def test_random_mixture_properties():
    a = random_mixture(16, num_modes=5, num_classes=2, seed=3)
    b = random_mixture(16, num_modes=5, num_classes=2, seed=3)
    c = random_mixture(16, num_modes=5, num_classes=2, seed=4)
    assert torch.equal(a.means, b.means) and not torch.equal(a.means, c.means)
    assert a.means.shape == (5, 16)
    w = a.log_weights.exp()
    assert w.sum().item() == pytest.approx(1.0)
    assert w.max() / w.min() <= 3.0
    assert a.classes.tolist() == [0, 1, 0, 1, 0]
    assert random_mixture(4).classes is None


def test_model_protocol_attributes():
    model = small_mixture(prediction="eps", schedule="vp-cosine")
    assert model.prediction == "eps"
    assert model.schedule == "vp-cosine"
    assert model.supports_noise_dropout is True
    assert model.num_classes == 2
    assert ring_mixture().num_classes is None


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("means", [torch.zeros(4), torch.zeros(2, 3, 2)])
def test_bad_means_shape_raises(means):
    with pytest.raises(ValueError, match="means"):
        GaussianMixtureModel(means, 0.5)


@pytest.mark.parametrize(
    "weights", [torch.ones(3), torch.tensor([1.0, -1.0]), torch.tensor([1.0, 0.0])]
)
def test_bad_weights_raise(weights):
    with pytest.raises(ValueError, match="weights"):
        GaussianMixtureModel(torch.zeros(2, 2), 0.5, weights)


@pytest.mark.parametrize("classes", [torch.tensor([0, -1]), torch.tensor([0, 1, 2])])
def test_bad_classes_raise(classes):
    with pytest.raises(ValueError, match="classes"):
        GaussianMixtureModel(torch.zeros(2, 2), 0.5, classes=classes)


def test_y_on_unconditional_mixture_raises():
    model = ring_mixture()
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="no classes"):
        model(x, torch.full((2,), 0.5), torch.tensor([0, 1]))


@pytest.mark.parametrize("spec", ["gaussian", ("lognormal", 0.0, 1.0), ["logit-normal", 0, 1]])
def test_unknown_time_distribution_raises(spec):
    with pytest.raises(ValueError, match="time_distribution"):
        ring_mixture(time_distribution=spec)


def test_unknown_prediction_or_schedule_raises():
    with pytest.raises(ValueError, match="'noise'"):
        ring_mixture(prediction="noise")
    with pytest.raises(ValueError, match="'cosine'"):
        ring_mixture(schedule="cosine")
    assert "score" in PREDICTIONS  # the model accepts every known prediction type
    model = ring_mixture(prediction="score", schedule="vp")
    x = torch.randn(3, 2, generator=gen(27), dtype=torch.float64)
    torch.testing.assert_close(model(x, torch.full((3,), 0.5)), model.score(x, 0.5))


# ----------------------------------------------------------------------------- known bugs
def test_out_of_range_label_raises():
    model = small_mixture()
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError):
        model(x, torch.full((2,), 0.5), torch.tensor([0, 2]))


@pytest.mark.parametrize("method", ["log_prob", "score", "noise_posterior", "sample_data"])
def test_y_on_unconditional_mixture_raises_everywhere(method):
    model = ring_mixture()
    x = torch.zeros(2, 2, dtype=torch.float64)
    y = torch.tensor([0, 1])
    calls = {
        "log_prob": lambda: model.log_prob(x, 0.5, y),
        "score": lambda: model.score(x, 0.5, y),
        "noise_posterior": lambda: model.noise_posterior(x, y),
        "sample_data": lambda: model.sample_data(2, y=y),
    }
    with pytest.raises(ValueError):
        calls[method]()
