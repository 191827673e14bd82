"""Noise-level estimators: what noise level t does a state x carry?

Every estimator answers through one interface, `NoiseLevelEstimator`:

* ``estimate(x, y=None) -> NoiseLevelEstimate``: per row of x, the posterior mean of t and its
  spread (posterior standard deviation);
* ``log_prob(x, t, y=None) -> Tensor``: log p(t | x) per row, as a density on t in [0, 1].

Estimators that can also steer a sampler (classifier-based NAG adds ``s * grad_x log p(t | x)``
to the score) implement ``grad_log_prob(x, t, y=None)`` as well (`DifferentiableNoiseLevel
Estimator`).

Implementations here:

* `ExactPosterior`: the closed-form posterior of a `GaussianMixtureModel` under its training
  time distribution, on the mixture's midpoint time grid (``mixture.noise_posterior``). Ground
  truth, differentiable in x; ``log_likelihood`` gives log p_t(x) at any t (`likelihood_level`).
* `ImplicitClassifier`: any denoiser as a noise classifier through the CDL log-ratio
  ``noise_log_ratio(model, x, zeta) ~ log p(x) - log p_zeta(x)``: the log-likelihood of x under
  the data noised to each level of a grid, plus the log prior of that level, softmaxed over the
  grid. Monte-Carlo, with common random numbers across the grid. Not differentiable here.

The learned estimator. The NAG paper's classifier-based variant uses a regressor head fine-tuned
from the denoiser that reads the noise level off x: `nag_engine.models.NoiseLevelHead` (a
Gaussian over the log-SNR; ``estimate``, ``log_prob`` and ``grad_log_prob`` by autograd), trained
with ``TrainConfig(objective="noise_level")``. `ExactPosterior` is the reference it is tested
against (same call signatures, same density convention on t), and everything that consumes
estimators (`nag_engine.analysis.noise_shift`, classifier-based NAG) takes the protocol, not a
class.

Conventions: t in [0, 1] (0 data, 1 noise), densities are with respect to t, estimates are
float64 tensors of shape [B].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol, Union, runtime_checkable

import torch

from ..models.analytic import GaussianMixtureModel, time_prior
from ..schedules import Schedule, get_schedule
from ..training.cdl import noise_log_ratio

Tensor = torch.Tensor

__all__ = [
    "DifferentiableNoiseLevelEstimator",
    "ExactPosterior",
    "ImplicitClassifier",
    "NoiseLevelEstimate",
    "NoiseLevelEstimator",
    "interpolate_log_density",
    "posterior_moments",
]


@dataclass
class NoiseLevelEstimate:
    """Per-row estimate of the noise level: posterior mean of t and its spread (posterior std)."""

    mean: Tensor  # [B] estimated t
    std: Tensor  # [B] spread of the estimate


@runtime_checkable
class NoiseLevelEstimator(Protocol):
    """Anything that estimates the noise level of states x [B, ...] (optionally given labels y)."""

    def estimate(self, x: Tensor, y: Optional[Tensor] = None) -> NoiseLevelEstimate:
        """Posterior mean and spread of t for every row of x."""
        ...

    def log_prob(self, x: Tensor, t: Union[float, Tensor], y: Optional[Tensor] = None) -> Tensor:
        """log p(t | x) per row [B] (a density on t), where supported."""
        ...


@runtime_checkable
class DifferentiableNoiseLevelEstimator(NoiseLevelEstimator, Protocol):
    """A noise-level estimator that also gives grad_x log p(t | x) (for classifier-based NAG)."""

    def grad_log_prob(
        self, x: Tensor, t: Union[float, Tensor], y: Optional[Tensor] = None
    ) -> Tensor:
        """grad_x log p(t | x), the shape of x."""
        ...


# --------------------------------------------------------------------------- shared helpers
def posterior_moments(grid: Tensor, log_probs: Tensor) -> NoiseLevelEstimate:
    """Mean and standard deviation of t under a discrete posterior: grid [G] (times),
    log_probs [B, G] (normalised log probabilities of the grid points)."""
    probs = log_probs.exp()
    grid = grid.to(probs)
    mean = (probs * grid).sum(1)
    var = (probs * (grid - mean[:, None]) ** 2).sum(1)
    return NoiseLevelEstimate(mean=mean, std=var.clamp(min=0).sqrt())


def interpolate_log_density(grid: Tensor, log_density: Tensor, t: Union[float, Tensor]) -> Tensor:
    """Linear interpolation in t of log densities given at increasing grid times.

    grid [G], log_density [B, G], t a float or [B] tensor; t outside [grid[0], grid[-1]] is
    clamped to the nearest end (the density is held constant there). Differentiable in
    log_density. Returns [B]."""
    rows = log_density.shape[0]
    t = torch.as_tensor(t, dtype=log_density.dtype, device=log_density.device).expand(rows)
    grid = grid.to(log_density)
    t = torch.minimum(torch.maximum(t, grid[0]), grid[-1])  # no host read
    hi = torch.searchsorted(grid, t.detach().contiguous()).clamp(1, len(grid) - 1)
    lo = hi - 1
    t_lo, t_hi = grid[lo], grid[hi]
    frac = ((t - t_lo) / (t_hi - t_lo)).unsqueeze(1)
    f_lo = log_density.gather(1, lo.unsqueeze(1))
    f_hi = log_density.gather(1, hi.unsqueeze(1))
    return (f_lo + frac * (f_hi - f_lo)).squeeze(1)


def _cell_widths(grid: Tensor) -> Tensor:
    """Widths of the cells around increasing grid nodes (edges halfway between nodes, the outer
    edges mirrored), so that sum(prob / width * width) = 1 reads prob / width as a density."""
    inner = 0.5 * (grid[1:] + grid[:-1])
    first = grid[0] - (inner[0] - grid[0]) if len(grid) > 1 else grid[0] - 0.5
    last = grid[-1] + (grid[-1] - inner[-1]) if len(grid) > 1 else grid[-1] + 0.5
    edges = torch.cat([first.view(1), inner, last.view(1)])
    return edges[1:] - edges[:-1]


def _row_chunks(rows: int, cost_per_row: int, budget: int = 2**22) -> int:
    """How many rows to process at once so that rows * cost_per_row stays under budget."""
    return max(1, min(rows, budget // max(1, cost_per_row)))


# --------------------------------------------------------------------------- exact posterior
class ExactPosterior:
    """The exact posterior over the noise level of a Gaussian mixture (ground truth).

    p(t | x) ∝ p_t(x) * prior(t) with the mixture's training time distribution as the prior,
    on the mixture's midpoint time grid (``GaussianMixtureModel(time_points=...)``): the same
    numbers as ``mixture.noise_posterior``. The density on t is the grid probability divided by
    the grid spacing; `log_prob` interpolates its log linearly between grid nodes. Float64.

    ``fast=True`` (default) evaluates every component's Gaussian log-density at every grid time
    with three matrix products (x^2, x and 1 against the per-(time, component) inverse
    variances) instead of materialising [B, G, K, d] differences as ``noise_posterior`` does:
    the same values to ~1e-13 (tested), ~40x faster at G = 256, K = 8, d = 32 on one CPU core.
    ``fast=False`` calls ``mixture.noise_posterior`` itself, in row chunks."""

    def __init__(self, mixture: GaussianMixtureModel, *, fast: bool = True):
        if not hasattr(mixture, "noise_posterior"):
            raise TypeError(
                f"ExactPosterior needs a GaussianMixtureModel, got {type(mixture).__name__}"
            )
        self.mixture = mixture
        self.schedule = mixture.schedule_obj
        self.fast = fast

    def _fast_log_likelihood(self, x64: Tensor, y: Optional[Tensor], times: Tensor) -> Tensor:
        """log p_t(x) [B, T] at every time of `times` [T] via matrix products (class doc)."""
        m = self.mixture
        alpha = self.schedule.alpha(times).to(x64).view(-1, 1, 1)  # [T, 1, 1]
        sigma = self.schedule.sigma(times).to(x64).view(-1, 1, 1)
        var = alpha**2 * m.variances + sigma**2  # [T, K, d]
        inv = 1.0 / var
        shifted = alpha * m.means * inv  # alpha mu / var
        const = (alpha * m.means * shifted).sum(-1) + torch.log(2 * math.pi * var).sum(-1)
        points, modes, dim = var.shape
        quad = x64.square() @ inv.reshape(-1, dim).T  # [B, G*K]
        cross = x64 @ shifted.reshape(-1, dim).T
        log_n = -0.5 * (quad - 2.0 * cross).view(-1, points, modes) - 0.5 * const
        logw = m.component_log_weights(y, None, len(x64))  # [B, K]
        return torch.logsumexp(log_n + logw.unsqueeze(1), dim=2)  # [B, T]

    def _fast_log_posterior(self, x64: Tensor, y: Optional[Tensor]) -> Tensor:
        """log p(t_j | x) [B, G] via matrix products (see the class doc)."""
        log_lik = self._fast_log_likelihood(x64, y, self.mixture.time_grid)
        return torch.log_softmax(log_lik + self.mixture.time_log_prior, dim=1)

    def log_likelihood(
        self, x: Tensor, times: Union[float, Tensor], y: Optional[Tensor] = None
    ) -> Tensor:
        """The exact noisy density log p_t(x) (or log p_t(x | y)) of every row of x at every
        time of `times` (a float or [T] tensor, any t in [0, 1], not only grid nodes):
        float64 [B, T]. What `max_likelihood_level` maximises. Differentiable in x."""
        x64 = x.to(self.mixture.means.device, torch.float64).flatten(1)
        times = torch.as_tensor(times, dtype=torch.float64, device=x64.device).reshape(-1)
        rows = len(x64)
        if y is not None:
            y = torch.as_tensor(y, device=x64.device).expand(rows)
        chunk = _row_chunks(rows, len(times) * self.mixture.means.shape[0])
        parts = [
            self._fast_log_likelihood(
                x64[i : i + chunk], None if y is None else y[i : i + chunk], times
            )
            for i in range(0, rows, chunk)
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def posterior(self, x: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """(grid [G], log p(t_j | x) [B, G]): normalised log probabilities of the grid times.
        Differentiable in x."""
        x64 = x.to(self.mixture.means.device, torch.float64).flatten(1)
        rows = len(x64)
        if y is not None:
            y = torch.as_tensor(y, device=x64.device).expand(rows)
        num_modes, dim = self.mixture.means.shape
        points = len(self.mixture.time_grid)
        cost = points * num_modes * (1 if self.fast else dim)
        chunk = _row_chunks(rows, cost)
        parts = []
        for i in range(0, rows, chunk):
            ys = None if y is None else y[i : i + chunk]
            if self.fast:
                parts.append(self._fast_log_posterior(x64[i : i + chunk], ys))
            else:
                parts.append(self.mixture.noise_posterior(x64[i : i + chunk], ys)[1])
        return self.mixture.time_grid, torch.cat(parts) if len(parts) > 1 else parts[0]

    def log_density_on_grid(self, x: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """(grid [G], log p(t_j | x) as a density on t [B, G])."""
        grid, log_post = self.posterior(x, y)
        return grid, log_post - torch.log(_cell_widths(grid)).to(log_post)

    @torch.no_grad()
    def estimate(self, x: Tensor, y: Optional[Tensor] = None) -> NoiseLevelEstimate:
        """Posterior mean and standard deviation of t per row (float64 [B])."""
        grid, log_post = self.posterior(x, y)
        return posterior_moments(grid, log_post)

    def log_prob(self, x: Tensor, t: Union[float, Tensor], y: Optional[Tensor] = None) -> Tensor:
        """log p(t | x) per row (float64 [B]), a density on t, linearly interpolated in t between
        grid nodes (clamped to the grid's range). Differentiable in x."""
        grid, log_density = self.log_density_on_grid(x, y)
        return interpolate_log_density(grid, log_density, t)

    def grad_log_prob(
        self, x: Tensor, t: Union[float, Tensor], y: Optional[Tensor] = None
    ) -> Tensor:
        """grad_x log p(t | x) by autograd through `log_prob` in float64 (shape of x, float64)."""
        with torch.enable_grad():
            x64 = x.detach().to(torch.float64).requires_grad_(True)
            value = self.log_prob(x64, t, y)
            (grad,) = torch.autograd.grad(value.sum(), x64)
        return grad


# --------------------------------------------------------------------------- implicit classifier
class ImplicitClassifier:
    """A denoiser read as a noise-level classifier through the CDL log-likelihood ratio.

    For each grid time t_j with VP log-SNR zeta_j = lambda(t_j) the hypothesis "x ~ p_{t_j}"
    (the data noised to t_j on the model's schedule) gets the log score

        log prior_j + log p_{t_j}(x),

    and the softmax over j is p(t_j | x). The log-likelihoods come from
    ``noise_log_ratio(model, u, zeta) ~ log p(u) - log p_zeta(u)`` (p_zeta: the data VP-noised to
    log-SNR zeta):

    * variance-preserving schedules (alpha^2 + sigma^2 = 1: ``vp``, ``vp-cosine``):
      p_t = p_{lambda(t)}, and log p_t(x) = log p(x) - noise_log_ratio(model, x, lambda(t)) with
      log p(x) common to every hypothesis, so it drops out of the softmax;
    * other schedules (``linear``): x_t = s_t * (VP state at lambda(t)) with
      s_t = sqrt(alpha_t^2 + sigma_t^2), so log p_t(x) = log p_{lambda}(x / s_t) - d log s_t,
      and log p_zeta(u) = log N(u; 0, I) + r(u, zeta_ref) - r(u, zeta), with r the log-ratio and
      zeta_ref = `reference_log_snr` (very negative: p_{zeta_ref} is N(0, I) to within
      sigmoid(zeta_ref)); this costs a second log-ratio per grid point.

    The prior is the training time distribution (uniform in t by default): its mass on the cell
    of grid time t_j, i.e. the density on zeta |dt/dzeta| integrated over the cell. With
    ``grid="t"`` (default) the nodes are the midpoints of `grid_points` equal cells of [0, 1];
    with ``grid="log_snr"`` they are equally spaced in log-SNR between the log-SNRs of
    `t_range` (denser near the ends of t for the linear schedule), and the prior mass of each
    cell is its width in t. `log_prob` is the posterior mass over the cell width, linearly
    interpolated in t.

    Every grid point reuses the same random numbers (a generator seeded with `seed` per
    log-ratio call), so the Monte-Carlo error is strongly correlated across the grid and mostly
    cancels in the softmax; estimates are deterministic given (x, seed). The control variate of
    `noise_log_ratio` is the row's own N(0, v I) with v the row's mean square, so a row's
    estimate does not depend on the rest of the batch. The model runs on inputs of x's dtype
    (pass float64 x to an exact float64 model for the most accurate reading).
    Cost: (1 or 2) * 2 * grid_points * num_samples model rows per row of x."""

    def __init__(
        self,
        model: torch.nn.Module,
        schedule: Union[None, str, Schedule] = None,
        grid_points: int = 64,
        num_samples: int = 16,
        *,
        grid: str = "t",
        t_range: tuple[float, float] = (0.0, 1.0),
        time_distribution: Union[None, str, tuple] = None,
        seed: int = 0,
        reference_log_snr: float = -30.0,
        lambda_range: tuple[float, float] = (-15.0, 15.0),
        proposal: tuple[float, float] = (2.0, 3.0),
        chunk_size: int = 8192,
    ):
        if not isinstance(grid_points, int) or grid_points < 2:
            raise ValueError(f"grid_points must be an int >= 2, got {grid_points!r}")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        lo, hi = (float(v) for v in t_range)
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"t_range must satisfy 0 <= lo < hi <= 1, got {t_range!r}")
        self.model = model
        self.schedule = get_schedule(
            schedule if schedule is not None else getattr(model, "schedule", "linear")
        )
        self.num_samples = num_samples
        self.seed = seed
        self.reference_log_snr = float(reference_log_snr)
        self.ratio_options = {
            "lambda_range": lambda_range,
            "proposal": proposal,
            "schedule": self.schedule,
            "chunk_size": chunk_size,
        }
        if time_distribution is None:
            time_distribution = getattr(model, "time_distribution", "uniform")
        self.time_distribution = time_distribution

        if grid == "t":
            edges = torch.linspace(lo, hi, grid_points + 1, dtype=torch.float64)
            times = 0.5 * (edges[1:] + edges[:-1])
            widths = edges[1:] - edges[:-1]
        elif grid == "log_snr":
            # nodes equally spaced in log-SNR strictly inside t_range (the ends may be infinite)
            inner = torch.tensor([lo, hi], dtype=torch.float64)
            inner = inner + torch.tensor([0.5, -0.5], dtype=torch.float64) * (hi - lo) / grid_points
            lam_ends = self.schedule.log_snr(inner)
            lams = torch.linspace(  # decreasing log-SNR = increasing t
                float(lam_ends[0]), float(lam_ends[1]), grid_points, dtype=torch.float64
            )
            times = self.schedule.t_from_log_snr(lams)
            # cell edges halfway in log-SNR between nodes; the outer edges are t_range's ends
            inner_edges = self.schedule.t_from_log_snr(0.5 * (lams[1:] + lams[:-1]))
            edges = torch.cat([inner.new_tensor([lo]), inner_edges, inner.new_tensor([hi])])
            widths = edges[1:] - edges[:-1]
        else:
            raise ValueError(f"grid must be 't' or 'log_snr', got {grid!r}")
        self.time_grid = times  # increasing in t
        self.cell_widths = widths
        self.log_snr_grid = self.schedule.log_snr(times)
        log_prior = time_prior(time_distribution, times) + torch.log(widths)
        self.time_log_prior = log_prior - torch.logsumexp(log_prior, 0)
        scale = torch.sqrt(self.schedule.alpha(times) ** 2 + self.schedule.sigma(times) ** 2)
        self.state_scale = scale
        self.variance_preserving = bool((scale - 1.0).abs().max() < 1e-9)

    def _generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    def _log_ratio(self, u: Tensor, zeta: float, y: Optional[Tensor]) -> Tensor:
        """noise_log_ratio at one zeta with the fixed random numbers and a per-row baseline."""
        variance = u.flatten(1).square().mean(1).clamp(1e-4, 1e4)
        return noise_log_ratio(
            self.model,
            u,
            zeta,
            y=y,
            num_samples=self.num_samples,
            baseline_variance=variance,
            generator=self._generator(u.device),
            **self.ratio_options,
        )

    @torch.no_grad()
    def log_likelihoods(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """[B, G]: log p_{t_j}(x) for every grid time, up to a per-row constant (exact up to
        Monte-Carlo error for non-VP schedules, up to -log p(x) for VP ones)."""
        rows = len(x)
        if y is not None:
            y = torch.as_tensor(y, device=x.device).expand(rows)
        dim = x[0].numel()
        columns = []
        for j in range(len(self.time_grid)):
            zeta = float(self.log_snr_grid[j])
            if self.variance_preserving:
                columns.append(-self._log_ratio(x, zeta, y))
                continue
            s = float(self.state_scale[j])
            u = x / s
            log_gauss = -0.5 * u.flatten(1).square().sum(1) - 0.5 * dim * math.log(2 * math.pi)
            ref = self._log_ratio(u, self.reference_log_snr, y)
            columns.append(log_gauss + ref - self._log_ratio(u, zeta, y) - dim * math.log(s))
        return torch.stack(columns, 1).to(torch.float64)

    @torch.no_grad()
    def posterior(self, x: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """(grid [G], log p(t_j | x) [B, G]): normalised log probabilities of the grid times."""
        log_lik = self.log_likelihoods(x, y)
        logits = log_lik + self.time_log_prior.to(log_lik.device)
        return self.time_grid.to(log_lik.device), torch.log_softmax(logits, 1)

    def estimate(self, x: Tensor, y: Optional[Tensor] = None) -> NoiseLevelEstimate:
        """Posterior mean and standard deviation of t per row (float64 [B])."""
        grid, log_post = self.posterior(x, y)
        return posterior_moments(grid, log_post)

    def log_prob(self, x: Tensor, t: Union[float, Tensor], y: Optional[Tensor] = None) -> Tensor:
        """log p(t | x) per row (float64 [B]) as a density on t, linearly interpolated between
        grid nodes (clamped to the grid's range)."""
        grid, log_post = self.posterior(x, y)
        log_density = log_post - torch.log(self.cell_widths).to(log_post)
        return interpolate_log_density(grid, log_density, t)

    def grad_log_prob(
        self, x: Tensor, t: Union[float, Tensor], y: Optional[Tensor] = None
    ) -> Tensor:
        """Not available: the Monte-Carlo classifier is not differentiated here."""
        raise NotImplementedError(
            "ImplicitClassifier does not provide grad_x log p(t | x); use ExactPosterior on a "
            "Gaussian mixture or a learned noise-level head"
        )
