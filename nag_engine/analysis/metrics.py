"""Sample-quality metrics on torch, no heavy dependency.

* `energy_distance`: two-sample energy distance (Szekely), 0 iff the distributions agree.
* `frechet_distance`: Frechet distance between Gaussians fitted to two feature sets (the formula
  behind FID; name the feature space when you report it, e.g. "FD-pixels").
* `mode_coverage`: fraction of mixture modes that receive at least a given share of samples.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def energy_distance(x: Tensor, y: Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| for samples x [n, d], y [m, d] (V-statistics)."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def _sqrtm_psd(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(x: Tensor, y: Tensor) -> float:
    """||mu_x - mu_y||^2 + tr(S_x + S_y - 2 (S_x^1/2 S_y S_x^1/2)^1/2) for features [n, d]."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = torch.cov(x.T), torch.cov(y.T)
    root_x = _sqrtm_psd(cov_x)
    cross = _sqrtm_psd(root_x @ cov_y @ root_x)
    return float((mu_x - mu_y).square().sum() + torch.trace(cov_x + cov_y - 2 * cross))


def mode_coverage(components: Tensor, num_modes: int, min_share: float = 0.1) -> float:
    """Fraction of modes holding at least `min_share` of the count a uniform split would give."""
    counts = torch.bincount(components, minlength=num_modes).double()
    return float((counts >= min_share * len(components) / num_modes).double().mean())
