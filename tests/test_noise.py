"""Tests for nag_engine.noise.CounterNoise: counter-based Gaussian noise addressed by
(seed, sample index, stream, element)."""

from __future__ import annotations

import math

import pytest
import torch

from nag_engine.noise import CounterNoise

N_SAMPLES, N_ELEMENTS = 1000, 1000  # 10^6 draws for the statistical tests
Z = 5.0  # tolerance in standard errors: a false alarm has probability ~ 6e-7 per check


def draw(seed=0, shape=(4, 8), index=range(10), stream=0):
    index = torch.tensor(list(index), dtype=torch.int64)
    return CounterNoise(seed, shape, "cpu").normal(index, stream)


def corr(a, b):
    a = a.double().flatten() - a.double().mean()
    b = b.double().flatten() - b.double().mean()
    return (a @ b / (a.norm() * b.norm())).item()


@pytest.fixture(scope="module")
def big():
    """10^6 draws (1000 samples x 1000 elements) from stream 3, and the first 200 samples of
    stream 4 for the cross-stream correlation."""
    noise = CounterNoise(123, (N_ELEMENTS,), "cpu")
    return noise.normal(torch.arange(N_SAMPLES), 3), noise.normal(torch.arange(200), 4)


# ----------------------------------------------------------------------------- addressing
def test_shape_and_dtype():
    z = draw(shape=(3, 5, 7), index=range(4))
    assert z.shape == (4, 3, 5, 7)
    assert z.dtype == torch.float32
    assert torch.isfinite(z).all()
    assert draw(index=[]).shape == (0, 4, 8)


def test_deterministic():
    a = draw(seed=7, stream=2)
    b = draw(seed=7, stream=2)
    assert torch.equal(a, b)
    noise = CounterNoise(7, (4, 8), "cpu")
    assert torch.equal(noise.normal(torch.arange(10), 2), noise.normal(torch.arange(10), 2))


def test_depends_only_on_sample_index_not_batch():
    full = draw(index=range(10), stream=1)
    tail = draw(index=range(5, 10), stream=1)
    assert torch.equal(full[5:], tail)
    for i in range(10):
        assert torch.equal(full[i], draw(index=[i], stream=1)[0])
    perm = [7, 2, 9, 0, 0]
    assert torch.equal(draw(index=perm, stream=1), full[perm])


def test_depends_only_on_flat_element_index():
    flat = draw(shape=(32,))
    assert torch.equal(draw(shape=(4, 8)).reshape(10, 32), flat)
    assert torch.equal(draw(shape=(2, 4, 4)).reshape(10, 32), flat)
    # a larger sample shape extends the smaller one element by element
    assert torch.equal(draw(shape=(40,))[:, :32], flat)


def test_stream_int_or_tensor():
    noise = CounterNoise(11, (4, 8), "cpu")
    index = torch.arange(6)
    for stream in (0, 1, 17, 999):
        as_int = noise.normal(index, stream)
        as_tensor = noise.normal(index, torch.tensor(stream, dtype=torch.int64))
        assert torch.equal(as_int, as_tensor)


@pytest.mark.parametrize(
    "other",
    [dict(seed=1), dict(stream=1), dict(index=range(10, 20)), dict(seed=2**40 + 3)],
    ids=["seed", "stream", "samples", "high-seed-bits"],
)
def test_different_addresses_give_different_noise(other):
    base = dict(seed=3, shape=(64,), index=range(10), stream=0)
    a = draw(**base)
    b = draw(**{**base, **other})
    assert not (a == b).any()  # an exact float32 coincidence has probability ~ 1e-7 each
    assert abs(corr(a, b)) < Z / math.sqrt(a.numel())


def test_rows_and_elements_within_a_call_differ():
    z = draw(shape=(64,), index=range(20))
    assert len(torch.unique(z)) == z.numel()


@pytest.mark.parametrize("seed", [0, 1, 2**32, 2**40 + 3, 2**63 - 1, 2**64 - 1])
def test_seed_range(seed):
    a = draw(seed=seed)
    assert torch.isfinite(a).all()
    assert torch.equal(a, draw(seed=seed))


