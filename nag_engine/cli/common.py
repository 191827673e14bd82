"""What the `nag-engine` commands share: models and reference data by name, the picture of
samples, the --device option, argparse types, the checks of options and paths that every
command runs before any work (each error one line naming the option and the fix), and the
printed tables."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, Optional

import numpy as np
import torch
from torch import nn

from ..arguments import check_writable_folder
from ..images import density_image, side_by_side
from ..noise import MAX_SEED

# ---------------------------------------------------------------------- models and data
EXACT_MODELS = ("ring-exact", "gmm32-exact")  # exact Gaussian mixtures, built in code


def resolve_model(name: str) -> tuple[nn.Module, Optional[Any]]:
    """(model, reference) for a shipped name, an exact mixture or a checkpoint path. The
    reference is the exact mixture for mixture data, the DataSet for other data, or None."""
    from ..checkpoints import load_checkpoint
    from ..models import random_mixture, ring_mixture
    from ..presets import SHIPPED, shipped_checkpoint
    from ..training.data import load_dataset, mixture_for

    if name == EXACT_MODELS[0]:
        model = ring_mixture(8, num_classes=8)
        return model, model
    if name == EXACT_MODELS[1]:
        model = random_mixture(32, 8, num_classes=8)
        return model, model
    path = shipped_checkpoint(name) if name in SHIPPED else Path(name)
    model = load_checkpoint(path)
    info = dict(model.checkpoint_config.get("dataset") or {})
    if not info or info.get("name") == "latents":  # no reference picture for latents
        return model, None
    mixture = mixture_for(info)
    if mixture is not None:
        return model, mixture
    params = {k: v for k, v in info.items() if k != "name"}
    return model, load_dataset(info["name"], **params)


def reference_samples(reference: Any, labels: torch.Tensor, seed: int) -> Optional[torch.Tensor]:
    """Real data to compare with: exact mixture draws with the same labels, or the data set."""
    from ..models import GaussianMixtureModel

    if isinstance(reference, GaussianMixtureModel):
        gen = torch.Generator().manual_seed(seed)
        return reference.sample_data(len(labels), y=labels, generator=gen)[0].float()
    if reference is not None:
        return reference.x
    return None


def picture(
    samples: list[torch.Tensor],
    reference: Optional[torch.Tensor],
    nrow: int,
    labels: Optional[list[str]] = None,
) -> np.ndarray:
    """One grey picture: 2-D point clouds side by side (reference first), or image grids; with
    `labels` (one per panel) each panel's label drawn above it."""
    from ..training.data import to_image_grid

    if samples[0].ndim == 2 and samples[0].shape[1] == 2:
        clouds = ([reference] if reference is not None else []) + samples
        bound = max(float(c.abs().quantile(0.995)) for c in clouds) * 1.15
        return side_by_side(*(density_image(c, (-bound, bound)) for c in clouds), labels=labels)
    if samples[0].ndim == 4 and samples[0].shape[1] == 1:
        zoom = max(1, 64 // samples[0].shape[-1])  # small images are drawn larger
        grids = [to_image_grid(s, nrow).repeat(zoom, 0).repeat(zoom, 1) for s in samples]
        return side_by_side(*grids, gap=4 * zoom, labels=labels)
    raise ValueError("can draw 2-D points or grey images only; use --no-png")


# ---------------------------------------------------------------------- options
def resolve_device(name: str) -> torch.device:
    """The device --device names: "auto" (CUDA where available, else CPU), "cpu", "cuda" or
    "cuda:N", checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA device here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has CUDA devices 0..{count - 1}")
    return device


# the --device option of sample, train and encode (checked by resolve_device)
DEVICE_OPTION = ("--device",)
DEVICE_HELP = {"default": "auto", "help": "auto (CUDA where available), cpu, cuda, cuda:N"}


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def whole_number(text: str) -> int:
    """argparse type: an integer written out (2000, 2_000, -1); range checks come later, by
    option, in the command's checks."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    hint = f" (write it out: {int(number)})" if number.is_integer() else ""
    raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}{hint}") from None


