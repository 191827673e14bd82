"""The checks of one sampling call's arguments against a plan (n, labels, seed, latents, batch
size, the sample shape the model takes, and whether the result fits in memory): the one place
the executors validate a request, all before any work."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import torch

from .arguments import (
    check_bool,
    check_positive_int,
    describe,
    format_bytes,
    free_memory,
)
from .noise import check_seed
from .plan import SamplingPlan

Tensor = torch.Tensor


class Request(NamedTuple):
    """A sampling call's arguments after `check_request`."""

    n: int
    batch_size: int
    shape: tuple[int, ...]  # one sample's
    labels: Optional[Tensor]  # long [n] on the plan's device, or None


def check_latents(latents: Any, n: int) -> None:
    """latents, when given, must be a finite floating-point tensor [n, ...] (a batch of initial
    states); one host read per call."""
    if latents is None:
        return
    if not isinstance(latents, Tensor) or latents.ndim < 2 or len(latents) != n:
        raise ValueError(f"latents must be a tensor [n={n}, ...], got {describe(latents)}")
    if not latents.is_floating_point():
        raise TypeError(f"latents must be a floating-point tensor, got dtype {latents.dtype}")
    if not bool(torch.isfinite(latents).all()):
        raise ValueError("latents hold NaN or inf values; pass finite initial states")


def check_request(
    plan: SamplingPlan,
    n: Any,
    *,
    y: Any,
    seed: Any,
    latents: Any,
    batch_size: Any,
    progress: Any,
    default_batch: int,
) -> Request:
    """Every argument of a sampling call, checked before any work (see `Request`)."""
    n = check_positive_int("n", n)
    batch_size = (
        min(n, default_batch)
        if batch_size is None
        else check_positive_int("batch_size", batch_size)
    )
    check_bool("progress", progress)
    check_seed(seed)
    check_latents(latents, n)
    shape = plan.resolve_shape(latents)
    if y is not None and 8 * n > free_memory(plan.device):
        raise ValueError(
            f"n={n:,} class labels need {format_bytes(8 * n)}, more than the free "
            f"{format_bytes(free_memory(plan.device))} on {plan.device}: sample fewer at a time"
        )
    labels = plan.check_labels(y, n)
    check_fits(plan, shape, "latents" if latents is not None else "sample_shape")
    return Request(n, batch_size, shape, labels)


def check_fits(plan: SamplingPlan, shape: tuple[int, ...], source: str) -> None:
    """Refuse samples of `shape` (from `source`: "latents" or "sample_shape") that the
    model does not take: free when the model declares this shape, else one forward of a
    single sample, so the error comes before the run and names `source`."""
    declared = getattr(plan.model, "sample_shape", None)
    if declared is not None and tuple(declared) == tuple(shape):
        return
    x = torch.zeros((1, *shape), device=plan.device)
    t = torch.full((1,), plan.t_max, device=plan.device)
    y = torch.zeros(1, dtype=torch.long, device=plan.device) if plan.num_classes else None
    fix = f"; it declares samples of shape {tuple(declared)}" if declared is not None else ""
    try:
        with torch.no_grad(), plan.autocast():
            out = plan.forward(x, t, y, drop_t=None, drop_y=None)
    except Exception as err:  # whatever the model raises, reported as the request's fault
        raise ValueError(
            f"{source}: samples of shape {tuple(shape)} do not fit the model{fix} "
            f"(the model raised {type(err).__name__}: {err})"
        ) from err
    if not isinstance(out, Tensor) or out.shape != x.shape:
        raise ValueError(
            f"{source}: for samples of shape {tuple(shape)} the model returns {describe(out)}{fix}"
        )


def check_result_size(plan: SamplingPlan, n: int, shape: tuple[int, ...], states: int = 1) -> None:
    """Refuse a returned tensor of `states` x n samples of `shape` (float32, kept in parts
    and then joined) that cannot fit in the device's free memory, saying what fits."""
    per_sample = 2 * 4 * states * math.prod(shape)  # the parts and the joined tensor
    free = free_memory(plan.device)
    if n * per_sample > free:
        raise ValueError(
            f"n={n:,} samples of shape {tuple(shape)} need {format_bytes(n * per_sample)} "
            f"for the returned tensor, more than the {format_bytes(free)} free on "
            f"{plan.device}: at most {free // per_sample:,} fit at once; draw them in parts "
            "with Sampler.stream or write them to disk with nag_engine.sample_to_disk"
        )