@pytest.mark.parametrize("seed", [-1, -(2**40), 2**64, 2**70])
def test_seeds_outside_the_range_are_refused_not_aliased(seed):
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*64 - 1\]"):
        CounterNoise(seed, (4,), "cpu")


def test_small_and_large_seeds_are_distinct():
    seeds = [0, 1, 3, 2**32, 2**32 + 1, 2**40 + 3, 2**64 - 1]
    draws = [draw(seed=s, shape=(16,), index=range(4)) for s in seeds]
    for i in range(len(seeds)):
        for j in range(i + 1, len(seeds)):
            assert not torch.equal(draws[i], draws[j]), (seeds[i], seeds[j])


@pytest.mark.parametrize("seed", [1.0, 2.5, "3", None, True, torch.tensor(3)])
def test_non_int_seed_raises_type_error(seed):
    with pytest.raises(TypeError, match="seed"):
        CounterNoise(seed, (4,), "cpu")


# ----------------------------------------------------------------------------- statistics
def test_mean_and_variance(big):
    z = big[0].double().flatten()
    n = z.numel()
    assert abs(z.mean().item()) < Z / math.sqrt(n)
    assert abs(z.var().item() - 1.0) < Z * math.sqrt(2.0 / n)  # Var(s^2) = 2 / n for N(0, 1)


def test_skewness_and_kurtosis(big):
    z = big[0].double().flatten()
    n = z.numel()
    assert abs((z**3).mean().item()) < Z * math.sqrt(15.0 / n)  # Var(z^3) = 15
    assert abs((z**4).mean().item() - 3.0) < Z * math.sqrt(96.0 / n)  # Var(z^4) = 105 - 9


def test_kolmogorov_smirnov(big):
    z, _ = torch.sort(big[0].double().flatten())
    n = z.numel()
    cdf = torch.special.ndtr(z)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    # asymptotic critical values: 1.63 / sqrt(n) at 1%, 1.95 / sqrt(n) at 0.1%
    assert d < 1.95 / math.sqrt(n), d


def test_tail_probabilities(big):
    z = big[0].double().flatten()
    n = z.numel()
    for k in (1.0, 2.0, 3.0):
        p = 2 * torch.special.ndtr(torch.tensor(-k, dtype=torch.float64)).item()
        freq = (z.abs() > k).double().mean().item()
        assert abs(freq - p) < Z * math.sqrt(p * (1 - p) / n), (k, freq, p)


def test_no_correlation_between_neighbours(big):
    z3, z4 = big
    n_pairs = N_SAMPLES * (N_ELEMENTS - 1)
    assert abs(corr(z3[:, 1:], z3[:, :-1])) < Z / math.sqrt(n_pairs)  # adjacent elements
    n_pairs = (N_SAMPLES - 1) * N_ELEMENTS
    assert abs(corr(z3[1:], z3[:-1])) < Z / math.sqrt(n_pairs)  # adjacent samples
    assert abs(corr(z3[:200], z4)) < Z / math.sqrt(z4.numel())  # adjacent streams
    # squares too: catches dependence that is invisible to linear correlation
    assert abs(corr(z3[:, 1:] ** 2, z3[:, :-1] ** 2)) < Z / math.sqrt(z3[:, 1:].numel())
    assert abs(corr(z3[:200] ** 2, z4**2)) < Z / math.sqrt(z4.numel())


def test_no_correlation_between_adjacent_seeds():
    index = torch.arange(100)
    a = CounterNoise(41, (300,), "cpu").normal(index, 0)
    b = CounterNoise(42, (300,), "cpu").normal(index, 0)
    assert abs(corr(a, b)) < Z / math.sqrt(a.numel())


# ----------------------------------------------------------------------------- known bugs
def test_sample_indices_beyond_32_bits_are_distinct():
    noise = CounterNoise(0, (8,), "cpu")
    z = noise.normal(torch.tensor([5, 2**32 + 5]), 0)
    assert not torch.equal(z[0], z[1])
