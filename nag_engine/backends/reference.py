"""The fused steps in plain torch: the references every kernel is tested against, with the
kernels' exact signatures (docs/ARCHITECTURE.md §4)."""

from __future__ import annotations

from typing import Optional

import torch

from ..guidance import combine_reference

Tensor = torch.Tensor


def reference_step(
    out: Tensor,
    weights: Tensor,
    coef: Tensor,
    stage: Tensor,
    x: Tensor,
    *,
    x_new: Optional[Tensor] = None,
    g_prev: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    g_out: Optional[Tensor] = None,
    next_input: Optional[Tensor] = None,
) -> Tensor:
    """The guidance + solver step of stage `stage`, rows gathered on the device (no host read).

    With w = weights[stage] and (a, b, b2, c, keep, d) = coef[stage], in float32:
    g = sum_p w_p out_p; x_out = a x + b g + b2 g_prev + c z (the b2 / c terms only where g_prev
    / z are given); g_out <- g + d x (exactly g where d = 0, even where x is infinite);
    next_input[p] <- x_out for every pass slot p; x_new (default: x itself) <- x_out where keep,
    else x. Returns x_new."""
    at = stage.reshape(1).long()
    a, b, b2, c, keep, d = coef.index_select(0, at)[0].unbind(0)
    w = weights.index_select(0, at)[0, : out.shape[0]]
    g = combine_reference(list(out), list(w.unbind(0)))
    x_out = a * x + b * g
    if g_prev is not None:
        x_out = x_out + b2 * g_prev
    if z is not None:
        x_out = x_out + c * z
    if next_input is not None and next_input.shape[0]:
        next_input.copy_(x_out.unsqueeze(0).expand_as(next_input))
    if g_out is not None:
        g_out.copy_(torch.where(d != 0, g + d * x, g))
    target = x if x_new is None else x_new
    target.copy_(torch.where(keep != 0, x_out, x))
    return target


def picard_update_reference(
    out: Tensor,
    weights: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    xs: Tensor,
    z: Optional[Tensor] = None,
) -> Tensor:
    """One Picard update of a window (`nag_engine.parallel`), the reference of
    `kernels.picard.picard_update`.

    out [L, P, B, ...] model outputs, weights [L, P] pass weights, a / b / c [L] the steps'
    coefficients, xs [L + 1, B, ...] the window's points (xs[0] = its exact start; rows 1..L
    are replaced by the new estimates), z [L, B, ...] the steps' noise or None. Returns the
    mean squared change per element of each new point, [L, B]."""
    length = out.shape[0]
    per_step = (-1,) + (1,) * (xs.ndim - 1)
    g = (weights.view(*weights.shape, *([1] * (xs.ndim - 1))) * out.float()).sum(1)
    drift = (a.view(per_step) - 1) * xs[:length] + b.view(per_step) * g
    if z is not None:
        drift = drift + c.view(per_step) * z
    new = xs[0] + torch.cumsum(drift, dim=0)
    change = (new - xs[1:]).square().flatten(2).mean(2)
    xs[1:] = new
    return change
