"""The sequential executor: runs a `SamplingPlan` stage by stage, eagerly or as CUDA graphs.

Per model evaluation (stage) k the sampler
1. runs every guidance pass of the plan in ONE forward call on a preallocated input buffer
   laid out pass-major ([P, B, ...]: rows p*B .. (p+1)*B - 1 are pass p),
2. combines the passes and applies the solver update in one fused step, which also writes the
   next model input into the buffer (no torch.cat per step).
Both happen in `nag_engine.stage.run_stage`, the one stage function of the eager and the
captured paths: it reads the stage's time, coefficients and weights from the plan's device
tables at a device-side stage counter, so the loop never reads a tensor value back (non-finite
states are flagged on the device and read once per batch) and the stage can be captured as a
CUDA graph.
Classifier-based NAG and the time-shift sampler need the host stage index and run eagerly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from . import graphs
from .parallel import ParallelSampler
from .plan import SamplingPlan, make_plan, non_finite_error
from .requests import check_request, check_result_size
from .stage import BatchBuffers, make_buffers, run_stage

Tensor = torch.Tensor

DEFAULT_BATCH = 1024  # samples per forward batch when sample() is not told


class SampleBatch(NamedTuple):
    """One batch from `Sampler.stream`."""

    start: int  # index of its first sample in the whole run
    samples: Tensor  # float32 [batch, *sample_shape], on the sampler's device
    labels: Optional[Tensor]  # [batch] class ids, or None
    trajectory: Optional[Tensor] = None  # [steps + 1, batch, ...] when asked for


@dataclass
class StepInfo:
    """What a callback sees after each sampling step. Tensors are views of the sampler's
    buffers: copy them to keep them."""

    step: int  # index of the step, 0 .. steps - 1
    t: float  # time at the start of the step
    t_next: float  # time at its end
    x: Tensor  # state at t (float32, the current batch)
    prediction: Tensor  # guided model output at (x, t), in the model's prediction type
    x_next: Tensor  # state at t_next
    batch_start: int  # global index of the batch's first sample


class Sampler:
    """Reusable sampler for one model and one configuration (steps, solver, guidance; the
    options of `sample`). The plan (`nag_engine.plan`) is built once and the static buffers are
    kept per batch shape, so repeated calls allocate nothing new. `cuda_graphs`: "auto"
    (capture each stage on CUDA where possible), True (capture or raise), False (eager);
    `graph_status()` says which and why. `graph_runner` replaces the CUDA-graph capture
    (anything with ``capture(body, reset) -> replay`` and a ``captured`` count; with one, stages
    are captured on any device -- the tests use a fake on CPU)."""

    def __init__(
        self, model: nn.Module, steps: int, *, graph_runner: Any = None, **options: Any
    ) -> None:
        self.plan: SamplingPlan = make_plan(
            model, steps, capture_anywhere=graph_runner is not None, **options
        )
        if self.plan.graph_reason is not None:
            graph_runner = None
        elif graph_runner is None:
            graph_runner = graphs.CudaGraphs(self.plan.device)
        self._graph_runner = graph_runner
        self._capture_error: Optional[str] = None  # set once if a capture fails
        self._last_call_reason: Optional[str] = None
        self._buffers: dict[tuple, BatchBuffers] = {}

    # read-only views of the plan
    model = property(lambda self: self.plan.model)
    steps = property(lambda self: self.plan.steps)
    solver = property(lambda self: self.plan.solver)
    schedule = property(lambda self: self.plan.schedule)
    prediction = property(lambda self: self.plan.prediction)
    guidance = property(lambda self: self.plan.guidance)
    grid = property(lambda self: self.plan.grid)
    stages = property(lambda self: self.plan.stages)
    device = property(lambda self: self.plan.device)
    dtype = property(lambda self: self.plan.dtype)
    backend = property(lambda self: self.plan.backend)

    @property
    def classifier_nag_scale(self) -> float:
        return self.plan.classifier.scale if self.plan.classifier is not None else 0.0

    # ------------------------------------------------------------------ public calls
    def sample(
        self,
        n: int,
        *,
        y: Any = None,
        seed: int = 0,
        latents: Optional[Tensor] = None,
        batch_size: Optional[int] = None,
        progress: bool = True,
        callback: Optional[Callable[[StepInfo], None]] = None,
    ) -> Tensor:
        """Draw n samples, float32 [n, *sample_shape].

        `latents` [n, *shape] is the initial state at t_max (standard normal by default, drawn per
        sample index from `seed`), so results do not depend on `batch_size` (default: up to
        `DEFAULT_BATCH` samples per forward batch, halved on a CUDA out-of-memory error).
        `callback(StepInfo)` runs after every step."""
        request = dict(y=y, seed=seed, latents=latents, batch_size=batch_size)
        self._check_result_size(n, latents)
        parts = self.stream(n, **request, progress=progress, callback=callback)
        return torch.cat([part.samples for part in parts])

    def trajectory(self, n: int, **request: Any) -> Tensor:
        """The states at every grid time, float32 [steps + 1, n, *sample_shape]: the same run as
        `sample` with the same arguments (its last entry is what `sample` returns)."""
        self._check_result_size(n, request.get("latents"), states=self.plan.steps + 1)
        parts = self.stream(n, **request, return_trajectory=True)
        return torch.cat([part.trajectory for part in parts], dim=1)

    def stream(
        self,
        n: int,
        *,
        y: Any = None,
        seed: int = 0,
        latents: Optional[Tensor] = None,
        batch_size: Optional[int] = None,
        progress: bool = True,
        callback: Optional[Callable[[StepInfo], None]] = None,
        return_trajectory: bool = False,
        indices: Optional[range] = None,
    ) -> Iterator[SampleBatch]:
        """Sample batch by batch, yielding each `SampleBatch` (its first sample index, the
        float32 samples, their labels) as soon as it is done: for n too large to hold at once.

        Same arguments and samples as `sample`; `indices` (a sub-range of range(n)) draws only
        those samples -- the same ones a full run draws there, which is what resuming needs. On
        a CUDA out-of-memory error the batch is halved and retried (down to one sample)."""
        plan = self.plan
        n, batch_size, shape, labels = check_request(
            plan,
            n,
            y=y,
            seed=seed,
            latents=latents,
            batch_size=batch_size,
            progress=progress,
            default_batch=DEFAULT_BATCH,
        )
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be a function of a StepInfo, got {callback!r}")
        indices = range(n) if indices is None else indices
        if not isinstance(indices, range):
            raise TypeError(f"indices must be a range, got {type(indices).__name__}")
        if indices.step != 1 or (len(indices) and (indices.start < 0 or indices.stop > n)):
            raise ValueError(f"indices must be a contiguous sub-range of range({n}), got {indices}")
        with tqdm(
            total=plan.steps * len(indices),
            desc=f"sampling {len(indices)} x {plan.steps} steps",
            unit="sample-step",
            unit_scale=True,
            disable=not progress,
            leave=False,
        ) as bar:
            start = indices.start
            while start < indices.stop:
                stop = min(indices.stop, start + batch_size)
                init = latents[start:stop] if latents is not None else None
                batch_labels = labels[start:stop] if labels is not None else None
                try:
                    x, traj = self._sample_batch(
                        start,
                        stop,
                        shape,
                        seed,
                        init,
                        batch_labels,
                        callback,
                        return_trajectory,
                        bar,
                    )
                except torch.cuda.OutOfMemoryError:
                    if stop - start == 1:
                        raise
                    batch_size = self._after_out_of_memory(
                        stop - start, shape, labels is not None, bar
                    )
                    continue
                yield SampleBatch(start, x.clone(), batch_labels, traj)
                start = stop

    def graph_status(self) -> str:
        """Whether sampling replays CUDA graphs, and if not, why."""
        reason = self.plan.graph_reason or self._capture_error
        if reason is not None:
            return f"eager: {reason}"
        captured = self._graph_runner.captured
        text = f"CUDA graphs ({captured} captured: one per batch shape and pass set)"
        if self._last_call_reason is not None:
            text += f"; the last call ran eagerly: {self._last_call_reason}"
        return text

    def _check_result_size(self, n: Any, latents: Any, states: int = 1) -> None:
        """Before any work: a returned tensor that cannot fit is refused, saying what fits
        (the other arguments are checked by `stream`)."""
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            shape = self.plan.resolve_shape(latents if isinstance(latents, Tensor) else None)
            check_result_size(self.plan, n, shape, states)

    # ------------------------------------------------------------------ buffers
    def _buffers_for(self, batch: int, shape: tuple[int, ...], labelled: bool) -> BatchBuffers:
        key = (batch, shape, labelled)
        if key not in self._buffers:
            self._buffers[key] = make_buffers(self.plan, batch, shape, labelled)
        return self._buffers[key]

    def _after_out_of_memory(self, failed: int, shape: tuple, labelled: bool, bar) -> int:
        """After an out-of-memory error on a batch of `failed` samples: drop its buffers, free
        the cache, and return the halved batch size to go on with."""
        self._buffers.pop((failed, shape, labelled), None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        smaller = max(1, failed // 2)
        bar.write(f"out of memory with a batch of {failed} samples: continuing with {smaller}")
        return smaller

    def _captured_stage(self, bufs: BatchBuffers, passes: tuple) -> Callable[[], None]:
        """The stage of pass set `passes` as a graph capture sees it (no host index)."""
        return lambda: run_stage(self.plan, bufs, passes, None)

    def _replays(self, bufs: BatchBuffers, eager_reason: Optional[str]) -> Optional[dict]:
        """{pass set: replay} for this batch's buffers (captured on first use), or None to run
        eagerly."""
        reason = self.plan.graph_reason or self._capture_error or eager_reason
        self._last_call_reason = eager_reason
        if reason is not None:
            if self.plan.cuda_graphs is True:
                raise RuntimeError(f"cuda_graphs=True, but this call cannot use them: {reason}")
            return None
        if bufs.replays is None:
            try:
                bufs.replays = {
                    passes: self._graph_runner.capture(
                        self._captured_stage(bufs, passes), reset=bufs.stage.zero_
                    )
                    for passes in self.plan.guidance_plan.distinct_pass_sets()
                }
            except torch.cuda.OutOfMemoryError:
                raise  # stream() halves the batch; the next shape is captured afresh
            except Exception as err:
                if self.plan.cuda_graphs is True:
                    raise RuntimeError(
                        f"cuda_graphs=True, but capturing the step failed: {err}"
                    ) from err
                self._capture_error = f"capturing the step failed ({type(err).__name__}: {err})"
                warnings.warn(f"{self._capture_error}; sampling eagerly", stacklevel=4)
                return None
        return bufs.replays

    # ------------------------------------------------------------------ one batch
    @torch.no_grad()
    def _sample_batch(self, start, stop, shape, seed, init, labels, callback, keep_traj, bar):
        plan, stages = self.plan, self.plan.stages
        batch = stop - start
        bufs = self._buffers_for(batch, shape, labels is not None)
        # capture (on first use) before the state is set: the warm-up runs write the buffers
        replays = self._replays(bufs, graphs.call_reason(callback is not None, keep_traj))
        if bufs.noise.seed != seed:
            bufs.noise.reseed(seed)
        torch.arange(start, stop, out=bufs.index)
        x = bufs.x
        x.copy_(init if init is not None else bufs.noise.normal(bufs.index, 0))
        if bufs.y_in is not None:
            rows = bufs.y_in.numel() // batch
            bufs.y_in.view(rows, batch).copy_(labels.view(1, batch).expand(rows, batch))
        if bufs.g_prev is not None:
            bufs.g_prev.zero_()
        bufs.stage.zero_()
        bufs.first_bad.fill_(-1)
        p0 = plan.guidance_plan.num_passes(0)
        bufs.x_in[: p0 * batch].view(p0, batch, *shape).copy_(x.unsqueeze(0).expand(p0, *x.shape))

        if replays is not None:
            for k in range(len(stages)):
                replays[plan.guidance_plan.passes[k]]()
                if stages.keep[k]:
                    bar.update(batch)
            return self._finish_batch(bufs, start, stop, None)

        # eager: the same stage, with the host-side extras and per-step reporting
        traj = [x.clone()] if keep_traj else None
        x_start = prediction = None
        with plan.autocast():
            for k in range(len(stages)):
                i = stages.step[k]
                starts_step = k == 0 or stages.step[k - 1] != i
                if callback is not None and starts_step:
                    x_start = x.clone()
                # the callback's prediction is combined from the passes (g_out may hold g + d x)
                report = bufs.g if callback is not None and starts_step else None
                run_stage(plan, bufs, plan.guidance_plan.passes[k], k, report)
                if report is not None:
                    prediction = report.clone()
                if not stages.keep[k]:
                    continue
                if callback is not None:  # the stage that ends step i
                    t, t_next = float(plan.grid[i]), float(plan.grid[i + 1])
                    callback(StepInfo(i, t, t_next, x_start, prediction, x, start))
                if traj is not None:
                    traj.append(x.clone())
                bar.update(batch)
        return self._finish_batch(bufs, start, stop, traj)

    def _finish_batch(self, bufs: BatchBuffers, start: int, stop: int, traj):
        bad = int(bufs.first_bad)  # the one host read of the batch
        if bad >= 0:
            raise non_finite_error(self.plan, bad, start, stop)
        return bufs.x, torch.stack(traj) if traj is not None else None


def sample(
    model: nn.Module,
    n: int,
    steps: int,
    *,
    y: Any = None,
    cfg_scale: float = 1.0,
    nag_scale: float = 0.0,
    solver: str = "euler",
    seed: int = 0,
    latents: Optional[Tensor] = None,
    batch_size: Optional[int] = None,
    progress: bool = True,
    callback: Optional[Callable[[StepInfo], None]] = None,
    parallel: Optional[dict] = None,
    **options: Any,
) -> Tensor:
    """Draw n samples (float32 [n, ...]) from `model` in `steps` solver steps with CFG and / or
    classifier-free NAG.

    `cfg_scale` 1.0 and `nag_scale` 0.0 are off. Further options go to `Sampler`: schedule,
    cfg_interval, nag_interval, nag_null_class (the NAG pass drops the class too:
    nag_engine.guidance), time_shift, t_max, spacing ("uniform", or for a vp-discrete
    model the reference samplers' timesteps: "adm", "leading", "trailing"), sample_shape,
    eps_scaling ({"k", "b"}: Ning et al.), time_shift_sampler ({"window", "data_variance",
    "candidates"}: Li et al.; see nag_engine.corrections), classifier-based NAG
    (noise_estimator, classifier_nag_scale, classifier_nag_interval; see
    nag_engine.classifier_nag), device, dtype, backend, cuda_graphs, compile, and the solver's
    own (eta for ddim, variance "small" / "large" for ddpm, diffusion / diffusion_scale for
    euler-maruyama).

    `parallel=dict(window=..., tolerance=...)` samples by Picard iteration instead
    (`nag_engine.ParallelSampler`, one-stage solvers; its `run` also returns the cost).
    The states at every step: `sample_trajectory`."""
    if "return_trajectory" in options:
        raise TypeError(
            "sample() returns the samples only; for the states at every step call "
            "sample_trajectory() (or Sampler.trajectory()) with the same arguments"
        )
    options.update(solver=solver, cfg_scale=cfg_scale, nag_scale=nag_scale)
    if parallel is not None:
        if callback is not None:
            raise ValueError("parallel sampling does not support callback")
        if not isinstance(parallel, dict):
            raise TypeError(f"parallel must be a dict(window=..., tolerance=...), got {parallel!r}")
        runner = ParallelSampler(model, steps, **parallel, **options)
        return runner.sample(
            n, y=y, seed=seed, latents=latents, batch_size=batch_size, progress=progress
        )
    return Sampler(model, steps, **options).sample(
        n,
        y=y,
        seed=seed,
        latents=latents,
        batch_size=batch_size,
        progress=progress,
        callback=callback,
    )


def sample_trajectory(
    model: nn.Module,
    n: int,
    steps: int,
    *,
    y: Any = None,
    seed: int = 0,
    latents: Optional[Tensor] = None,
    batch_size: Optional[int] = None,
    progress: bool = True,
    callback: Optional[Callable[[StepInfo], None]] = None,
    **options: Any,
) -> Tensor:
    """The states of `sample`'s run at every grid time, float32 [steps + 1, n, ...] (the last
    entry is what `sample` returns with the same arguments); options as for `sample`."""
    return Sampler(model, steps, **options).trajectory(
        n,
        y=y,
        seed=seed,
        latents=latents,
        batch_size=batch_size,
        progress=progress,
        callback=callback,
    )
