"""Checkpoints: one safetensors file holding the weights and a JSON config, written atomically.

The config (in the safetensors metadata under "nag_engine") names the architecture and its
constructor arguments, the schedule and prediction type, the dropouts the model was trained
with, the data set and the training step. Training runs add the EMA weights, the optimizer
state and the random generator states, so a run resumes exactly. Loading never unpickles.

Architectures are named as in `nag_engine.models.ARCHITECTURES`, the one registry of them.

A file that is not a sound checkpoint is refused before any expensive work, with an error naming
the file and what to do (`CheckpointError`, a ValueError; FileNotFoundError, IsADirectoryError):
first the header (its JSON, each tensor's dtype, shape and bytes, the config), then the model
built on the meta device (no memory) against the header's shapes, and only then are the weights
read and the model built for real. Loading refuses NaN or infinite weights, naming them: such a
model returns NaN, and no architecture here keeps such values in its state.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .images import atomic_write_bytes
from .models import ARCHITECTURES
from .schedules import get_schedule

Tensor = torch.Tensor
FORMAT = "nag_engine.checkpoint"
FORMAT_VERSION = 1
MAX_HEADER = 100_000_000  # bytes of JSON, as the safetensors library allows
# bytes per element of each safetensors dtype, and those holding floating-point numbers
DTYPE_SIZES = dict(F64=8, F32=4, F16=2, BF16=2, F8_E4M3=1, F8_E5M2=1, BOOL=1)
DTYPE_SIZES.update(I64=8, I32=4, I16=2, I8=1, U64=8, U32=4, U16=2, U8=1)
FLOAT_DTYPES = frozenset(("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"))
# optional config entries and the JSON types they must have where present (null: NoneType)
NUMBER, NULL = (int, float), type(None)
CONFIG_TYPES = dict(train=dict, has_ema=bool, ema_weights=bool, p_t=NUMBER, p_c=NUMBER)
CONFIG_TYPES.update(step=(int, NULL), finetuned_from=(str, NULL), converted_from=(dict, NULL))
# what a constructor raises for arguments that do not build a model
BUILD_ERRORS = (TypeError, ValueError, LookupError, AttributeError, RuntimeError, ArithmeticError)

# what to do, by what is wrong
DAMAGED = "the file is damaged or cut short (a download or copy?): download or copy it again"
FOREIGN = (
    "convert official DiT / SiT weights or a diffusers model folder with `nag-engine convert IN "
    "OUT.safetensors --format dit|sit|diffusers`; save models with nag_engine.save_checkpoint"
)
RESAVE = (
    "the file was edited or written by another program: re-save the model with "
    "nag_engine.save_checkpoint, or re-convert it with `nag-engine convert`"
)


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
    """(config, tensors) of a checkpoint file. The header, the config and the weights' sizes
    are checked (`check_weights`) before the weights are read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = existing_file(path)
    config, entries = _header_of(path)
    check_weights(config, entries, path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise _unreadable(path, err) from None
    return config, tensors


def read_header(path: Union[str, Path]) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """(config, {tensor name: shape}) of a checkpoint file, reading its header only (not the
    weights): for describing or checking a file before the expensive work."""
    path = existing_file(path)
    config, entries = _header_of(path)
    return config, {name: entry["shape"] for name, entry in entries.items()}


def existing_file(path: Union[str, Path]) -> Path:
    """`path` as a Path, or an error saying what is there instead of a file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a directory, not a checkpoint: name the .safetensors file in it (convert "
            f"a diffusers model folder first: `nag-engine convert {path} OUT.safetensors "
            "--format diffusers`)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: check the path")
    return path


def _header_of(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(config, {tensor name: its header entry}) of a file, every entry checked."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = f.read(8)
        length = int.from_bytes(start, "little")
        if len(start) < 8 or not 2 <= length <= min(MAX_HEADER, size - 8):
            if start[:4] == b"PK\x03\x04" or start[:1] == b"\x80":  # torch.save: zip, pickle
                raise CheckpointError(
                    f"{path} is a PyTorch pickle (torch.save), which nag_engine never loads (it "
                    f"can run code): convert it, `nag-engine convert {path} OUT.safetensors "
                    "--format dit` (or sit), or re-save the model with nag_engine.save_checkpoint"
                )
            raise _unreadable(path, f"a header of {length} bytes in a file of {size}")
        text = f.read(length)
    try:
        header = json.loads(text)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise _unreadable(path, f"its header: {err}") from None
    if not isinstance(header, dict):
        raise _unreadable(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _unreadable(path, "its metadata is not a map of strings")
    for name, entry in header.items():
        if not _sound_entry(entry, size - 8 - length):
            raise _unreadable(path, f"tensor {name!r}: {_short(entry)}")
    return _config_of(metadata, path), header


def _unreadable(path: Path, why: Any) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors checkpoint ({why}): {DAMAGED}")


def _sound_entry(entry: Any, data_size: int) -> bool:
    """Whether a header entry has a known dtype, a shape and a byte range fitting both."""
    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPE_SIZES:
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (_sizes(shape) and _sizes(offsets) and len(offsets) == 2):
        return False
    nbytes = math.prod(shape) * DTYPE_SIZES[entry["dtype"]]
    return 0 <= offsets[0] <= offsets[1] <= data_size and offsets[1] - offsets[0] == nbytes


def _sizes(values: Any) -> bool:  # a list of ints >= 0 (not bools)
    return isinstance(values, list) and all(type(v) is int and v >= 0 for v in values)


def _config_of(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    if metadata.get("format") != FORMAT or "nag_engine" not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file but not a nag_engine checkpoint (no nag_engine "
            f"config): {FOREIGN}"
        )
    version = metadata.get("version", "0")
    if not version.isdigit():
        raise CheckpointError(f"{path}: format version {version!r} is not a number; {RESAVE}")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, this nag_engine reads up to "
            f"{FORMAT_VERSION}: upgrade nag_engine (pip install -U nag-engine)"
        )
    try:
        config = json.loads(metadata["nag_engine"])
    except ValueError as err:
        raise CheckpointError(f"{path}: its config is not JSON ({err}); {RESAVE}") from None
    check_config(config, path)
    return config


def check_config(config: Any, path: Union[None, str, Path] = None) -> None:
    """Refuse a checkpoint config (the JSON under "nag_engine") that cannot describe a model:
    not an object, no or an unknown architecture, entries of the wrong type."""
    where = path if path is not None else "a checkpoint config"
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: its config is {_short(config)}, not an object; {RESAVE}")
    name = config.get("architecture")
    if not isinstance(name, str):
        raise CheckpointError(f"{where}: its config names no architecture ({name!r}); {RESAVE}")
    if name not in ARCHITECTURES:
        raise CheckpointError(
            f"{where}: unknown architecture {name!r}: known are {tuple(ARCHITECTURES)}; upgrade "
            f"nag_engine if a newer version wrote the file, else {RESAVE}"
        )
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(
            f"{where}: its config's 'model' (the {name} arguments) is {_short(config.get('model'))}"
            f", not a JSON object; {RESAVE}"
        )
    for key, kinds in CONFIG_TYPES.items():
        if key not in config:
            continue
        value = config[key]
        wrong = not isinstance(value, kinds) or (kinds is not bool and isinstance(value, bool))
        if key in ("p_t", "p_c") and not wrong:
            wrong = not 0.0 <= value <= 1.0  # (NaN too)
        if wrong:
            raise CheckpointError(f"{where}: its config's {key!r} is {_short(value)}; {RESAVE}")


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _few(names: list[str], limit: int = 4) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_weights(
    config: dict[str, Any], entries: dict[str, dict[str, Any]], path: Union[str, Path]
) -> None:
    """Refuse a file whose tensors (`entries`: the header's) do not fit its config: the model is
    built on the meta device (no memory, no initialisation) and its state dict's names, shapes
    and kinds of dtype compared with those of the weights (and of the EMA weights, if any)."""
    expected = build_model(config, path=path, device="meta").state_dict()
    problems = []
    for prefix in ("model.", "ema.") if config.get("has_ema") else ("model.",):
        found = tensor_section(entries, prefix)
        missing = [prefix + k for k in expected if k not in found]
        extra = [prefix + k for k in found if k not in expected]
        wrong = [
            f"{prefix}{k} is {found[k]['dtype']} {found[k]['shape']} in the file, {v.dtype} "
            f"{list(v.shape)} in the config"
            for k, v in expected.items()
            if k in found
            and (found[k]["shape"], found[k]["dtype"] in FLOAT_DTYPES)
            != (list(v.shape), v.is_floating_point())
        ]
        for names, what in ((missing, "missing "), (extra, "not in the model: "), (wrong, "")):
            problems += [what + _few(names)] if names else []
    if problems:
        raise CheckpointError(
            f"{path}: its weights do not match its {config['architecture']} config "
            f"({'; '.join(problems)}); {RESAVE}"
        )


def check_finite(state: dict[str, Tensor], path: Union[str, Path], prefix: str = "") -> None:
    """Refuse NaN or infinite weights, naming the tensors that hold them."""
    bad = [
        prefix + name
        for name, value in state.items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise CheckpointError(
            f"{path}: NaN or infinite values in {_few(bad)} (the training run diverged, or the "
            "file is damaged): use an earlier checkpoint of the run, or the file's other weights "
            "where it has both (weights='raw' / 'ema')"
        )


def tensor_section(tensors: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The tensors whose names start with `prefix` ("model.", "ema.", ...), prefix removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def build_model(
    config: dict[str, Any],
    *,
    path: Union[None, str, Path] = None,
    device: Union[None, str, torch.device] = None,
) -> nn.Module:
    """A freshly initialised model of the checkpoint config's architecture (on `device`:
    "meta" builds it without memory). `path` names the file in errors."""
    check_config(config, path)
    where = path if path is not None else "a checkpoint config"
    name = config["architecture"]
    cls = ARCHITECTURES[name]
    # a wrapper of a foreign model rebuilds it from the model's own config
    build = getattr(cls, "from_config", None)
    try:
        with _placed(device):
            model = build(config["model"]) if build is not None else cls(**config["model"])
        if isinstance(getattr(model, "schedule", None), str):
            get_schedule(model.schedule)
    except ImportError as err:
        raise ImportError(f"{where}: {err}") from None
    except BUILD_ERRORS as err:
        raise CheckpointError(
            f"{where}: its {name} config does not build ({type(err).__name__}: {err}; model "
            f"config {_short(config['model'])}); {RESAVE}"
        ) from None
    # the null noise embedding is only meaningful if the model was trained with it
    if (config.get("train") or {}).get("objective", "denoise") == "denoise":
        model.supports_noise_dropout = float(config.get("p_t") or 0.0) > 0.0
    return model


class SkipInit(TorchFunctionMode):
    """Skips weight initialisation (`torch.nn.init`, in-place random fills) while a model is
    built on the meta device, where values mean nothing: on meta some of it runs Python code
    that imports torch._dynamo, seconds of start-up."""

    FILLS = (torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.random_)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        is_init = getattr(func, "__module__", None) == "torch.nn.init" and name[-1:] == "_"
        if func in self.FILLS or (is_init and not name.startswith("_")):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _placed(device: Union[None, str, torch.device]) -> contextlib.ExitStack:
    """Where to build a model: the default device, or `device` (on meta without initialising)."""
    stack = contextlib.ExitStack()
    if device is not None:
        stack.enter_context(torch.device(device))
        if torch.device(device).type == "meta":
            stack.enter_context(SkipInit())
    return stack


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
    config, tensors = read_checkpoint(path)  # sizes checked before the weights are read
    prefix = "ema." if weights == "ema" and config.get("has_ema") else "model."
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in tensor_section(tensors, prefix).items()
    }
    check_finite(state, path, prefix)
    model = build_model(config, path=path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: its weights do not match the architecture ({err}); {RESAVE}"
        ) from None
    model.checkpoint_config = config
    model.requires_grad_(False)
    return model.eval().to(device) if device is not None else model.eval()
