"""Noise schedules: x_t = alpha(t) x0 + sigma(t) eps, with t in [0, 1] (t = 0 data, t = 1 noise).

Every schedule gives alpha, sigma, their time derivatives, the log signal-to-noise ratio
lambda(t) = log(alpha^2 / sigma^2) and its inverse. The functions accept floats or tensors and
compute in the dtype they are given; the sampler evaluates them in float64 once per time grid.
"""

from __future__ import annotations

import math
from typing import Union

import torch

Tensor = torch.Tensor
TimeLike = Union[float, Tensor]

SCHEDULES = ("linear", "vp", "vp-cosine")


def _as_tensor(t: TimeLike) -> Tensor:
    if isinstance(t, Tensor):
        return t if t.is_floating_point() else t.double()
    return torch.tensor(t, dtype=torch.float64)


class Schedule:
    """Base class: subclasses define alpha, sigma, their derivatives and t_from_log_snr."""

    name: str = "schedule"

    def alpha(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: TimeLike) -> Tensor:
        """d alpha / d t."""
        raise NotImplementedError

    def d_sigma(self, t: TimeLike) -> Tensor:
        """d sigma / d t (infinite at t = 0 for the variance-preserving schedules)."""
        raise NotImplementedError

    def log_snr(self, t: TimeLike) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2); +inf at t = 0, -inf where alpha = 0."""
        t = _as_tensor(t)
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_from_log_snr(self, log_snr: TimeLike) -> Tensor:
        """The inverse of log_snr: the time t at which log(alpha^2/sigma^2) equals log_snr."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearSchedule(Schedule):
    """Rectified flow / SiT interpolant: alpha = 1 - t, sigma = t."""

    name = "linear"

    def alpha(self, t: TimeLike) -> Tensor:
        return 1.0 - _as_tensor(t)

    def sigma(self, t: TimeLike) -> Tensor:
        return _as_tensor(t).clone()

    def d_alpha(self, t: TimeLike) -> Tensor:
        return torch.full_like(_as_tensor(t), -1.0)

    def d_sigma(self, t: TimeLike) -> Tensor:
        return torch.ones_like(_as_tensor(t))

    def t_from_log_snr(self, log_snr: TimeLike) -> Tensor:
        # alpha / sigma = exp(lambda / 2)  =>  t = 1 / (1 + exp(lambda / 2))
        return torch.sigmoid(-0.5 * _as_tensor(log_snr))


class VPLinearSchedule(Schedule):
    """DDPM's linear beta schedule (1e-4 to 0.02 over 1000 steps) as a continuous function of t.

    log alpha(t) = -(beta_max - beta_min) * t^2 / 4 - beta_min * t / 2 with beta scaled by the
    number of training steps (Song et al. 2021), sigma = sqrt(1 - alpha^2). At t = i / 1000 this
    matches DDPM's discrete alpha-bar to within the discretisation error of the product.
    """

    name = "vp"

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000):
        self.beta_min = beta_start * num_steps
        self.beta_max = beta_end * num_steps

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * (self.beta_max - self.beta_min) * t**2 - 0.5 * self.beta_min * t

    def beta(self, t: TimeLike) -> Tensor:
        """The continuous-time beta(t): d log alpha / dt = -beta(t) / 2."""
        t = _as_tensor(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.exp(self._log_alpha(_as_tensor(t)))

    def sigma(self, t: TimeLike) -> Tensor:
        # sqrt(1 - alpha^2) = sqrt(-expm1(2 log alpha)), accurate near t = 0
        return torch.sqrt(-torch.expm1(2.0 * self._log_alpha(_as_tensor(t))))

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return -0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def log_snr(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        log_alpha = self._log_alpha(t)
        return 2.0 * log_alpha - torch.log(-torch.expm1(2.0 * log_alpha))

    def t_from_log_snr(self, log_snr: TimeLike) -> Tensor:
        # alpha^2 = sigmoid(lambda); solve (d/4) t^2 + (b0/2) t - c = 0 with c = -log alpha.
        c = -0.5 * torch.nn.functional.logsigmoid(_as_tensor(log_snr))
        d = self.beta_max - self.beta_min
        b0 = self.beta_min
        return (-0.5 * b0 + torch.sqrt(0.25 * b0**2 + d * c)) / (0.5 * d)

    def __repr__(self) -> str:
        return f"VPLinearSchedule(beta_min={self.beta_min}, beta_max={self.beta_max})"


class VPCosineSchedule(Schedule):
    """Improved-DDPM cosine schedule: alpha = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s))."""

    name = "vp-cosine"

    def __init__(self, s: float = 0.008):
        self.s = s
        self._c0 = math.cos(0.5 * math.pi * s / (1.0 + s))

    def _angle(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * (t + self.s) / (1.0 + self.s)

    def alpha(self, t: TimeLike) -> Tensor:
        return (torch.cos(self._angle(_as_tensor(t))) / self._c0).clamp(min=0.0)

    def sigma(self, t: TimeLike) -> Tensor:
        alpha = self.alpha(t)
        return torch.sqrt((1.0 - alpha) * (1.0 + alpha))

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return -torch.sin(self._angle(t)) * (0.5 * math.pi / (1.0 + self.s)) / self._c0

    def d_sigma(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def t_from_log_snr(self, log_snr: TimeLike) -> Tensor:
        alpha = torch.sqrt(torch.sigmoid(_as_tensor(log_snr)))
        return torch.acos(alpha * self._c0) * (2.0 / math.pi) * (1.0 + self.s) - self.s


def get_schedule(schedule: Union[str, Schedule]) -> Schedule:
    """Return a Schedule from its name ("linear", "vp", "vp-cosine") or pass one through."""
    if isinstance(schedule, Schedule):
        return schedule
    if schedule == "linear":
        return LinearSchedule()
    if schedule == "vp":
        return VPLinearSchedule()
    if schedule == "vp-cosine":
        return VPCosineSchedule()
    raise ValueError(f"unknown schedule {schedule!r}: choose one of {SCHEDULES} or pass a Schedule")


def _check_shift(shift: float) -> None:
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"time shift must be a finite number > 0, got {shift!r}")


def shift_time(t: TimeLike, shift: float) -> Tensor:
    """Timestep shift (SD3 / Esser et al. 2024): t' = s t / (1 + (s - 1) t); s > 1 spends more
    steps at high noise, s = 1 is the identity. Written as t / (t + (1 - t) / s), which maps
    0 and 1 exactly onto themselves."""
    _check_shift(shift)
    t = _as_tensor(t)
    return t / (t + (1.0 - t) / shift)


def time_grid(steps: int, *, shift: float = 1.0, t_max: float = 1.0, t_min: float = 0.0) -> Tensor:
    """The sampling grid: `steps + 1` float64 times decreasing from t_max to t_min (both kept
    exactly), uniform in the unshifted time when a timestep shift is given."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    _check_shift(shift)
    if shift == 1.0:
        return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)
    # uniform between the unshifted ends (the shift by 1/s is the inverse), then shifted
    ends = shift_time(torch.tensor([t_max, t_min], dtype=torch.float64), 1.0 / shift)
    grid = shift_time(
        torch.linspace(float(ends[0]), float(ends[1]), steps + 1, dtype=torch.float64), shift
    )
    grid[0], grid[-1] = t_max, t_min
    return grid
