"""diffusers' `UNet2DModel` and `DiTTransformer2DModel` as `nag_engine.models.protocol.Denoiser`s,
with a learned null noise embedding so they can be fine-tuned for NAG.

    model = DiffusersDenoiser.wrap(unet, scheduler=DDPMScheduler(...))   # or scheduler config
    ne.sample(model, 16, 50, solver="ddim")

Time: these models are trained at integer timesteps tau = 0 .. T-1 of a discrete DDPM process
(the scheduler's betas); we call them at t = (tau + 1) / T on the matching `vp-discrete`
schedule and hand the network tau (see `schedules.DiscreteVPSchedule`). The scheduler's
`prediction_type` maps to ours: epsilon -> "eps", v_prediction -> "v", sample -> "x0". Learned
variance channels (out_channels = 2 x in_channels) are dropped. The scheduler's sampling-only
options (clip_sample, thresholding, timestep_spacing) are not part of the model: nag_engine never
clips the predicted x0, and the spacing is the sampler's `spacing` option.

NAG: the wrapper owns ONE vector in the network's timestep-embedding space, `null_noise`, and
substitutes it for the timestep embedding on the rows where `drop_t` is set (for DiT, for every
block's own copy of the timestep embedder: one shared vector). It means nothing until the model
is fine-tuned with noise-condition dropout (`Trainer.finetune`), so `supports_noise_dropout` is
False until then.

Wrapping changes the diffusers model in place: forward hooks on its timestep embedders (which
substitute the null vector) and its label dropout turned off (class dropout is the trainer's
`p_c`). Wrap a model once; a second wrapper of the same model is refused.

Class conditioning: DiT's label table has a null row (class `num_embeds_ada_norm`) when it was
trained with class dropout; a class-conditional UNet2DModel has none unless its last class id
was reserved for it (`null_class`). Without a null class there is no CFG and no class dropout.

Over 400 lines because the wrapper, its scheduler mapping and the loading of model folders are
one adapter to one foreign library, and change together.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..predictions import check_prediction
from ..schedules import BETA_SCHEDULES, DiscreteVPSchedule, get_schedule
from .embeddings import model_timestep

SUPPORTED = ("UNet2DModel", "DiTTransformer2DModel")
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def import_diffusers():
    """The diffusers module, or an ImportError saying how to get it."""
    try:
        import diffusers
    except ImportError as err:
        raise ImportError(
            f"this needs the diffusers package ({err}): pip install 'nag-engine[diffusers]'"
        ) from None
    return diffusers


def schedule_from_scheduler(config: Optional[dict[str, Any]]) -> tuple[str, str, dict[str, Any]]:
    """(prediction, schedule spec, notes) of a diffusers scheduler config (a dict, e.g.
    `dict(scheduler.config)`); None gives DDPM's defaults (eps, linear betas 1e-4 .. 0.02,
    1000 steps). Unsupported options are refused with what to do instead."""
    config = dict(config or {})
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(
            f"scheduler prediction_type {kind!r} is not supported: choose one of "
            f"{tuple(PREDICTION_TYPES)}"
        )
    if config.get("trained_betas") is not None:
        raise ValueError(
            "the scheduler has trained_betas (an explicit beta array): only the named beta "
            f"schedules {BETA_SCHEDULES} map to nag_engine's vp-discrete schedule"
        )
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=True is not supported (zero terminal SNR)")
    beta_schedule = config.get("beta_schedule", "linear")
    schedule = DiscreteVPSchedule(
        beta_schedule,
        float(config.get("beta_start", 1e-4)),
        float(config.get("beta_end", 0.02)),
        int(config.get("num_train_timesteps", 1000)),
    )
    notes = {
        key: config[key]
        for key in (
            "_class_name",
            "timestep_spacing",
            "steps_offset",
            "clip_sample",
            "variance_type",
        )
        if key in config
    }
    return PREDICTION_TYPES[kind], schedule.name, notes


def _plain_config(config: Any) -> dict[str, Any]:
    """A diffusers config as JSON-ready data, without its private entries."""
    out = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return json.loads(json.dumps(out))


class DiffusersDenoiser(nn.Module):
    """A diffusers `UNet2DModel` or `DiTTransformer2DModel` as a nag_engine denoiser
    (`nag_engine.models.protocol.TrainableDenoiser`).

    Build one with `wrap` (a live diffusers model), `from_config` (what checkpoints store) or
    `nag_engine.convert.convert_checkpoint(folder, out, format="diffusers")`."""

    supports_noise_dropout = False

    def __init__(
        self,
        net: nn.Module,
        *,
        prediction: str = "eps",
        schedule: str = "vp-discrete",
        null_class: Optional[int] = None,
    ) -> None:
        super().__init__()
        kind = type(net).__name__
        if kind not in SUPPORTED:
            raise TypeError(f"DiffusersDenoiser wraps one of {SUPPORTED}, got {kind}")
        if getattr(net, "_nag_engine_wrapped", False):
            raise ValueError(
                f"this {kind} is already wrapped by a DiffusersDenoiser (its hooks are in place): "
                "use that wrapper, or wrap a copy (copy.deepcopy(model))"
            )
        self.net = net
        self.kind = kind
        self.prediction = check_prediction(prediction)
        self.schedule_obj = get_schedule(schedule)
        if not isinstance(self.schedule_obj, DiscreteVPSchedule):
            raise ValueError(f"diffusers models run on a vp-discrete schedule, got {schedule!r}")
        self.schedule = self.schedule_obj.name
        config = net.config
        self.channels = int(config.in_channels)
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.sample_shape = (self.channels, *size)
        self.num_classes, self.null_class = self._classes(config, null_class)
        # (sinusoidal projection, timestep embedder) pairs: one for a UNet, one per DiT block
        self._time_pairs = self._time_embedders()
        last = self._time_pairs[0][1].linear_2
        self.null_noise = nn.Parameter(torch.zeros(last.out_features, device=last.weight.device))
        self._drop_t: Optional[Tensor] = None
        net._nag_engine_wrapped = True
        for _, embedder in self._time_pairs:
            embedder.register_forward_hook(self._substitute_null)
        for module in net.modules():  # class dropout is the trainer's (p_c), from its generator
            if type(module).__name__ == "LabelEmbedding":
                module.dropout_prob = 0.0
        self.config: dict[str, Any] = {
            "model_class": kind,
            "model_config": _plain_config(config),
            "prediction": prediction,
            "schedule": self.schedule,
            "null_class": self.null_class,
        }

    # ------------------------------------------------------------------ building
    @classmethod
    def wrap(
        cls,
        net: nn.Module,
        *,
        scheduler: Any = None,
        null_class: Optional[int] = None,
    ) -> DiffusersDenoiser:
        """Wrap a diffusers model; prediction type and schedule come from `scheduler` (a
        diffusers scheduler or its config dict; None: DDPM's defaults)."""
        if scheduler is not None and hasattr(scheduler, "config"):
            scheduler = dict(scheduler.config)
        prediction, schedule, _ = schedule_from_scheduler(scheduler)
        return cls(net, prediction=prediction, schedule=schedule, null_class=null_class)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DiffusersDenoiser:
        """A freshly initialised wrapper from the `config` a checkpoint stores."""
        diffusers = import_diffusers()
        kind = config["model_class"]
        if kind not in SUPPORTED:
            raise ValueError(f"unsupported diffusers model class {kind!r}: one of {SUPPORTED}")
        net = getattr(diffusers, kind).from_config(config["model_config"])
        return cls(
            net,
            prediction=config["prediction"],
            schedule=config["schedule"],
            null_class=config.get("null_class"),
        )

    def _classes(self, config: Any, null_class: Optional[int]) -> tuple[Optional[int], Any]:
        if self.kind == "DiTTransformer2DModel":
            classes = config.num_embeds_ada_norm
            if classes is None:
                return None, None
            table = self.net.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
            has_null = table.num_embeddings > classes
            return int(classes), (int(classes) if has_null else None)
        count = config.num_class_embeds
        if config.class_embed_type is not None:
            raise ValueError(
                f"UNet2DModel class_embed_type={config.class_embed_type!r} is not supported "
                "(class ids through num_class_embeds only)"
            )
        if count is None:
            if null_class is not None:
                raise ValueError("null_class was given, but the UNet is unconditional")
            return None, None
        if null_class is None:
            return int(count), None
        if null_class != count - 1:
            raise ValueError(
                f"null_class must be the last class id ({count - 1}) of this UNet's "
                f"{count} class embeddings, got {null_class}"
            )
        return int(count) - 1, int(null_class)

    def _time_embedders(self) -> list[tuple[nn.Module, nn.Module]]:
        if self.kind == "UNet2DModel":
            kind = self.net.config.time_embedding_type
            if kind not in ("positional", "learned"):
                raise ValueError(
                    f"UNet2DModel time_embedding_type={kind!r} is not a DDPM timestep model "
                    "(positional or learned only)"
                )
            return [(self.net.time_proj, self.net.time_embedding)]
        if self.net.config.norm_type != "ada_norm_zero":
            raise ValueError("only class-conditional DiT (norm_type='ada_norm_zero') is supported")
        return [
            (block.norm1.emb.time_proj, block.norm1.emb.timestep_embedder)
            for block in self.net.transformer_blocks
        ]

    # ------------------------------------------------------------------ NAG
    def _substitute_null(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        if self._drop_t is None:
            return output
        return torch.where(self._drop_t[:, None], self.null_noise.to(output.dtype), output)

    @torch.no_grad()
    def init_null_noise(self, times: Tensor) -> None:
        """Set the null noise embedding to the mean timestep embedding over `times` (our t),
        averaged over every copy of the embedding."""
        steps = self.model_timestep(times.to(self.null_noise.device))
        means = []
        for proj, embedder in self._time_pairs:
            dtype = embedder.linear_1.weight.dtype
            means.append(embedder(proj(steps).to(dtype)).float().mean(0))
        self.null_noise.copy_(torch.stack(means).mean(0).to(self.null_noise.dtype))

    # ------------------------------------------------------------------ the protocol
    def model_timestep(self, t: Tensor) -> Tensor:
        """The network's timestep tau = T t - 1 of our times t, snapped to the nearest integer
        within float32 rounding (a "learned" time embedding takes integers only: rounded)."""
        tau = model_timestep(t, float(self.schedule_obj.num_steps), -1.0, 1e-3)
        if self.kind == "UNet2DModel" and self.net.config.time_embedding_type == "learned":
            return torch.round(tau).clamp(0, self.schedule_obj.num_steps - 1).long()
        return tau

    def _labels(self, y: Optional[Tensor], drop_y: Optional[Tensor], rows: int, device) -> Any:
        if self.num_classes is None:
            if y is not None:
                raise ValueError("y was given, but this diffusers model is unconditional")
            return None
        needs_null = y is None or drop_y is not None
        if needs_null and self.null_class is None:
            raise ValueError(
                f"this {self.kind} has no null class, so it cannot run unconditionally (y=None), "
                "with CFG, or with class dropout: pass labels, use cfg_scale=1.0 and train with "
                "p_c=0 (or wrap it with null_class=ID if one class id was reserved for it)"
            )
        null = self.null_class
        labels = torch.full((rows,), null, device=device) if y is None else y.to(device).long()
        if drop_y is not None:
            labels = torch.where(drop_y, torch.full_like(labels, null), labels)
        return labels

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Optional[Tensor] = None,
        *,
        drop_t: Optional[Tensor] = None,
        drop_y: Optional[Tensor] = None,
    ) -> Tensor:
        """The `prediction` target for x at our times t [B]; drop_t rows use the null noise
        embedding, drop_y rows (and y=None) the null class."""
        rows = len(x)
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(rows) if t.ndim == 0 else t
        labels = self._labels(y, drop_y, rows, x.device)
        dtype = next(self.net.parameters()).dtype
        self._drop_t = drop_t
        try:
            if self.kind == "UNet2DModel":
                out = self.net(x.to(dtype), self.model_timestep(t), class_labels=labels).sample
            else:
                out = self.net(
                    x.to(dtype), timestep=self.model_timestep(t), class_labels=labels
                ).sample
        finally:
            self._drop_t = None
        return out[:, : self.channels].to(x.dtype)


def DiffusersDiT(transformer: nn.Module, num_train_timesteps: int = 1000) -> DiffusersDenoiser:
    """A class-conditional diffusers `DiTTransformer2DModel` (eps on DDPM's linear betas, as
    facebook/DiT-XL-2 ships) as a nag_engine denoiser."""
    config = getattr(transformer, "config", None)
    if config is None or getattr(config, "num_embeds_ada_norm", None) is None:
        raise TypeError(
            "DiffusersDiT wraps a class-conditional diffusers DiTTransformer2DModel "
            f"(config.num_embeds_ada_norm set), got {type(transformer).__name__}"
        )
    schedule = DiscreteVPSchedule("linear", 1e-4, 0.02, num_train_timesteps).name
    return DiffusersDenoiser(transformer, prediction="eps", schedule=schedule)


# ----------------------------------------------------------------------------- folders
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path} ({err})") from None


