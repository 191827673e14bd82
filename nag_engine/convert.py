"""Checkpoints of the papers' code -> nag_engine checkpoints: facebookresearch/DiT and
willisma/SiT state dicts (and diffusers model folders, see
`nag_engine.models.diffusers_models`).

    convert_checkpoint("DiT-XL-2-256x256.pt", "dit-xl.safetensors", format="dit")

Both repositories share one architecture (DiT's `models.py`), so the file's tensors say
everything about it but the number of attention heads (taken from the DiT presets by width).
What differs is the meaning of the output and of the time input:

* DiT: eps on the DDPM linear-beta schedule (1e-4 .. 0.02, 1000 steps), learned sigma in the
  second half of the 8 output channels, trained at integer timesteps tau = 0 .. 999. The
  converted model predicts eps on `vp-discrete`, where tau sits at t = (tau + 1) / 1000 (the
  DDPM paper's x_{tau+1}; t = 0 is the clean data), so it is called at t and feeds tau to the
  network. The sigma channels are dropped (as diffusers' DiT pipeline does): nag_engine's DDPM
  uses a fixed variance (`variance="small"` or `"large"`), not the learned one.
* SiT: velocity on the linear interpolant, but SiT's t runs from noise (0) to data (1) with
  x_t = t x_data + (1 - t) eps, and predicts d x_t / dt = x_data - eps. Ours is t' = 1 - t with
  the velocity d x / dt' = eps - x_data: the converted model feeds 1 - t' to the network and
  its output layer is negated (exactly). The sigma half is dropped too (SiT never uses it).

Loading never unpickles code: `.safetensors`, or `torch.load(weights_only=True)` (with
`argparse.Namespace`, the training arguments DiT/SiT's train.py saves beside the weights, as the
one allowed class). A file that needs more is refused with an error saying so.

The null noise embedding (the vector NAG's noise-unconditional pass uses) is new: it starts as
the mean timestep embedding over the model's training times, which is what fine-tuning with
noise-condition dropout then refines (`Trainer.finetune`; why the mean: benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import pickle
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .checkpoints import save_checkpoint
from .models.dit import DiT, get_2d_sincos_pos_embed
from .schedules import get_schedule

Tensor = torch.Tensor

FORMATS = ("dit", "sit", "diffusers")
WEIGHTS = ("ema", "model")

# width -> heads of the official presets (depth, patch vary: DiT-S/B/L/XL with /2, /4, /8)
OFFICIAL_PRESETS: dict[str, dict[str, int]] = {
    "DiT-S": {"hidden_size": 384, "depth": 12, "num_heads": 6},
    "DiT-B": {"hidden_size": 768, "depth": 12, "num_heads": 12},
    "DiT-L": {"hidden_size": 1024, "depth": 24, "num_heads": 16},
    "DiT-XL": {"hidden_size": 1152, "depth": 28, "num_heads": 16},
}
OFFICIAL_CLASS_DROPOUT = 0.1  # class_dropout_prob of DiT's and SiT's train.py
# DiT's / SiT's training noise process in our terms
FORMAT_SCHEDULE = {"dit": "vp-discrete", "sit": "linear"}
FORMAT_PREDICTION = {"dit": "eps", "sit": "velocity"}
# model_timestep(t) of each format (DiT: tau = 1000 t - 1, snapped to integers; SiT: 1 - t)
FORMAT_TIME = {
    "dit": {"time_scale": 1000.0, "time_offset": -1.0, "time_snap": 1e-3},
    "sit": {"time_scale": -1.0, "time_offset": 1.0, "time_snap": 0.0},
}


class ConversionError(ValueError):
    """The file cannot be converted (unreadable, unsafe, or not of the named layout)."""


# ----------------------------------------------------------------------------- reading
def file_sha256(path: Union[str, Path]) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_tensors(path: Union[str, Path]) -> Any:
    """What a weights file holds, without running any code from it: safetensors, or a
    `torch.save` file through `torch.load(weights_only=True)`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ConversionError(f"{path} is not a readable safetensors file ({err})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found is None:  # not a pickle of tensors at all (a truncated or foreign file)
            raise ConversionError(f"{path} is not a readable torch.save file") from None
        raise ConversionError(
            f"{path} cannot be loaded without unpickling code (it pickles {found.group(1)}); "
            "nag_engine reads only tensors (torch.load(weights_only=True)). If you trust the "
            "file, re-save its weights as plain tensors: torch.save(torch.load(IN, "
            "weights_only=False)['ema'], OUT) (or safetensors.torch.save_file) and convert that"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConversionError(f"{path} is not a readable torch.save file ({err})") from None


def state_dict_of(
    loaded: Any, path: Union[str, Path], weights: str = "ema"
) -> tuple[dict[str, Tensor], str]:
    """(the model state dict inside a loaded file, which entry it came from): the file itself
    ("file", a released checkpoint) or its "ema" / "model" entry (a train.py checkpoint), with
    DDP's "module." and torch.compile's "_orig_mod." prefixes removed."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if not isinstance(loaded, dict):
        raise ConversionError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    state, entry = loaded, "file"
    if isinstance(loaded.get(weights), dict):
        state, entry = loaded[weights], weights
    elif isinstance(loaded.get("state_dict"), dict):
        state, entry = loaded["state_dict"], "state_dict"
    elif any(isinstance(v, dict) for v in loaded.values()) and not _is_flat(loaded):
        raise ConversionError(
            f"{path} holds no {weights!r} weights (entries: {sorted(loaded)[:8]}); pick the "
            f"entry with weights={'model' if weights == 'ema' else 'ema'!r}"
        )
    out = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ConversionError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out, entry


def training_args(loaded: Any) -> Optional[dict[str, Any]]:
    """The arguments a DiT / SiT train.py checkpoint saved (its "args" Namespace), as plain
    JSON values; None for a released state dict."""
    args = loaded.get("args") if isinstance(loaded, dict) else None
    if not isinstance(args, argparse.Namespace):
        return None
    plain = (str, int, float, bool, type(None))
    return {k: v for k, v in vars(args).items() if isinstance(v, plain)}


def check_training_args(fmt: str, args: Optional[dict[str, Any]], source: str) -> None:
    """Refuse a train.py checkpoint whose saved arguments say it is not the named format, or a
    SiT trained on a path / prediction other than the linear interpolant's velocity."""
    if not args:
        return
    model = str(args.get("model", ""))
    family = model.split("-")[0].lower()
    if family in ("dit", "sit") and family != fmt:
        raise ConversionError(
            f"{source} was trained as {model} (its saved arguments say so): convert it with "
            f"--format {family}"
        )
    if fmt == "sit":
        path_type, prediction = args.get("path_type", "Linear"), args.get("prediction", "velocity")
        if path_type != "Linear" or prediction != "velocity":
            raise ConversionError(
                f"{source} is a SiT trained with path_type={path_type!r}, "
                f"prediction={prediction!r}; nag_engine converts the linear interpolant's "
                "velocity models (path_type='Linear', prediction='velocity') only"
            )


def _is_flat(d: dict) -> bool:
    return all(isinstance(v, Tensor) for v in d.values())


# ----------------------------------------------------------------------------- the layout
def official_keys(depth: int) -> set[str]:
    """The state-dict keys of DiT's / SiT's `models.DiT` with `depth` blocks."""
    keys = {
        "pos_embed",
        "x_embedder.proj.weight",
        "x_embedder.proj.bias",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.0.bias",
        "t_embedder.mlp.2.weight",
        "t_embedder.mlp.2.bias",
        "y_embedder.embedding_table.weight",
        "final_layer.linear.weight",
        "final_layer.linear.bias",
        "final_layer.adaLN_modulation.1.weight",
        "final_layer.adaLN_modulation.1.bias",
    }
    for i in range(depth):
        for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"):
            keys |= {f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"}
    return keys


def _depth(state: dict[str, Tensor]) -> int:
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(blocks) + 1 if blocks else 0


def _closest_preset(hidden: Optional[int], depth: int) -> str:
    """ "closest preset NAME (hidden H, depth D)" for an architecture's width and depth."""

    def distance(item):
        spec = item[1]
        width = abs(math.log((hidden or 1) / spec["hidden_size"]))
        return width + abs(math.log(max(depth, 1) / spec["depth"]))

    name, spec = min(OFFICIAL_PRESETS.items(), key=distance)
    return (
        f"{name} (hidden {spec['hidden_size']}, depth {spec['depth']}, {spec['num_heads']} heads)"
    )


def _describe_keys(keys: set[str], limit: int = 6) -> str:
    shown = sorted(keys)[:limit]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def infer_architecture(
    state: dict[str, Tensor], *, num_heads: Optional[int] = None, source: str = "the file"
) -> dict[str, Any]:
    """DiT constructor arguments (and learn_sigma) read off an official state dict; errors name
    the missing / unexpected keys, the closest official preset and what differs."""
    hidden = None
    if "x_embedder.proj.weight" in state and state["x_embedder.proj.weight"].ndim == 4:
        hidden = int(state["x_embedder.proj.weight"].shape[0])
    depth = _depth(state)
    expected = official_keys(depth)
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected or hidden is None or depth == 0:
        parts = []
        if missing:
            parts.append(f"missing keys: {_describe_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_describe_keys(unexpected)}")
        raise ConversionError(
            f"{source} does not have the DiT/SiT layout ({'; '.join(parts) or 'no blocks'}). "
            f"Closest official preset: {_closest_preset(hidden, depth)}; this file: hidden "
            f"{hidden}, depth {depth}. It needs the key names of facebookresearch/DiT's "
            "models.DiT (a diffusers folder converts with --format diffusers)"
        )
    patch_weight = state["x_embedder.proj.weight"]
    in_channels, patch = int(patch_weight.shape[1]), int(patch_weight.shape[2])
    tokens = int(state["pos_embed"].shape[1])
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ConversionError(f"{source}: pos_embed has {tokens} tokens, not a square grid")
    out_rows = int(state["final_layer.linear.weight"].shape[0])
    out_channels = out_rows // (patch * patch)
    if out_channels not in (in_channels, 2 * in_channels) or out_rows % (patch * patch):
        raise ConversionError(
            f"{source}: the final layer has {out_rows} rows; expected patch^2 x in_channels "
            f"({patch * patch * in_channels}) or twice that (learned sigma)"
        )
    rows = int(state["y_embedder.embedding_table.weight"].shape[0])
    if rows < 2:
        raise ConversionError(f"{source}: the class table has {rows} row(s); need classes + null")
    mlp_hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    if num_heads is None:
        by_width = {p["hidden_size"]: p["num_heads"] for p in OFFICIAL_PRESETS.values()}
        if hidden not in by_width:
            raise ConversionError(
                f"{source}: hidden size {hidden} is no official preset's, so the number of "
                f"attention heads is unknown (closest preset: {_closest_preset(hidden, depth)}); "
                "pass num_heads (--num-heads)"
            )
        num_heads = by_width[hidden]
    if hidden % num_heads:
        raise ConversionError(
            f"{source}: hidden size {hidden} is not divisible by {num_heads} heads"
        )
    return {
        "input_size": grid * patch,
        "patch_size": patch,
        "in_channels": in_channels,
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": mlp_hidden / hidden,
        "num_classes": rows - 1,  # the last row is the null class (trained with class dropout)
        "learn_sigma": out_channels == 2 * in_channels,
    }


def preset_name(arch: dict[str, Any]) -> Optional[str]:
    """ "DiT-XL/2"-style name of an inferred architecture, or None for a custom size."""
    for name, spec in OFFICIAL_PRESETS.items():
        if all(arch[k] == v for k, v in spec.items()):
            return f"{name}/{arch['patch_size']}"
    return None


# ----------------------------------------------------------------------------- converting
def _eps_rows(weight: Tensor, channels: int, patch: int) -> Tensor:
    """The final layer's rows of the first `channels` output channels (its rows are ordered
    (patch row, patch column, channel) with the channel fastest, DiT's unpatchify order)."""
    out = weight.shape[0] // (patch * patch)
    keep = torch.arange(weight.shape[0]) % out < channels
    return weight[keep]


def build_converted(
    state: dict[str, Tensor], fmt: str, *, num_heads: Optional[int] = None, source: str = "file"
) -> tuple[DiT, dict[str, Any]]:
    """A nag_engine DiT equal to an official DiT / SiT state dict (see the module docstring),
    and a description of the conversion for the checkpoint config."""
    if fmt not in ("dit", "sit"):
        raise ValueError(f"format must be 'dit' or 'sit' here, got {fmt!r}")
    arch = infer_architecture(state, num_heads=num_heads, source=source)
    learn_sigma = arch.pop("learn_sigma")
    model = DiT(
        **arch,
        prediction=FORMAT_PREDICTION[fmt],
        schedule=FORMAT_SCHEDULE[fmt],
        **FORMAT_TIME[fmt],
    )
    patch, channels = arch["patch_size"], arch["in_channels"]
    ours: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.2.")
        if key.startswith("final_layer.linear."):
            value = _eps_rows(value, channels, patch)
            if fmt == "sit":
                value = -value  # SiT's velocity points the other way in time
        ours[key] = value.detach().to(torch.float32)
    ours["t_embedder.null_embedding"] = model.t_embedder.null_embedding.detach().clone()
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as err:
        raise ConversionError(
            f"{source}: the tensors do not fit the inferred architecture ({err})"
        ) from None
    from .training.losses import training_times  # (DiT: its 1000 timesteps; SiT: uniform t)

    model.t_embedder.init_null_as_mean(training_times(get_schedule(model.schedule)))
    standard_pos = torch.equal(
        state["pos_embed"].float().reshape(-1),
        get_2d_sincos_pos_embed(arch["hidden_size"], arch["input_size"] // patch).reshape(-1),
    )
    info = {
        "format": fmt,
        "preset": preset_name({**arch, "learn_sigma": learn_sigma}),
        "learned_sigma": "dropped" if learn_sigma else "none",
        "standard_pos_embed": standard_pos,
        "null_noise_init": "mean timestep embedding over the training times",
    }
    return model.eval(), info


def convert_checkpoint(
    src: Union[str, Path],
    dst: Union[str, Path],
    *,
    format: str,
    weights: str = "ema",
    num_heads: Optional[int] = None,
    scheduler: Union[None, str, Path] = None,
    null_class: Optional[int] = None,
) -> Path:
    """Convert an official DiT / SiT checkpoint file (or, with format="diffusers", a diffusers
    model folder, with `scheduler` naming its scheduler config where the folder has none and
    `null_class` a class-conditional UNet's reserved null class id) into a nag_engine
    checkpoint at `dst` (written atomically). Returns `dst`."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}: choose one of {FORMATS}")
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {dst}")
    if format == "diffusers":
        from .models.diffusers_models import diffusers_folder_checkpoint

        model, config = diffusers_folder_checkpoint(src, scheduler=scheduler, null_class=null_class)
        return save_checkpoint(dst, model, config)
    if scheduler is not None or null_class is not None:
        raise ValueError("scheduler and null_class apply to format='diffusers' only")
    if num_heads is not None and (not isinstance(num_heads, int) or num_heads < 1):
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    src = Path(src)
    loaded = load_tensors(src)
    state, entry = state_dict_of(loaded, src, weights)
    args = training_args(loaded)
    check_training_args(format, args, str(src))
    model, info = build_converted(state, format, num_heads=num_heads, source=str(src))
    config = {
        "schedule": model.schedule,
        "prediction": model.prediction,
        "p_t": 0.0,  # no noise-condition dropout yet: fine-tune to add NAG
        "p_c": OFFICIAL_CLASS_DROPOUT,
        "dataset": None,
        "step": None,
        "converted_from": {
            **info,
            "file": src.name,
            "sha256": file_sha256(src),
            "weights": entry,  # the train.py entry taken, or "file" for a plain state dict
            "training_args": args,
        },
    }
    return save_checkpoint(dst, model, config)
