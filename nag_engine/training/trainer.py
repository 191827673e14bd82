"""The trainer: AdamW, EMA weights, gradient clipping, periodic evaluation and checkpoints,
and exact resume.

All randomness flows through two generators (one for minibatches, one for times, noise and
dropout) whose states are saved with the weights, the EMA and the optimizer, so a run that is
stopped and resumed from its checkpoint ends bit for bit where an uninterrupted run would.

In an initialised process group (`torchrun`, see `nag_engine.distributed`) the Trainer trains
data-parallel: `config.batch_size` stays the global batch, each rank computes the loss on its
share of it under DistributedDataParallel (`replicas.py`), and the steps are those of one process
with the same batch up to the order of floating-point sums. Every rank keeps the same weights,
EMA, optimizer state and generators; rank 0 alone writes checkpoints and exports and runs
`eval_fn`, and the others wait for it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..checkpoints import (
    CheckpointError,
    build_model,
    check_finite,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    tensor_section,
)
from ..images import remove_stale_temporaries
from ..schedules import get_schedule
from .config import NonFiniteLossError, TrainConfig, seeded_init
from .data import DataSet
from .losses import training_times
from .replicas import StepLoss, check_batch_split, replicate, share_of

Tensor = torch.Tensor


class Trainer:
    """Trains a denoiser on a DataSet; `run()` trains up to `config.steps`. In a process group
    of several ranks, build, run, save and export it on every rank (see the module doc)."""

    def __init__(
        self,
        model: nn.Module,
        data: DataSet,
        config: TrainConfig,
        *,
        out: Union[None, str, Path] = None,
        eval_fn: Optional[Callable[[Trainer], dict[str, float]]] = None,
        device: Union[None, str, torch.device] = None,
        finetuned_from: Optional[str] = None,
    ):
        for name, value, kind in (
            ("model", model, nn.Module),
            ("data", data, DataSet),
            ("config", config, TrainConfig),
        ):
            if not isinstance(value, kind):
                raise TypeError(
                    f"{name} must be a {kind.__name__}, got {type(value).__name__}"
                    + ("; build one with TrainConfig(**options)" if kind is TrainConfig else "")
                )
        is_head = config.objective == "noise_level"
        if is_head != (getattr(model, "prediction", "") is None):
            raise ValueError(
                "objective='noise_level' trains a NoiseLevelHead and objective='denoise' a "
                f"denoiser; got objective={config.objective!r} with a {type(model).__name__}"
            )
        if not is_head and config.p_t > 0 and not getattr(model, "supports_noise_dropout", False):
            # models loaded from a checkpoint without noise dropout say False; the architecture
            # has the null embedding, so training with p_t > 0 is what adds NAG support
            if not hasattr(type(model), "supports_noise_dropout"):
                raise ValueError("p_t > 0 needs a model with a null noise embedding")
            model.supports_noise_dropout = True
        check_data_fits(model, data)
        self.ranks = distributed.current()
        check_batch_split(config.batch_size, self.ranks.world_size)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.to(self.device).train().requires_grad_(True)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.data = data
        self.config = config
        self.out = Path(out) if out is not None else None
        self.eval_fn = eval_fn
        self.finetuned_from = finetuned_from
        # the step's loss as one module: DistributedDataParallel wraps it under several ranks
        self.loss_module: nn.Module = StepLoss(self.model)
        if self.ranks.distributed:
            self.loss_module = replicate(self.loss_module, self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.step = 0
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.noise_generator = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ one step
    def _lr(self) -> float:
        warmup = self.config.warmup_steps
        return self.config.lr * min(1.0, (self.step + 1) / warmup) if warmup else self.config.lr

    def train_step(self, x0: Tensor, y: Optional[Tensor]) -> dict[str, float]:
        """One optimizer step on a batch (under several ranks: the global batch, the same on
        every rank); returns the loss terms (their mean over the ranks)."""
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        share = share_of(len(x0), self.ranks)
        autocast = self.device.type == "cuda" and cfg.bf16
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, terms = self.loss_module(x0, y, cfg, self.noise_generator, share)
        # the step's one host read, before the update, so a non-finite loss changes nothing; under
        # several ranks the mean over the ranks, so every rank raises or none does
        values = self._logged_terms(terms)
        if not all(math.isfinite(v) for v in values.values()):
            raise NonFiniteLossError(
                f"the training loss became {values} at step {self.step + 1}; nothing of "
                "this step was applied and the last checkpoint written is kept. Lower lr, raise "
                "warmup_steps, or train in float32 (bf16=false)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return values

    def _logged_terms(self, terms: dict[str, Tensor]) -> dict[str, float]:
        if not self.ranks.distributed:
            return {k: float(v.detach()) for k, v in terms.items()}
        local = torch.stack([v.detach().float() for v in terms.values()])
        return dict(zip(terms, distributed.mean_over_ranks(local).tolist()))

    @torch.no_grad()
    def _update_ema(self) -> None:
        # a shorter memory early on, so the EMA of a short run is not dominated by the init
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    # ------------------------------------------------------------------ the loop
    def run(self, until: Optional[int] = None, progress: bool = True) -> list[dict[str, float]]:
        """Train until step `until` (default: config.steps), checkpointing and evaluating on
        the way; returns the logged history. Under several ranks: `eval_fn` runs on rank 0 and
        its values reach every rank's history; the progress bar shows on rank 0."""
        cfg = self.config
        until = cfg.steps if until is None else min(until, cfg.steps)
        check_batch_split(cfg.batch_size, self.ranks.world_size)
        if self.out is not None and self.ranks.is_main:  # what a killed run left half-written
            for name in ("checkpoint.safetensors", "model.safetensors"):
                remove_stale_temporaries(self.out / name)
        batches = self.data.batches(cfg.batch_size, self.data_generator)
        start_time, start_step = time.perf_counter(), self.step
        show = progress and self.ranks.is_main
        with tqdm(total=until, initial=self.step, desc="training", disable=not show) as bar:
            while self.step < until:
                x0, y = next(batches)
                x0 = x0.to(self.device)
                conditional = getattr(self.model, "num_classes", None) is not None
                y = y.to(self.device) if y is not None and conditional else None
                terms = self.train_step(x0, y)
                rate = (
                    (self.step - start_step) * cfg.batch_size / (time.perf_counter() - start_time)
                )
                bar.set_postfix(loss=f"{terms['loss']:.4f}", samples_per_s=f"{rate:.0f}")
                bar.update(1)
                self.history.append({"step": self.step, **terms})
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.eval_fn:
                    self.history[-1].update(distributed.on_main(lambda: self.eval_fn(self)))
                if (
                    self.out is not None
                    and cfg.checkpoint_every
                    and self.step % cfg.checkpoint_every == 0
                ):
                    self.save()
        if self.out is not None and self.step == cfg.steps:
            self.save()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_config(self) -> dict[str, Any]:
        """The JSON config stored with the weights."""
        return {
            "schedule": getattr(self.model, "schedule", "linear"),
            "prediction": self.model.prediction,
            "p_t": self.config.p_t if self.config.objective == "denoise" else 0.0,
            "p_c": self.config.p_c,
            "cdl_weight": self.config.cdl_weight,
            "dataset": self.data.info,
            "step": self.step,
            "train": dataclasses.asdict(self.config),
            "finetuned_from": self.finetuned_from,
            # where a fine-tuned model first came from (a converted official checkpoint)
            "converted_from": getattr(self.model, "checkpoint_config", {}).get("converted_from"),
        }

    def _state_tensors(self) -> dict[str, Tensor]:
        tensors = {
            "rng.data": self.data_generator.get_state(),
            "rng.noise": self.noise_generator.get_state(),
        }
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
        return tensors

    def save(self, path: Union[None, str, Path] = None) -> Path:
        """Write the resumable checkpoint (default: <out>/checkpoint.safetensors). Under several
        ranks: call it on every rank; rank 0 writes, the others wait until the file is there."""
        if path is None:
            if self.out is None:
                raise ValueError("no output folder: pass out= to the Trainer or a path to save()")
            path = self.out / "checkpoint.safetensors"
        return distributed.on_main(lambda: self._write_checkpoint(path))

    def _write_checkpoint(self, path: Union[str, Path]) -> Path:
        config = self.checkpoint_config()
        config["optimizer_groups"] = [
            {k: v for k, v in g.items() if k != "params"}
            for g in self.optimizer.state_dict()["param_groups"]
        ]
        return save_checkpoint(
            path, self.model, config, ema=self.ema, extra_tensors=self._state_tensors()
        )

    def export(self, path: Union[str, Path], dtype: torch.dtype = torch.float32) -> Path:
        """Write the EMA weights alone (no training state), for sampling and shipping. Under
        several ranks: call it on every rank; rank 0 writes, the others wait for it."""
        config = {**self.checkpoint_config(), "ema_weights": True}
        return distributed.on_main(
            lambda: save_checkpoint(path, self.ema, config, weights_dtype=dtype)
        )

    @classmethod
    def resume(
        cls,
        path: Union[str, Path],
        data: DataSet,
        *,
        out: Union[None, str, Path] = None,
        eval_fn: Optional[Callable[[Trainer], dict[str, float]]] = None,
        device: Union[None, str, torch.device] = None,
    ) -> Trainer:
        """Continue a run exactly where its checkpoint left it (under several ranks every rank
        reads the same file and restores the same weights, optimizer, generators and step)."""
        config, tensors = read_checkpoint(path)
        if "optimizer_groups" not in config or "rng.data" not in tensors:
            raise ValueError(f"{path} holds no training state (an exported model?): cannot resume")
        if config.get("dataset") != data.info:
            raise ValueError(f"{path} was trained on {config.get('dataset')}, not on {data.info}")
        batch_size = (config.get("train") or {}).get("batch_size")
        if isinstance(batch_size, int):  # this world size, not a damaged file
            check_batch_split(batch_size, distributed.current().world_size)
        check_finite(tensor_section(tensors, "model."), path, "model.")
        try:
            train_config = TrainConfig.from_dict(config["train"])
            model = build_model(config, path=path)
            model.checkpoint_config = config  # (keeps its lineage: converted_from)
            trainer = cls(
                model,
                data,
                train_config,
                out=out,
                eval_fn=eval_fn,
                device=device,
                finetuned_from=config.get("finetuned_from"),
            )
            trainer.load_training_state(config, tensors)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(
                f"{path}: its training state is damaged or incomplete ({type(err).__name__}: "
                f"{err}); resume from an earlier checkpoint, or start the run again"
            ) from None
        return trainer

    def load_training_state(self, config: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """The weights, EMA, optimizer, generators and step of a resumable checkpoint."""
        self.model.load_state_dict(tensor_section(tensors, "model."))
        self.ema.load_state_dict(tensor_section(tensors, "ema."))
        params = list(self.model.parameters())
        optim_state: dict[int, dict[str, Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, index, key = name.split(".", 2)
                optim_state.setdefault(int(index), {})[key] = value
        for index, state in optim_state.items():
            for key, value in state.items():
                if value.ndim and value.shape != params[index].shape:
                    raise ValueError(
                        f"optimizer state optim.{index}.{key} has shape {tuple(value.shape)}, "
                        f"its parameter {tuple(params[index].shape)}"
                    )
        groups = self.optimizer.state_dict()["param_groups"]
        for group, saved in zip(groups, config["optimizer_groups"]):
            group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
        self.optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
        self.data_generator.set_state(tensors["rng.data"])
        self.noise_generator.set_state(tensors["rng.noise"])
        self.step = int(config["step"])

    @classmethod
    def finetune(
        cls,
        path: Union[str, Path],
        data: DataSet,
        config: TrainConfig,
        **kwargs: Any,
    ) -> Trainer:
        """Start a new run from a checkpoint's weights (the paper adds NAG to a pretrained
        model this way: fine-tune with noise-condition dropout on). With
        ``config.objective == "noise_level"`` a denoiser checkpoint becomes the body of a fresh
        `NoiseLevelHead`."""
        check_batch_split(config.batch_size, distributed.current().world_size)
        # the EMA weights where the file has them; the Trainer makes the model trainable again
        model = load_checkpoint(path)
        if config.objective == "noise_level" and getattr(model, "prediction", None) is not None:
            from ..models.noise_head import NoiseLevelHead

            with seeded_init(config.seed):
                model = NoiseLevelHead.from_denoiser(model)
        adds_nag = (
            config.objective == "denoise"
            and config.p_t > 0
            and float(model.checkpoint_config.get("p_t") or 0.0) == 0.0
        )
        if adds_nag:
            init_null_noise(model, config)
        return cls(model, data, config, finetuned_from=str(path), **kwargs)


def init_null_noise(model: nn.Module, config: TrainConfig) -> None:
    """Start the null noise embedding of a model that was trained without noise dropout, as
    `config.null_noise_init` says (the mean over the times `config` trains at, zero, or kept)."""
    if config.null_noise_init == "keep":
        return
    if not hasattr(model, "init_null_noise"):
        raise ValueError(f"a {type(model).__name__} has no null noise embedding to fine-tune")
    if config.null_noise_init == "zero":
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("null_embedding", "null_noise")):
                    param.zero_()
        return
    schedule = get_schedule(getattr(model, "schedule", "linear"))
    times = training_times(
        schedule, config.time_distribution, mean=config.time_mean, std=config.time_std
    )
    model.init_null_noise(times)


def check_data_fits(model: nn.Module, data: DataSet) -> None:
    """Refuse data the model cannot train on (sample shape, labels against its classes) with
    an error naming both, before any training step."""
    shape = getattr(model, "sample_shape", None)
    if shape is not None and tuple(shape) != tuple(data.sample_shape):
        raise ValueError(
            f"the data ({data.info.get('name', data.name)}) has samples of shape "
            f"{list(data.sample_shape)}, the model expects {list(shape)}: encode or resize the "
            "data to the model's input (for latents: the VAE's channels and image size / 8)"
        )
    classes = getattr(model, "num_classes", None)
    if classes is None:  # an unconditional model ignores labels
        return
    if data.y is None:
        raise ValueError(
            f"the model is class-conditional ({classes} classes) but the data "
            f"({data.info.get('name', data.name)}) has no labels: training would teach it the "
            "null class only; encode a labelled folder (one subfolder per class)"
        )
    low, high = int(data.y.min()), int(data.y.max())
    if low < 0 or high >= classes:
        raise ValueError(
            f"the data's labels lie in [{low}, {high}] but the model has {classes} classes "
            f"(ids 0..{classes - 1}); relabel the data"
        )
