"""One sampling stage: the model evaluation of every guidance pass in one forward on static
buffers, then the fused guidance + solver step. `run_stage` is the one function the eager loop
and a captured CUDA graph both run (`nag_engine.sampler`); docs/ARCHITECTURE.md follows its data
path step by step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import backends
from .guidance import Pass, combine_reference
from .noise import CounterNoise
from .plan import SamplingPlan

Tensor = torch.Tensor


@dataclass
class BatchBuffers:
    """The static buffers of one batch shape: what the stage function (and a captured graph)
    reads and writes."""

    x: Tensor  # float32 [B, ...] the state
    x_in: Tensor  # [max passes * B, ...] the model input, pass-major, in the model's dtype
    t_in: Tensor  # float32 [max passes * B]
    y_in: Optional[Tensor]  # long [max passes * B], or None for unlabelled runs
    g_prev: Optional[Tensor]  # float32 [B, ...] what the previous stage left (multistage solvers)
    g: Tensor  # float32 [B, ...] the guided prediction, for callbacks
    index: Tensor  # long [B] global sample indices (the noise is addressed by them)
    stage: Tensor  # long [] the device-side stage counter
    first_bad: Tensor  # long [] the first step with a non-finite state, or -1
    noise: CounterNoise
    step: backends.BoundStep  # the fused step on these buffers (g_prev is also its g_out)
    flags: dict[tuple[Pass, ...], tuple[Optional[Tensor], Optional[Tensor]]]
    replays: Optional[dict[tuple[Pass, ...], Callable[[], None]]] = field(default=None)

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def make_buffers(
    plan: SamplingPlan, batch: int, shape: tuple[int, ...], labelled: bool
) -> BatchBuffers:
    """The buffers for `batch` samples of `shape` (with class labels or not)."""
    dev = plan.device
    max_passes = plan.guidance_plan.max_passes
    x = torch.empty(batch, *shape, device=dev, dtype=torch.float32)
    x_in = torch.zeros(max_passes * batch, *shape, device=dev, dtype=plan.dtype)
    g_prev = torch.zeros(batch, *shape, device=dev) if plan.stages.uses_g_prev else None
    stage = torch.zeros((), device=dev, dtype=torch.long)
    step = backends.BoundStep(
        backends.implementation(plan.backend),
        plan.tables.weights,
        plan.tables.coef,
        stage,
        x,
        g_prev=g_prev,
        g_out=g_prev,
        next_input=x_in.view(max_passes, batch, *shape),
    )
    return BatchBuffers(
        x=x,
        x_in=x_in,
        t_in=torch.empty(max_passes * batch, device=dev, dtype=torch.float32),
        y_in=torch.zeros(max_passes * batch, device=dev, dtype=torch.long) if labelled else None,
        g_prev=g_prev,
        g=torch.empty(batch, *shape, device=dev, dtype=torch.float32),
        index=torch.empty(batch, device=dev, dtype=torch.long),
        stage=stage,
        first_bad=torch.full((), -1, device=dev, dtype=torch.long),
        noise=CounterNoise(0, shape, dev),
        step=step,
        flags={
            passes: plan.drop_flags(passes, batch, labelled)
            for passes in plan.guidance_plan.distinct_pass_sets()
        },
    )


def run_stage(
    plan: SamplingPlan,
    bufs: BatchBuffers,
    passes: tuple[Pass, ...],
    k: Optional[int],
    report: Optional[Tensor] = None,
) -> None:
    """One model evaluation with pass set `passes` and its fused guidance + solver step, at the
    device-side stage counter `bufs.stage` (which it advances).

    `k` is the host stage index on the eager path and None when captured; with it come the
    host-side extras (time-shift sampler, classifier-based NAG), noise drawn only where the stage
    has any, and next-input slots only for the next stage's passes. Captured, every stage draws
    noise (multiplied by c = 0 where a step has none) and fills every slot, so one graph serves
    all stages of a pass set. The step's g output goes to `bufs.g_prev` (where the solver has
    one); `report` (eager only) receives the guided prediction g itself, for a callback (g_prev
    may hold g + d x)."""
    tables = plan.tables
    batch, shape = bufs.batch, bufs.shape
    p, rows = len(passes), len(passes) * batch
    at = bufs.stage.view(1)
    x_in, t_in = bufs.x_in[:rows], bufs.t_in[:rows]
    y_in = bufs.y_in[:rows] if bufs.y_in is not None else None

    # 1. the model: all passes of the stage in one forward, at the stage's time
    t_in.copy_(tables.times.index_select(0, at).expand(rows))
    if k is not None and plan.time_shift is not None:  # per-sample times from the state
        shifted = plan.time_shift(bufs.x_in[:batch], tables.times[k])
        t_in.view(p, batch).copy_(shifted.expand(p, batch))
    with plan.autocast(captured=k is None):
        out = plan.evaluate(x_in, t_in, y_in, *bufs.flags[passes])
    if k is not None and plan.classifier is not None and plan.classifier.active(k):
        y_cond = bufs.y_in[:batch] if bufs.y_in is not None else None
        delta = plan.classifier.delta(k, bufs.x_in[:batch].float(), y_cond)
        out.view(p, batch, *shape).add_(delta.to(out.dtype))

    if report is not None:
        report.copy_(
            combine_reference(list(out.view(p, batch, *shape)), plan.guidance_plan.weights[k])
        )

    # 2. guidance + solver update + next model input, fused
    if k is None:
        noisy, slots = plan.stages.stochastic, plan.guidance_plan.max_passes
    else:
        last = k + 1 == len(plan.stages)
        noisy, slots = plan.stages.c[k] != 0.0, 0 if last else plan.guidance_plan.num_passes(k + 1)
    bufs.step(  # x updated in place; g_prev and the next input's first slots written
        out.view(p, batch, *shape),
        z=bufs.noise.normal(bufs.index, bufs.stage + 1) if noisy else None,
        slots=slots,
    )

    # 3. flag the first non-finite state on the device (read once per batch)
    bad = ~torch.isfinite(bufs.x).all() & tables.keep.index_select(0, at)[0]
    step = tables.step_of_stage.index_select(0, at)[0]
    bufs.first_bad.copy_(torch.where((bufs.first_bad < 0) & bad, step, bufs.first_bad))
    bufs.stage.add_(1)
