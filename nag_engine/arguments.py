"""Checks of user arguments shared by the entry points (the plan, the executors, the writers):
each returns the value in its canonical form or raises a TypeError / ValueError that names the
argument, what it got and what it takes. They run once per call, before any work."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

Tensor = torch.Tensor

MAX_STEPS = 100_000  # the plan holds host and device tables of every step


def describe(value: Any) -> str:
    """A short description of a value for error messages."""
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def check_positive_int(name: str, value: Any) -> int:
    """value, if it is an int > 0; else a TypeError / ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_steps(steps: Any) -> int:
    """The number of solver steps: an int in [1, MAX_STEPS]."""
    steps = check_positive_int("steps", steps)
    if steps > MAX_STEPS:
        raise ValueError(
            f"steps={steps:,} is more than the {MAX_STEPS:,} a plan holds (it tables every "
            "step on the host and the device); samplers converge long before that"
        )
    return steps


def finite_number(name: str, value: object) -> float:
    """value as a float, if it is a finite real number; else an error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """value, if it is True or False; else a TypeError naming `name`."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_device(device: Any) -> Optional[torch.device]:
    """A torch.device from a device or its name ("cpu", "cuda", "cuda:1"), or None."""
    if device is None or isinstance(device, torch.device):
        return device
    if isinstance(device, str):
        try:
            return torch.device(device)
        except RuntimeError:
            pass
    raise ValueError(
        f"device must be a torch.device or a name such as 'cpu', 'cuda' or 'cuda:1', got {device!r}"
    )


def check_sample_shape(name: str, shape: Any) -> Optional[tuple[int, ...]]:
    """A sample shape (a sequence of ints > 0, without the batch dimension), or None."""
    if shape is None:
        return None
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"{name} must be a tuple of ints such as (4, 32, 32), got {shape!r}")
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"{name} must hold ints > 0, got {tuple(shape)!r}")
    if not shape:
        raise ValueError(f"{name} must have at least one dimension, got ()")
    return tuple(shape)


def check_writable_folder(name: str, path: Any, folder: Any) -> None:
    """`folder` (where the output `path` of argument `name` goes) can be made and written: its
    nearest existing ancestor is a folder, not a file, and this user can write in it."""
    base = Path(os.path.abspath(folder))
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ValueError(
            f"{name} {path} lies under the file {base}, not a folder: choose a path in a folder"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(
            f"{name} {path}: cannot write in {base} (permission denied): choose a folder you "
            "can write to"
        )


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on `device` (the host's available memory for CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: no up-front check
        return 1 << 62


def format_bytes(size: float) -> str:
    """A byte count for people: 8.0 TB, 512.0 MB."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    raise AssertionError("unreachable")
