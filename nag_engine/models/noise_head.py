"""A denoiser turned into a noise-level regressor (the NAG paper's noise-level estimator).

`NoiseLevelHead` keeps a denoiser's body (an `MLPDenoiser` or a `DiT`), drops its output layer
and puts a small head in its place that reads the noise level off ``x`` alone: the body runs with
the null noise embedding (``drop_t`` on every row), so nothing tells it t, and the head predicts a
Gaussian over the log-SNR, ``lambda ~ N(mu(x), exp(log_var(x)))``. Seen as a density on t,

    log p(t | x) = log N(clip(lambda(t)); mu, var) + log |d lambda / dt|,

whose gradient in x is what classifier-based NAG adds to the score. It is fine-tuned from the
denoiser's weights on forward-process pairs (x_t, t) with the Gaussian negative log-likelihood
(`nag_engine.training.losses.noise_level_loss`, ``TrainConfig(objective="noise_level")``).

The log-SNR is clipped to `log_snr_range` (the ends of t have infinite log-SNR on most schedules):
the head's distribution is over the clipped value.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from ..schedules import get_schedule
from .dit import DiT
from .mlp import MLPDenoiser

Tensor = torch.Tensor

BACKBONES: dict[str, type] = {"MLPDenoiser": MLPDenoiser, "DiT": DiT}
# the modules of each backbone that only the output layer uses: replaced by the head
_OUTPUT_LAYERS = {"MLPDenoiser": ("final_norm", "output_proj"), "DiT": ("final_layer",)}
_QUADRATURE = 24  # Gauss-Hermite nodes for moments of t under the Gaussian in log-SNR


class NoiseLevelHead(nn.Module):
    """Predicts ``(mu, log_var)`` of the log-SNR of ``x`` ``[B, ...]`` from x alone.

    Called as ``head(x, y=None)``; `y` is used when the backbone is class-conditional (None means
    the null class). Implements the noise-level estimator interface of
    `nag_engine.analysis.noise_level` (``estimate``, ``log_prob``, ``grad_log_prob``)."""

    supports_noise_dropout = False
    prediction = None  # not a denoiser

    def __init__(
        self,
        backbone: str,
        backbone_config: dict[str, Any],
        log_snr_range: tuple[float, float] = (-10.0, 10.0),
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {tuple(BACKBONES)}, got {backbone!r}")
        lo, hi = (float(v) for v in log_snr_range)
        if not lo < hi:
            raise ValueError(f"log_snr_range must be (low, high), low < high; got {log_snr_range}")
        self.config: dict[str, Any] = {
            "backbone": backbone,
            "backbone_config": dict(backbone_config),
            "log_snr_range": [lo, hi],
        }
        body = BACKBONES[backbone](**backbone_config)
        for name in _OUTPUT_LAYERS[backbone]:
            delattr(body, name)
        self.body = body
        self.backbone = backbone
        self.schedule = body.schedule
        self.schedule_obj = get_schedule(body.schedule)
        self.num_classes = body.num_classes
        self.sample_shape = body.sample_shape
        self.log_snr_range = (lo, hi)
        width = body.config.get("hidden") or body.config["hidden_size"]
        self.head = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2)
        )
        nn.init.zeros_(self.head[-1].weight)  # starts at the centre of the range, wide
        nn.init.zeros_(self.head[-1].bias)

    @classmethod
    def from_denoiser(
        cls, model: nn.Module, log_snr_range: tuple[float, float] = (-10.0, 10.0)
    ) -> NoiseLevelHead:
        """A head whose body starts from a trained denoiser's weights (the output layer is
        dropped, the head is fresh)."""
        name = next((n for n, c in BACKBONES.items() if type(model) is c), None)
        if name is None:
            raise TypeError(
                f"cannot build a noise-level head on a {type(model).__name__}: "
                f"backbones are {tuple(BACKBONES)}"
            )
        head = cls(name, model.config, log_snr_range)
        state = {k: v for k, v in model.state_dict().items() if k in head.body.state_dict()}
        head.body.load_state_dict(state, strict=True)
        return head

    # ------------------------------------------------------------------ the network
    def forward(
        self, x: Tensor, y: Optional[Tensor] = None, *, drop_y: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        """(mu, log_var) of the log-SNR, each [B] (float32, or float64 for a float64 head).
        `drop_y` rows use the null class."""
        batch = len(x)
        if y is not None and self.num_classes is None:
            y = None  # an unconditional body: the label carries no information here
        drop_t = torch.ones(batch, dtype=torch.bool, device=x.device)
        feats = self.body.features(
            x, torch.zeros(batch, device=x.device), y, drop_t=drop_t, drop_y=drop_y
        )
        if isinstance(feats, tuple):  # DiT: (tokens, conditioning); pool the tokens
            feats = feats[0].mean(1)
        raw = self.head(feats)
        if raw.dtype in (torch.float16, torch.bfloat16):
            raw = raw.float()
        lo, hi = self.log_snr_range
        centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
        mu = centre + half * raw[:, 0]
        # soft bounds keep the variance between (1e-3 half)^2 and (3 half)^2
        log_var = 2 * math.log(half) + _soft_clip(raw[:, 1], math.log(1e-6), math.log(9.0))
        return mu, log_var

    # ------------------------------------------------------------------ the estimator interface
    def target(self, t: Tensor) -> Tensor:
        """The clipped log-SNR of times t (what the head is trained to predict)."""
        lo, hi = self.log_snr_range
        t = t.clamp(1e-12, 1 - 1e-12)
        return self.schedule_obj.log_snr(t).clamp(lo, hi)

    def log_prob(self, x: Tensor, t: Union[float, Tensor], y: Optional[Tensor] = None) -> Tensor:
        """log p(t | x) per row [B] (float64) as a density on t (where the clipping is inactive;
        inside the clipped ends it is the density of the clipped log-SNR)."""
        mu, log_var = self(x, y)
        mu, log_var = mu.double(), log_var.double()
        t = torch.as_tensor(t, dtype=torch.float64, device=mu.device).expand(len(mu))
        lam = self.target(t)
        # |d lambda / dt| from the schedule's derivatives: lambda = 2 log(alpha / sigma)
        sched, t_safe = self.schedule_obj, t.clamp(1e-6, 1 - 1e-6)
        jac = 2 * (
            sched.d_alpha(t_safe) / sched.alpha(t_safe)
            - sched.d_sigma(t_safe) / sched.sigma(t_safe)
        )
        gauss = -0.5 * ((lam - mu) ** 2 / log_var.exp() + log_var + math.log(2 * math.pi))
        return gauss + torch.log(jac.abs())

    def grad_log_prob(
        self, x: Tensor, t: Union[float, Tensor], y: Optional[Tensor] = None
    ) -> Tensor:
        """grad_x log p(t | x) by autograd (the shape and dtype of x)."""
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(leaf, t, y).sum(), leaf)
        return grad

    @torch.no_grad()
    def estimate(self, x: Tensor, y: Optional[Tensor] = None):
        """Mean and standard deviation of t under the predicted distribution (float64 [B])."""
        from ..analysis.noise_level import NoiseLevelEstimate

        mu, log_var = self(x, y)
        nodes, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE)
        nodes = torch.as_tensor(nodes, dtype=torch.float64, device=mu.device)
        weights = torch.as_tensor(weights / weights.sum(), dtype=torch.float64, device=mu.device)
        lam = mu.double()[:, None] + log_var.double().mul(0.5).exp()[:, None] * nodes
        lo, hi = self.log_snr_range
        t = self.schedule_obj.t_from_log_snr(lam.clamp(lo, hi))
        mean = (t * weights).sum(1)
        var = ((t - mean[:, None]) ** 2 * weights).sum(1)
        return NoiseLevelEstimate(mean=mean, std=var.clamp(min=0).sqrt())


def _soft_clip(value: Tensor, low: float, high: float) -> Tensor:
    """A smooth map of the real line onto (low, high) that is the identity's slope at the
    centre."""
    centre, half = 0.5 * (low + high), 0.5 * (high - low)
    return centre + half * torch.tanh((value - centre) / half)
