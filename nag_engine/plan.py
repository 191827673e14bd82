"""The sampling plan: everything about a sampling run that is fixed before the first step.

`make_plan` checks the options once and builds an immutable `SamplingPlan`: the time grid, the
solver's stage table, the guidance plan (which passes run at each stage, with which weights),
the device tables the fused step reads, the model's forward (with any correction wrapped
around it) and the policy for CUDA graphs. The executors -- `nag_engine.sampler` (sequential,
eager or CUDA graphs), `nag_engine.parallel` (Picard iteration) and `nag_engine.shards` (the
resumable writer) -- only run a plan; none of them decides anything the plan already fixed.
See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import nn

from . import backends, graphs
from .arguments import (
    check_device,
    check_sample_shape,
    check_steps,
    finite_number,
)
from .classifier_nag import ClassifierNAG
from .corrections import EpsilonScaledModel, TimeShift, check_eps_scaling, check_time_shift
from .dtypes import FP8, resolve_dtype
from .fp8 import check_fp8_device, to_fp8
from .grids import sampling_grid
from .guidance import Guidance, GuidancePlan, Pass, warn_empty_intervals
from .predictions import check_prediction
from .schedules import Schedule, get_schedule
from .solvers import StageTable, build_stages

Tensor = torch.Tensor


class NonFiniteStateError(ValueError):
    """The sampler state became NaN or infinite."""


# ---------------------------------------------------------------------- request checks
def check_output(out: Any, x_in: Tensor) -> None:
    """The model's output must be a tensor of its input's shape."""
    if not isinstance(out, Tensor) or out.shape != x_in.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"model output has shape {got}, expected {tuple(x_in.shape)} (the shape of its input x)"
        )


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter or buffer lives (CPU for a model without tensors)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _same_device(device: torch.device, model: nn.Module) -> bool:
    """Whether sampling on `device` matches where the model lives (a model without tensors
    runs anywhere; "cuda" matches the current CUDA device)."""
    if next(iter(list(model.parameters()) + list(model.buffers())), None) is None:
        return True
    where = model_device(model)
    if where.type != device.type:
        return False
    return device.index is None or where.index == device.index


# ---------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class StepTables:
    """The device tables the fused step reads at the device-side stage counter."""

    coef: Tensor  # float32 [stages, len(COEF_COLUMNS)]
    weights: Tensor  # float32 [stages, max passes]
    times: Tensor  # float32 [stages]: the time of each model evaluation
    keep: Tensor  # bool [stages]: does the stage end a step?
    step_of_stage: Tensor  # long [stages]: the step each stage belongs to


@dataclass(frozen=True)
class SamplingPlan:
    """One model and one configuration, checked and laid out for the executors."""

    model: nn.Module
    forward: Callable[..., Tensor]  # the model, with eps scaling / torch.compile around it
    prediction: str
    schedule: Schedule
    guidance: Guidance
    solver: str
    solver_options: tuple[tuple[str, Any], ...]  # the solver's own options (eta, ...), sorted
    steps: int
    grid: Tensor  # float64 [steps + 1], from t_max down to 0
    t_max: float
    grid_shift: float  # the timestep shift of a uniform grid (the `time_shift` option)
    spacing: str
    stages: StageTable  # frozen: tuple columns
    guidance_plan: GuidancePlan  # which passes run at each stage, and their weights
    num_classes: Optional[int]
    sample_shape: Optional[tuple[int, ...]]  # None: the model's
    device: torch.device
    dtype: torch.dtype  # the model's compute dtype (state, times, coefficients stay float32)
    fp8: bool  # dtype="fp8": the forward runs a copy with float8 Linear layers (nag_engine.fp8)
    backend: str  # the fused-step implementation (nag_engine.backends)
    tables: StepTables
    eps_scaling: Optional[tuple[float, float]]  # (k, b) of the epsilon scaling, or None
    compiled: bool  # is the forward torch.compile'd?
    time_shift: Optional[TimeShift]  # the time-shift sampler (Li et al.), or None
    classifier: Optional[ClassifierNAG]  # classifier-based NAG, or None
    cuda_graphs: graphs.Mode
    graph_reason: Optional[str]  # why no stage can be captured, or None

    # ------------------------------------------------------------------ request checks
    def resolve_shape(self, latents: Optional[Tensor] = None) -> tuple[int, ...]:
        """The shape of one sample: the latents', else the plan's or the model's."""
        if latents is not None:
            return tuple(latents.shape[1:])
        shape = self.sample_shape or getattr(self.model, "sample_shape", None)
        if shape is None:
            raise ValueError(
                "cannot tell the sample shape: the model has no `sample_shape`; pass "
                "sample_shape=(...) to the Sampler or bring your own latents"
            )
        return tuple(shape)

    def check_labels(self, y: Any, n: int) -> Optional[Tensor]:
        """Class labels [n] (long, on the plan's device) from an int or n ids; None for none."""
        if y is None:
            if self.guidance.uses_cfg:
                raise ValueError(
                    f"cfg_scale={self.guidance.cfg_scale} needs class labels: pass y "
                    "(an int or n class ids) or use cfg_scale=1.0"
                )
            return None
        if self.num_classes is None:
            raise ValueError("y was given but the model is unconditional (no num_classes)")
        if isinstance(y, int) and not isinstance(y, bool):
            y = torch.full((n,), y, dtype=torch.long)
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"y must be an int or n integer class ids (a tensor or list), got {y!r:.80}"
            ) from None
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"y must hold integer class ids, got dtype {y.dtype}")
        if y.shape != (n,):
            raise ValueError(
                f"y must have shape ({n},) (one label per sample), got {tuple(y.shape)}"
            )
        if n and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"y must lie in [0, {self.num_classes}) for this model, got values in "
                f"[{int(y.min())}, {int(y.max())}]"
            )
        return y.to(self.device, torch.long)

    # ------------------------------------------------------------------ running the model
    def drop_flags(
        self, passes: Sequence[Pass], batch: int, labelled: bool
    ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """(drop_t, drop_y) bool row tensors for `passes` stacked pass-major over `batch`
        samples each; None where no row drops."""

        def column(attr: str) -> Optional[Tensor]:
            values = [getattr(p, attr) for p in passes]
            if not any(values):
                return None
            return torch.tensor(values, device=self.device).repeat_interleave(batch)

        return column("drop_t"), column("drop_y") if labelled else None

    def autocast(self, captured: bool = False) -> contextlib.AbstractContextManager:
        """Autocast to the plan's dtype where the weights are in another one (without the
        weight-cast cache under CUDA-graph capture: the cast must be part of the graph)."""
        param = next(iter(self.model.parameters()), None)
        if self.dtype != torch.float32 and param is not None and param.dtype != self.dtype:
            return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=not captured)
        return contextlib.nullcontext()

    def evaluate(
        self,
        x: Tensor,
        t: Tensor,
        y: Optional[Tensor],
        drop_t: Optional[Tensor],
        drop_y: Optional[Tensor],
    ) -> Tensor:
        """One batched forward of the model (all passes' rows at once), its output checked."""
        out = self.forward(x, t, y, drop_t=drop_t, drop_y=drop_y)
        check_output(out, x)
        return out


