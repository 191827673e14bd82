"""The `nag-engine` command and the PNG writer it uses."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from nag_engine.cli import main
from nag_engine.images import density_image, encode_png


def _decode_png(data: bytes) -> np.ndarray:
    """Minimal decoder for the PNGs encode_png writes (8-bit, filter 0)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = 1 if color == 0 else 3
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8)
    rows = raw.reshape(height, 1 + width * channels)
    assert (rows[:, 0] == 0).all()
    image = rows[:, 1:].reshape(height, width, channels)
    return image[:, :, 0] if channels == 1 else image


def test_png_round_trip():
    grey = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    rgb = np.random.default_rng(0).integers(0, 255, (5, 9, 3), dtype=np.uint8)
    assert np.array_equal(_decode_png(encode_png(grey)), grey)
    assert np.array_equal(_decode_png(encode_png(rgb)), rgb)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(grey.astype(np.float32))


def test_density_image_is_dark_where_points_are():
    points = torch.tensor([[0.95, 0.95]]).repeat(50, 1)
    image = density_image(points, (-1.0, 1.0), size=20)
    assert image[0, 19] == 0  # top right, y axis up
    assert (image[10:, :] == 255).all()


def test_sample_command_writes_samples_and_picture(tmp_path, capsys):
    out = tmp_path / "run" / "samples.npz"
    code = main(
        [
            "sample",
            "--model",
            "ring-exact",
            "--n",
            "200",
            "--steps",
            "8",
            "--nag-scale",
            "0.5",
            "--cfg-scale",
            "1.5",
            "--out",
            str(out),
            "--no-progress",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    saved = np.load(out)
    assert saved["samples"].shape == (200, 2) and saved["labels"].shape == (200,)
    assert np.isfinite(saved["samples"]).all()
    image = _decode_png(out.with_suffix(".png").read_bytes())
    assert image.shape == (256, 3 * 256 + 2 * 8)  # data | unguided | guided
    assert not list(out.parent.glob(".*.tmp"))  # nothing half-written left behind
    assert "samples/s" in capsys.readouterr().out


def test_sample_command_reports_bad_input(tmp_path, capsys):
    assert (
        main(["sample", "--model", "ring-exact", "--steps", "0", "--out", str(tmp_path / "x.npz")])
        == 2
    )
    assert "steps must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
