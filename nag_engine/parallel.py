"""Parallel sampling by Picard iteration over a sliding window (ParaDiGMS, Shih et al. 2023).

A one-stage solver step is ``x_{j+1} = a_j x_j + b_j g_j(x_j) + c_j z_j``; written as
``x_{j+1} = x_j + d_j`` with the drift ``d_j = (a_j - 1) x_j + b_j g_j + c_j z_j``, the whole
trajectory is the fixed point of ``x_{j+1} = x_s + sum_{i=s..j} d_i(x_i)``. Each Picard
iteration evaluates the model at every point of a window of `window` steps in ONE batched
forward (times the guidance passes, so CFG and NAG work as in the sequential sampler), sums the
drifts from the window start, and compares the new points with the old: step j has converged
when the squared change of x_{j+1} per dimension (worst sample) is below ``tolerance**2`` times
that step's noise variance (``c_j**2``; for deterministic steps, the variance the forward
process adds between the step's two times). The window then slides past the converged prefix
(at least one step: x_{s+1} is exact once x_s is).

The noise of every step is drawn up front from the same counter-based generator as the
sequential sampler, so the parallel result converges to the *sequential* trajectory with the
same seed; with tolerance 0 it is that trajectory (up to rounding), and with window 1 it is the
sequential sampler. The inner iteration reads one small tensor back (the converged prefix).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from . import backends
from .arguments import check_positive_int, finite_number, format_bytes, free_memory
from .noise import CounterNoise
from .plan import SamplingPlan, make_plan, non_finite_error
from .requests import check_request, check_result_size

Tensor = torch.Tensor


@dataclass(frozen=True)
class ParallelStats:
    """What a parallel run cost, summed over its batches."""

    iterations: int  # Picard iterations: sequential rounds of (batched) model calls
    model_evals: int  # per-sample model evaluations: window points x passes, summed
    sequential_evals: int  # what the sequential sampler needs: steps x passes (per batch)
    wall_time: float  # seconds


class ParallelResult(NamedTuple):
    """What `ParallelSampler.run` returns."""

    samples: Tensor  # float32 [n, *sample_shape]
    stats: ParallelStats


class ParallelSampler:
    """Picard-iteration sampler with the sequential `Sampler`'s model, solver and guidance
    options (one-stage solvers: euler, euler-maruyama, ddim, ddpm).

    `window`: steps evaluated together per iteration; `tolerance`: the convergence threshold
    relative to each step's noise standard deviation. `sample` returns the samples, `run` the
    samples and what they cost (`ParallelStats`)."""

    def __init__(
        self,
        model: nn.Module,
        steps: int,
        *,
        window: int = 16,
        tolerance: float = 0.1,
        **options: Any,
    ) -> None:
        self.window = check_positive_int("window", window)
        self.tolerance = finite_number("tolerance", tolerance)
        if self.tolerance < 0:
            raise ValueError(
                f"tolerance must be >= 0 (0: exactly the sequential result), got {tolerance}"
            )
        for unsupported in ("noise_estimator", "classifier_nag_scale", "time_shift_sampler"):
            if options.get(unsupported):
                raise ValueError(f"{unsupported} is not supported by the parallel sampler")
        self.plan: SamplingPlan = make_plan(model, steps, cuda_graphs=False, **options)
        stages = self.plan.stages
        if len(stages) != steps or not all(stages.keep) or stages.uses_g_prev:
            raise ValueError(
                f"parallel sampling needs a one-stage solver (euler, euler-maruyama, ddim, "
                f"ddpm); {self.plan.solver!r} has {len(stages)} model evaluations for "
                f"{steps} steps" + (" and reads the previous stage" if stages.uses_g_prev else "")
            )
        # every pass any step uses, run at every window point (weight 0 where a step skips it)
        self.passes = self.plan.guidance_plan.all_passes()
        self._weights = self.plan.guidance_plan.weight_table(self.plan.device, by_pass=True)
        columns = self.plan.tables.coef.unbind(1)
        self._a, self._b, self._c = (columns[backends.COEF_COLUMNS.index(k)] for k in "abc")
        self._variance = noise_variances(self.plan).to(self.plan.device, torch.float32)
        self.picard_backend = backends.picard_backend(self.plan.backend)
        self._picard = backends.picard_implementation(self.picard_backend)

    def sample(self, n: int, **request: Any) -> Tensor:
        """Draw n samples (float32 [n, *sample_shape]), the same ones the sequential sampler
        draws with this seed up to the tolerance; the arguments of `run`."""
        return self.run(n, **request).samples

    def run(
        self,
        n: int,
        *,
        y: Any = None,
        seed: int = 0,
        latents: Optional[Tensor] = None,
        batch_size: Optional[int] = None,
        progress: bool = True,
    ) -> ParallelResult:
        """`sample`, and what it cost."""
        plan = self.plan
        n, batch_size, shape, labels = check_request(
            plan,
            n,
            y=y,
            seed=seed,
            latents=latents,
            batch_size=batch_size,
            progress=progress,
            default_batch=n if isinstance(n, int) and n > 0 else 1,
        )
        check_result_size(plan, n, shape)
        self._check_working_set(batch_size, shape)
        noise = CounterNoise(seed, shape, plan.device)
        start_time = time.perf_counter()
        results, iterations, evals = [], 0, 0
        with tqdm(total=n, desc="parallel sampling", disable=not progress, leave=False) as bar:
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                init = latents[start:stop] if latents is not None else None
                batch_labels = labels[start:stop] if labels is not None else None
                x, used, evaluated = self._sample_batch(start, stop, noise, init, batch_labels)
                results.append(x)
                iterations, evals = iterations + used, evals + evaluated
                bar.update(stop - start)
        batches, passes = len(results), len(self.passes)
        stats = ParallelStats(
            iterations=iterations,
            model_evals=evals,
            sequential_evals=batches * plan.steps * passes,
            wall_time=time.perf_counter() - start_time,
        )
        return ParallelResult(torch.cat(results), stats)

    def _check_working_set(self, batch_size: int, shape: tuple[int, ...]) -> None:
        """Refuse a batch whose Picard state (every step's state, the noise, and the window's
        inputs and outputs of every pass) cannot fit, saying which batch_size does."""
        steps, passes = self.plan.steps, len(self.passes)
        states = 2 * (steps + 1) + 3 * self.window * passes
        per_sample = 4 * states * math.prod(shape)
        free = free_memory(self.plan.device)
        if batch_size * per_sample > free:
            need = format_bytes(batch_size * per_sample)
            raise ValueError(
                f"a Picard batch of {batch_size:,} samples needs {need}"
                f" (every step's state for {steps} steps, and a window of {self.window} x "
                f"{passes} passes), more than the {format_bytes(free)} free on "
                f"{self.plan.device}: pass batch_size={max(1, free // per_sample):,} or less"
            )

    @torch.no_grad()
    def _sample_batch(self, start, stop, noise, init, labels) -> tuple[Tensor, int, int]:
        """(samples, Picard iterations, per-sample model evaluations) of one batch."""
        plan, steps, window = self.plan, self.plan.steps, self.window
        passes = len(self.passes)
        index = torch.arange(start, stop, device=plan.device)
        x0 = init.to(plan.device, torch.float32) if init is not None else noise.normal(index, 0)
        traj = x0.unsqueeze(0).repeat(steps + 1, *([1] * x0.ndim))  # [T + 1, B, ...]
        z = None
        if plan.stages.stochastic:  # stream j + 1 for step j, as in the sequential sampler
            z = torch.stack([noise.normal(index, j + 1) for j in range(steps)])
        flags = plan.drop_flags(self.passes, stop - start, labels is not None)
        thresholds = self.tolerance**2 * self._variance
        begin, iterations, evals = 0, 0, 0
        while begin < steps:
            end = min(begin + window, steps)
            length = end - begin
            out = self._model_outputs(traj[begin:end], begin, end, labels, flags)
            change = self._picard(  # traj[begin + 1 : end + 1] updated in place
                out,
                self._weights[begin:end],
                self._a[begin:end],
                self._b[begin:end],
                self._c[begin:end],
                traj[begin : end + 1],
                None if z is None else z[begin:end],
            ).amax(1)  # the worst sample of each step
            bad = change > thresholds[begin:end]
            first_bad = torch.where(bad.any(), bad.to(torch.int64).argmax(), length)
            advance = max(int(first_bad), 1)  # the one host read of the iteration
            iterations, evals = iterations + 1, evals + length * passes
            new_begin, new_end = begin + advance, min(begin + advance + window, steps)
            if new_end > end:  # points entering the window start from the latest estimate
                traj[end + 1 : new_end + 1] = traj[end]
            begin = new_begin
        finite = torch.isfinite(traj[1:].flatten(2)).all(2).all(1)  # [steps]: step j -> x_{j+1}
        if not bool(finite.all()):  # one host read per batch
            raise non_finite_error(plan, int((~finite).to(torch.int64).argmax()), start, stop)
        return traj[steps].clone(), iterations, evals

    def _model_outputs(self, xs, begin, end, labels, flags) -> Tensor:
        """The model outputs [L, P, B, ...] at the window points xs [L, B, ...]: all passes of
        all points in one forward (`flags`: the drop-flag rows of one point). Raises ValueError
        where the model returns its output on another device than xs."""
        plan = self.plan
        length, batch = xs.shape[0], xs.shape[1]
        passes = len(self.passes)
        rows = length * passes * batch
        x_in = xs.unsqueeze(1).expand(length, passes, *xs.shape[1:]).reshape(rows, *xs.shape[2:])
        t_in = plan.tables.times[begin:end].view(length, 1, 1).expand(length, passes, batch)
        y_in = None
        if labels is not None:
            y_in = labels.view(1, 1, batch).expand(length, passes, batch).reshape(rows)
        drop_t, drop_y = (None if f is None else f.repeat(length) for f in flags)
        x_in = x_in.to(plan.dtype)
        with plan.autocast():
            out = plan.evaluate(x_in, t_in.reshape(rows), y_in, drop_t, drop_y)
        if out.device != xs.device:  # the Picard update reads every tensor on the state's device
            raise ValueError(
                f"the model returned its output on {out.device} for an input on {xs.device}: "
                f"a model must return its output on its input's device"
            )
        return out.view(length, passes, *xs.shape[1:])


def noise_variances(plan: SamplingPlan) -> Tensor:
    """float64 [steps]: each step's noise variance c_j^2, or for a deterministic step the
    variance the forward process adds between its two times,
    sigma(t_j)^2 - (alpha(t_j) / alpha(t_{j+1}))^2 sigma(t_{j+1})^2 (one-stage solvers)."""
    schedule, grid = plan.schedule, plan.grid.to(torch.float64)
    hi, lo = grid[:-1], grid[1:]
    alpha_hi, alpha_lo = schedule.alpha(hi), schedule.alpha(lo)
    forward = schedule.sigma(hi) ** 2 - (alpha_hi / alpha_lo) ** 2 * schedule.sigma(lo) ** 2
    c = torch.tensor(plan.stages.c, dtype=torch.float64)
    variance = torch.where(c != 0, c**2, forward.clamp_min(0.0))
    if not bool(torch.isfinite(variance).all()) or math.isclose(float(variance.max()), 0.0):
        raise ValueError("the schedule gives no usable per-step noise variance for the tolerance")
    return variance
