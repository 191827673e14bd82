"""The batched sampling loop: one combined forward per model evaluation, static buffers.

Per model evaluation k the sampler
1. runs every guidance pass of the plan in ONE forward call on a preallocated input buffer
   laid out pass-major ([P, B, ...]: rows p*B .. (p+1)*B - 1 are pass p),
2. combines the passes and applies the solver update in one `guided_step`, which also writes the
   next model input into the buffer (no torch.cat per step).
Which passes run and every coefficient are fixed on the host before the loop; the loop never
reads a tensor value back (non-finite states are flagged on the device and read once per batch),
so it can later be captured as a CUDA graph. (Classifier-based NAG is the exception by design: it
runs a noise-level estimator's autograd inside the loop, and whether that syncs depends on the
estimator.)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from . import backends, graphs
from .classifier_nag import ClassifierNAG
from .corrections import EpsilonScaledModel, TimeShift, check_eps_scaling, check_time_shift
from .guidance import Guidance, GuidancePlan, Pass
from .noise import CounterNoise
from .predictions import check_prediction
from .schedules import SPACINGS, Schedule, get_schedule, time_grid
from .solvers import StageTable, build_stages

Tensor = torch.Tensor

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


DEFAULT_BATCH = 1024  # samples per forward batch when sample() is not told


class SampleBatch(NamedTuple):
    """One batch from `Sampler.stream`."""

    start: int  # index of its first sample in the whole run
    samples: Tensor  # float32 [batch, *sample_shape], on the sampler's device
    labels: Optional[Tensor]  # [batch] class ids, or None
    trajectory: Optional[Tensor] = None  # [steps + 1, batch, ...] when asked for


class NonFiniteStateError(ValueError):
    """The sampler state became NaN or infinite."""


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


def resolve_dtype(dtype: Union[None, str, torch.dtype], model: nn.Module) -> torch.dtype:
    """The dtype the model runs in: given, else the dtype of its parameters, else float32."""
    if dtype is None:
        param = next(iter(model.parameters()), None)
        return param.dtype if param is not None and param.is_floating_point() else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: choose one of 'fp32', 'bf16', 'fp16'")
        return _DTYPES[dtype]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return dtype


def _model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


EPS_LOG_SNR_MIN = -11.0


def _same_device(model_device: torch.device, device: torch.device, model: nn.Module) -> bool:
    """Whether sampling on `device` matches where the model lives (a model without tensors
    runs anywhere; "cuda" matches the current CUDA device)."""
    if next(iter(list(model.parameters()) + list(model.buffers())), None) is None:
        return True
    if model_device.type != device.type:
        return False
    return device.index is None or model_device.index == device.index


def default_t_max(schedule: Schedule, prediction: str) -> float:
    """Where sampling starts: t = 1, except for eps / score models on schedules whose log-SNR at
    t = 1 is below EPS_LOG_SNR_MIN (-11; x0 = (x - sigma eps) / alpha is ill-posed as alpha -> 0):
    those start where the log-SNR is -11 (DDPM's own linear schedule ends at -10.05)."""
    if prediction in ("eps", "score") and float(schedule.log_snr(1.0)) < EPS_LOG_SNR_MIN:
        return float(schedule.t_from_log_snr(EPS_LOG_SNR_MIN))
    return 1.0


def respaced_grid(
    schedule: Schedule, steps: int, spacing: str, time_shift: float, t_max: Optional[float]
) -> Tensor:
    """The grid of a discrete-time schedule's respaced sampler ("adm", "leading", "trailing":
    the training timesteps the reference code visits, see `DiscreteVPSchedule.respaced`)."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}: choose one of {SPACINGS}")
    if not hasattr(schedule, "respaced"):
        raise ValueError(
            f"spacing={spacing!r} picks training timesteps of a discrete-time schedule, but the "
            f"schedule is {schedule.name!r}; use spacing='uniform' or schedule='vp-discrete'"
        )
    if time_shift != 1.0 or t_max is not None:
        raise ValueError(
            f"spacing={spacing!r} fixes the grid; time_shift and t_max apply to "
            "spacing='uniform' only"
        )
    return schedule.respaced(_check_positive_int("steps", steps), spacing)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


class Sampler:
    """Reusable sampler for one model and one configuration (steps, solver, guidance).

    The time grid, the stage coefficients and the guidance plan are built once; the static
    buffers are kept per batch size, so repeated calls allocate nothing new.

    Speed options: `dtype` ("bf16" / "fp16" / "fp32": the model's; the state, times and
    coefficients stay float32), `backend` (the fused-step kernel, see nag_engine.backends),
    `cuda_graphs` ("auto": capture each stage on CUDA where possible, True: capture or raise,
    False: eager; `graph_status()` says which and why), `compile` (True or torch.compile
    options for the model's forward)."""

    def __init__(
        self,
        model: nn.Module,
        steps: int,
        *,
        solver: str = "euler",
        schedule: Union[None, str, Schedule] = None,
        cfg_scale: float = 1.0,
        nag_scale: float = 0.0,
        cfg_interval: Optional[tuple[float, float]] = None,
        nag_interval: Optional[tuple[float, float]] = None,
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
        **solver_options: Any,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be an nn.Module, got {type(model).__name__}; wrap a plain function "
                "with nag_engine.models.FunctionDenoiser"
            )
        self.model = model
        self.steps = _check_positive_int("steps", steps)
        if getattr(model, "prediction", "velocity") is None:
            raise TypeError(
                f"a {type(model).__name__} is not a denoiser (it predicts no sampling target); "
                "sample from a denoiser and pass a noise-level head as noise_estimator="
            )
        self.prediction = check_prediction(
            getattr(model, "prediction", "velocity"), "model.prediction"
        )
        schedule = schedule if schedule is not None else getattr(model, "schedule", "linear")
        self.schedule = get_schedule(schedule)
        self.guidance = Guidance(cfg_scale, nag_scale, cfg_interval, nag_interval)
        self.num_classes: Optional[int] = getattr(model, "num_classes", None) or None
        if self.guidance.uses_nag and not getattr(model, "supports_noise_dropout", False):
            raise ValueError(
                f"nag_scale={nag_scale} needs a model trained with noise-condition dropout "
                "(model.supports_noise_dropout is not True); use nag_scale=0.0 or a NAG checkpoint"
            )
        if self.guidance.uses_cfg and self.num_classes is None:
            raise ValueError(
                f"cfg_scale={cfg_scale} needs a class-conditional model, but the model declares "
                "no num_classes; use cfg_scale=1.0"
            )
        self.spacing = spacing
        if spacing == "uniform":
            self.t_max = default_t_max(self.schedule, self.prediction) if t_max is None else t_max
            self.grid = time_grid(self.steps, shift=time_shift, t_max=self.t_max)
        else:
            self.grid = respaced_grid(self.schedule, self.steps, spacing, time_shift, t_max)
            self.t_max = float(self.grid[0])
        self.solver = solver
        self.stages: StageTable = build_stages(
            solver, self.schedule, self.prediction, self.grid, **solver_options
        )
        self.plan: GuidancePlan = self.guidance.plan(self.stages.t)
        self.device = torch.device(device) if device is not None else _model_device(model)
        if device is not None and not _same_device(_model_device(model), self.device, model):
            raise ValueError(
                f"device={device} but the model's weights are on {_model_device(model)}; move "
                f"the model first (model.to({str(device)!r})) or leave device=None"
            )
        self.dtype = resolve_dtype(dtype, model)
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        scaling = check_eps_scaling(eps_scaling)
        self._forward = EpsilonScaledModel(model, self.schedule, *scaling) if scaling else model
        if compile is not False:  # torch.compile'd forward (inside a captured graph too)
            if not isinstance(compile, (bool, dict)):
                raise TypeError(
                    f"compile must be True, False or a dict of torch.compile options, got "
                    f"{type(compile).__name__}"
                )
            self._forward = torch.compile(self._forward, **(compile if compile is not True else {}))
        shift = check_time_shift(time_shift_sampler)
        self._time_shift = TimeShift(self.schedule, device=self.device, **shift) if shift else None
        self.classifier_nag_scale = float(classifier_nag_scale)
        self._classifier: Optional[ClassifierNAG] = None
        if classifier_nag_scale != 0.0:
            if noise_estimator is None:
                raise ValueError(
                    f"classifier_nag_scale={classifier_nag_scale} needs a noise_estimator "
                    "(ExactPosterior or a NoiseLevelHead); pass one or use classifier_nag_scale=0"
                )
            self._classifier = ClassifierNAG(
                noise_estimator,
                classifier_nag_scale,
                self.stages.t,
                self.schedule,
                self.prediction,
                classifier_nag_interval,
            )
        columns = self.stages.tensors(self.device)
        self._times = columns["t"]
        self.backend = backends.select(self.device, backend)
        self._fused_step = backends.implementation(self.backend)
        self._coef_table, self._weight_table = backends.step_tables(columns, self.plan)
        self._stage_ids = torch.arange(len(self.stages), device=self.device, dtype=torch.int32)
        self._step_ids = torch.arange(self.steps, device=self.device)
        self._keep_table = columns["keep"]
        self._step_of_stage = torch.tensor(self.stages.step, dtype=torch.long, device=self.device)
        self._buffers: dict[tuple, dict[str, Any]] = {}
        self.cuda_graphs = graphs.check_mode(cuda_graphs)
        self.graph_reason = graphs.static_reason(
            self.device,
            self.cuda_graphs,
            classifier_nag=self._classifier is not None,
            time_shift_sampler=self._time_shift is not None,
        )
        if self.cuda_graphs is True and self.graph_reason is not None:
            raise RuntimeError(
                f"cuda_graphs=True, but the step cannot be captured: {self.graph_reason}"
            )
        self._graph_runner = graphs.CudaGraphs(self.device) if self.graph_reason is None else None
        self._call_reason: Optional[str] = None

    # ------------------------------------------------------------------ input checks
    def _resolve_shape(self, latents: Optional[Tensor]) -> tuple[int, ...]:
        if latents is not None:
            return tuple(latents.shape[1:])
        shape = self.sample_shape or getattr(self.model, "sample_shape", None)
        if shape is None:
            raise ValueError(
                "cannot tell the sample shape: the model has no `sample_shape`; pass "
                "sample_shape=(...) to the Sampler or bring your own latents"
            )
        return tuple(shape)

    def _check_labels(self, y: Any, n: int) -> Optional[Tensor]:
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
        y = torch.as_tensor(y)
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

    # ------------------------------------------------------------------ buffers
    def _get_buffers(self, batch: int, shape: tuple[int, ...], labelled: bool) -> dict[str, Any]:
        key = (batch, shape, labelled)
        if key in self._buffers:
            return self._buffers[key]
        rows = self.plan.max_passes * batch
        dev = self.device
        bufs: dict[str, Any] = {
            "x": torch.empty(batch, *shape, device=dev, dtype=torch.float32),
            "x_in": torch.zeros(rows, *shape, device=dev, dtype=self.dtype),
            "t_in": torch.empty(rows, device=dev, dtype=torch.float32),
            "y_in": torch.zeros(rows, device=dev, dtype=torch.long) if labelled else None,
            "g_prev": torch.zeros(batch, *shape, device=dev) if self.stages.uses_g_prev else None,
            "g": torch.empty(batch, *shape, device=dev, dtype=torch.float32),
            "index": torch.empty(batch, device=dev, dtype=torch.long),
            "flags": {},
            # read by captured stages: the stage counter, the first bad step (and the noise,
            # with its seed on the device, made at capture)
            "stage": torch.zeros((), device=dev, dtype=torch.long),
            "first_bad": torch.full((), -1, device=dev, dtype=torch.long),
        }
        for passes in self.plan.distinct_pass_sets():
            bufs["flags"][passes] = self._drop_flags(passes, batch, labelled)
        self._buffers[key] = bufs
        return bufs

    def _drop_flags(self, passes: tuple[Pass, ...], batch: int, labelled: bool):
        """(drop_t, drop_y) bool row tensors for a pass set, None where no row drops."""

        def column(attr: str) -> Optional[Tensor]:
            values = [getattr(p, attr) for p in passes]
            if not any(values):
                return None
            return torch.tensor(values, device=self.device).repeat_interleave(batch)

        return column("drop_t"), column("drop_y") if labelled else None

    # ------------------------------------------------------------------ sampling
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
        return_trajectory: bool = False,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """Draw n samples (float32 [n, *sample_shape]); with return_trajectory also the states
        at every grid time ([steps + 1, n, *sample_shape]).

        `latents` [n, *shape] is the initial state at t_max (standard normal by default, drawn per
        sample index from `seed`), so results do not depend on `batch_size` (default: up to
        `DEFAULT_BATCH` samples per forward batch, halved on a CUDA out-of-memory error)."""
        batches = self.stream(
            n,
            y=y,
            seed=seed,
            latents=latents,
            batch_size=batch_size,
            progress=progress,
            callback=callback,
            return_trajectory=return_trajectory,
        )
        parts = list(batches)
        samples = torch.cat([part.samples for part in parts])
        if return_trajectory:
            return samples, torch.cat([part.trajectory for part in parts], dim=1)
        return samples

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
        n = _check_positive_int("n", n)
        batch_size = (
            min(n, DEFAULT_BATCH)
            if batch_size is None
            else _check_positive_int("batch_size", batch_size)
        )
        _check_latents(latents, n)
        indices = range(n) if indices is None else indices
        if indices.step != 1 or (len(indices) and (indices.start < 0 or indices.stop > n)):
            raise ValueError(f"indices must be a contiguous sub-range of range({n}), got {indices}")
        shape = self._resolve_shape(latents)
        labels = self._check_labels(y, n)
        noise = CounterNoise(seed, shape, self.device)
        self.batch_size = batch_size
        with tqdm(
            total=self.steps * len(indices),
            desc=f"sampling {len(indices)} x {self.steps} steps",
            unit="sample-step",
            unit_scale=True,
            disable=not progress,
            leave=False,
        ) as bar:
            start = indices.start
            while start < indices.stop:
                stop = min(indices.stop, start + self.batch_size)
                init = latents[start:stop] if latents is not None else None
                batch_labels = labels[start:stop] if labels is not None else None
                try:
                    x, traj = self._sample_batch(
                        start,
                        stop,
                        shape,
                        noise,
                        init,
                        batch_labels,
                        callback,
                        return_trajectory,
                        bar,
                    )
                except torch.cuda.OutOfMemoryError:
                    if stop - start == 1:
                        raise
                    self._halve_batch(stop - start, shape, labels is not None, bar)
                    continue
                yield SampleBatch(start, x.clone(), batch_labels, traj)
                start = stop

    def _halve_batch(self, failed: int, shape: tuple, labelled: bool, bar) -> None:
        """After an out-of-memory error on a batch of `failed` samples: drop its buffers, free
        the cache, and continue with half as many."""
        self._buffers.pop((failed, shape, labelled), None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.batch_size = max(1, failed // 2)
        bar.write(
            f"out of memory with a batch of {failed} samples: continuing with {self.batch_size}"
        )

    def _autocast(self, captured: bool = False):
        param = next(iter(self.model.parameters()), None)
        if self.dtype != torch.float32 and param is not None and param.dtype != self.dtype:
            # no weight-cast cache under capture: the cast must be part of the graph
            return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=not captured)
        return contextlib.nullcontext()

    def graph_status(self) -> str:
        """Whether sampling replays CUDA graphs, and if not, why."""
        if self.graph_reason is not None:
            return f"eager: {self.graph_reason}"
        captured = self._graph_runner.captured
        text = f"CUDA graphs ({captured} captured: one per batch shape and pass set)"
        if self._call_reason is not None:
            text += f"; the last call ran eagerly: {self._call_reason}"
        return text

    def _graph_replays(self, bufs, batch, shape, noise, callback, keep_traj) -> Optional[dict]:
        """{pass set: replay} for this batch's buffers (captured on first use), or None to run
        eagerly."""
        reason = self.graph_reason or graphs.call_reason(callback is not None, keep_traj)
        self._call_reason = reason if self.graph_reason is None else None
        if reason is not None:
            if self.cuda_graphs is True:
                raise RuntimeError(f"cuda_graphs=True, but this call cannot use them: {reason}")
            return None
        if "graphs" not in bufs:
            bufs["noise"] = CounterNoise(noise.seed, shape, self.device)
            try:
                bufs["graphs"] = {
                    passes: self._graph_runner.capture(self._stage_body(bufs, passes, batch, shape))
                    for passes in self.plan.distinct_pass_sets()
                }
            except Exception as err:
                if self.cuda_graphs is True:
                    raise RuntimeError(
                        f"cuda_graphs=True, but capturing the step failed: {err}"
                    ) from err
                self.graph_reason = f"capturing the step failed ({type(err).__name__}: {err})"
                warnings.warn(f"{self.graph_reason}; sampling eagerly", stacklevel=3)
                return None
        return bufs["graphs"]

    def _stage_body(self, bufs, passes, batch, shape) -> Callable[[], None]:
        """One stage with pass set `passes`, everything stage-dependent read on the device at
        the stage counter (which it advances): what a CUDA graph captures."""
        x, x_in, t_in, y_in, g_prev = (bufs[k] for k in ("x", "x_in", "t_in", "y_in", "g_prev"))
        stage, first_bad, noise, index = (bufs[k] for k in ("stage", "first_bad", "noise", "index"))
        p, rows, slots = len(passes), len(passes) * batch, self.plan.max_passes
        drop_t, drop_y = bufs["flags"][passes]
        noisy = self.stages.stochastic
        at = stage.view(1)

        def body() -> None:
            t_in[:rows].copy_(self._times.index_select(0, at).expand(rows))
            with self._autocast(captured=True):
                out = self._forward(
                    x_in[:rows],
                    t_in[:rows],
                    y_in[:rows] if y_in is not None else None,
                    drop_t=drop_t,
                    drop_y=drop_y,
                )
            _check_output(out, x_in[:rows])
            self._fused_step(  # every slot of the next input: the next pass set may be larger
                out.view(p, batch, *shape),
                self._weight_table,
                self._coef_table,
                stage,
                x,
                g_prev=g_prev,
                z=noise.normal(index, stage + 1) if noisy else None,  # c = 0 where not noisy
                g_out=g_prev,
                next_input=x_in[: slots * batch].view(slots, batch, *shape),
            )
            bad = ~torch.isfinite(x).all() & self._keep_table.index_select(0, at)[0]
            step = self._step_of_stage.index_select(0, at)[0]
            first_bad.copy_(torch.where((first_bad < 0) & bad, step, first_bad))
            stage.add_(1)

        return body

    @torch.no_grad()
    def _sample_batch(self, start, stop, shape, noise, init, labels, callback, keep_traj, bar):
        batch = stop - start
        bufs = self._get_buffers(batch, shape, labels is not None)
        replays = self._graph_replays(bufs, batch, shape, noise, callback, keep_traj)
        x, x_in, t_in, y_in, g_prev, g = (
            bufs[k] for k in ("x", "x_in", "t_in", "y_in", "g_prev", "g")
        )
        index = bufs["index"]
        torch.arange(start, stop, out=index)
        x.copy_(init if init is not None else noise.normal(index, 0))
        if y_in is not None:
            y_in.view(-1, batch).copy_(labels.view(1, batch).expand(y_in.numel() // batch, batch))
        if g_prev is not None:
            g_prev.zero_()
        times, stages, plan = self._times, self.stages, self.plan
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        traj = [x.clone()] if keep_traj else None
        p0 = plan.num_passes(0)
        x_in[: p0 * batch].view(p0, batch, *shape).copy_(x.unsqueeze(0).expand(p0, *x.shape))
        if replays is not None:
            if bufs["noise"].seed != noise.seed:
                bufs["noise"].reseed(noise.seed)
            bufs["stage"].zero_()
            first_bad = bufs["first_bad"].fill_(-1)
            for k in range(len(stages)):
                replays[plan.passes[k]]()
                if stages.keep[k]:
                    bar.update(batch)
            return self._finish_batch(first_bad, start, stop, x, None)
        x_start, prediction = None, None
        with self._autocast():
            for k in range(len(stages)):
                i = stages.step[k]
                starts_step = k == 0 or stages.step[k - 1] != i
                if callback is not None and starts_step:
                    x_start = x.clone()
                passes = plan.passes[k]
                p, rows = len(passes), len(passes) * batch
                t_in[:rows].fill_(times[k])
                if self._time_shift is not None:  # per-sample times from the state's variance
                    shifted = self._time_shift(x_in[:batch], times[k])
                    t_in[:rows].view(p, batch).copy_(shifted.expand(p, batch))
                drop_t, drop_y = bufs["flags"][passes]
                out = self._forward(
                    x_in[:rows],
                    t_in[:rows],
                    y_in[:rows] if y_in is not None else None,
                    drop_t=drop_t,
                    drop_y=drop_y,
                )
                _check_output(out, x_in[:rows])
                if self._classifier is not None and self._classifier.active(k):
                    delta = self._classifier.delta(
                        k, x_in[:batch].float(), y_in[:batch] if y_in is not None else None
                    )
                    out.view(p, batch, *shape).add_(delta.to(out.dtype))
                p_next = plan.num_passes(k + 1) if k + 1 < len(stages) else 0
                z = noise.normal(index, k + 1) if stages.c[k] != 0.0 else None
                # the guided prediction goes straight into g_prev where the solver needs it (the
                # kernels read g_prev before writing g), else into g for the callback
                g_out = g_prev if g_prev is not None else (g if callback is not None else None)
                self._fused_step(  # x updated in place; g and the next input written
                    out.view(p, batch, *shape),
                    self._weight_table,
                    self._coef_table,
                    self._stage_ids[k],
                    x,
                    g_prev=g_prev,
                    z=z,
                    g_out=g_out,
                    next_input=x_in[: p_next * batch].view(p_next, batch, *shape)
                    if p_next
                    else None,
                )
                if starts_step and callback is not None:
                    prediction = g_out.clone()
                if not stages.keep[k]:
                    continue
                # the stage that ends step i
                nonfinite = ~torch.isfinite(x).all()
                first_bad = torch.where((first_bad < 0) & nonfinite, self._step_ids[i], first_bad)
                if callback is not None:
                    t, t_next = float(self.grid[i]), float(self.grid[i + 1])
                    callback(StepInfo(i, t, t_next, x_start, prediction, x, start))
                if traj is not None:
                    traj.append(x.clone())
                bar.update(batch)
        return self._finish_batch(first_bad, start, stop, x, traj)

    def _finish_batch(self, first_bad, start, stop, x, traj):
        bad = int(first_bad)  # the one host read of the batch
        if bad >= 0:
            raise NonFiniteStateError(
                f"the sampler state became NaN/inf at step {bad} (t={float(self.grid[bad]):.4g}) "
                f"in the batch of samples {start}..{stop - 1}; check the model output and the "
                "guidance scales, or sample in float32"
            )
        return x, torch.stack(traj) if traj is not None else None


def _check_output(out: Any, x_in: Tensor) -> None:
    if not isinstance(out, Tensor) or out.shape != x_in.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"model output has shape {got}, expected {tuple(x_in.shape)} (the shape of its input x)"
        )


def _check_latents(latents: Any, n: int) -> None:
    """latents, when given, must be a tensor [n, ...] (a batch of initial states)."""
    if latents is not None:
        if not isinstance(latents, Tensor) or latents.ndim < 2 or len(latents) != n:
            raise ValueError(f"latents must be a tensor [n={n}, ...], got {_describe(latents)}")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def sample(
    model: nn.Module,
    n: int,
    steps: int,
    *,
    y: Any = None,
    cfg_scale: float = 1.0,
    nag_scale: float = 0.0,
    solver: str = "euler",
    schedule: Union[None, str, Schedule] = None,
    seed: int = 0,
    latents: Optional[Tensor] = None,
    device: Union[None, str, torch.device] = None,
    dtype: Union[None, str, torch.dtype] = None,
    batch_size: Optional[int] = None,
    progress: bool = True,
    callback: Optional[Callable[[StepInfo], None]] = None,
    return_trajectory: bool = False,
    parallel: Optional[dict] = None,
    **options: Any,
) -> Union[Tensor, tuple[Tensor, Any]]:
    """Draw n samples from `model` in `steps` solver steps with CFG and / or classifier-free NAG.

    `cfg_scale` 1.0 and `nag_scale` 0.0 are off. Further options go to `Sampler`: cfg_interval,
    nag_interval, time_shift, t_max, spacing ("uniform", or for a vp-discrete model the
    reference samplers' timesteps: "adm", "leading", "trailing"), sample_shape, eps_scaling
    ({"k", "b"}: Ning et al.), time_shift_sampler ({"window", "data_variance", "candidates"}: Li
    et al.; see nag_engine.corrections), classifier-based NAG (noise_estimator,
    classifier_nag_scale, classifier_nag_interval; see nag_engine.classifier_nag), and the
    solver's own (eta for ddim, variance "small" / "large" for ddpm, diffusion /
    diffusion_scale for euler-maruyama). Returns float32 samples [n, ...], and the trajectory
    [steps + 1, n, ...] when `return_trajectory`.

    `parallel=dict(window=..., tolerance=...)` samples by Picard iteration instead
    (`nag_engine.parallel.ParallelSampler`, one-stage solvers) and returns (samples, stats)."""
    if parallel is not None:
        from .parallel import ParallelSampler

        if callback is not None or return_trajectory:
            raise ValueError("parallel sampling supports neither callback nor return_trajectory")
        if not isinstance(parallel, dict):
            raise TypeError(f"parallel must be a dict(window=..., tolerance=...), got {parallel!r}")
        runner = ParallelSampler(
            model,
            steps,
            **parallel,
            solver=solver,
            schedule=schedule,
            cfg_scale=cfg_scale,
            nag_scale=nag_scale,
            device=device,
            dtype=dtype,
            **options,
        )
        samples = runner.sample(
            n, y=y, seed=seed, latents=latents, batch_size=batch_size, progress=progress
        )
        return samples, runner.stats
    sampler = Sampler(
        model,
        steps,
        solver=solver,
        schedule=schedule,
        cfg_scale=cfg_scale,
        nag_scale=nag_scale,
        device=device,
        dtype=dtype,
        **options,
    )
    return sampler.sample(
        n,
        y=y,
        seed=seed,
        latents=latents,
        batch_size=batch_size,
        progress=progress,
        callback=callback,
        return_trajectory=return_trajectory,
    )
