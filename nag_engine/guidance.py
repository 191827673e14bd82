"""Guidance plans: which passes of the network run at each model evaluation, and their weights.

The guided prediction is a linear combination of passes of one network at the same x and t,
`g = sum_p w_p * out_p` with `sum_p w_p = 1`:

* CFG (`cfg_scale`, 1.0 = off):          out(t,c) + (s_cfg - 1) * [out(t,c) - out(t,null c)]
* classifier-free NAG (`nag_scale`, 0 = off): out(t,c) + s_nag * [out(t,c) - out(null t,c)]

With `nag_null_class=True` the NAG pass also drops the class: out(null t, null c). With CFG
on as well, that is out(t,c) + (s_cfg - 1)[out(t,c) - out(t,null c)] + s_nag[out(t,c) -
out(null t,null c)]. The NAG paper (Zhong et al. 2025) calls NAG and CFG guidance along two
separate axes, but no text we could read gives its combined formula. The default (null t, c)
keeps the two axes apart; the other form is offered so the two can be compared. Both use 3
passes.

Each scale can be limited to an interval of t; outside it the pass is not run at all. The plan
is made on the host from the time grid before sampling, so the step loop never inspects
tensor values to decide what to run.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from .arguments import finite_number


@dataclass(frozen=True)
class Pass:
    """One forward pass of the network: which conditions are replaced by their null embedding."""

    name: str
    drop_t: bool
    drop_y: bool


COND = Pass("cond", drop_t=False, drop_y=False)  # (t, c)
UNCOND_CLASS = Pass("uncond_class", drop_t=False, drop_y=True)  # (t, null c)
UNCOND_NOISE = Pass("uncond_noise", drop_t=True, drop_y=False)  # (null t, c)
UNCOND_NOISE_CLASS = Pass("uncond_noise_class", drop_t=True, drop_y=True)  # (null t, null c)

Interval = Optional[tuple[float, float]]


def check_interval(name: str, interval: Interval) -> Interval:
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a pair (t_low, t_high) or None, got {interval!r}"
        ) from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"{name} must satisfy 0 <= t_low <= t_high <= 1, got {interval!r}")
    return (lo, hi)


def inside(t: float, interval: Interval) -> bool:
    return interval is None or interval[0] <= t <= interval[1]


@dataclass(frozen=True)
class Guidance:
    """Guidance settings: CFG and classifier-free NAG scales with optional t intervals.

    Intervals are closed, `(t_low, t_high)` in the time convention t = 0 data, t = 1 noise."""

    cfg_scale: float = 1.0
    nag_scale: float = 0.0
    cfg_interval: Interval = None
    nag_interval: Interval = None
    nag_null_class: bool = False  # the NAG pass drops the class too: (null t, null c)

    def __post_init__(self) -> None:
        if not isinstance(self.nag_null_class, bool):
            raise TypeError(f"nag_null_class must be True or False, got {self.nag_null_class!r}")
        object.__setattr__(self, "cfg_scale", finite_number("cfg_scale", self.cfg_scale))
        object.__setattr__(self, "nag_scale", finite_number("nag_scale", self.nag_scale))
        object.__setattr__(self, "cfg_interval", check_interval("cfg_interval", self.cfg_interval))
        object.__setattr__(self, "nag_interval", check_interval("nag_interval", self.nag_interval))

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale != 1.0

    @property
    def uses_nag(self) -> bool:
        return self.nag_scale != 0.0

    def passes_at(self, t: float) -> tuple[tuple[Pass, ...], tuple[float, ...]]:
        """The passes to run at time t (the conditional one first) and their weights."""
        s, n = self.cfg_scale, self.nag_scale
        cfg = self.uses_cfg and inside(t, self.cfg_interval)
        nag = self.uses_nag and inside(t, self.nag_interval)
        passes, weights = [COND], [1.0 + (s - 1.0 if cfg else 0.0) + (n if nag else 0.0)]
        if cfg:
            passes.append(UNCOND_CLASS)
            weights.append(1.0 - s)
        if nag:
            passes.append(UNCOND_NOISE_CLASS if self.nag_null_class else UNCOND_NOISE)
            weights.append(-n)
        return tuple(passes), tuple(weights)

    def plan(self, times: Sequence[float]) -> GuidancePlan:
        """The plan for model evaluations at the given times."""
        entries = [self.passes_at(float(t)) for t in times]
        return GuidancePlan(
            passes=tuple(p for p, _ in entries), weights=tuple(w for _, w in entries), guidance=self
        )


@dataclass(frozen=True)
class GuidancePlan:
    """Per model evaluation k: `passes[k]` (tuple of Pass) and `weights[k]` (floats, sum 1)."""

    passes: tuple[tuple[Pass, ...], ...]
    weights: tuple[tuple[float, ...], ...]
    guidance: Guidance

    @property
    def max_passes(self) -> int:
        return max(len(p) for p in self.passes)

    def num_passes(self, k: int) -> int:
        return len(self.passes[k])

    def distinct_pass_sets(self) -> list[tuple[Pass, ...]]:
        """Each distinct tuple of passes once, in order of first use."""
        return list(dict.fromkeys(self.passes))

    def all_passes(self) -> tuple[Pass, ...]:
        """Every pass any evaluation runs, once, in order of first use."""
        return tuple(dict.fromkeys(p for passes in self.passes for p in passes))

    def weight_table(self, device: torch.device | str, by_pass: bool = False) -> torch.Tensor:
        """float32 [evaluations, max_passes]: row k holds the weights of `passes[k]` in order,
        unused slots zero. With `by_pass`, [evaluations, len(all_passes())]: column j is the
        weight of `all_passes()[j]` (zero where an evaluation does not run it)."""
        columns = self.all_passes() if by_pass else None
        table = torch.zeros(
            len(self.weights), len(columns) if by_pass else self.max_passes, dtype=torch.float64
        )
        for k, (passes, weights) in enumerate(zip(self.passes, self.weights)):
            for slot, (p, w) in enumerate(zip(passes, weights)):
                table[k, columns.index(p) if by_pass else slot] = w
        return table.to(device=device, dtype=torch.float32)


def warn_empty_intervals(
    guidance: Guidance,
    times: Sequence[float],
    classifier_nag_scale: float = 0.0,
    classifier_nag_interval: Optional[tuple[float, float]] = None,
) -> None:
    """A UserWarning for each guidance that is on but whose t interval holds none of the
    times the model is evaluated at (it would silently do nothing)."""
    wanted = (
        ("cfg", guidance.uses_cfg, guidance.cfg_interval),
        ("nag", guidance.uses_nag, guidance.nag_interval),
        (
            "classifier_nag",
            classifier_nag_scale != 0.0,
            check_interval("classifier_nag_interval", classifier_nag_interval),
        ),
    )
    for name, on, interval in wanted:
        if on and interval is not None and not any(inside(float(t), interval) for t in times):
            shown = ", ".join(f"{float(t):.3g}" for t in times)
            warnings.warn(
                f"{name}_interval={tuple(interval)} contains none of the times the model is "
                f"evaluated at ({shown}): {name} guidance is off for the whole run; widen the "
                "interval or use more steps",
                stacklevel=3,
            )


def combine_reference(outputs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum_p w_p * out_p in float32, accumulated in pass order (the reference for the kernels)."""
    if len(outputs) != len(weights):
        raise ValueError(f"{len(outputs)} outputs but {len(weights)} weights")
    g = weights[0] * outputs[0].float()
    for w, out in zip(weights[1:], outputs[1:]):
        g = g + w * out.float()
    return g
