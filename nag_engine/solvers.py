"""Reference solvers, each written as a table of steps in one general form.

A solver turns a time grid into a sequence of model evaluations ("stages"). At stage k the
network is evaluated at (x_in, t_k), the passes are combined into the guided prediction g, and

    x_out = a_k * x + b_k * g + b2_k * g_prev + c_k * z

where x is the solver state, g_prev the guided prediction of the previous stage and z standard
normal noise. x_out is always the next model input; it becomes the new state when `keep_k` is
set (the predictor stage of Heun keeps the old state). The coefficients fold in the conversion
from the model's prediction type, so g stays in the model's native output. This is the contract
that the fused kernels implement; `guided_step` is its plain-torch reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

from .guidance import combine_reference
from .predictions import check_prediction, conversion_coefficients
from .schedules import Schedule, get_schedule

Tensor = torch.Tensor

DIFFUSIONS = ("sigma", "sbdm", "constant")


@dataclass
class StageTable:
    """One row per model evaluation: where it is evaluated and how its result is applied."""

    t: list[float] = field(default_factory=list)  # time of the model evaluation
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    b2: list[float] = field(default_factory=list)
    c: list[float] = field(default_factory=list)
    keep: list[bool] = field(default_factory=list)  # does x_out become the new state?
    step: list[int] = field(default_factory=list)  # the sampling step this stage belongs to

    def add(self, t, a, b, *, step: int, b2=0.0, c=0.0, keep: bool = True) -> None:
        values = [float(v) for v in (t, a, b, b2, c)]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(
                f"solver coefficients are not finite at t={values[0]:.6g} (step {step}): the "
                "schedule, prediction type and solver are singular there; start below t = 1 "
                "(t_max) or choose another solver / diffusion"
            )
        for name, v in zip(("t", "a", "b", "b2", "c"), values):
            getattr(self, name).append(v)
        self.keep.append(keep)
        self.step.append(step)

    def __len__(self) -> int:
        return len(self.t)

    @property
    def uses_g_prev(self) -> bool:
        return any(v != 0.0 for v in self.b2)

    @property
    def stochastic(self) -> bool:
        return any(v != 0.0 for v in self.c)

    def tensors(self, device: torch.device | str) -> dict[str, Tensor]:
        """The coefficient columns as float32 (keep: bool) device tensors, indexed by stage."""
        out = {
            name: torch.tensor(getattr(self, name), dtype=torch.float64).to(device, torch.float32)
            for name in ("t", "a", "b", "b2", "c")
        }
        out["keep"] = torch.tensor(self.keep, dtype=torch.bool, device=device)
        return out


def _coef(schedule: Schedule, prediction: str, target: str, t: float) -> tuple[float, float]:
    a, b = conversion_coefficients(prediction, target, schedule, float(t))
    return float(a), float(b)


def euler(schedule: Schedule, prediction: str, grid: Sequence[float]) -> StageTable:
    """Euler for the probability-flow ODE dx/dt = v(x, t)."""
    table = StageTable()
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        av, bv = _coef(schedule, prediction, "velocity", t)
        dt = t_next - t
        table.add(t, 1.0 + dt * av, dt * bv, step=i)
    return table


def heun(schedule: Schedule, prediction: str, grid: Sequence[float]) -> StageTable:
    """Heun's second-order method for the probability-flow ODE; Euler on a step that ends at
    t = 0, where the corrector's velocity is undefined (Karras et al. 2022)."""
    table = StageTable()
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        av, bv = _coef(schedule, prediction, "velocity", t)
        dt = t_next - t
        a1, b1 = 1.0 + dt * av, dt * bv
        if t_next <= 0.0:
            table.add(t, a1, b1, step=i)
            continue
        # predictor: x_pred = a1 x + b1 g1, state kept
        table.add(t, a1, b1, step=i, keep=False)
        # corrector: x + dt/2 (v(x, t) + v(x_pred, t_next)), v = A x + B g, g_prev = g1
        an, bn = _coef(schedule, prediction, "velocity", t_next)
        h = 0.5 * dt
        table.add(t_next, 1.0 + h * av + h * an * a1, h * bn, b2=h * bv + h * an * b1, step=i)
    return table


def _diffusion(schedule: Schedule, t: float, form: str, scale: float) -> float:
    """The reverse SDE's diffusion coefficient w(t) = g(t)^2."""
    if form == "constant":
        return scale
    sigma = float(schedule.sigma(t))
    if form == "sigma":
        return scale * sigma
    # "sbdm": the forward SDE's own g^2 = 2 sigma (sigma' - sigma alpha'/alpha); beta(t) for vp
    alpha, d_alpha, d_sigma = schedule.alpha(t), schedule.d_alpha(t), schedule.d_sigma(t)
    return scale * float(2.0 * sigma * (d_sigma - sigma * d_alpha / alpha))  # inf where alpha = 0


