"""Official DiT / SiT checkpoints -> nag_engine: the converted model equals an independent
reference of the official forward, and nag_engine's samplers reproduce the official sampling
loops (ADM's p_sample_loop / ddim_sample_loop with respacing, SiT's Euler ODE) from the same
noise. Loading is safe and errors name what is wrong. No download: state dicts are built in the
official key layout with random weights (tests/official_reference.py)."""

from __future__ import annotations

import argparse
from collections import OrderedDict

import numpy as np
import pytest
import torch
from official_reference import (
    adm_ddim_sample_loop,
    adm_p_sample_loop,
    official_dit_forward,
    official_dit_state_dict,
    official_sit_forward,
    sit_euler_sample,
)

import nag_engine as ne
from nag_engine.convert import (
    ConversionError,
    build_converted,
    convert_checkpoint,
    infer_architecture,
    load_tensors,
    state_dict_of,
)
from nag_engine.models.embeddings import model_timestep
from nag_engine.noise import CounterNoise

HEADS = 2
N = 4


@pytest.fixture(scope="module")
def state():
    return official_dit_state_dict(seed=1)


@pytest.fixture(scope="module")
def dit(state):
    return build_converted(state, "dit", num_heads=HEADS)[0]


@pytest.fixture(scope="module")
def sit(state):
    return build_converted(state, "sit", num_heads=HEADS)[0]


def _official_eps(state, y):
    def eps_fn(x, tau):
        return official_dit_forward(state, x, tau, y, num_heads=HEADS, patch_size=2)[:, :4]

    return eps_fn