def finite_float(text: str) -> float:
    """argparse type: a finite real number (not nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser (and, through add_subparsers, its commands' parsers) whose usage
    errors are one line: `nag-engine sample: error: argument --n: ...; see ... --help`."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


# ---------------------------------------------------------------------- checks before work
# Each raises a ValueError whose message names the option and the fix; `main` prints it as one
# line `nag-engine COMMAND: error: ...` and exits with status 2. None of them creates anything.


def check_count(option: str, value: int, *, limit: Optional[int] = None, why: str = "") -> int:
    """A count option (--n, --steps, --batch-size, ...): an int in [1, limit]."""
    if value < 1:
        raise ValueError(f"{option} must be > 0, got {value}: pass {option} 1 or more")
    if limit is not None and value > limit:
        raise ValueError(
            f"{option} {value:,} is more than the {limit:,} allowed{why}: pass {option} "
            f"{limit:,} or less"
        )
    return value


def check_steps_option(value: int, option: str = "--steps") -> int:
    """A sampler's step count: an int in [1, the most steps a plan holds]."""
    from ..arguments import MAX_STEPS

    why = " (a plan tables every step; samplers converge long before that)"
    return check_count(option, value, limit=MAX_STEPS, why=why)


def check_seed_option(value: int, option: str = "--seed") -> int:
    """A seed option: an int in [0, 2**64 - 1] (the sampler's seed range)."""
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{option} {value} is out of range: pass a seed in [0, 2**64 - 1]")
    return value


def check_output_file(
    option: str, path: Path, *, suffixes: tuple[str, ...] = (), example: str = "out.npz"
) -> None:
    """A file the command will write: not an existing folder, with one of `suffixes` (if any),
    in a folder that exists or can be made, writable by this user."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{option} {path} is a folder: name a file to write, e.g. {path / example}"
        )
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(
            f"{option} {path}: give a path ending in {' or '.join(suffixes)}, e.g. "
            f"{path.with_suffix(suffixes[0])}"
        )
    check_writable_folder(option, path, path.parent)


def check_output_folder(option: str, path: Path, files: Sequence[str] = ()) -> None:
    """A folder the command will write into (made if missing): not an existing file, under
    folders only, writable by this user, and none of the `files` it writes there a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file: name a folder (new or existing) instead")
    check_writable_folder(option, path, path)
    for name in files:
        if (path / name).is_dir():
            raise ValueError(
                f"{option} {path}: {path / name} is a folder; remove it or choose another {option}"
            )


def check_input(option: str, path: Path, kind: str, what: str) -> None:
    """A path the command reads: it exists and is a `kind` ("file", "folder" or "any")."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{option} {path}: no such {what}; check the path")
    if kind == "file" and path.is_dir():
        raise ValueError(f"{option} {path} is a folder: name the {what} in it")
    if kind == "folder" and not path.is_dir():
        raise ValueError(f"{option} {path} is a file: name the {what} (a folder)")


def check_memory(
    option: str, value: int, need: Callable[[int], int], what: str, fix: str = ""
) -> None:
    """Refuse a request of `value` (--n, ...) whose `need(value)` bytes (about; need grows
    with value) cannot fit in this machine's available memory, before any of it is allocated;
    the message says the largest value that fits."""
    from ..arguments import format_bytes, free_memory

    free = free_memory(torch.device("cpu"))
    if need(value) <= free:
        return
    low, high = 0, value  # the largest value that fits, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if need(middle) <= free else (low, middle - 1)
    raise ValueError(
        f"{option} {value:,}: {what} need about {format_bytes(need(value))}, more than the "
        f"{format_bytes(free)} of memory free here: pass {option} {max(low, 1):,} or less{fix}"
    )


def load_model_option(name: str, option: str = "--model") -> tuple[nn.Module, Optional[Any]]:
    """`resolve_model(name)` with a missing path, a folder or a damaged file reported by
    `option`, before anything is loaded."""
    from ..presets import SHIPPED

    if name not in SHIPPED and name not in EXACT_MODELS:
        check_input(option, Path(name), "file", "checkpoint file")
    try:
        return resolve_model(name)
    except (ValueError, OSError) as err:
        raise ValueError(f"{option} {name}: {one_line(err)}") from err


def one_line(err: BaseException) -> str:
    """An exception's message on one line (an OSError as its reason and file)."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.strerror}: {err.filename}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


# ---------------------------------------------------------------------- output
def print_table(rows: list[dict[str, Any]]) -> None:
    """Print rows grouped by their "model" entry (if any), one aligned table per group."""
    for model in dict.fromkeys(r.get("model", "") for r in rows):
        group = [r for r in rows if r.get("model", "") == model]
        keys = [k for k in group[0] if k != "model"]
        cells = [
            [f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in group
        ]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        if model:
            print(f"\n{model}")
        print("  " + "  ".join(k.rjust(w) for k, w in zip(keys, widths)))
        for c in cells:
            print("  " + "  ".join(v.rjust(w) for v, w in zip(c, widths)))
