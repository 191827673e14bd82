"""Sample-quality metrics on torch, no heavy dependency.

Two-sided distances between a sample set and a reference set (0 when they agree, > 0 when
either misses or adds mass):

* `energy_distance`: two-sample energy distance (Szekely), 0 iff the distributions agree.
* `sliced_wasserstein`: sliced p-Wasserstein distance (mean over random 1-D projections of the
  exact 1-D Wasserstein distance between the projected empirical distributions).
* `frechet_distance`: Frechet distance between Gaussians fitted to two feature sets (the formula
  behind FID; name the feature space when you report it, e.g. "FD-pixels", "FD-digits").
* `knn_precision_recall`: improved precision (fidelity) and recall (coverage) of Kynkaanniemi et
  al. 2019 from k-nearest-neighbour balls.

Against a known Gaussian mixture (`nag_engine.models.GaussianMixtureModel`):

* `mean_log_likelihood`: mean exact log p_data(x). One-sided: it REWARDS COLLAPSE (samples piled
  on the modes score above the data itself), so never report it alone.
* `per_mode_statistics`: per-mode counts with a chi-square test against the mixture weights,
  per-mode mean error and spread ratio, and mode coverage.
* `mode_coverage`: fraction of mixture modes that receive at least a given share of samples.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

Tensor = torch.Tensor

__all__ = [
    "energy_distance",
    "frechet_distance",
    "knn_precision_recall",
    "mean_log_likelihood",
    "mode_coverage",
    "per_mode_statistics",
    "sliced_wasserstein",
]

# elements of one distance block (float64): 2**22 -> 32 MiB
_BLOCK = 2**22


def energy_distance(x: Tensor, y: Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| for samples x [n, d], y [m, d] (V-statistics, float64).

    Every sample is flattened to a vector. Builds the full n x m, n x n and m x m distance
    matrices, so keep n, m to a few thousand. The V-statistic is >= 0 and is biased upward by
    O(1 / n): two samples of one distribution give a small positive value, not exactly 0."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: Optional[float] = None) -> float:
    """Squared maximum mean discrepancy with the Gaussian kernel exp(-|a - b|^2 / (2 h^2))
    (unbiased U-statistic, float64; can be slightly negative for equal distributions). The
    bandwidth h defaults to the median distance between the pooled samples."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("mmd_rbf needs at least two samples on each side")
    if bandwidth is None:
        pooled = torch.cat([x, y])
        bandwidth = float(torch.pdist(pooled).median())
    gamma = 1.0 / (2.0 * bandwidth**2)

    def mean_kernel(a: Tensor, b: Tensor, same: bool) -> Tensor:
        k = torch.exp(-gamma * torch.cdist(a, b).square())
        if same:  # drop the diagonal: the U-statistic
            return (k.sum() - k.diagonal().sum()) / (len(a) * (len(a) - 1))
        return k.mean()

    return float(mean_kernel(x, x, True) + mean_kernel(y, y, True) - 2 * mean_kernel(x, y, False))


