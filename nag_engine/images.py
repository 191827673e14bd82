"""Small image helpers with no extra dependency: a PNG writer and 2-D density pictures."""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Union

import numpy as np
import torch


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image [H, W] (grey) or [H, W, 3] (RGB)."""
    image = np.asarray(image)
    if (
        image.dtype != np.uint8
        or image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[2] != 3)
    ):
        raise ValueError(f"need a uint8 [H, W] or [H, W, 3] image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    color_type = 0 if image.ndim == 2 else 2
    rows = image.reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def claim_run_folder(manifest: Union[str, Path], identity: dict, what: str) -> None:
    """Resume only the same run in a folder: write `identity` as the folder's manifest (JSON)
    when it has none, else refuse with the keys that differ from the one it holds."""
    manifest = Path(manifest)
    if not manifest.exists():
        atomic_write_bytes(manifest, json.dumps(identity, indent=1).encode())
        return
    previous = json.loads(manifest.read_text())
    changed = sorted(k for k in identity if previous.get(k) != identity[k])
    if changed:
        raise ValueError(
            f"{manifest.parent} holds a different {what} (differs in {', '.join(changed)}); use a "
            "new folder, or delete this one to start over"
        )


def atomic_write_npz(path: Union[str, Path], **arrays: np.ndarray) -> None:
    """Write arrays as an .npz file atomically (see `atomic_write_bytes`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def density_image(points: torch.Tensor, bounds: tuple[float, float], size: int = 256) -> np.ndarray:
    """A uint8 [size, size] picture of the 2-D point density (log-scaled histogram; dark =
    dense), y axis pointing up."""
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"need 2-D points [n, 2], got shape {tuple(points.shape)}")
    lo, hi = bounds
    xy = ((points.double() - lo) / (hi - lo) * size).floor().long()
    inside = ((xy >= 0) & (xy < size)).all(1)
    xy = xy[inside]
    counts = torch.zeros(size * size, dtype=torch.float64)
    counts.index_add_(
        0, (size - 1 - xy[:, 1]) * size + xy[:, 0], torch.ones(len(xy), dtype=torch.float64)
    )
    level = torch.log1p(counts) / max(float(torch.log1p(counts).max()), 1e-12)
    return (255 * (1 - level)).round().to(torch.uint8).view(size, size).numpy()


def side_by_side(*images: np.ndarray, gap: int = 8) -> np.ndarray:
    """Grey images of equal height joined left to right with a mid-grey gap."""
    height = images[0].shape[0]
    spacer = np.full((height, gap), 128, dtype=np.uint8)
    parts = []
    for image in images:
        parts += [image, spacer]
    return np.concatenate(parts[:-1], axis=1)