def _close(got, expected, rtol=1e-5):
    """Equal to float tolerance relative to the tensor's scale."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * scale)


# ----------------------------------------------------------------------------- the forward
def test_the_dit_called_at_t_is_the_official_model_at_its_timestep(state, dit):
    """t = (tau + 1) / 1000 is DDPM's x_{tau+1}, the official code's timestep tau (0-based):
    every one of the 1000 training timesteps reaches the network exactly, and the output is
    the official eps half (the learned-sigma half dropped)."""
    t = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    assert torch.equal(model_timestep(t.float(), 1000.0, -1.0, 1e-3), torch.arange(1000.0))
    gen = torch.Generator().manual_seed(0)
    tau = torch.tensor([0, 1, 250, 499, 998, 999])
    x = torch.randn(len(tau), 4, 8, 8, generator=gen)
    y = torch.tensor([0, 3, 10, 9, 5, 10])  # 10: the null class
    expected = official_dit_forward(state, x, tau, y, num_heads=HEADS, patch_size=2)
    with torch.no_grad():
        got = dit(x, ((tau + 1) / 1000).float(), y)
        unconditional = dit(x, ((tau + 1) / 1000).float())
    assert expected.shape[1] == 8 and got.shape == x.shape
    _close(got, expected[:, :4])
    null = official_dit_forward(
        state, x, tau, torch.full_like(y, 10), num_heads=HEADS, patch_size=2
    )
    _close(unconditional, null[:, :4])
    assert (dit.prediction, dit.schedule, dit.num_classes) == ("eps", "vp-discrete", 10)


def test_the_sit_runs_in_our_time_with_the_velocity_flipped(state, sit):
    """SiT's t goes from noise (0) to data (1) and it predicts data - noise; ours is t' = 1 - t
    with velocity noise - data."""
    gen = torch.Generator().manual_seed(1)
    t_sit = torch.tensor([0.0, 0.13, 0.5, 0.77, 1.0])
    x = torch.randn(5, 4, 8, 8, generator=gen)
    y = torch.tensor([1, 2, 3, 4, 10])
    expected = official_sit_forward(state, x, t_sit, y, num_heads=HEADS, patch_size=2)
    with torch.no_grad():
        got = sit(x, 1.0 - t_sit, y)
    _close(got, -expected)
    assert (sit.prediction, sit.schedule) == ("velocity", "linear")


# ----------------------------------------------------------------------------- sampling loops
@pytest.mark.parametrize("respacing,spacing", [("ddim50", "leading"), ("50", "adm")])
def test_ddim_reproduces_the_official_ddim_sample_loop(state, dit, respacing, spacing):
    y = torch.tensor([0, 1, 2, 3])
    noise = torch.randn(N, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = adm_ddim_sample_loop(_official_eps(state, y), noise, respacing, return_all=True)
    trajectory = ne.sample_trajectory(
        dit, N, 50, y=y, solver="ddim", spacing=spacing, latents=noise, progress=False
    )
    assert trajectory.shape[0] == len(expected) == 51
    for ours, theirs in zip(trajectory, expected):
        _close(ours, theirs, rtol=1e-4)
    _close(trajectory[-1], expected[-1], rtol=1e-4)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_reproduces_the_official_p_sample_loop_with_250_steps(state, dit, variance):
    """DiT's sample.py: create_diffusion("250") and p_sample_loop; the per-step noise is the
    same draws on both sides (the official loop takes them from noise_fn instead of randn)."""
    y = torch.tensor([4, 5, 6, 7])
    noise = torch.randn(N, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    draws = CounterNoise(11, (4, 8, 8), "cpu")
    rows = torch.arange(N)
    expected = adm_p_sample_loop(
        _official_eps(state, y),
        noise,
        "250",
        var_type=f"fixed_{variance}",
        noise_fn=lambda k: draws.normal(rows, k + 1),  # our stream for stage k is k + 1
    )
    got = ne.sample(
        dit,
        N,
        250,
        y=y,
        solver="ddpm",
        variance=variance,
        spacing="adm",
        latents=noise,
        seed=11,
        progress=False,
    )
    _close(got, expected, rtol=1e-4)


def test_euler_reproduces_sits_ode_sampler(state, sit):
    y = torch.tensor([1, 3, 5, 7])
    noise = torch.randn(N, 4, 8, 8, generator=torch.Generator().manual_seed(4))

    def v_fn(x, t):
        return official_sit_forward(state, x, t, y, num_heads=HEADS, patch_size=2)

    expected = sit_euler_sample(v_fn, noise, 20)
    got = ne.sample(sit, N, 20, y=y, solver="euler", latents=noise, progress=False)
    _close(got, expected, rtol=1e-5)


# ----------------------------------------------------------------------------- files
def _checkpoint_files(tmp_path, state):
    """The ways official weights arrive: a released state dict, a train.py checkpoint (model,
    ema, optimizer state and the argparse Namespace of its arguments), a DDP-prefixed dict and
    a safetensors file."""
    from safetensors.torch import save_file

    released = tmp_path / "DiT-tiny.pt"
    torch.save(OrderedDict(state), released)
    trained = tmp_path / "0000100.pt"
    noisy = {k: v + 1.0 for k, v in state.items()}
    torch.save(
        {
            "model": noisy,
            "ema": state,
            "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999)}]},
            "args": argparse.Namespace(model="DiT-XL/2", global_batch_size=256),
        },
        trained,
    )
    ddp = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, ddp)
    safe = tmp_path / "dit.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(safe))
    return released, trained, ddp, safe


def test_every_way_official_weights_arrive_converts_to_the_same_model(tmp_path, state, dit):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    t, y = torch.tensor([0.3, 0.9]), torch.tensor([1, 2])
    with torch.no_grad():
        expected = dit(x, t, y)
    for i, path in enumerate(_checkpoint_files(tmp_path, state)):
        out = tmp_path / f"converted{i}.safetensors"
        convert_checkpoint(path, out, format="dit", num_heads=HEADS)
        model = ne.load_checkpoint(out)
        with torch.no_grad():
            torch.testing.assert_close(model(x, t, y), expected, rtol=0, atol=0)
        config = model.checkpoint_config
        assert config["schedule"] == "vp-discrete" and config["p_t"] == 0.0
        assert config["converted_from"]["learned_sigma"] == "dropped"
        assert len(config["converted_from"]["sha256"]) == 64
        assert not model.supports_noise_dropout
    # weights="model" takes the raw weights of a train.py checkpoint
    trained = tmp_path / "0000100.pt"
    raw, entry = state_dict_of(load_tensors(trained), trained, "model")
    assert entry == "model" and torch.equal(raw["pos_embed"], state["pos_embed"] + 1.0)


def test_saved_training_arguments_must_agree_with_the_format(tmp_path, state):
    """A train.py checkpoint says what it is: a DiT converted as SiT (or the reverse), or a SiT
    of another path or prediction type, is refused instead of converted into a wrong model."""
    out = tmp_path / "out.safetensors"
    for args, fmt, message in (
        (argparse.Namespace(model="DiT-XL/2"), "sit", "--format dit"),
        (argparse.Namespace(model="SiT-XL/2", path_type="GVP"), "sit", "path_type='GVP'"),
        (argparse.Namespace(model="SiT-XL/2", prediction="noise"), "sit", "prediction='noise'"),
    ):
        path = tmp_path / "ckpt.pt"
        torch.save({"ema": state, "args": args}, path)
        with pytest.raises(ConversionError, match=message):
            convert_checkpoint(path, out, format=fmt, num_heads=HEADS)
        assert not out.exists()
    torch.save({"ema": state, "args": argparse.Namespace(model="SiT-XL/2")}, path)
    convert_checkpoint(path, out, format="sit", num_heads=HEADS)
    saved = ne.load_checkpoint(out).checkpoint_config["converted_from"]
    assert saved["training_args"] == {"model": "SiT-XL/2"} and saved["weights"] == "ema"


def test_a_converted_checkpoint_samples_and_refuses_nag_until_fine_tuned(tmp_path, state):
    path = tmp_path / "DiT-tiny.pt"
    torch.save(state, path)
    out = convert_checkpoint(path, tmp_path / "dit.safetensors", format="dit", num_heads=HEADS)
    model = ne.load_checkpoint(out)
    x = ne.sample(model, 2, 4, y=1, cfg_scale=1.5, solver="ddim", spacing="leading", progress=False)
    assert x.shape == (2, 4, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="noise-condition dropout"):
        ne.Sampler(model, 4, nag_scale=0.5)


def test_the_null_noise_embedding_starts_as_the_mean_timestep_embedding(dit):
    t = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    with torch.no_grad():
        mean = dit.t_embedder.embed(t.float()).mean(0)
    torch.testing.assert_close(dit.t_embedder.null_embedding, mean)


class Payload:
    """Any class outside torch.load's weights_only allow-list."""

    def __init__(self):
        self.value = 1


