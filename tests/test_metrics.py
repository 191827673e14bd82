"""Sample-quality metrics: two-sided distances (energy distance, sliced Wasserstein, k-NN
precision/recall), Gaussian-mixture statistics, and FD-digits (Frechet distance in the feature
space of a small classifier trained here on scikit-learn's digits; not Inception FID)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import mode_statistics
from hypothesis import given, settings
from hypothesis import strategies as st

from nag_engine.analysis import digit_features as digits_mod
from nag_engine.analysis import metrics
from nag_engine.analysis.digit_features import (
    digit_accuracy,
    digit_feature_net,
    digit_features,
    digit_precision_recall,
    digit_split,
    fd_digits,
    real_digits,
    train_digit_classifier,
)
from nag_engine.analysis.metrics import (
    energy_distance,
    frechet_distance,
    knn_precision_recall,
    mean_log_likelihood,
    mode_coverage,
    per_mode_statistics,
    sliced_wasserstein,
)
from nag_engine.models import GaussianMixtureModel, ring_mixture


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_w_pow_1d(a: torch.Tensor, b: torch.Tensor, p: float) -> float:
    """W_p^p between two 1-D empirical distributions: replicate both sets to a common size
    lcm(n, m) (same distributions), then pair the sorted values."""
    n, m = len(a), len(b)
    size = n * m // math.gcd(n, m)
    a = torch.sort(a.double().repeat_interleave(size // n)).values
    b = torch.sort(b.double().repeat_interleave(size // m)).values
    return float((a - b).abs().pow(p).mean())


def two_modes(n: int, seed: int, modes: tuple[int, ...] = (0, 1)) -> torch.Tensor:
    """n points from equal-weight N((+-3, 0), 0.5^2 I) restricted to the given modes."""
    g = gen(seed)
    centres = torch.tensor([[-3.0, 0.0], [3.0, 0.0]], dtype=torch.float64)[list(modes)]
    pick = torch.randint(len(modes), (n,), generator=g)
    return centres[pick] + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------------- sliced Wasserstein
def test_sliced_wasserstein_zero_for_identical_sets():
    x = torch.randn(300, 5, generator=gen(0))
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(300, generator=gen(1))]) < 1e-12


def test_sliced_wasserstein_translation_matches_formula_and_grows():
    x = torch.randn(400, 2, generator=gen(0), dtype=torch.float64)
    values = []
    for shift in (0.25, 0.5, 1.0, 2.0, 4.0):
        moved = x + torch.tensor([shift, 0.0], dtype=torch.float64)
        sw2 = sliced_wasserstein(x, moved, num_projections=4000, generator=gen(1))
        sw1 = sliced_wasserstein(x, moved, num_projections=4000, generator=gen(1), p=1)
        # same points translated: each projection's W_p is |theta . s| exactly, so
        # SW_2 = |s| sqrt(E theta_1^2) = |s| / sqrt(2), SW_1 = |s| E|theta_1| = |s| 2 / pi in 2-D
        assert sw2 == pytest.approx(shift / math.sqrt(2), rel=0.03)
        assert sw1 == pytest.approx(shift * 2 / math.pi, rel=0.03)
        values.append(sw2)
    assert all(a < b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("n,m", [(200, 200), (37, 53), (100, 300), (1, 9)])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_sliced_wasserstein_1d_is_exact_wasserstein(n, m, p):
    a = torch.randn(n, 1, generator=gen(n), dtype=torch.float64)
    b = 1.5 * torch.randn(m, 1, generator=gen(m + 1000), dtype=torch.float64) + 0.7
    exact = exact_w_pow_1d(a[:, 0], b[:, 0], p) ** (1 / p)
    assert sliced_wasserstein(a, b, num_projections=8, p=p) == pytest.approx(exact, rel=1e-10)


def test_sliced_wasserstein_1d_matches_scipy_w1():
    stats = pytest.importorskip("scipy.stats")
    a = torch.randn(123, 1, generator=gen(0), dtype=torch.float64)
    b = torch.rand(77, 1, generator=gen(1), dtype=torch.float64) * 3
    ref = stats.wasserstein_distance(a[:, 0].numpy(), b[:, 0].numpy())
    assert sliced_wasserstein(a, b, num_projections=4, p=1) == pytest.approx(ref, rel=1e-10)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    st.lists(st.floats(-10, 10), min_size=1, max_size=12),
    st.lists(st.floats(-10, 10), min_size=1, max_size=12),
    st.sampled_from([1, 2]),
)
def test_sliced_wasserstein_1d_property(a, b, p):
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    exact = exact_w_pow_1d(ta, tb, p) ** (1 / p)
    got = sliced_wasserstein(ta[:, None], tb[:, None], num_projections=2, p=p)
    assert got == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_sliced_wasserstein_symmetric_and_deterministic():
    x = torch.randn(150, 4, generator=gen(0))
    y = torch.randn(220, 4, generator=gen(1)) * 2 + 1
    assert sliced_wasserstein(x, y) == sliced_wasserstein(y, x)
    assert sliced_wasserstein(x, y) == sliced_wasserstein(x, y)  # default: fixed seed
    state = torch.get_rng_state()
    sliced_wasserstein(x, y)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    assert sliced_wasserstein(x, y, generator=gen(5)) != sliced_wasserstein(x, y, generator=gen(6))


def test_sliced_wasserstein_chunked_equals_unchunked(monkeypatch):
    x = torch.randn(64, 3, generator=gen(0))
    y = torch.randn(50, 3, generator=gen(1)) + 0.3
    whole = sliced_wasserstein(x, y, num_projections=32, generator=gen(2))
    monkeypatch.setattr(metrics, "_BLOCK", 200)  # 3 projections per chunk
    assert sliced_wasserstein(x, y, num_projections=32, generator=gen(2)) == pytest.approx(
        whole, rel=1e-12
    )


# ---------------------------------------------------------------------- energy distance
# Worst energy distance between two independent 500-point samples of N(0, I_2) over 200 draws
# was 0.028 (mean 0.0074); a unit shift gives ~0.36.
ENERGY_SAME_BOUND = 0.04


def test_energy_distance_same_vs_shifted():
    g = gen(0)
    a = torch.randn(500, 2, generator=g, dtype=torch.float64)
    b = torch.randn(500, 2, generator=g, dtype=torch.float64)
    same = energy_distance(a, b)
    assert 0 <= same < ENERGY_SAME_BOUND
    assert energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    shifted = [energy_distance(a, b + torch.tensor([s, 0.0])) for s in (0.5, 1.0, 2.0)]
    assert all(x < y for x, y in zip(shifted, shifted[1:]))
    assert shifted[1] > 5 * ENERGY_SAME_BOUND
    assert energy_distance(a, b) == pytest.approx(energy_distance(b, a), rel=1e-12)


# ---------------------------------------------------------------------- k-NN precision/recall
def test_knn_precision_recall_same_distribution():
    precision, recall = knn_precision_recall(two_modes(1000, 0), two_modes(1000, 1), k=3)
    assert precision > 0.8 and recall > 0.8


def test_knn_precision_recall_collapse_keeps_precision_loses_recall():
    real = two_modes(1000, 0)
    collapsed = two_modes(1000, 1, modes=(1,))
    precision, recall = knn_precision_recall(real, collapsed, k=3)
    assert precision > 0.8
    assert recall < 0.6
    # a single point cloud at one mode's centre: still "precise", recall collapses further
    tight = torch.tensor([3.0, 0.0]) + 0.05 * torch.randn(1000, 2, generator=gen(2))
    precision, recall = knn_precision_recall(real, tight, k=3)
    assert precision > 0.9 and recall < 0.1


def test_knn_precision_recall_far_fakes():
    real = two_modes(1000, 0)
    far = two_modes(1000, 1) + torch.tensor([30.0, 30.0], dtype=torch.float64)
    precision, recall = knn_precision_recall(real, far, k=3)
    assert precision < 0.01 and recall < 0.01


def test_knn_precision_recall_hand_computed():
    # reals at 0, 1, ..., 9; the point itself is excluded from its neighbours
    real = torch.arange(10.0).view(-1, 1)
    fake = torch.tensor([[0.5], [10.0], [10.5], [-1.5], [11.5]])
    # k = 1: every real ball has radius 1 -> 0.5 and 10.0 are inside
    precision, recall = knn_precision_recall(real, fake, k=1)
    assert precision == pytest.approx(2 / 5)
    # fake balls (k = 1): -1.5 -> 2, 0.5 -> 2, 10 -> 0.5, 10.5 -> 0.5, 11.5 -> 1
    # reals inside: 0, 1, 2 (0.5's ball); 9 is 1 from 10, outside its ball of 0.5
    assert recall == pytest.approx(3 / 10)
    # k = 2: the end points' balls grow to radius 2 (interior ones stay 1): -1.5 and 10.5 join
    precision, _ = knn_precision_recall(real, fake, k=2)
    assert precision == pytest.approx(4 / 5)


def test_knn_precision_recall_chunking_and_arguments(monkeypatch):
    real, fake = two_modes(300, 0), two_modes(200, 1, modes=(0,))
    whole = knn_precision_recall(real, fake, k=5)
    monkeypatch.setattr(metrics, "_BLOCK", 1000)  # a few rows per block
    assert knn_precision_recall(real, fake, k=5) == whole
    with pytest.raises(ValueError):
        knn_precision_recall(real, fake, k=300)
    with pytest.raises(ValueError):
        knn_precision_recall(real, fake[:, :1], k=3)


# ---------------------------------------------------------------------- Gaussian mixtures
@pytest.fixture(scope="module")
def ring8() -> GaussianMixtureModel:
    return ring_mixture(8)


def test_per_mode_statistics_on_exact_samples(ring8):
    x, _ = ring8.sample_data(4000, generator=gen(0))
    stats = per_mode_statistics(ring8, x)
    assert stats["coverage"] == 1.0
    assert stats["chi2_p"] > 1e-3
    assert int(stats["counts"].sum()) == 4000 and stats["counts"].shape == (8,)
    assert torch.allclose(stats["expected"], torch.full((8,), 500.0, dtype=torch.float64))
    assert stats["max_mean_error"] < 0.05
    assert stats["max_spread_error"] < 0.1
    # agrees with the shared test helper
    reference = mode_statistics(ring8, x)
    assert stats["chi2_p"] == pytest.approx(reference["chi2_p"], rel=1e-6)  # helper: float32
    assert stats["max_mean_error"] == pytest.approx(reference["mean_err"], rel=1e-9)


def test_per_mode_statistics_uses_mixture_weights():
    # weights 1 : 9: expected counts, chi-square and coverage all follow the weights
    model = GaussianMixtureModel(torch.tensor([[-3.0, 0.0], [3.0, 0.0]]), 0.5, weights=[1.0, 9.0])
    x, _ = model.sample_data(2000, generator=gen(0))
    stats = per_mode_statistics(model, x)
    assert torch.allclose(stats["expected"], torch.tensor([200.0, 1800.0], dtype=torch.float64))
    assert stats["chi2_p"] > 1e-3 and stats["coverage"] == 1.0
    even = torch.cat([x[x[:, 0] < 0][:100], x[x[:, 0] > 0][:100]])
    assert per_mode_statistics(model, even)["chi2_p"] < 1e-10
    # 14 of 200 samples in the heavy mode: < 10% of its expected 180, but > 10% of the 100 a
    # uniform split would expect
    few = torch.cat([x[x[:, 0] < 0][:186], x[x[:, 0] > 0][:14]])
    assert per_mode_statistics(model, few)["coverage"] == 0.5
    assert mode_coverage(model.component_of(few), 2) == 1.0


def test_per_mode_statistics_chi2_pvalue_matches_scipy(ring8):
    stats_mod = pytest.importorskip("scipy.stats")
    x, _ = ring8.sample_data(600, generator=gen(3))
    stats = per_mode_statistics(ring8, x)
    assert stats["chi2_p"] == pytest.approx(stats_mod.chi2.sf(stats["chi2"], 7), rel=1e-8)


def test_per_mode_statistics_missing_modes(ring8):
    six = GaussianMixtureModel(ring8.means[:6], 0.25)
    x, _ = six.sample_data(4000, generator=gen(1))
    stats = per_mode_statistics(ring8, x)
    assert stats["coverage"] == 0.75
    assert stats["chi2_p"] < 1e-10
    assert stats["counts"][6:].sum() < 5
    assert mode_coverage(ring8.component_of(x), 8) == 0.75


def test_per_mode_statistics_spread_ratio_sees_sharpening(ring8):
    x, comp = ring8.sample_data(4000, generator=gen(2))
    sharp = ring8.means[comp] + 0.5 * (x - ring8.means[comp])
    stats = per_mode_statistics(ring8, sharp)
    assert torch.allclose(
        stats["spread_ratio"], torch.full((8,), 0.5, dtype=torch.float64), atol=0.05
    )
    assert stats["coverage"] == 1.0  # counts alone cannot see it


def test_mean_log_likelihood_rewards_collapse(ring8):
    x, comp = ring8.sample_data(4000, generator=gen(0))
    ll = mean_log_likelihood(ring8, x)
    assert ll == pytest.approx(float(ring8.log_prob(x, 0.0).mean()), rel=1e-12)
    # exact data: mean log p ~ -entropy; 8 well separated modes of std 0.25 in 2-D
    entropy = math.log(8) + math.log(2 * math.pi * math.e * 0.25**2)
    assert ll == pytest.approx(-entropy, abs=0.1)
    # the caveat: samples piled on the mode centres score ABOVE the data ...
    collapsed = ring8.means[comp]
    assert mean_log_likelihood(ring8, collapsed) > ll + 0.5
    # ... while the two-sided measures see the collapse
    fresh, _ = ring8.sample_data(4000, generator=gen(9))
    sw_data = sliced_wasserstein(fresh, x)
    assert sliced_wasserstein(fresh, collapsed) > 3 * sw_data
    assert per_mode_statistics(ring8, collapsed)["max_spread_error"] > 0.99
    _, recall = knn_precision_recall(fresh[:1000], collapsed[:1000])
    assert recall < 0.1


def test_mean_log_likelihood_conditional():
    model = ring_mixture(8, num_classes=2)
    y = torch.arange(100) % 2
    x, _ = model.sample_data(100, y=y, generator=gen(0))
    assert mean_log_likelihood(model, x, y) == pytest.approx(
        float(model.log_prob(x, 0.0, y).mean()), rel=1e-12
    )
    # conditioning on the right class removes log 2 of uncertainty
    assert mean_log_likelihood(model, x, y) > mean_log_likelihood(model, x) + 0.6


def test_frechet_distance_gaussians():
    g = gen(0)
    a = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(20000, 3, generator=g, dtype=torch.float64) + 1
    # exact: |mu|^2 + tr(I + 4I - 2 * 2I) = 3 + 3
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------- FD-digits
@pytest.fixture(scope="module")
def digits():
    x, y = real_digits()
    order = torch.randperm(len(x), generator=gen(0))
    return x, y, order[: len(x) // 2], order[len(x) // 2 :]


def blur(x: torch.Tensor, passes: int = 1) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]).view(1, 1, 3, 3) / 16
    for _ in range(passes):
        x = F.conv2d(x, kernel, padding=1)
    return x


def test_digit_classifier_held_out_accuracy():
    net = digit_feature_net()
    assert net is digit_feature_net()  # cached: trained once per process
    assert net.held_out_accuracy > 0.9
    x, y = real_digits()
    train, held = digit_split(len(x))
    assert len(held) == 359 and len(set(train.tolist()) | set(held.tolist())) == len(x)
    assert digit_accuracy(x[held], y[held]) == pytest.approx(net.held_out_accuracy)
    assert digit_accuracy(x, y) > 0.9
    assert digit_accuracy(x, (y + 1) % 10) < 0.05
    assert digit_features(x[:10]).shape == (10, digits_mod.FEATURE_DIM)


def test_train_digit_classifier_deterministic_and_leaves_global_rng():
    state = torch.get_rng_state()
    a = train_digit_classifier(seed=3, steps=20)
    assert torch.equal(state, torch.get_rng_state())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(999)  # a different global state must not change the result
        b = train_digit_classifier(seed=3, steps=20)
    with torch.no_grad():  # trains all the same (the cached net may first be built there)
        c = train_digit_classifier(seed=4, steps=20)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_fd_digits_halves_small_corrupted_large(digits):
    x, _, first, second = digits
    halves = fd_digits(x[first], x[second])
    assert fd_digits(x) == pytest.approx(0.0, abs=1e-4)
    g = gen(1)
    noise = torch.rand(len(first), 1, 8, 8, generator=g) * 2 - 1
    shuffled = x[first].flatten(1)[:, torch.randperm(64, generator=g)].view(-1, 1, 8, 8)
    corrupted = {
        "noise": fd_digits(noise, x[second]),
        "blur": fd_digits(blur(x[first]), x[second]),
        "shuffled": fd_digits(shuffled, x[second]),
    }
    for name, value in corrupted.items():
        assert value > 10 * halves, (name, value, halves)
    # more corruption, larger distance
    assert fd_digits(blur(x[first], 2), x[second]) > corrupted["blur"]


def test_digit_precision_recall(digits):
    x, y, first, second = digits
    precision, recall = digit_precision_recall(x[first], reference=x[second])
    assert precision > 0.8 and recall > 0.8
    zeros = x[first][y[first] == 0]  # one class only: precise, poor coverage
    precision, recall = digit_precision_recall(zeros, reference=x[second])
    assert precision > 0.8 and recall < 0.3
    noise = torch.rand(len(first), 1, 8, 8, generator=gen(2)) * 2 - 1
    precision, _ = digit_precision_recall(noise, reference=x[second])
    assert precision < 0.1


def test_mmd_rbf_separates_distributions_and_not_samples_of_one():
    from nag_engine.analysis.metrics import mmd_rbf

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    shifted = torch.randn(400, 2, generator=g) + torch.tensor([0.5, 0.0])
    same, apart = mmd_rbf(a, b), mmd_rbf(a, shifted)
    assert abs(same) < 0.01 < apart
    assert mmd_rbf(a, shifted) == pytest.approx(mmd_rbf(shifted, a))
    assert mmd_rbf(a, shifted, bandwidth=0.5) != pytest.approx(apart)
    with pytest.raises(ValueError, match="two samples"):
        mmd_rbf(a[:1], b)
