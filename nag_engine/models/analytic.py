"""The exact denoiser of a Gaussian mixture: ground truth for samplers, guidance and noise shift.

Data: x0 ~ sum_k w_k N(mu_k, diag(s_k^2)), each component belonging to a class. Under any
schedule the noisy marginal is again a mixture, N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2)),
so the optimal denoiser, the score, log p_t(x) and the posterior over the noise level p(t | x)
are all in closed form (the last up to a 1-D integral over t, done on a fine grid).

`GaussianMixtureModel` is a `nag_engine.models.protocol.Denoiser` that returns the exact
prediction of the declared type. With `drop_y` it answers for the whole mixture; with `drop_t` it
is the optimal *noise-unconditional* denoiser, E[target | x], with t distributed as in training
(`time_distribution`, log density `time_prior`). Arithmetic is float64. It is a test oracle:
rows that drop t are gathered by boolean indexing, which synchronises with the host.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from ..predictions import check_prediction
from ..schedules import Schedule, get_schedule

Tensor = torch.Tensor


def time_prior(spec: Union[str, tuple], t: Tensor) -> Tensor:
    """Unnormalised log density of the training time distribution on (0, 1)."""
    if spec == "uniform":
        return torch.zeros_like(t)
    if isinstance(spec, tuple) and spec[0] == "logit-normal":
        mean, std = float(spec[1]), float(spec[2])
        logit = torch.log(t) - torch.log1p(-t)
        return -0.5 * ((logit - mean) / std) ** 2 - torch.log(t) - torch.log1p(-t)
    raise ValueError(
        f"unknown time_distribution {spec!r}: use 'uniform' or ('logit-normal', mean, std)"
    )


class GaussianMixtureModel(nn.Module):
    """Exact denoiser / score / density of a diagonal Gaussian mixture under a schedule.

    means [K, d]; stds a float, [K] or [K, d]; weights [K] (normalised here); classes [K] ints
    (component k belongs to class classes[k]) or None for an unconditional mixture."""

    supports_noise_dropout = True

    def __init__(
        self,
        means: Tensor,
        stds: Union[float, Tensor],
        weights: Optional[Tensor] = None,
        classes: Optional[Tensor] = None,
        *,
        prediction: str = "velocity",
        schedule: Union[str, Schedule] = "linear",
        time_distribution: Union[str, tuple] = "uniform",
        time_points: int = 256,
    ):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, d], got shape {tuple(means.shape)}")
        num_modes, dim = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 1:
            stds = stds[:, None]
        variances = (stds**2).expand(num_modes, dim)
        weights = torch.ones(num_modes) if weights is None else torch.as_tensor(weights)
        weights = weights.to(torch.float64)
        if weights.shape != (num_modes,) or (weights <= 0).any():
            raise ValueError("weights must be K positive numbers")
        self.register_buffer("means", means)
        self.register_buffer("variances", variances.contiguous())
        self.register_buffer("log_weights", torch.log(weights / weights.sum()))
        if classes is not None:
            classes = torch.as_tensor(classes, dtype=torch.long)
            if classes.shape != (num_modes,) or (classes < 0).any():
                raise ValueError("classes must be K non-negative class ids")
            self.register_buffer("classes", classes)
            self.num_classes: Optional[int] = int(classes.max()) + 1
        else:
            self.classes = None
            self.num_classes = None
        self.prediction = check_prediction(prediction)
        self.schedule_obj = get_schedule(schedule)
        self.schedule = self.schedule_obj.name
        self.sample_shape = (dim,)
        self.time_distribution = time_distribution
        grid = (torch.arange(time_points, dtype=torch.float64) + 0.5) / time_points
        self.register_buffer("time_grid", grid)
        log_prior = time_prior(time_distribution, grid)
        self.register_buffer("time_log_prior", log_prior - torch.logsumexp(log_prior, 0))

    # ----------------------------------------------------------------- building blocks
    def component_log_weights(self, y: Optional[Tensor], drop_y: Optional[Tensor], rows: int):
        """[rows, K] normalised log weights of the components each row is conditioned on."""
        logw = self.log_weights.expand(rows, -1)
        if y is None:
            return logw
        if self.classes is None:
            raise ValueError("y was given but this mixture has no classes")
        y = torch.as_tensor(y, device=self.means.device).long().expand(rows).view(rows, 1)
        in_class = self.classes.view(1, -1) == y
        if not in_class.any(1).all():
            raise ValueError(f"y holds a class with no components (classes: {self.num_classes})")
        if drop_y is not None:
            in_class = in_class | drop_y.to(self.means.device).view(rows, 1)
        masked = torch.where(in_class, logw, torch.full_like(logw, -math.inf))
        return masked - torch.logsumexp(masked, dim=1, keepdim=True)

    def _terms(self, x: Tensor, t: Tensor, logw: Tensor):
        """Per-component pieces at times t [rows]: alpha, sigma, the noisy variances and
        differences [rows, K, d], responsibilities [rows, K, 1] and log p_t(x) [rows]."""
        alpha = self.schedule_obj.alpha(t).view(-1, 1, 1)
        sigma = self.schedule_obj.sigma(t).view(-1, 1, 1)
        var = alpha**2 * self.variances + sigma**2  # [B, K, d]
        diff = x.unsqueeze(1) - alpha * self.means  # [B, K, d]
        log_n = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)  # [B, K]
        log_joint = logw + log_n
        top = log_joint.amax(dim=1, keepdim=True)  # one pass for log p and responsibilities
        weight = torch.exp(log_joint - top)
        total = weight.sum(dim=1, keepdim=True)
        log_p = (top + torch.log(total)).squeeze(1)
        resp = (weight / total).unsqueeze(-1)  # [B, K, 1]
        return alpha, sigma, var, diff, resp, log_p

    def _predict(self, t: Tensor, terms: tuple, kind: str) -> Tensor:
        """The exact prediction of type `kind` from the pieces of `_terms` at times t."""
        alpha, sigma, var, diff, resp, _ = terms
        if kind == "score":
            return -(resp * diff / var).sum(1)
        eps = (resp * sigma * diff / var).sum(1)
        if kind == "eps":
            return eps
        x0 = (resp * (self.means + alpha * self.variances * diff / var)).sum(1)
        if kind == "x0":
            return x0
        if kind == "v":
            return alpha.view(-1, 1) * eps - sigma.view(-1, 1) * x0
        d_alpha = self.schedule_obj.d_alpha(t).view(-1, 1)
        d_sigma = self.schedule_obj.d_sigma(t).view(-1, 1)
        return d_alpha * x0 + d_sigma * eps

    def _on_grid(self, x: Tensor, logw: Tensor) -> tuple[Tensor, tuple]:
        """Every row at every grid time: (the times [rows * G], the `_terms` there)."""
        points = len(self.time_grid)
        t_rep = self.time_grid.repeat(len(x))
        terms = self._terms(
            x.repeat_interleave(points, 0), t_rep, logw.repeat_interleave(points, 0)
        )
        return t_rep, terms

    def _log_posterior(self, log_p_on_grid: Tensor, rows: int) -> Tensor:
        """log p(t_j | x) [rows, G] from log p_{t_j}(x) on the grid and the time prior."""
        return torch.log_softmax(log_p_on_grid.view(rows, -1) + self.time_log_prior, dim=1)

    def _predict_without_t(self, x: Tensor, logw: Tensor, kind: str) -> Tensor:
        """E[target | x] with t hidden: the t-conditional prediction averaged over p(t | x)."""
        out = torch.empty_like(x)
        points = len(self.time_grid)
        chunk = max(1, 2**20 // (points * logw.shape[1] * x.shape[1]))
        for i in range(0, len(x), chunk):
            xs, ws = x[i : i + chunk], logw[i : i + chunk]
            t_rep, terms = self._on_grid(xs, ws)
            post = self._log_posterior(terms[-1], len(xs)).exp().view(-1, 1)
            pred = self._predict(t_rep, terms, kind)
            out[i : i + chunk] = (post * pred).view(len(xs), points, -1).sum(1)
        return out

    # ----------------------------------------------------------------- public interface
    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Optional[Tensor] = None,
        *,
        drop_t: Optional[Tensor] = None,
        drop_y: Optional[Tensor] = None,
    ) -> Tensor:
        """The exact prediction (of type `self.prediction`) for the batch."""
        x64 = x.to(self.means.device, torch.float64)
        t64 = torch.as_tensor(t, dtype=torch.float64, device=x64.device).expand(len(x))
        logw = self.component_log_weights(y, drop_y, len(x))
        out = self._predict(t64, self._terms(x64, t64, logw), self.prediction)
        if drop_t is not None:
            rows = drop_t.to(x64.device).nonzero().squeeze(1)
            if len(rows):
                out[rows] = self._predict_without_t(x64[rows], logw[rows], self.prediction)
        return out.to(x.dtype)

    def log_prob(self, x: Tensor, t: Union[float, Tensor], y: Optional[Tensor] = None) -> Tensor:
        """Exact log p_t(x) (or log p_t(x | y)), float64 [B]. t = 0 gives the data density."""
        x64 = x.to(self.means.device, torch.float64)
        t64 = torch.as_tensor(t, dtype=torch.float64, device=x64.device).expand(len(x))
        return self._terms(x64, t64, self.component_log_weights(y, None, len(x)))[-1]

    def score(self, x: Tensor, t: Union[float, Tensor], y: Optional[Tensor] = None) -> Tensor:
        """Exact grad_x log p_t(x) (or given y), float64."""
        x64 = x.to(self.means.device, torch.float64)
        t64 = torch.as_tensor(t, dtype=torch.float64, device=x64.device).expand(len(x))
        terms = self._terms(x64, t64, self.component_log_weights(y, None, len(x)))
        return self._predict(t64, terms, "score")

    def noise_posterior(self, x: Tensor, y: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """The exact posterior over the noise level under the training time distribution:
        returns (grid [G], log p(t_j | x) [B, G]) on the model's midpoint time grid."""
        x64 = x.to(self.means.device, torch.float64)
        _, terms = self._on_grid(x64, self.component_log_weights(y, None, len(x64)))
        return self.time_grid, self._log_posterior(terms[-1], len(x64))

    def component_of(self, x0: Tensor) -> Tensor:
        """The most likely component of each clean point (for per-mode statistics)."""
        x64 = x0.to(self.means.device, torch.float64)
        zero = torch.zeros(len(x64), dtype=torch.float64, device=x64.device)
        _, _, _, _, resp, _ = self._terms(x64, zero, self.log_weights.expand(len(x64), -1))
        return resp.squeeze(-1).argmax(1)

    def sample_data(
        self, n: int, y: Optional[Tensor] = None, generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Tensor]:
        """n exact draws of clean data (float64) and the component each came from."""
        logw = self.component_log_weights(y, None, n)
        comp = torch.multinomial(logw.exp(), 1, generator=generator).squeeze(1)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[comp] + self.variances[comp].sqrt() * noise, comp


