"""Exposure-bias corrections that compete with NAG, as sampler options.

* Epsilon scaling (Ning et al., "Elucidating the Exposure Bias in Diffusion Models", ICLR 2024):
  the predicted noise is divided by lambda_t = k t + b (lambda > 1), with t in [0, 1] here (a
  paper's per-step k on t in [0, T] becomes k * T). Written as a model wrapper: the output is
  converted to eps at its own (x, t), scaled, and converted back, which is the same as scaling the
  guided prediction because the map is affine and the pass weights sum to 1.
* The time-shift sampler (Li et al., "Alleviating Exposure Bias in Diffusion Models through
  Sampling with Shifted Time Steps", ICLR 2024): at each step, per sample, the network is
  evaluated at the time within a window around the nominal one whose marginal variance
  alpha_s^2 v_data + sigma_s^2 best matches the variance of the state; the solver update keeps the
  nominal coefficients. It reads only tensors, so the step loop stays free of host syncs.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .arguments import finite_number
from .predictions import convert
from .schedules import Schedule

Tensor = torch.Tensor


class EpsilonScaledModel(nn.Module):
    """Wraps a denoiser so that its eps prediction is divided by lambda_t = k t + b."""

    def __init__(self, model: nn.Module, schedule: Schedule, k: float = 0.0, b: float = 1.0):
        super().__init__()
        if not (b > 0 and b + k > 0):
            raise ValueError(f"eps_scaling needs k t + b > 0 on [0, 1], got k={k}, b={b}")
        self.model, self.schedule, self.k, self.b = model, schedule, float(k), float(b)
        for name in ("prediction", "num_classes", "supports_noise_dropout", "sample_shape"):
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Optional[Tensor] = None,
        *,
        drop_t: Optional[Tensor] = None,
        drop_y: Optional[Tensor] = None,
    ) -> Tensor:
        out = self.model(x, t, y, drop_t=drop_t, drop_y=drop_y)
        prediction = self.model.prediction
        t64 = t.double()
        shape = (-1,) + (1,) * (x.ndim - 1)
        x0 = convert(out, x, t64, self.schedule, prediction, "x0")
        eps = convert(out, x, t64, self.schedule, prediction, "eps")
        eps = eps / (self.k * t64 + self.b).view(shape)
        alpha = self.schedule.alpha(t64).view(shape)
        sigma = self.schedule.sigma(t64).view(shape)
        # x0 consistent with the scaled eps (as in the paper); kept where alpha = 0 (t = 1)
        safe_alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
        x0 = torch.where(alpha > 0, (x - sigma * eps) / safe_alpha, x0)
        if prediction == "eps":
            result = eps
        elif prediction == "x0":
            result = x0
        elif prediction == "velocity":
            d_alpha = self.schedule.d_alpha(t64).view(shape)
            d_sigma = self.schedule.d_sigma(t64).view(shape)
            result = d_alpha * x0 + d_sigma * eps
        elif prediction == "v":
            result = alpha * eps - sigma * x0
        else:
            result = -eps / sigma
        return result.to(out.dtype)


def check_eps_scaling(value: Optional[dict]) -> Optional[tuple[float, float]]:
    """(k, b) from the sampler option `eps_scaling={"k": ..., "b": ...}`; None when off."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"k", "b"}:
        raise ValueError(f"eps_scaling must be a dict with keys 'k' and 'b', got {value!r}")
    k = finite_number("eps_scaling['k']", value.get("k", 0.0))
    b = finite_number("eps_scaling['b']", value.get("b", 1.0))
    return None if (k == 0.0 and b == 1.0) else (k, b)


class TimeShift:
    """Per-sample shifted evaluation times for the time-shift sampler."""

    def __init__(
        self,
        schedule: Schedule,
        window: float,
        data_variance: float = 1.0,
        candidates: int = 21,
        device: torch.device | str = "cpu",
    ):
        window = finite_number("time_shift_sampler['window']", window)
        data_variance = finite_number("time_shift_sampler['data_variance']", data_variance)
        if not 0.0 <= window <= 1.0:
            raise ValueError(f"time_shift_sampler window must be in [0, 1], got {window}")
        if isinstance(candidates, bool) or not isinstance(candidates, int):
            raise TypeError(f"time_shift_sampler['candidates'] must be an int, got {candidates!r}")
        if data_variance < 0.0 or candidates < 1:
            raise ValueError("time_shift_sampler needs data_variance >= 0 and candidates >= 1")
        self.schedule, self.window, self.data_variance = schedule, float(window), data_variance
        self.offsets = torch.linspace(-1.0, 1.0, candidates, device=device) * self.window

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """Times [B] (float32) for states x [B, ...] at the nominal 0-d time t."""
        if self.window == 0.0:
            return t.expand(len(x))
        candidates = (t + self.offsets).clamp(1e-4, 1.0)  # [C]
        alpha = self.schedule.alpha(candidates.double()).float()
        sigma = self.schedule.sigma(candidates.double()).float()
        expected = alpha**2 * self.data_variance + sigma**2  # [C]
        variance = x.float().flatten(1).var(dim=1, unbiased=False)  # [B]
        best = (expected.view(1, -1) - variance.view(-1, 1)).abs().argmin(dim=1)
        return candidates[best]


def check_time_shift(value: Optional[dict]) -> Optional[dict]:
    """Keyword arguments of TimeShift from the sampler option `time_shift_sampler`."""
    if value is None:
        return None
    allowed = {"window", "data_variance", "candidates"}
    if not isinstance(value, dict) or "window" not in value or set(value) - allowed:
        raise ValueError(
            f"time_shift_sampler must be a dict with 'window' (and optionally 'data_variance', "
            f"'candidates'), got {value!r}"
        )
    return dict(value)
