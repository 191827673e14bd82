"""Image helpers: PNG and figure files written atomically (Pillow, matplotlib), image grids with
captions drawn on them, 2-D density pictures, and the atomic file writes the package uses."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PAPER = 255  # background of caption strips and of padding (white)
INK = 0  # caption text (black)
GAP_GREY = 128  # between tiles and panels


# ----------------------------------------------------------------------------- atomic files
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Union[str, Path]) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temporary file beside it, renamed into place
    when the block ends without error; on any error it is removed and `path` is left as it was
    (so a large file can be streamed and still appear whole or not at all)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it into place (on any error the
    temporary file is removed and `path` is left as it was)."""
    with atomic_file(path) as f:
        f.write(data)


def remove_stale_temporaries(path: Union[str, Path]) -> None:
    """Remove the temporary files `atomic_write_bytes` leaves beside `path` when its process
    is killed between writing and renaming (the file at `path` itself is never touched)."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


def claim_run_folder(manifest: Union[str, Path], identity: dict, what: str) -> None:
    """Resume only the same run in a folder: write `identity` as the folder's manifest (JSON)
    when it has none, else refuse with the keys that differ from the one it holds."""
    manifest = Path(manifest)
    remove_stale_temporaries(manifest)
    if not manifest.exists():
        atomic_write_bytes(manifest, json.dumps(identity, indent=1).encode())
        return
    previous = read_manifest(manifest, what)
    changed = _differences(previous, identity)
    if changed:
        raise ValueError(
            f"{manifest.parent} holds a different {what} (differs in {', '.join(changed)}); use a "
            "new folder, or delete this one to start over"
        )


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The keys (dotted for nested dicts) whose values differ between two manifests."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(prefix + key)
    return keys


def read_manifest(manifest: Union[str, Path], what: str) -> dict:
    """The JSON object in a run folder's manifest; else an error naming the file."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest.parent} is no {what} folder: it has no {manifest.name}")
    try:
        previous = json.loads(manifest.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{manifest} is not valid JSON ({err}); the folder was not written by a {what}: "
            "use a new folder"
        ) from None
    if not isinstance(previous, dict):
        raise ValueError(f"{manifest} holds no {what} manifest; use a new folder")
    return previous