def ring_mixture(
    num_modes: int = 8,
    radius: float = 2.0,
    std: float = 0.25,
    num_classes: Optional[int] = None,
    **kwargs,
) -> GaussianMixtureModel:
    """Equal-weight modes on a circle in 2-D; with num_classes, mode k is class k % num_classes."""
    angle = torch.arange(num_modes, dtype=torch.float64) * (2 * math.pi / num_modes)
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    classes = None if num_classes is None else torch.arange(num_modes) % num_classes
    return GaussianMixtureModel(means, std, classes=classes, **kwargs)


def random_mixture(
    dim: int,
    num_modes: int = 8,
    spread: float = 2.0,
    std: float = 0.3,
    num_classes: Optional[int] = None,
    seed: int = 0,
    **kwargs,
) -> GaussianMixtureModel:
    """Modes with random means ~ N(0, spread^2 / dim) per coordinate in d dimensions (so their
    distances stay ~ spread * sqrt(2) at any d), random weights within a factor of 3."""
    gen = torch.Generator().manual_seed(seed)
    means = (
        torch.randn(num_modes, dim, generator=gen, dtype=torch.float64) * spread / math.sqrt(dim)
    )
    weights = 1.0 + 2.0 * torch.rand(num_modes, generator=gen, dtype=torch.float64)
    classes = None if num_classes is None else torch.arange(num_modes) % num_classes
    return GaussianMixtureModel(means, std, weights, classes, **kwargs)