def _sqrtm_psd(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(x: Tensor, y: Tensor) -> float:
    """||mu_x - mu_y||^2 + tr(S_x + S_y - 2 (S_x^1/2 S_y S_x^1/2)^1/2) for features [n, d].

    The squared 2-Wasserstein distance between the Gaussians with the sample means and
    covariances of x and y (float64; samples are flattened). Only the first two moments count,
    and the estimate is biased upward at small n: compare values at equal sample sizes."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = torch.cov(x.T), torch.cov(y.T)
    root_x = _sqrtm_psd(cov_x)
    cross = _sqrtm_psd(root_x @ cov_y @ root_x)
    return float((mu_x - mu_y).square().sum() + torch.trace(cov_x + cov_y - 2 * cross))


def mode_coverage(components: Tensor, num_modes: int, min_share: float = 0.1) -> float:
    """Fraction of modes holding at least `min_share` of the count a uniform split would give.

    `components` [n] holds the mode index of each sample (e.g. `model.component_of(x)`). The
    uniform split ignores the mixture weights; `per_mode_statistics` uses them."""
    counts = torch.bincount(components, minlength=num_modes).double()
    return float((counts >= min_share * len(components) / num_modes).double().mean())


# ---------------------------------------------------------------------- sliced Wasserstein
def _wasserstein_1d_pow(xs: Tensor, ys: Tensor, p: float) -> Tensor:
    """W_p^p between the empirical distributions of the columns of sorted xs [n, P], ys [m, P].

    Exact for any n, m: both quantile functions are step functions, constant between the merged
    levels {i / n} U {j / m}, so the integral over u in [0, 1] of |F^-1(u) - G^-1(u)|^p is a sum
    over those intervals (for n == m it is the mean over sorted pairs)."""
    n, m = len(xs), len(ys)
    if n == m:
        return (xs - ys).abs().pow(p).mean(0)
    dev = xs.device
    levels = torch.cat(
        [
            torch.arange(1, n + 1, dtype=torch.float64, device=dev) / n,
            torch.arange(1, m + 1, dtype=torch.float64, device=dev) / m,
        ]
    )
    levels = torch.unique(levels)  # sorted, ends at 1
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    mids = levels - widths / 2
    ix = (mids * n).floor().long().clamp(max=n - 1)
    iy = (mids * m).floor().long().clamp(max=m - 1)
    return ((xs[ix] - ys[iy]).abs().pow(p) * widths.view(-1, 1)).sum(0)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    num_projections: int = 256,
    generator: Optional[torch.Generator] = None,
    p: float = 2,
) -> float:
    """Sliced p-Wasserstein distance between point sets x [n, d] and y [m, d] (float64).

    SW_p = (mean over `num_projections` random unit directions theta of
    W_p^p(theta . x, theta . y))^(1/p), where the 1-D W_p between the projected empirical
    distributions is computed exactly by sorting (different sizes n != m are handled by merging
    the two step quantile functions). Directions come from `generator` (CPU); when None a fresh
    generator seeded with 0 is used, so the value is deterministic and the global RNG is left
    alone. The same directions for both sets make SW_p(x, y) == SW_p(y, x). For d = 1 every
    direction is +-1 and SW_p equals the exact W_p. A pure translation by s gives
    (E|theta . s|^p)^(1/p) = |s| (E|theta_1|^p)^(1/p); samples are flattened to vectors."""
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    x, y = x.double().flatten(1), y.double().flatten(1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: {x.shape[1]} vs {y.shape[1]}")
    if len(x) == 0 or len(y) == 0:
        raise ValueError("both point sets need at least one point")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    dirs = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64)
    dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(x.device)
    chunk = max(1, _BLOCK // max(len(x), len(y)))
    total = x.new_zeros(())
    for i in range(0, num_projections, chunk):
        d = dirs[:, i : i + chunk]
        xs = torch.sort(x @ d, dim=0).values
        ys = torch.sort(y @ d, dim=0).values
        total = total + _wasserstein_1d_pow(xs, ys, p).sum()
    return float((total / num_projections) ** (1.0 / p))


# ---------------------------------------------------------------------- k-NN precision/recall
def _kth_neighbour_radius(points: Tensor, k: int) -> Tensor:
    """Distance from each point to its k-th nearest neighbour in the set, itself excluded."""
    n = len(points)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for a set of {n} points, got {k}")
    chunk = max(1, _BLOCK // n)
    radii = []
    for i in range(0, n, chunk):
        dist = torch.cdist(points[i : i + chunk], points)
        rows = torch.arange(i, min(i + chunk, n), device=points.device)
        dist[rows - i, rows] = math.inf  # exclude the point itself (not its duplicates)
        radii.append(torch.topk(dist, k, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


def _fraction_inside(queries: Tensor, centres: Tensor, radii: Tensor) -> float:
    """Fraction of queries within distance radii[j] of at least one centre j."""
    chunk = max(1, _BLOCK // len(centres))
    inside = 0
    for i in range(0, len(queries), chunk):
        dist = torch.cdist(queries[i : i + chunk], centres)
        inside += int((dist <= radii.view(1, -1)).any(1).sum())
    return inside / len(queries)


def knn_precision_recall(
    real_features: Tensor, fake_features: Tensor, k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of fakes [m, d] against reals
    [n, d], in float64.

    The real manifold is the union of balls around each real point with radius the distance to
    its k-th nearest other real point; precision = fraction of fakes inside it (fidelity).
    Recall swaps the roles: the fraction of reals inside the fake manifold built the same way
    (coverage). A collapsed sampler keeps precision high and loses recall. Distances are
    computed with `torch.cdist` in blocks of about 4M entries, so memory stays bounded."""
    real = real_features.double().flatten(1)
    fake = fake_features.double().flatten(1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"dimension mismatch: {real.shape[1]} vs {fake.shape[1]}")
    precision = _fraction_inside(fake, real, _kth_neighbour_radius(real, k))
    recall = _fraction_inside(real, fake, _kth_neighbour_radius(fake, k))
    return precision, recall


# ---------------------------------------------------------------------- Gaussian mixture
def mean_log_likelihood(model: Any, x: Tensor, y: Optional[Tensor] = None) -> float:
    """Mean exact log p_data(x) (or log p_data(x | y)) of samples x [n, d] under a
    `GaussianMixtureModel` (its `log_prob` at t = 0, float64).

    Caveat: this is one-sided and REWARDS COLLAPSE. It only asks whether samples sit where the
    density is high, not whether they fill the distribution: samples piled on the mode centres
    score above exact data, whose expected value is minus the entropy. Pair it with a two-sided
    measure (`energy_distance`, `sliced_wasserstein`, recall, per-mode spread)."""
    return float(model.log_prob(x, 0.0, y).mean())


def _chi2_sf(statistic: float, dof: int) -> float:
    """P(chi2_dof >= statistic) = Q(dof / 2, statistic / 2), the upper regularised gamma."""
    if dof <= 0:
        return 1.0
    a = torch.tensor(dof / 2.0, dtype=torch.float64)
    return float(torch.special.gammaincc(a, torch.tensor(statistic / 2.0, dtype=torch.float64)))


def per_mode_statistics(model: Any, x: Tensor, min_share: float = 0.1) -> dict[str, Any]:
    """Per-mode statistics of samples x [n, d] against a `GaussianMixtureModel`.

    Every sample is assigned to its most likely mode (`model.component_of`). Returns a dict:

    * ``counts`` [K] (int64) and ``expected`` [K] (n * mixture weight, float64);
    * ``chi2``, ``chi2_p``: Pearson's chi-square statistic of the counts against the expected
      counts and its p-value (K - 1 degrees of freedom; small p = wrong mode proportions);
    * ``mean_error`` [K]: |mean of the mode's samples - the mode's mean| (nan for an empty mode);
    * ``spread_ratio`` [K]: sqrt(mean over coordinates of sample variance / true variance)
      (1 for a perfect sampler, < 1 for sharpened modes, > 1 for blurred ones; nan with fewer
      than 2 samples);
    * ``max_mean_error``, ``max_spread_error`` (max |spread_ratio - 1|): worst over the modes
      that have samples;
    * ``coverage``: fraction of modes with at least `min_share` (default 10%) of their expected
      count.

    Assigning by most likely mode truncates a mode's tails where modes overlap, so compare the
    mean errors and spread ratios with those of exact data of the same size."""
    x = x.to(model.means.device, torch.float64).flatten(1)
    num_modes = model.means.shape[0]
    comp = model.component_of(x)
    counts = torch.bincount(comp, minlength=num_modes)
    expected = len(x) * model.log_weights.exp()
    chi2 = float(((counts.double() - expected) ** 2 / expected).sum())
    mean_error = torch.full((num_modes,), math.nan, dtype=torch.float64)
    spread_ratio = torch.full((num_modes,), math.nan, dtype=torch.float64)
    for k in range(num_modes):
        xs = x[comp == k]
        if len(xs) >= 1:
            mean_error[k] = (xs.mean(0) - model.means[k]).norm()
        if len(xs) >= 2:
            spread_ratio[k] = (xs.var(0) / model.variances[k]).mean().sqrt()
    present_mean = mean_error[~mean_error.isnan()]
    present_spread = spread_ratio[~spread_ratio.isnan()]
    return {
        "counts": counts,
        "expected": expected,
        "chi2": chi2,
        "chi2_p": _chi2_sf(chi2, num_modes - 1),
        "mean_error": mean_error,
        "spread_ratio": spread_ratio,
        "max_mean_error": float(present_mean.max()) if len(present_mean) else math.nan,
        "max_spread_error": (
            float((present_spread - 1).abs().max()) if len(present_spread) else math.nan
        ),
        "coverage": float((counts.double() >= min_share * expected).double().mean()),
    }
