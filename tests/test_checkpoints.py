"""Checkpoints: round trip, EMA selection, atomic writes, clear errors, no unpickling."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from conftest import randomized

from nag_engine import checkpoints
from nag_engine.checkpoints import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from nag_engine.models import DiT, MLPDenoiser


def _tiny_models():
    return [
        randomized(
            MLPDenoiser(2, hidden=16, depth=2, num_classes=3, prediction="eps", schedule="vp")
        ),
        randomized(
            DiT(
                input_size=8,
                patch_size=2,
                in_channels=1,
                hidden_size=32,
                depth=2,
                num_heads=2,
                num_classes=10,
            )
        ),
    ]


@pytest.mark.parametrize("model", _tiny_models(), ids=["mlp", "dit"])
def test_round_trip(tmp_path, model):
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"p_t": 0.1, "step": 7})
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.prediction == model.prediction and loaded.schedule == model.schedule
    assert loaded.supports_noise_dropout and loaded.checkpoint_config["step"] == 7
    x = torch.randn(3, *model.sample_shape)
    t = torch.rand(3)
    y = torch.arange(3)
    torch.testing.assert_close(loaded(x, t, y), model(x, t, y), rtol=0, atol=0)


def test_ema_or_raw_weights_and_small_dtype(tmp_path):
    model, ema = _tiny_models()[0], randomized(_tiny_models()[0], seed=5)
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"p_t": 0.0}, ema=ema)
    x, t = torch.randn(4, 2), torch.rand(4)
    torch.testing.assert_close(load_checkpoint(path)(x, t), ema(x, t))
    torch.testing.assert_close(load_checkpoint(path, weights="raw")(x, t), model(x, t))
    assert not load_checkpoint(path).supports_noise_dropout  # trained without p_t
    half = save_checkpoint(tmp_path / "h.safetensors", model, {}, weights_dtype=torch.float16)
    assert half.stat().st_size < path.stat().st_size / 3
    torch.testing.assert_close(load_checkpoint(half)(x, t), model(x, t), rtol=1e-2, atol=1e-3)


def test_a_crash_mid_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = _tiny_models()[0]
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"step": 1})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, randomized(model, seed=9), {"step": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp file left


def test_clear_errors_for_missing_corrupt_and_foreign_files(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(garbage)
    good = save_checkpoint(tmp_path / "good.safetensors", _tiny_models()[0], {})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a nag_engine checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(TypeError, match="cannot checkpoint"):
        save_checkpoint(tmp_path / "x.safetensors", torch.nn.Linear(2, 2), {})
    with pytest.raises(ValueError, match="weights must be"):
        load_checkpoint(good, weights="best")


def test_unknown_architecture_and_mismatched_weights(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.safetensors", _tiny_models()[0], {})
    config, tensors = read_checkpoint(path)
    real = checkpoints.read_checkpoint

    monkeypatch.setattr(
        checkpoints, "read_checkpoint", lambda p: ({**config, "architecture": "UNet"}, tensors)
    )
    with pytest.raises(CheckpointError, match="unknown architecture 'UNet'"):
        load_checkpoint(path)
    bigger = {**config, "model": {**config["model"], "hidden": 32}}
    monkeypatch.setattr(checkpoints, "read_checkpoint", lambda p: (bigger, tensors))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)
    monkeypatch.setattr(checkpoints, "read_checkpoint", real)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.safetensors", _tiny_models()[1], {})

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during load")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert isinstance(load_checkpoint(path), DiT)