def test_a_file_that_needs_unpickling_code_is_refused(tmp_path, state):
    path = tmp_path / "evil.pt"
    torch.save({"ema": state, "extra": Payload()}, path)
    out = tmp_path / "out.safetensors"
    with pytest.raises(ConversionError, match="unpickling code") as err:
        convert_checkpoint(path, out, format="dit", num_heads=HEADS)
    assert "Payload" in str(err.value) and "weights_only" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_layout_errors_name_the_keys_and_the_closest_preset(state):
    broken = dict(state)
    del broken["blocks.1.mlp.fc2.weight"]
    broken["blocks.1.norm1.weight"] = torch.ones(32)
    with pytest.raises(ConversionError) as err:
        infer_architecture(broken, num_heads=HEADS)
    text = str(err.value)
    assert "blocks.1.mlp.fc2.weight" in text and "blocks.1.norm1.weight" in text
    assert "Closest official preset: DiT-S" in text and "hidden 32, depth 2" in text
    unet = {
        "conv_in.weight": torch.zeros(8, 4, 3, 3),
        "time_embedding.linear_1.weight": torch.zeros(2),
    }
    with pytest.raises(ConversionError, match="does not have the DiT/SiT layout"):
        infer_architecture(unet)
    with pytest.raises(ConversionError, match="--num-heads"):
        infer_architecture(state)  # width 32 is no preset's: the heads are unknown
    wrong_shape = dict(state)
    wrong_shape["blocks.0.attn.qkv.weight"] = torch.zeros(96, 16)
    with pytest.raises(ConversionError, match="blocks.0.attn.qkv.weight"):
        build_converted(wrong_shape, "dit", num_heads=HEADS)


def test_the_architecture_is_read_off_the_tensors():
    state = official_dit_state_dict(
        hidden_size=384, depth=1, num_heads=6, patch_size=4, input_size=16, num_classes=7,
        learn_sigma=False,
    )  # fmt: skip
    arch = infer_architecture(state)  # heads from the DiT-S width
    assert arch == {
        "input_size": 16,
        "patch_size": 4,
        "in_channels": 4,
        "hidden_size": 384,
        "depth": 1,
        "num_heads": 6,
        "mlp_ratio": 4.0,
        "num_classes": 7,
        "learn_sigma": False,
    }


def test_bad_paths_and_formats_are_refused_before_any_work(tmp_path, state):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        convert_checkpoint(tmp_path / "missing.pt", tmp_path / "o.safetensors", format="dit")
    path = tmp_path / "DiT.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=".safetensors"):
        convert_checkpoint(path, tmp_path / "o.pt", format="dit")
    with pytest.raises(ValueError, match="unknown format"):
        convert_checkpoint(path, tmp_path / "o.safetensors", format="adm")
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ConversionError, match="not a readable"):
        convert_checkpoint(truncated, tmp_path / "o.safetensors", format="dit", num_heads=HEADS)


@pytest.mark.parametrize("fmt", ["dit", "sit"])
def test_a_converted_model_fine_tunes_for_nag_on_latents(tmp_path, state, fmt):
    """The NAG fine-tune of a converted model trains at its own times (DiT: the 1000 integer
    timesteps, as it was trained) with its own prediction type, then samples with NAG."""
    from nag_engine.training import TrainConfig, Trainer, load_dataset

    torch.save(state, tmp_path / "model.pt")
    base = convert_checkpoint(
        tmp_path / "model.pt", tmp_path / "base.safetensors", format=fmt, num_heads=HEADS
    )
    latents = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    np.savez(tmp_path / "latents.npz", latents=latents.numpy(), labels=np.arange(16) % 10)
    data = load_dataset("latents", path=str(tmp_path / "latents.npz"))
    trainer = Trainer.finetune(base, data, TrainConfig(steps=3, batch_size=8, lr=1e-4, p_t=0.2))
    seen = []
    original = trainer.model.forward

    def recording(x, t, *args, **kwargs):
        seen.append(t.detach().clone())
        return original(x, t, *args, **kwargs)

    trainer.model.forward = recording
    trainer.run(progress=False)
    times = torch.cat(seen).double()
    if fmt == "dit":  # only the knots t = (tau + 1) / 1000
        torch.testing.assert_close(times * 1000, (times * 1000).round(), rtol=0, atol=1e-4)
    assert ((times > 0) & (times <= 1)).all()
    model = trainer.model.eval().requires_grad_(False)
    x = ne.sample(model, 2, 4, y=3, cfg_scale=1.5, nag_scale=0.5, solver="ddim", progress=False)
    assert torch.isfinite(x).all()