def atomic_write_npz(path: Union[str, Path], **arrays: np.ndarray) -> None:
    """Write arrays as an .npz file atomically (see `atomic_write_bytes`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------- PNG files
def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes (Pillow) of a uint8 image [H, W] (grey) or [H, W, 3] (RGB)."""
    image = np.asarray(image)
    if (
        image.dtype != np.uint8
        or image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[2] != 3)
    ):
        raise ValueError(f"need a uint8 [H, W] or [H, W, 3] image, got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Union[str, Path], image: np.ndarray) -> None:
    """Write a uint8 image [H, W], [H, W, 1] or [H, W, 3] as a PNG file, atomically."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    atomic_write_bytes(path, encode_png(image))


def write_figure(path: Union[str, Path], figure: Any, dpi: int = 100) -> None:
    """Write a matplotlib Figure as a PNG file of figure size x dpi pixels, atomically. Works
    without a display: a Figure made with `matplotlib.figure.Figure` renders through Agg."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------- pixels
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] -> uint8 [B, H, W, C] (ADM's layout)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


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


# ----------------------------------------------------------------------------- text
def font(size: int) -> Any:
    """Pillow's default font at `size` pixels (its scalable font on Pillow >= 10.1; the fixed
    bitmap font on older Pillow)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def caption_size(width: int) -> int:
    """The font size (pixels) for captions on an image `width` pixels wide: 12 to 28."""
    return int(min(28, max(12, width // 40)))


def _text_box(text: str, face: Any) -> tuple[int, int, int, int]:
    """The ink box (left, top, right, bottom) of one line of text drawn at (0, 0)."""
    return ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=face)


def _text_size(text: str, face: Any) -> tuple[int, int]:
    """Width and height in pixels of one line of text."""
    left, top, right, bottom = _text_box(text, face)
    return right - left, bottom - top


def _as_lines(title: Union[str, Sequence[str]]) -> list[str]:
    return title.splitlines() if isinstance(title, str) else [str(line) for line in title]


def _strip(
    like: np.ndarray,
    width: int,
    height: int,
    texts: Sequence[tuple[float, float, str]],
    face: Any,
) -> np.ndarray:
    """A white strip [height, width] with the channels of image `like`, each text drawn in
    black centred at (x, y) pixels (kept inside the strip)."""
    channels = 1 if like.ndim == 2 else like.shape[2]
    if channels not in (1, 3):
        raise ValueError(f"captions need grey or RGB images, got {channels} channels")
    mode, paper, ink = ("L", PAPER, INK) if channels == 1 else ("RGB", (PAPER,) * 3, (INK,) * 3)
    canvas = Image.new(mode, (width, height), paper)
    draw = ImageDraw.Draw(canvas)
    for x, y, text in texts:
        box = _text_box(text, face)
        text_w, text_h = box[2] - box[0], box[3] - box[1]
        left = min(max(0.0, x - text_w / 2), max(0.0, width - text_w))
        top = min(max(0.0, y - text_h / 2), max(0.0, height - text_h))
        draw.text((left - box[0], top - box[1]), text, fill=ink, font=face)
    return np.asarray(canvas).reshape(height, width, *like.shape[2:])


def _pad_width(image: np.ndarray, width: int) -> np.ndarray:
    """`image` centred on a white canvas `width` pixels wide (unchanged if it is as wide)."""
    extra = width - image.shape[1]
    if extra <= 0:
        return image
    left = extra // 2
    pad = [(0, 0), (left, extra - left)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, constant_values=PAPER)


def add_title(
    image: np.ndarray, title: Union[str, Sequence[str]], *, font_size: Optional[int] = None
) -> np.ndarray:
    """`image` (uint8 [H, W] or [H, W, 3]) with a white strip above it holding `title` (a
    string, lines split at newlines, or a list of lines), each line centred in black. The
    result keeps the image's channels; it is widened (image centred on white) when a line is
    wider than the image."""
    lines = _as_lines(title)
    if not lines:
        return image
    face = font(font_size or caption_size(image.shape[1]))
    sizes = [_text_size(line, face) for line in lines]
    pad = max(4, sizes[0][1] // 2)
    line_h = max(h for _, h in sizes) + pad // 2
    width = max(image.shape[1], max(w for w, _ in sizes) + 2 * pad)
    height = 2 * pad + len(lines) * line_h
    texts = [(width / 2, pad + (i + 0.5) * line_h, line) for i, line in enumerate(lines)]
    strip = _strip(image, width, height, texts, face)
    return np.concatenate([strip, _pad_width(image, width)], axis=0)


def _label_strip_height(labels: Sequence[str], face: Any) -> int:
    """The height of a strip holding one line of labels."""
    height = max(_text_size(str(label), face)[1] for label in labels)
    return height + 2 * max(3, height // 2)


# ----------------------------------------------------------------------------- layouts
def side_by_side(
    *images: np.ndarray,
    gap: int = 8,
    labels: Optional[Sequence[str]] = None,
    font_size: Optional[int] = None,
) -> np.ndarray:
    """Images of equal height and channels joined left to right with a mid-grey gap; with
    `labels` (one per image), a white strip above holds each label centred over its image."""
    height = images[0].shape[0]
    spacer = np.full((height, gap, *images[0].shape[2:]), GAP_GREY, dtype=np.uint8)
    parts = []
    for image in images:
        parts += [image, spacer]
    joined = np.concatenate(parts[:-1], axis=1)
    if labels is None:
        return joined
    if len(labels) != len(images):
        raise ValueError(f"need one label per image: {len(labels)} labels, {len(images)} images")
    face = font(font_size or caption_size(images[0].shape[1]))
    strip_h = _label_strip_height(labels, face)
    centres, left = [], 0
    for image in images:
        centres.append(left + image.shape[1] / 2)
        left += image.shape[1] + gap
    texts = [(x, strip_h / 2, str(label)) for x, label in zip(centres, labels)]
    strip = _strip(joined, joined.shape[1], strip_h, texts, face)
    return np.concatenate([strip, joined], axis=0)


def image_grid(
    images: np.ndarray,
    nrow: int,
    gap: int = 2,
    *,
    row_labels: Optional[Sequence[str]] = None,
    column_labels: Optional[Sequence[str]] = None,
    font_size: Optional[int] = None,
) -> np.ndarray:
    """uint8 images [B, H, W, C] tiled row by row, `nrow` per row, on a mid-grey background:
    [rows * (H + gap) - gap, cols * (W + gap) - gap, C]. Optional labels, one per row (drawn in
    a white strip on the left) and one per column (a white strip on top), centred on their
    tiles."""
    count, height, width, channels = images.shape
    cols = max(1, min(nrow, count))
    rows = -(-count // cols)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"need one label per row: {len(row_labels)} for {rows} rows")
    if column_labels is not None and len(column_labels) != cols:
        raise ValueError(f"need one label per column: {len(column_labels)} for {cols} columns")
    out = np.full(
        (rows * (height + gap) - gap, cols * (width + gap) - gap, channels),
        GAP_GREY,
        dtype=np.uint8,
    )
    for index in range(count):
        r, c = divmod(index, cols)
        top, left = r * (height + gap), c * (width + gap)
        out[top : top + height, left : left + width] = images[index]
    face = font(font_size or caption_size(out.shape[1]))
    if row_labels is not None:
        out = _with_row_labels(out, row_labels, height, gap, face)
    if column_labels is not None:
        offset = out.shape[1] - (cols * (width + gap) - gap)  # the row labels' strip, if any
        strip_h = _label_strip_height(column_labels, face)
        texts = [
            (offset + c * (width + gap) + width / 2, strip_h / 2, str(label))
            for c, label in enumerate(column_labels)
        ]
        out = np.concatenate([_strip(out, out.shape[1], strip_h, texts, face), out], axis=0)
    return out


def _with_row_labels(
    grid: np.ndarray, labels: Sequence[str], height: int, gap: int, face: Any
) -> np.ndarray:
    """`grid` (rows of tiles `height` pixels tall, `gap` apart) with a white strip on its left
    holding one label per row, each centred on its row."""
    sizes = [_text_size(str(label), face) for label in labels]
    pad = max(3, max(h for _, h in sizes) // 2)
    strip_w = max(w for w, _ in sizes) + 2 * pad
    texts = [
        (strip_w / 2, r * (height + gap) + height / 2, str(label)) for r, label in enumerate(labels)
    ]
    return np.concatenate([_strip(grid, strip_w, grid.shape[0], texts, face), grid], axis=1)
