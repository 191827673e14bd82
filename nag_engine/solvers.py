"""Reference solvers, each written as a table of steps in one general form.

A solver turns a time grid into a sequence of model evaluations ("stages"). At stage k the
network is evaluated at (x_in, t_k), the passes are combined into the guided prediction g, and

    x_out = a_k * x + b_k * g + b2_k * g_prev + c_k * z
    g_out = g + d_k * x

where x is the solver state (before the update), g_prev what the previous stage wrote to g_out
and z standard normal noise. x_out is always the next model input; it becomes the new state when
`keep_k` is set (the predictor stage of Heun keeps the old state). g_out is what the stage hands
on to the next one: g itself where d_k = 0 (every solver but multistep), or a quantity that also
depends on the state, like the data prediction D = A x + B g scaled to D / B = g + (A / B) x,
which DPM-Solver++(2M) needs one step later. The coefficients fold in the conversion from the
model's prediction type, so g stays in the model's native output. This is the contract that the
fused kernels implement (`nag_engine.backends`, docs/ARCHITECTURE.md §4).

Each solver writes its rows in its own maths with `Lin`, a linear combination of the stage's
inputs X (the state), G (this stage's guided output), G_PREV (the previous stage's g_out) and
Z (noise), e.g. Euler's ``X + dt * v`` with the velocity ``v = A X + B G``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

import torch

from .arguments import finite_number
from .predictions import check_prediction, conversion_coefficients
from .schedules import Schedule, get_schedule

Tensor = torch.Tensor

DIFFUSIONS = ("sigma", "sbdm", "constant")


class Lin:
    """A linear combination of a stage's inputs, with float64 host coefficients: terms "x" (the
    state), "g" (the guided output), "g_prev" (the previous stage's g_out) and "z" (noise).

    Only the terms present are multiplied and added, in the order the expression is written, so
    a row written as ``X + dt * v`` computes its floats exactly like ``1.0 + dt * A, dt * B``."""

    __slots__ = ("terms",)
    NAMES = ("x", "g", "g_prev", "z")

    def __init__(self, **terms: float):
        unknown = set(terms) - set(self.NAMES)
        if unknown:
            raise ValueError(f"unknown terms {sorted(unknown)}: a stage's inputs are {self.NAMES}")
        self.terms = {name: terms[name] for name in self.NAMES if name in terms}

    def __add__(self, other: Lin) -> Lin:
        terms = dict(self.terms)
        for name, value in other.terms.items():
            terms[name] = terms[name] + value if name in terms else value
        return Lin(**terms)

    def __sub__(self, other: Lin) -> Lin:
        return self + (-1.0) * other

    def __rmul__(self, scale: float) -> Lin:
        return Lin(**{name: scale * value for name, value in self.terms.items()})

    def __getitem__(self, name: str) -> float:
        return self.terms.get(name, 0.0)

    def __repr__(self) -> str:
        return " + ".join(f"{v!r}*{k}" for k, v in self.terms.items()) or "0"

    def one_stage_later(self) -> Lin:
        """The same quantity seen from the next stage, which receives this stage's g as g_prev
        (valid where this stage's g_out is g, i.e. d = 0)."""
        if "g_prev" in self.terms or "z" in self.terms:
            raise ValueError(f"{self} cannot be carried to the next stage")
        return Lin(**{("g_prev" if k == "g" else k): v for k, v in self.terms.items()})


X, G, G_PREV, Z = Lin(x=1.0), Lin(g=1.0), Lin(g_prev=1.0), Lin(z=1.0)


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
    d: list[float] = field(default_factory=list)  # g_out = g + d x (0: g_out = g)

    def add(self, t, a, b, *, step: int, b2=0.0, c=0.0, keep: bool = True, d=0.0) -> None:
        values = [float(v) for v in (t, a, b, b2, c, d)]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(
                f"solver coefficients are not finite at t={values[0]:.6g} (step {step}): the "
                "schedule, prediction type and solver are singular there; start below t = 1 "
                "(t_max) or choose another solver / diffusion"
            )
        for name, v in zip(("t", "a", "b", "b2", "c", "d"), values):
            getattr(self, name).append(v)
        self.keep.append(keep)
        self.step.append(step)

    def add_row(
        self, t, x_out: Lin, *, step: int, keep: bool = True, g_out: Optional[Lin] = None
    ) -> None:
        """Append the stage at time t whose update is `x_out` (a Lin of X, G, G_PREV, Z) and
        which hands on `g_out` (G + d X; default G)."""
        d = 0.0
        if g_out is not None:
            if set(g_out.terms) - {"x", "g"} or g_out["g"] != 1.0:
                raise ValueError(f"g_out must be G + d * X, got {g_out}")
            d = g_out["x"]
        self.add(
            t,
            x_out["x"],
            x_out["g"],
            b2=x_out["g_prev"],
            c=x_out["z"],
            keep=keep,
            d=d,
            step=step,
        )

    def __len__(self) -> int:
        return len(self.t)

    def frozen(self) -> StageTable:
        """The same table with every column a tuple: nothing can be added or changed."""
        columns = {f.name: tuple(getattr(self, f.name)) for f in fields(self)}
        return StageTable(**columns)

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
            for name in ("t", "a", "b", "b2", "c", "d")
        }
        out["keep"] = torch.tensor(self.keep, dtype=torch.bool, device=device)
        return out


def _coef(schedule: Schedule, prediction: str, target: str, t: float) -> tuple[float, float]:
    a, b = conversion_coefficients(prediction, target, schedule, float(t))
    return float(a), float(b)


def _predicted(schedule: Schedule, prediction: str, target: str, t: float) -> Lin:
    """The `target` prediction at time t as a Lin of the stage's X and G: A X + B G."""
    a, b = _coef(schedule, prediction, target, t)
    return a * X + b * G


def euler(schedule: Schedule, prediction: str, grid: Sequence[float]) -> StageTable:
    """Euler for the probability-flow ODE dx/dt = v(x, t)."""
    table = StageTable()
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        v = _predicted(schedule, prediction, "velocity", t)
        dt = t_next - t
        table.add_row(t, X + dt * v, step=i)
    return table


def heun(schedule: Schedule, prediction: str, grid: Sequence[float]) -> StageTable:
    """Heun's second-order method for the probability-flow ODE; Euler on a step that ends at
    t = 0, where the corrector's velocity is undefined (Karras et al. 2022)."""
    table = StageTable()
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        dt = t_next - t
        v1 = _predicted(schedule, prediction, "velocity", t)  # v(x, t) from the first output g1
        x_pred = X + dt * v1  # the Euler predictor
        if t_next <= 0.0:
            table.add_row(t, x_pred, step=i)
            continue
        table.add_row(t, x_pred, step=i, keep=False)  # evaluate there, keep x
        # the corrector stage reads x, g2 = the output at (x_pred, t_next) and g_prev = g1
        v1, x_pred = v1.one_stage_later(), x_pred.one_stage_later()
        an, bn = _coef(schedule, prediction, "velocity", t_next)  # v2 = an x_pred + bn g2
        h = 0.5 * dt
        # trapezoid x + h (v1 + v2), written x + h v1 + (h an) x_pred + (h bn) g2: this
        # grouping of the products is the one whose floats the tables have always had
        x_next = X + h * v1 + (h * an) * x_pred + (h * bn) * G
        table.add_row(t_next, x_next, step=i)
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
        v = _predicted(schedule, prediction, "velocity", t)
        score = _predicted(schedule, prediction, "score", t)
        w = _diffusion(schedule, t, diffusion, diffusion_scale)
        dt = t_next - t
        drift = v - (0.5 * w) * score
        noise = math.sqrt(w * -dt) if t_next > 0.0 else 0.0
        table.add_row(t, X + dt * drift + noise * Z, step=i)
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
        x0 = _predicted(schedule, prediction, "x0", t)
        eps = _predicted(schedule, prediction, "eps", t)
        alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
        alpha_n, sigma_n = float(schedule.alpha(t_next)), float(schedule.sigma(t_next))
        ratio = (alpha * sigma_n) / (alpha_n * sigma) if sigma_n > 0.0 else 0.0
        s = min(eta * sigma_n * math.sqrt(max(0.0, 1.0 - ratio**2)), sigma_n)
        k = math.sqrt(max(0.0, sigma_n**2 - s**2))
        table.add_row(t, alpha_n * x0 + k * eps + s * Z, step=i)
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


def _log_alpha_over_sigma(schedule: Schedule, t: float) -> float:
    """lambda = log(alpha / sigma): -inf where alpha = 0, +inf where sigma = 0."""
    alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
    if alpha == 0.0 or sigma == 0.0:
        return -math.inf if alpha == 0.0 else math.inf
    return math.log(alpha / sigma)


def dpmpp_2m(schedule: Schedule, prediction: str, grid: Sequence[float]) -> StageTable:
    """DPM-Solver++(2M) (Lu et al. 2022), as k-diffusion's `sample_dpmpp_2m`: the data-prediction
    multistep solver in lambda = log(alpha / sigma). With D_i the x0 prediction at step i and
    h = lambda_next - lambda,

        x_next = (sigma_next / sigma) x + alpha_next (1 - e^-h) D',
        D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1},  r = h_{i-1} / h,

    and D' = D_i on the first step and on a step that lands on sigma = 0. One model evaluation
    per step. D_{i-1} = A x_{i-1} + B g_{i-1} depends on the previous state, so each stage hands
    on D / B = g + (A / B) x (the d column) and the next one scales it back by B. Starting at
    alpha = 0 (t = 1 on the linear schedule) is exact where the x0 conversion is finite there
    (velocity, x0, v: the first step is x_next = sigma_next x / sigma + alpha_next D_0)."""
    table = StageTable()
    h_last, b_last = None, None
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        sigma, sigma_n = float(schedule.sigma(t)), float(schedule.sigma(t_next))
        alpha_n = float(schedule.alpha(t_next))
        a0, b0 = _coef(schedule, prediction, "x0", t)  # D = a0 x + b0 g
        if b0 == 0.0 or sigma == 0.0:
            raise ValueError(
                f"dpm++2m cannot evaluate the model at t={t:.6g} (step {i}), where sigma = 0: "
                "end the grid there"
            )
        denoised = a0 * X + b0 * G
        h = _log_alpha_over_sigma(schedule, t_next) - _log_alpha_over_sigma(schedule, t)
        if not h > 0.0:
            raise ValueError(f"dpm++2m needs a grid of falling noise level, got {t} -> {t_next}")
        if h_last is None or sigma_n == 0.0:
            d_used = denoised
        else:
            r = h_last / h
            d_prev = b_last * G_PREV  # g_prev holds D_{i-1} / B_{i-1}
            d_used = (1.0 + 1.0 / (2.0 * r)) * denoised - (1.0 / (2.0 * r)) * d_prev
        x_next = (sigma_n / sigma) * X + (alpha_n * -math.expm1(-h)) * d_used
        table.add_row(t, x_next, step=i, g_out=G + (a0 / b0) * X)
        h_last, b_last = h, b0
    return table


SOLVERS: dict[str, Callable[..., StageTable]] = {
    "euler": euler,
    "heun": heun,
    "euler-maruyama": euler_maruyama,
    "ddim": ddim,
    "ddpm": ddpm,
    "dpm++2m": dpmpp_2m,
}


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
    check_solver_options(solver, options)
    grid = [float(t) for t in grid]
    return SOLVERS[solver](get_schedule(schedule), prediction, grid, **options)


def check_solver_options(solver: str, options: dict[str, Any]) -> None:
    """Refuse an option `solver` does not take (naming the ones it does) and a non-finite or
    non-numeric value for a numeric one."""
    params = inspect.signature(SOLVERS[solver]).parameters
    own = [name for name, p in params.items() if p.kind is p.KEYWORD_ONLY]
    for name, value in options.items():
        if name not in own:
            takes = f"takes {', '.join(own)}" if own else "takes no options of its own"
            raise TypeError(
                f"unknown option {name!r}: it is not a sampler option, and solver {solver!r} "
                f"{takes}"
            )
        if isinstance(params[name].default, float):
            finite_number(name, value)