def find_model_folder(folder: Path) -> tuple[Path, str, Optional[Path]]:
    """(model folder, its class name, scheduler config file or None) of a diffusers model
    folder or of a pipeline folder holding one (unet/ or transformer/, with scheduler/)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no diffusers folder at {folder}")
    candidates = [folder, folder / "unet", folder / "transformer"]
    for candidate in candidates:
        config_path = candidate / "config.json"
        if config_path.is_file():
            kind = _read_json(config_path).get("_class_name")
            if kind in SUPPORTED:
                scheduler = None
                for place in (candidate / "scheduler", candidate.parent / "scheduler"):
                    if (place / "scheduler_config.json").is_file():
                        scheduler = place / "scheduler_config.json"
                        break
                return candidate, kind, scheduler
            if candidate == folder and kind is not None:
                raise ValueError(
                    f"{folder} holds a diffusers {kind}; nag_engine converts {SUPPORTED}"
                )
    raise ValueError(
        f"{folder} is not a diffusers model folder: no config.json of a {' or '.join(SUPPORTED)} "
        "in it or in its unet/ or transformer/ subfolder (save one with "
        "model.save_pretrained(DIR))"
    )


def load_diffusers_folder(
    folder: Union[str, Path],
    *,
    scheduler: Union[None, str, Path] = None,
    null_class: Optional[int] = None,
) -> tuple[DiffusersDenoiser, dict[str, Any]]:
    """(the wrapped model, notes on the conversion) of a local diffusers folder; the scheduler
    config is `scheduler` (a scheduler_config.json or its folder), else the pipeline's own;
    `null_class` is a class-conditional UNet's reserved null class id (its last), if any."""
    diffusers = import_diffusers()
    folder = Path(folder)
    model_dir, kind, found = find_model_folder(folder)
    if scheduler is not None:
        scheduler = Path(scheduler)
        found = scheduler / "scheduler_config.json" if scheduler.is_dir() else scheduler
        if not found.is_file():
            raise FileNotFoundError(f"no scheduler config at {found}")
    scheduler_config = _read_json(found) if found is not None else None
    prediction, schedule, notes = schedule_from_scheduler(scheduler_config)
    if int(notes.get("steps_offset") or 0) != 0:
        warnings.warn(
            f"the scheduler's steps_offset={notes['steps_offset']} shifts diffusers' "
            "'leading' timesteps up by that much; nag_engine's spacing='leading' does not, so "
            "its grid sits one training timestep lower (use 'trailing' or 'adm' to compare)",
            stacklevel=2,
        )
    try:
        net = getattr(diffusers, kind).from_pretrained(str(model_dir), low_cpu_mem_usage=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"diffusers could not load the {kind} in {model_dir} ({err})") from None
    model = DiffusersDenoiser(
        net.float(), prediction=prediction, schedule=schedule, null_class=null_class
    )
    notes = {
        "format": "diffusers",
        "model_class": kind,
        "scheduler": notes if found is not None else "none found: DDPM defaults",
    }
    return model.eval(), notes


def diffusers_folder_checkpoint(
    folder: Union[str, Path],
    *,
    scheduler: Union[None, str, Path] = None,
    null_class: Optional[int] = None,
) -> tuple[DiffusersDenoiser, dict[str, Any]]:
    """(model, checkpoint config) of a diffusers model folder (see `load_diffusers_folder`), the
    null noise embedding started at the mean timestep embedding: what
    `nag_engine.convert.convert_checkpoint(folder, dst, format="diffusers")` saves."""
    from ..training.losses import training_times

    model, notes = load_diffusers_folder(folder, scheduler=scheduler, null_class=null_class)
    model.init_null_noise(training_times(model.schedule_obj))
    config = {
        "schedule": model.schedule,
        "prediction": model.prediction,
        "p_t": 0.0,
        # class dropout to keep up when fine-tuning: where the model has a null class it was
        # trained with class dropout (DiT's recipe: 0.1)
        "p_c": 0.1 if model.null_class is not None else 0.0,
        "dataset": None,
        "step": None,
        "converted_from": {
            **notes,
            "folder": Path(folder).name,
            "null_noise_init": "mean timestep embedding over the training times",
        },
    }
    return model, config
