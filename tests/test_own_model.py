"""The README's "NAG on your own model" commands, run as written on tiny random models saved
under the README's file names (official DiT layout, a diffusers AutoencoderKL, an image folder),
and a fine-tune killed with SIGKILL that resumes to the identical result."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from official_reference import official_dit_state_dict
from test_vae import save_image_folder, save_tiny_vae

import nag_engine as ne
from nag_engine.checkpoints import read_checkpoint
from nag_engine.cli import main

pytest.importorskip("diffusers")
README = Path(__file__).resolve().parents[1] / "README.md"
# what the tiny stand-ins need changed: 16-pixel images (8x8 latents), a few steps and samples
TINY = {"--size 256": "--size 16", "--steps 5000": "--steps 6", "--n 64": "--n 8"}


def readme_commands() -> list[str]:
    text = README.read_text()
    block = text.split("<!-- own-model commands: begin -->")[1].split("<!-- own-model commands")[0]
    return [line for line in block.splitlines() if line.startswith("nag-engine ")]


def test_the_readme_commands_run_end_to_end(tmp_path, monkeypatch, capsys):
    commands = readme_commands()
    assert [c.split()[1] for c in commands] == ["convert", "encode", "train", "sample"]
    monkeypatch.chdir(tmp_path)
    # DiT-S's width (so the heads are inferred as for a real checkpoint), one block, 8x8 latents
    state = official_dit_state_dict(hidden_size=384, depth=1, num_heads=6, num_classes=10)
    torch.save(state, "DiT-XL-2-256x256.pt")
    save_tiny_vae(Path("sd-vae-ft-mse"))
    save_image_folder(Path("imagenet/train"), per_class=4, classes=("n01440764", "n01443537"))
    for command in commands:
        for old, new in TINY.items():
            command = command.replace(old, new)
        assert main(shlex.split(command)[1:]) == 0, command
    out = capsys.readouterr().out
    assert "predicts eps on the vp-discrete schedule" in out and "adding NAG (p_t=0.2" in out
    model = ne.load_checkpoint("runs/dit-nag/model.safetensors")
    assert model.supports_noise_dropout and model.checkpoint_config["converted_from"]["format"]
    from PIL import Image

    with Image.open("dit-nag.png") as grid:  # 8 decoded 16-pixel images, 3 per row, titled
        assert grid.mode == "RGB" and grid.width >= 3 * 16 + 2 * 2
        assert grid.height > 3 * 16 + 2 * 2  # the title strip above the 52-pixel grid
    assert re.search(r"\+ [\d.]+ s decoding", out)


KILLER = """
import os, signal, sys
import torch
torch.set_num_threads({threads})
from nag_engine.training import trainer as module

step = module.Trainer.train_step

def step_then_die(self, *args, **kwargs):
    out = step(self, *args, **kwargs)
    if self.step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return out

module.Trainer.train_step = step_then_die
from nag_engine.cli import main
main(sys.argv[1:])
"""


def test_a_killed_fine_tune_resumes_to_the_identical_result(tmp_path):
    state = official_dit_state_dict(seed=2)
    torch.save(state, tmp_path / "dit.pt")
    base = ne.convert_checkpoint(tmp_path / "dit.pt", tmp_path / "base.safetensors",
                                 format="dit", num_heads=2)  # fmt: skip
    rng = np.random.default_rng(0)
    latents = tmp_path / "latents.npz"
    np.savez(latents, latents=rng.normal(size=(16, 4, 8, 8)).astype(np.float32),
             labels=np.arange(16) % 10)  # fmt: skip
    args = ["train", "--finetune", str(base), "--data", str(latents), "--steps", "12",
            "--set", "checkpoint_every=4", "--set", "batch_size=4", "--no-progress"]  # fmt: skip
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(threads=torch.get_num_threads(), kill_at=7))
    killed = subprocess.run(
        [sys.executable, str(script), *args, "--out", str(tmp_path / "killed")],
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    checkpoint = tmp_path / "killed" / "checkpoint.safetensors"
    assert read_checkpoint(checkpoint)[0]["step"] == 4  # the last one written before the kill
    assert not list((tmp_path / "killed").glob(".*.tmp"))
    assert main(["train", "--resume", "--out", str(tmp_path / "killed"), "--no-progress"]) == 0
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    resumed = read_checkpoint(checkpoint)[1]
    straight = read_checkpoint(tmp_path / "straight" / "checkpoint.safetensors")[1]
    assert resumed.keys() == straight.keys()
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
