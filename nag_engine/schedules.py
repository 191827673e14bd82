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

SCHEDULES = ("linear", "vp", "vp-cosine", "vp-discrete")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("uniform", "adm", "leading", "trailing")


def as_tensor(t: TimeLike) -> Tensor:
    """A time (or log-SNR) as a floating tensor: a float tensor unchanged, an integer tensor as
    float64, Python numbers as float64."""
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
        t = as_tensor(t)
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
        return 1.0 - as_tensor(t)

    def sigma(self, t: TimeLike) -> Tensor:
        return as_tensor(t).clone()

    def d_alpha(self, t: TimeLike) -> Tensor:
        return torch.full_like(as_tensor(t), -1.0)

    def d_sigma(self, t: TimeLike) -> Tensor:
        return torch.ones_like(as_tensor(t))

    def t_from_log_snr(self, log_snr: TimeLike) -> Tensor:
        # alpha / sigma = exp(lambda / 2)  =>  t = 1 / (1 + exp(lambda / 2))
        return torch.sigmoid(-0.5 * as_tensor(log_snr))


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
        t = as_tensor(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.exp(self._log_alpha(as_tensor(t)))

    def sigma(self, t: TimeLike) -> Tensor:
        # sqrt(1 - alpha^2) = sqrt(-expm1(2 log alpha)), accurate near t = 0
        return torch.sqrt(-torch.expm1(2.0 * self._log_alpha(as_tensor(t))))

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = as_tensor(t)
        return -0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        t = as_tensor(t)
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def log_snr(self, t: TimeLike) -> Tensor:
        t = as_tensor(t)
        log_alpha = self._log_alpha(t)
        return 2.0 * log_alpha - torch.log(-torch.expm1(2.0 * log_alpha))

    def t_from_log_snr(self, log_snr: TimeLike) -> Tensor:
        # alpha^2 = sigmoid(lambda); solve (d/4) t^2 + (b0/2) t - c = 0 with c = -log alpha.
        c = -0.5 * torch.nn.functional.logsigmoid(as_tensor(log_snr))
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
        return (torch.cos(self._angle(as_tensor(t))) / self._c0).clamp(min=0.0)

    def sigma(self, t: TimeLike) -> Tensor:
        alpha = self.alpha(t)
        return torch.sqrt((1.0 - alpha) * (1.0 + alpha))

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = as_tensor(t)
        return -torch.sin(self._angle(t)) * (0.5 * math.pi / (1.0 + self.s)) / self._c0

    def d_sigma(self, t: TimeLike) -> Tensor:
        t = as_tensor(t)
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def t_from_log_snr(self, log_snr: TimeLike) -> Tensor:
        alpha = torch.sqrt(torch.sigmoid(as_tensor(log_snr)))
        return torch.acos(alpha * self._c0) * (2.0 / math.pi) * (1.0 + self.s) - self.s


class DiscreteVPSchedule(Schedule):
    """The discrete DDPM process of a model trained at integer timesteps (DiT, ADM, diffusers'
    DDPM-family schedulers), on our continuous time axis.

    The official code's timestep tau = 0 .. T-1 (the DDPM paper's x_i with i = tau + 1) sits at
    t = (tau + 1) / T with alpha(t)^2 = alpha_bar_tau = prod_{s <= tau} (1 - beta_s) exactly, so
    t = 1 is the last training timestep and t = 0 is the clean data (alpha = 1). Between the
    knots the log-SNR is interpolated linearly in t (k-diffusion's choice for discrete models);
    below the first knot sigma / alpha falls linearly to 0 at t = 0. A model's time input is
    `timestep(t) = T t - 1`.

    `beta_schedule` is one of BETA_SCHEDULES (diffusers' names: "linear" is DDPM's / DiT's
    betas, "scaled_linear" Stable Diffusion's, "squaredcos_cap_v2" the improved-DDPM cosine).
    """

    def __init__(
        self,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        num_steps: int = 1000,
    ):
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"unknown beta_schedule {beta_schedule!r}: choose one of {BETA_SCHEDULES}"
            )
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, "
                f"beta_end={beta_end}"
            )
        self.beta_schedule = beta_schedule
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.num_steps = num_steps
        self.betas = _betas(beta_schedule, self.beta_start, self.beta_end, num_steps)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, 0)
        # log-SNR at the knots t_tau = (tau + 1) / T, decreasing in tau
        self.knot_log_snr = torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)

    @property
    def name(self) -> str:  # the spec get_schedule reads back
        default = (self.beta_schedule, self.beta_start, self.beta_end, self.num_steps) == (
            "linear",
            1e-4,
            0.02,
            1000,
        )
        if default:
            return "vp-discrete"
        return (
            f"vp-discrete:{self.beta_schedule}:{self.beta_start!r}:{self.beta_end!r}:"
            f"{self.num_steps}"
        )

    def timestep(self, t: TimeLike) -> Tensor:
        """The official (0-based) timestep of time t: T t - 1 (fractional between knots)."""
        return as_tensor(t) * self.num_steps - 1.0

    def _pieces(self, t: TimeLike) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(log-SNR, alpha, sigma, d alpha / dt, d sigma / dt) at t, computed in float64.

        Between knots: lambda linear in t, alpha^2 = sigmoid(lambda), d alpha = alpha sigma^2
        lambda' / 2, d sigma = -sigma alpha^2 lambda' / 2. At a knot -- and within float32
        rounding of one, so that t = (tau + 1) / T picks the same side in any dtype -- the
        derivative is the segment's on the data side. Below the first knot: r = sigma / alpha
        = c t with c = T exp(-lambda_0 / 2), so alpha = (1 + r^2)^(-1/2), sigma = r alpha, and
        the derivatives stay finite at t = 0."""
        t64 = as_tensor(t).double()
        lam = self.knot_log_snr.to(t64.device)
        steps = self.num_steps
        pos = t64 * steps - 1.0
        tol = steps * 2.0**-21  # a few float32 roundings of t, in timesteps
        lo = (torch.ceil(pos - tol) - 1.0).clamp(0, steps - 2).long()
        slope = (lam[lo + 1] - lam[lo]) * steps
        lam_in = lam[lo] + (pos - lo.double()) * (lam[lo + 1] - lam[lo])
        alpha_in, sigma_in = torch.sqrt(torch.sigmoid(lam_in)), torch.sqrt(torch.sigmoid(-lam_in))
        c = steps * torch.exp(-0.5 * lam[0])
        r = c * t64
        alpha_lo = torch.rsqrt(1.0 + r * r)
        near_data = pos <= tol  # (both forms agree at the first knot)
        return (
            torch.where(near_data, lam[0] - 2.0 * torch.log(t64 * steps), lam_in),
            torch.where(near_data, alpha_lo, alpha_in),
            torch.where(near_data, r * alpha_lo, sigma_in),
            torch.where(near_data, -r * c * alpha_lo**3, 0.5 * alpha_in * sigma_in**2 * slope),
            torch.where(near_data, c * alpha_lo**3, -0.5 * sigma_in * alpha_in**2 * slope),
        )

    def _pick(self, t: TimeLike, index: int) -> Tensor:
        t = as_tensor(t)
        return self._pieces(t)[index].to(t.dtype)

    def log_snr(self, t: TimeLike) -> Tensor:
        return self._pick(t, 0)

    def alpha(self, t: TimeLike) -> Tensor:
        return self._pick(t, 1)

    def sigma(self, t: TimeLike) -> Tensor:
        return self._pick(t, 2)

    def d_alpha(self, t: TimeLike) -> Tensor:
        return self._pick(t, 3)

    def d_sigma(self, t: TimeLike) -> Tensor:
        return self._pick(t, 4)

    def t_from_log_snr(self, log_snr: TimeLike) -> Tensor:
        value = as_tensor(log_snr)
        lam = self.knot_log_snr.to(value.device)
        steps = self.num_steps
        flat = value.double().reshape(-1)
        # the knots decrease in tau: `above` counts those with a larger log-SNR
        above = steps - torch.searchsorted(lam.flip(0).contiguous(), flat, right=True)
        lo = (above - 1).clamp(0, steps - 2)
        frac = (flat - lam[lo]) / (lam[lo + 1] - lam[lo])
        inside = (lo.double() + 1.0 + frac) / steps
        below = torch.exp(0.5 * (lam[0] - flat)) / steps
        t = torch.where(flat > lam[0], below, inside)
        return t.view(value.shape).to(value.dtype)

    def respaced(self, steps: int, spacing: str) -> Tensor:
        """A sampling grid (float64, decreasing, ending at 0) of `steps` model evaluations at
        the training timesteps `spacing` picks, as the reference code picks them:

        * "adm": DiT's / ADM's `space_timesteps(T, "steps")`: evenly spaced, rounded, first and
          last timestep included (what DiT's sample.py uses with 250 steps);
        * "leading": every (T // steps)-th timestep from 0 (ADM's "ddimN", diffusers' default
          with steps_offset 0);
        * "trailing": every (T / steps)-th timestep counted down from T - 1 (diffusers').

        (diffusers' DDIM / DDPM schedulers step from each timestep to timestep - T // steps,
        which is the next one visited for "leading", and for "trailing" when steps divides T;
        otherwise, as with their "linspace" spacing, no grid reproduces them.)
        """
        timesteps = respaced_timesteps(self.num_steps, steps, spacing)
        knots = (torch.tensor(timesteps, dtype=torch.float64) + 1.0) / self.num_steps
        return torch.cat([knots.flip(0), torch.zeros(1, dtype=torch.float64)])

    def __repr__(self) -> str:
        return (
            f"DiscreteVPSchedule(beta_schedule={self.beta_schedule!r}, "
            f"beta_start={self.beta_start}, beta_end={self.beta_end}, num_steps={self.num_steps})"
        )


def _betas(kind: str, start: float, end: float, steps: int) -> Tensor:
    """The training betas (float64) of a diffusers / ADM beta schedule."""
    if kind == "linear":
        return torch.linspace(start, end, steps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    # squaredcos_cap_v2: alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2, betas capped at 0.999
    s = torch.arange(steps + 1, dtype=torch.float64) / steps
    alpha_bar = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


def respaced_timesteps(num_steps: int, steps: int, spacing: str) -> list[int]:
    """The ascending training timesteps (0-based) a respaced sampler of `steps` evaluations
    visits; see `DiscreteVPSchedule.respaced` for the spacings."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 < steps <= num_steps:
        raise ValueError(f"steps must be an int in [1, {num_steps}], got {steps!r}")
    if spacing == "adm":
        # ADM's space_timesteps with one section: a running sum of the fractional stride, rounded
        stride = (num_steps - 1) / (steps - 1) if steps > 1 else 1
        taken, position = [], 0.0
        for _ in range(steps):
            taken.append(round(position))
            position += stride
        return sorted(set(taken))
    if spacing == "leading":
        return [i * (num_steps // steps) for i in range(steps)]
    if spacing == "trailing":
        return sorted({round(num_steps - i * num_steps / steps) - 1 for i in range(steps)})
    raise ValueError(f"unknown spacing {spacing!r}: choose one of {SPACINGS[1:]}")


def get_schedule(schedule: Union[str, Schedule]) -> Schedule:
    """Return a Schedule from its name ("linear", "vp", "vp-cosine", "vp-discrete" or a
    "vp-discrete:BETAS:START:END:STEPS" spec) or pass one through."""
    if isinstance(schedule, Schedule):
        return schedule
    if schedule == "linear":
        return LinearSchedule()
    if schedule == "vp":
        return VPLinearSchedule()
    if schedule == "vp-cosine":
        return VPCosineSchedule()
    if isinstance(schedule, str) and schedule.split(":")[0] == "vp-discrete":
        return _discrete_from_spec(schedule)
    raise ValueError(f"unknown schedule {schedule!r}: choose one of {SCHEDULES} or pass a Schedule")


def _discrete_from_spec(spec: str) -> DiscreteVPSchedule:
    """ "vp-discrete" or "vp-discrete:BETA_SCHEDULE:BETA_START:BETA_END:NUM_STEPS"."""
    parts = spec.split(":")
    if len(parts) == 1:
        return DiscreteVPSchedule()
    try:
        kind, start, end, steps = parts[1:]
        return DiscreteVPSchedule(kind, float(start), float(end), int(steps))
    except ValueError as err:
        raise ValueError(
            f"bad discrete schedule {spec!r} ({err}): write "
            "'vp-discrete:BETA_SCHEDULE:BETA_START:BETA_END:NUM_STEPS', e.g. "
            "'vp-discrete:scaled_linear:0.00085:0.012:1000'"
        ) from None


def _check_shift(shift: float) -> None:
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"time shift must be a finite number > 0, got {shift!r}")


def shift_time(t: TimeLike, shift: float) -> Tensor:
    """Timestep shift (SD3 / Esser et al. 2024): t' = s t / (1 + (s - 1) t); s > 1 spends more
    steps at high noise, s = 1 is the identity. Written as t / (t + (1 - t) / s), which maps
    0 and 1 exactly onto themselves."""
    _check_shift(shift)
    t = as_tensor(t)
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
