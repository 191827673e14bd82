"""Image files and pictures: PNGs through Pillow, atomic writes, grids and captions."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from nag_engine import images
from nag_engine.images import (
    add_title,
    atomic_write_bytes,
    density_image,
    encode_png,
    image_grid,
    side_by_side,
    to_uint8,
    write_png,
)


def _read_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def _ink(pixels: np.ndarray) -> np.ndarray:
    """Where a caption's black text is: pixels darker than mid-grey (any channel layout)."""
    return (pixels if pixels.ndim == 2 else pixels.max(axis=-1)) < 100


def test_png_round_trips_through_pillow():
    grey = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    rgb = np.random.default_rng(0).integers(0, 255, (5, 9, 3), dtype=np.uint8)
    assert np.array_equal(_read_png(encode_png(grey)), grey)
    assert np.array_equal(_read_png(encode_png(rgb)), rgb)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(grey.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 2), dtype=np.uint8))


def test_write_png_writes_a_file_and_drops_a_single_channel(tmp_path):
    one_channel = np.random.default_rng(1).integers(0, 255, (6, 4, 1), dtype=np.uint8)
    write_png(tmp_path / "sub" / "a.png", one_channel)
    assert np.array_equal(_read_png((tmp_path / "sub" / "a.png").read_bytes()), one_channel[..., 0])


def test_atomic_write_leaves_no_temporary_file_on_error(tmp_path, monkeypatch):
    path = tmp_path / "figure.png"
    path.write_bytes(b"old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(images.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_png(path, np.zeros((3, 3), dtype=np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]
    assert path.read_bytes() == b"old"


def test_written_files_get_the_usual_permissions(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"abc")
    mask = os.umask(0)
    os.umask(mask)
    assert path.read_bytes() == b"abc"
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_density_image_is_dark_where_points_are():
    points = torch.tensor([[0.95, 0.95]]).repeat(50, 1)
    image = density_image(points, (-1.0, 1.0), size=20)
    assert image[0, 19] == 0  # top right, y axis up
    assert (image[10:, :] == 255).all()


def test_to_uint8_maps_minus_one_to_one_onto_0_to_255():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = to_uint8(x)
    assert out.shape == (1, 2, 2, 3) and out.dtype == np.uint8
    assert out[0, :, :, 0].ravel().tolist() == [0, 0, 128, 255]


def test_image_grid_tiles_row_by_row_on_grey():
    tiles = np.stack([np.full((4, 3, 3), 10 * (i + 1), dtype=np.uint8) for i in range(5)])
    grid = image_grid(tiles, nrow=2, gap=1)
    assert grid.shape == (3 * 5 - 1, 2 * 4 - 1, 3)
    assert grid[0, 0, 0] == 10 and grid[0, 4, 0] == 20 and grid[5, 0, 0] == 30
    assert grid[10, 0, 0] == 50 and (grid[10:, 4:] == 128).all()  # the empty last cell
    assert (grid[4, :] == 128).all()  # the gap between the first two rows


def test_title_strip_is_above_the_image_and_holds_text():
    image = np.full((40, 300, 3), 200, dtype=np.uint8)
    titled = add_title(image, ["toy2d", "25 euler steps, cfg 2, nag 0.5"])
    strip = titled[: titled.shape[0] - 40]
    assert titled.shape[1] == 300 and titled.shape[0] > 40 + 2 * 12  # two lines of text
    assert np.array_equal(titled[-40:], image)  # the image itself unchanged, at the bottom
    assert _ink(strip).sum() > 50  # the caption is drawn, not a blank strip
    one_line = add_title(image, "toy2d")
    assert 40 < one_line.shape[0] < titled.shape[0]
    assert add_title(image[..., 0], "grey").ndim == 2  # a grey image stays grey


def test_a_title_wider_than_the_image_widens_the_picture():
    image = np.zeros((10, 16), dtype=np.uint8)
    titled = add_title(image, "runs/dit-nag/model.safetensors, 50 ddim steps")
    assert titled.shape[1] > 100
    left = (titled.shape[1] - 16) // 2
    assert np.array_equal(titled[-10:, left : left + 16], image)  # centred
    assert (titled[-10:, :left] == 255).all()  # white padding beside it


def test_side_by_side_labels_each_panel():
    panels = [np.full((50, 120), 255, dtype=np.uint8) for _ in range(3)]
    plain = side_by_side(*panels, gap=8)
    labelled = side_by_side(*panels, gap=8, labels=["data", "unguided", "guided"])
    assert plain.shape == (50, 3 * 120 + 2 * 8)
    height = labelled.shape[0] - 50
    assert height > 10 and np.array_equal(labelled[height:], plain)
    ink = _ink(labelled[:height])
    for i in range(3):  # some text over every panel, none over the gaps' middle
        assert ink[:, i * 128 : i * 128 + 120].any()
    with pytest.raises(ValueError, match="one label per image"):
        side_by_side(*panels, labels=["a", "b"])


def test_grid_row_and_column_labels():
    tiles = np.full((6, 30, 40, 3), 255, dtype=np.uint8)
    plain = image_grid(tiles, nrow=3)
    grid = image_grid(tiles, nrow=3, row_labels=["row A", "row B"], column_labels=["x", "y", "z"])
    top, left = grid.shape[0] - plain.shape[0], grid.shape[1] - plain.shape[1]
    assert top > 0 and left > 0 and np.array_equal(grid[top:, left:], plain)
    rows_ink = _ink(grid[top:, :left])
    assert rows_ink[:30].any() and rows_ink[32:].any()  # a label beside each row
    columns_ink = _ink(grid[:top, left:])
    assert all(columns_ink[:, c * 42 : c * 42 + 40].any() for c in range(3))
    with pytest.raises(ValueError, match="one label per row"):
        image_grid(tiles, nrow=3, row_labels=["only one"])


def test_font_falls_back_to_the_bitmap_font_on_old_pillow(monkeypatch):
    original = ImageFont.load_default

    def old_pillow(*args, **kwargs):
        if args or kwargs:
            raise TypeError("load_default() takes 0 positional arguments")
        return original()

    monkeypatch.setattr(ImageFont, "load_default", old_pillow)
    titled = add_title(np.full((20, 200), 255, dtype=np.uint8), "old Pillow")
    assert titled.shape[0] > 20 and _ink(titled[:-20]).any()