def make_plan(
    model: nn.Module,
    steps: int,
    *,
    solver: str = "euler",
    schedule: Union[None, str, Schedule] = None,
    cfg_scale: float = 1.0,
    nag_scale: float = 0.0,
    cfg_interval: Optional[tuple[float, float]] = None,
    nag_interval: Optional[tuple[float, float]] = None,
    nag_null_class: bool = False,
    time_shift: float = 1.0,
    t_max: Optional[float] = None,
    spacing: str = "uniform",
    device: Union[None, str, torch.device] = None,
    dtype: Union[None, str, torch.dtype] = None,
    sample_shape: Optional[Sequence[int]] = None,
    eps_scaling: Optional[dict] = None,
    time_shift_sampler: Optional[dict] = None,
    noise_estimator: Any = None,
    classifier_nag_scale: float = 0.0,
    classifier_nag_interval: Optional[tuple[float, float]] = None,
    backend: Optional[str] = None,
    cuda_graphs: graphs.Mode = "auto",
    compile: Union[bool, dict] = False,
    capture_anywhere: bool = False,
    **solver_options: Any,
) -> SamplingPlan:
    """Check the options (see `nag_engine.Sampler`) and build the plan. `capture_anywhere`
    lifts the CUDA-device requirement of stage capture (for a custom graph runner)."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be an nn.Module, got {type(model).__name__}; wrap a plain function "
            "with nag_engine.models.FunctionDenoiser"
        )
    steps = check_steps(steps)
    sample_shape = check_sample_shape("sample_shape", sample_shape)
    device = check_device(device)
    if t_max is not None and not 0.0 < finite_number("t_max", t_max) <= 1.0:
        raise ValueError(f"t_max must lie in (0, 1] (t = 1 is pure noise), got {t_max}")
    classifier_nag_scale = finite_number("classifier_nag_scale", classifier_nag_scale)
    if getattr(model, "prediction", "velocity") is None:
        raise TypeError(
            f"a {type(model).__name__} is not a denoiser (it predicts no sampling target); "
            "sample from a denoiser and pass a noise-level head as noise_estimator="
        )
    prediction = check_prediction(getattr(model, "prediction", "velocity"), "model.prediction")
    schedule = get_schedule(
        schedule if schedule is not None else getattr(model, "schedule", "linear")
    )
    guidance = Guidance(cfg_scale, nag_scale, cfg_interval, nag_interval, nag_null_class)
    num_classes: Optional[int] = getattr(model, "num_classes", None) or None
    if guidance.nag_null_class and num_classes is None:
        raise ValueError(
            "nag_null_class=True drops the class in the NAG pass, but the model declares no "
            "num_classes; leave nag_null_class False for an unconditional model"
        )
    if guidance.uses_nag and not getattr(model, "supports_noise_dropout", False):
        raise ValueError(
            f"nag_scale={nag_scale} needs a model trained with noise-condition dropout "
            "(model.supports_noise_dropout is not True); use nag_scale=0.0 or a NAG checkpoint"
        )
    if guidance.uses_cfg and num_classes is None:
        raise ValueError(
            f"cfg_scale={cfg_scale} needs a class-conditional model, but the model declares "
            "no num_classes; use cfg_scale=1.0"
        )
    grid = sampling_grid(schedule, prediction, steps, spacing, time_shift, t_max)
    t_max = float(grid[0])
    stages = build_stages(solver, schedule, prediction, grid, **solver_options).frozen()
    guidance_plan = guidance.plan(stages.t)
    warn_empty_intervals(guidance, stages.t, classifier_nag_scale, classifier_nag_interval)

    device = torch.device(device) if device is not None else model_device(model)
    if not _same_device(device, model):
        raise ValueError(
            f"device={device} but the model's weights are on {model_device(model)}; move "
            f"the model first (model.to({str(device)!r})) or leave device=None"
        )
    fp8 = isinstance(dtype, str) and dtype.lower() == FP8
    if fp8:
        check_fp8_device(device)
    runner = to_fp8(model) if fp8 else model  # (bf16 with float8 matmuls in its blocks)
    scaling = check_eps_scaling(eps_scaling)
    forward = EpsilonScaledModel(runner, schedule, *scaling) if scaling else runner
    if compile is not False:  # torch.compile'd forward (inside a captured graph too)
        if not isinstance(compile, (bool, dict)):
            raise TypeError(
                f"compile must be True, False or a dict of torch.compile options, got "
                f"{type(compile).__name__}"
            )
        forward = torch.compile(forward, **(compile if compile is not True else {}))
    shift = check_time_shift(time_shift_sampler)
    time_shifter = TimeShift(schedule, device=device, **shift) if shift else None
    classifier = None
    if classifier_nag_scale != 0.0:
        if noise_estimator is None:
            raise ValueError(
                f"classifier_nag_scale={classifier_nag_scale} needs a noise_estimator "
                "(ExactPosterior or a NoiseLevelHead); pass one or use classifier_nag_scale=0"
            )
        classifier = ClassifierNAG(
            noise_estimator,
            classifier_nag_scale,
            stages.t,
            schedule,
            prediction,
            classifier_nag_interval,
        )
    columns = stages.tensors(device)
    coef, weights = backends.step_tables(columns, guidance_plan)
    tables = StepTables(
        coef=coef,
        weights=weights,
        times=columns["t"],
        keep=columns["keep"],
        step_of_stage=torch.tensor(stages.step, dtype=torch.long, device=device),
    )
    cuda_graphs = graphs.check_mode(cuda_graphs)
    graph_reason = graphs.static_reason(
        device,
        cuda_graphs,
        classifier_nag=classifier is not None,
        time_shift_sampler=time_shifter is not None,
        any_device=capture_anywhere,
    )
    if cuda_graphs is True and graph_reason is not None:
        raise RuntimeError(f"cuda_graphs=True, but the step cannot be captured: {graph_reason}")
    return SamplingPlan(
        model=model,
        forward=forward,
        prediction=prediction,
        schedule=schedule,
        guidance=guidance,
        solver=solver,
        solver_options=tuple(sorted(solver_options.items())),
        steps=steps,
        grid=grid,
        t_max=float(t_max),
        grid_shift=float(time_shift),
        spacing=spacing,
        stages=stages,
        guidance_plan=guidance_plan,
        num_classes=num_classes,
        sample_shape=sample_shape,
        device=device,
        dtype=torch.bfloat16 if fp8 else resolve_dtype(dtype, model),
        fp8=fp8,
        backend=backends.select(device, backend),
        tables=tables,
        eps_scaling=tuple(scaling) if scaling else None,
        compiled=compile is not False,
        time_shift=time_shifter,
        classifier=classifier,
        cuda_graphs=cuda_graphs,
        graph_reason=graph_reason,
    )


def non_finite_error(plan: SamplingPlan, step: int, start: int, stop: int) -> NonFiniteStateError:
    """The error for a state that became NaN/inf at `step` in the batch of samples start..stop-1."""
    return NonFiniteStateError(
        f"the sampler state became NaN/inf at step {step} (t={float(plan.grid[step]):.4g}) in "
        f"the batch of samples {start}..{stop - 1}; check the model output and the guidance "
        "scales, or sample in float32"
    )