def euler_maruyama(
    schedule: Schedule,
    prediction: str,
    grid: Sequence[float],
    *,
    diffusion: str = "sigma",
    diffusion_scale: float = 1.0,
) -> StageTable:
    """Euler-Maruyama for the reverse SDE dx = [v - w/2 * score] dt + sqrt(w) dW (SiT style),
    which has the same marginals as the ODE for any diffusion w(t) >= 0. The last step, which
    lands on t = 0, takes the drift without noise."""
    if diffusion not in DIFFUSIONS:
        raise ValueError(f"unknown diffusion {diffusion!r}: choose one of {DIFFUSIONS}")
    if not diffusion_scale >= 0.0:
        raise ValueError(f"diffusion_scale must be >= 0, got {diffusion_scale}")
    table = StageTable()
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        av, bv = _coef(schedule, prediction, "velocity", t)
        a_s, b_s = _coef(schedule, prediction, "score", t)
        w = _diffusion(schedule, t, diffusion, diffusion_scale)
        dt = t_next - t
        noise = math.sqrt(w * -dt) if t_next > 0.0 else 0.0
        table.add(t, 1.0 + dt * (av - 0.5 * w * a_s), dt * (bv - 0.5 * w * b_s), c=noise, step=i)
    return table


def ddim(
    schedule: Schedule, prediction: str, grid: Sequence[float], *, eta: float = 0.0
) -> StageTable:
    """DDIM (Song et al. 2021): x_next = alpha_n x0 + sqrt(sigma_n^2 - s^2) eps + s z, with
    s = eta * (the DDPM posterior standard deviation). eta = 0 is deterministic; eta = 1 is DDPM
    ancestral sampling. Written for any Gaussian-path schedule."""
    if not 0.0 <= eta:
        raise ValueError(f"eta must be >= 0, got {eta}")
    table = StageTable()
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        a0, b0 = _coef(schedule, prediction, "x0", t)
        ae, be = _coef(schedule, prediction, "eps", t)
        alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
        alpha_n, sigma_n = float(schedule.alpha(t_next)), float(schedule.sigma(t_next))
        ratio = (alpha * sigma_n) / (alpha_n * sigma) if sigma_n > 0.0 else 0.0
        s = min(eta * sigma_n * math.sqrt(max(0.0, 1.0 - ratio**2)), sigma_n)
        k = math.sqrt(max(0.0, sigma_n**2 - s**2))
        table.add(t, alpha_n * a0 + k * ae, alpha_n * b0 + k * be, c=s, step=i)
    return table


DDPM_VARIANCES = ("small", "large")


def ddpm(
    schedule: Schedule, prediction: str, grid: Sequence[float], *, variance: str = "small"
) -> StageTable:
    """DDPM ancestral sampling: the posterior mean of x_next given the predicted x0, plus noise
    of the posterior variance ("small", = DDIM with eta = 1; ADM's FIXED_SMALL, diffusers'
    fixed_small) or of the forward step's own variance sigma_t^2 - (alpha_t / alpha_n)^2
    sigma_n^2 ("large": beta_t on a VP schedule; ADM's FIXED_LARGE, diffusers' fixed_large).
    The step that lands on t = 0 adds no noise."""
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}: choose one of {DDPM_VARIANCES}")
    table = ddim(schedule, prediction, grid, eta=1.0)
    if variance == "large":
        for k, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
            alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
            alpha_n, sigma_n = float(schedule.alpha(t_next)), float(schedule.sigma(t_next))
            step_var = sigma**2 - (alpha / alpha_n) ** 2 * sigma_n**2
            table.c[k] = math.sqrt(max(0.0, step_var)) if sigma_n > 0.0 else 0.0
    return table


SOLVERS: dict[str, Callable[..., StageTable]] = {
    "euler": euler,
    "heun": heun,
    "euler-maruyama": euler_maruyama,
    "ddim": ddim,
    "ddpm": ddpm,
}

ORDERS = {"euler": 1, "heun": 2, "ddim": 1}  # ODE solvers (ddim with eta = 0)


def build_stages(
    solver: str,
    schedule: Union[str, Schedule],
    prediction: str,
    grid: Union[Tensor, Sequence[float]],
    **options: float | str,
) -> StageTable:
    """The stage table of `solver` for a model of the given prediction type on `grid`."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: choose one of {tuple(SOLVERS)}")
    check_prediction(prediction)
    grid = [float(t) for t in grid]
    try:
        return SOLVERS[solver](get_schedule(schedule), prediction, grid, **options)
    except TypeError as err:
        raise TypeError(f"solver {solver!r} got an unexpected option: {err}") from None


def guided_step(
    out: Tensor,
    weights: Union[Tensor, Sequence[float]],
    x: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    keep: Union[Tensor, bool] = True,
    g_prev: Optional[Tensor] = None,
    b2: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    c: Optional[Tensor] = None,
    next_input: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """The fused guidance + solver step, in plain torch (the reference of every kernel).

    `out` [P, B, ...] is the stacked model output of the P passes (any float dtype), `weights`
    the P pass weights, x the float32 state [B, ...]. Computes g = sum_p w_p out_p and
    x_out = a x + b g + b2 g_prev + c z in float32, writes x_out into every pass slot of
    `next_input` [P', B, ...] (the next model input, in the model's dtype) when given, and returns
    (new state, g): the new state is x_out where `keep`, else x."""
    g = combine_reference(list(out), list(weights))
    x_out = a * x + b * g
    if g_prev is not None and b2 is not None:
        x_out = x_out + b2 * g_prev
    if z is not None and c is not None:
        x_out = x_out + c * z
    if next_input is not None:
        next_input.copy_(x_out.unsqueeze(0).expand_as(next_input))
    if isinstance(keep, bool):
        return (x_out if keep else x), g
    return torch.where(keep, x_out, x), g
