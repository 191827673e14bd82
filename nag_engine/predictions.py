"""Exact conversions between what a denoiser predicts: velocity, eps, x0, v and the score.

At a fixed time every prediction is an affine function of (x, out): `dst = A * x + B * out`.
`conversion_coefficients` returns (A, B); the solvers fold them into their step coefficients,
`convert` applies them to tensors. With x = alpha x0 + sigma eps:

* velocity  dx/dt = alpha' x0 + sigma' eps (flow matching, SiT)
* v         alpha eps - sigma x0 (Salimans & Ho's "v-prediction", diffusers' v_prediction;
            not the velocity: on a VP schedule it is the velocity in the angle of (alpha, sigma))
* score     s = grad log p_t(x) = -eps / sigma
"""

from __future__ import annotations

from typing import Union

import torch

from .schedules import Schedule, TimeLike, as_tensor, get_schedule

Tensor = torch.Tensor

PREDICTIONS = ("velocity", "eps", "x0", "v", "score")


def check_prediction(prediction: str, name: str = "prediction") -> str:
    """Return `prediction` if it is a known prediction type, else raise a ValueError."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown {name} {prediction!r}: choose one of {PREDICTIONS}")
    return prediction


def _x0_eps_coefficients(src: str, sched: Schedule, t: Tensor):
    """((A_x0, B_x0), (A_eps, B_eps)) with x0 = A_x0 x + B_x0 out and eps = A_eps x + B_eps out.

    Each pair is computed lazily (a callable) so that a target that needs only one of them never
    divides by a zero it does not need (x0 from x0 at sigma = 0, eps from eps at alpha = 0)."""
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    if src == "x0":
        return (lambda: (zero, one)), (lambda: (1.0 / sigma, -alpha / sigma))
    if src == "eps":
        return (lambda: (1.0 / alpha, -sigma / alpha)), (lambda: (zero, one))
    if src == "score":  # eps = -sigma * s, x0 = (x + sigma^2 s) / alpha
        return (lambda: (1.0 / alpha, sigma**2 / alpha)), (lambda: (zero, -sigma))
    if src == "v":  # solve [alpha sigma; -sigma alpha] [x0; eps] = [x; v]
        norm = alpha**2 + sigma**2
        return (lambda: (alpha / norm, -sigma / norm)), (lambda: (sigma / norm, alpha / norm))
    # velocity: solve [alpha sigma; alpha' sigma'] [x0; eps] = [x; v]
    d_alpha, d_sigma = sched.d_alpha(t), sched.d_sigma(t)

    def det():
        return alpha * d_sigma - sigma * d_alpha

    return (lambda: (d_sigma / det(), -sigma / det())), (lambda: (-d_alpha / det(), alpha / det()))


def conversion_coefficients(
    src: str, dst: str, schedule: Union[str, Schedule], t: TimeLike
) -> tuple[Tensor, Tensor]:
    """(A, B) such that the `dst` prediction equals A * x + B * out, for a model output `out` of
    type `src` at state x and time t (float64 for float or float64 input)."""
    check_prediction(src, "source prediction")
    check_prediction(dst, "target prediction")
    sched = get_schedule(schedule)
    t = as_tensor(t)
    if src == dst:
        return torch.zeros_like(t), torch.ones_like(t)
    x0, eps = _x0_eps_coefficients(src, sched, t)
    if dst == "x0":
        return x0()
    if dst == "eps":
        return eps()
    if dst == "score":
        a, b = eps()
        sigma = sched.sigma(t)
        return -a / sigma, -b / sigma
    if dst == "v":
        (a0, b0), (ae, be) = x0(), eps()
        alpha, sigma = sched.alpha(t), sched.sigma(t)
        return alpha * ae - sigma * a0, alpha * be - sigma * b0
    (a0, b0), (ae, be) = x0(), eps()
    d_alpha, d_sigma = sched.d_alpha(t), sched.d_sigma(t)
    return d_alpha * a0 + d_sigma * ae, d_alpha * b0 + d_sigma * be


def convert(
    out: Tensor,
    x: Tensor,
    t: TimeLike,
    schedule: Union[str, Schedule],
    src: str,
    dst: str,
) -> Tensor:
    """Convert a model output `out` of type `src` at (x, t) into the `dst` prediction.

    `t` is a float, a 0-d tensor or a [B] tensor (one time per row of x). The arithmetic runs in
    float64 for the coefficients and in the promoted dtype of x and out for the tensors."""
    t = as_tensor(t)
    a, b = conversion_coefficients(src, dst, schedule, t.double())
    if a.ndim == 1:
        shape = (-1,) + (1,) * (x.ndim - 1)
        a, b = a.view(shape), b.view(shape)
    dtype = torch.promote_types(x.dtype, out.dtype)
    return a.to(x.device, dtype) * x + b.to(x.device, dtype) * out
