"""Checkpoints: one safetensors file holding the weights and a JSON config, written atomically.

The config (in the safetensors metadata under "nag_engine") names the architecture and its
constructor arguments, the schedule and prediction type, the dropouts the model was trained
with, the data set and the training step. Training runs add the EMA weights, the optimizer
state and the random generator states, so a run resumes exactly. Loading never unpickles.

Architectures are named as in `nag_engine.models.ARCHITECTURES`, the one registry of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .images import atomic_write_bytes
from .models import ARCHITECTURES

Tensor = torch.Tensor
FORMAT = "nag_engine.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a readable nag_engine checkpoint."""


def architecture_name(model: nn.Module) -> str:
    """The registered architecture name of a model, or a TypeError for foreign models."""
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise TypeError(
        f"cannot checkpoint a {type(model).__name__}: only {tuple(ARCHITECTURES)} are known"
    )


def save_checkpoint(
    path: Union[str, Path],
    model: nn.Module,
    config: dict[str, Any],
    *,
    ema: Optional[nn.Module] = None,
    extra_tensors: Optional[dict[str, Tensor]] = None,
    weights_dtype: Optional[torch.dtype] = None,
) -> Path:
    """Write model (and EMA) weights with `config` to `path` (temp file, then rename).

    `config` must be JSON-serialisable; the architecture and its constructor arguments are
    added. `extra_tensors` (e.g. optimizer state) are stored under their own names.
    `weights_dtype` stores floating weights in a smaller dtype (for shipped files)."""
    from safetensors.torch import save

    full = dict(config)
    full["architecture"] = architecture_name(model)
    full["model"] = model.config
    full["has_ema"] = ema is not None
    tensors: dict[str, Tensor] = {}
    for prefix, module in (("model.", model), ("ema.", ema)):
        if module is None:
            continue
        for name, value in module.state_dict().items():
            value = value.detach().cpu()
            if weights_dtype is not None and value.is_floating_point():
                value = value.to(weights_dtype)
            tensors[prefix + name] = value.contiguous()
    for name, value in (extra_tensors or {}).items():
        tensors[name] = value.detach().cpu().contiguous()
    metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "nag_engine": json.dumps(full)}
    data = save(tensors, metadata=metadata)
    atomic_write_bytes(path, data)
    return Path(path)


def read_checkpoint(path: Union[str, Path]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config, tensors) of a checkpoint file, with clear errors for missing, corrupt or
    foreign files."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err})") from None
    return _config_of(header, path), tensors


def _config_of(header: dict[str, Any], path: Path) -> dict[str, Any]:
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT or "nag_engine" not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file but not a nag_engine checkpoint (no nag_engine config)"
        )
    if int(metadata.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {metadata['version']}; upgrade nag_engine"
        )
    return json.loads(metadata["nag_engine"])


def read_header(path: Union[str, Path]) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """(config, {tensor name: shape}) of a checkpoint file, reading its header only (not the
    weights): for describing or checking a file before the expensive work."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 0 < header_len <= 100_000_000:
                raise ValueError(f"a header of {header_len} bytes")
            header = json.loads(f.read(header_len))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err})") from None
    shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    return _config_of(header, path), shapes


def tensor_section(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors whose names start with `prefix` ("model.", "ema.", ...), prefix removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def build_model(config: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of the checkpoint config's architecture."""
    name = config.get("architecture")
    if name not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {name!r}: known are {tuple(ARCHITECTURES)}")
    cls = ARCHITECTURES[name]
    # a wrapper of a foreign model rebuilds it from the model's own config
    build = getattr(cls, "from_config", None)
    model = build(config["model"]) if build is not None else cls(**config["model"])
    # the null noise embedding is only meaningful if the model was trained with it
    if config.get("train", {}).get("objective", "denoise") == "denoise":
        model.supports_noise_dropout = float(config.get("p_t", 0.0)) > 0.0
    return model


def load_checkpoint(
    path: Union[str, Path],
    *,
    weights: str = "ema",
    device: Union[None, str, torch.device] = None,
) -> nn.Module:
    """A ready-to-sample model (eval mode, no gradients) from a checkpoint file.

    `weights` = "ema" takes the EMA weights when the file has them, "raw" the trained ones. The
    model carries its config as `model.checkpoint_config`; `supports_noise_dropout` is set only
    if it was trained with noise-condition dropout (p_t > 0)."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    config, tensors = read_checkpoint(path)
    model = build_model(config)
    prefix = "ema." if weights == "ema" and config.get("has_ema") else "model."
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in tensor_section(tensors, prefix).items()
    }
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the architecture ({err})") from None
    model.checkpoint_config = config
    model.requires_grad_(False)
    return model.eval().to(device) if device is not None else model.eval()
