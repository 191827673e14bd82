"""The trainer: a short run lowers the loss, resume is exact, checkpoints are periodic, and
fine-tuning with noise-condition dropout turns a no-dropout checkpoint into a NAG model."""

from __future__ import annotations

import pytest
import torch

import nag_engine as ne
import nag_engine.training
from nag_engine.models import MLPDenoiser
from nag_engine.training import TrainConfig, Trainer, denoising_loss, load_dataset


@pytest.fixture(scope="module")
def ring():
    return load_dataset("ring", n=2000, seed=0)


def _model(ring):
    torch.manual_seed(0)
    return MLPDenoiser(2, hidden=32, depth=2, num_classes=ring.num_classes)


def _config(**overrides):
    base = dict(steps=12, batch_size=64, lr=3e-3, ema_decay=0.9, p_t=0.2, p_c=0.1, seed=3)
    return TrainConfig(**{**base, **overrides})


def _held_out_loss(model, ring):
    x0, y = ring.x[:1000], ring.y[:1000]
    with torch.no_grad():
        out = denoising_loss(model, x0, y, generator=torch.Generator().manual_seed(99), p_t=0.2)
    return float(out.loss)


def test_a_short_run_lowers_the_loss(ring):
    trainer = Trainer(_model(ring), ring, _config(steps=150))
    before = _held_out_loss(trainer.model, ring)
    history = trainer.run(progress=False)
    assert len(history) == 150 and trainer.step == 150
    assert _held_out_loss(trainer.model, ring) < 0.8 * before
    assert _held_out_loss(trainer.ema, ring) < 0.8 * before


def test_resume_is_exact(ring, tmp_path):
    straight = Trainer(_model(ring), ring, _config())
    straight.run(progress=False)

    interrupted = Trainer(_model(ring), ring, _config(checkpoint_every=5), out=tmp_path)
    interrupted.run(until=7, progress=False)  # "killed" after step 7; last checkpoint: step 5
    resumed = Trainer.resume(tmp_path / "checkpoint.safetensors", ring, out=tmp_path)
    assert resumed.step == 5
    resumed.run(progress=False)
    assert resumed.step == straight.step == 12
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for index, state in sa["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][index][key]))


def test_resume_refuses_other_data_and_exported_models(ring, tmp_path):
    trainer = Trainer(_model(ring), ring, _config(steps=2), out=tmp_path)
    trainer.run(progress=False)
    other = load_dataset("ring", n=500, seed=1)
    with pytest.raises(ValueError, match="was trained on"):
        Trainer.resume(tmp_path / "checkpoint.safetensors", other)
    exported = trainer.export(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="no training state"):
        Trainer.resume(exported, ring)


def test_checkpoint_loads_as_a_sampling_model(ring, tmp_path):
    trainer = Trainer(_model(ring), ring, _config(steps=4), out=tmp_path)
    trainer.run(progress=False)
    model = ne.load_checkpoint(trainer.export(tmp_path / "model.safetensors"))
    assert model.supports_noise_dropout
    config = model.checkpoint_config
    assert config["dataset"] == ring.info and config["step"] == 4 and config["p_t"] == 0.2
    x, t = torch.randn(5, 2), torch.rand(5)
    torch.testing.assert_close(model(x, t), trainer.ema(x, t))
    samples = ne.sample(
        model, 16, 4, y=torch.arange(16) % 8, cfg_scale=2.0, nag_scale=0.5, progress=False
    )
    assert torch.isfinite(samples).all()


def test_finetune_adds_noise_dropout(ring, tmp_path):
    base = Trainer(_model(ring), ring, _config(steps=10, p_t=0.0), out=tmp_path / "base")
    base.run(progress=False)
    plain = ne.load_checkpoint(base.export(tmp_path / "base.safetensors"))
    assert not plain.supports_noise_dropout
    with pytest.raises(ValueError, match="noise-condition dropout"):
        ne.sample(plain, 4, 2, nag_scale=1.0, progress=False)

    tuned = Trainer.finetune(
        tmp_path / "base.safetensors", ring, _config(steps=10, p_t=0.5), out=tmp_path / "tuned"
    )
    null_before = tuned.model.t_embedder.null_embedding.detach().clone()
    tuned.run(progress=False)
    assert not torch.equal(tuned.model.t_embedder.null_embedding, null_before)
    model = ne.load_checkpoint(tuned.export(tmp_path / "tuned.safetensors"))
    assert model.supports_noise_dropout
    assert model.checkpoint_config["finetuned_from"].endswith("base.safetensors")
    x = torch.randn(6, 2)
    dropped = model(x, torch.rand(6), drop_t=torch.ones(6, dtype=torch.bool))
    assert not torch.allclose(
        dropped, plain(x, torch.rand(6), drop_t=torch.ones(6, dtype=torch.bool))
    )
    ne.sample(model, 4, 2, nag_scale=1.0, progress=False)


def test_bad_training_options():
    with pytest.raises(ValueError, match="p_t"):
        TrainConfig(p_t=2.0)
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"stepz": 3})
    # configs saved by earlier versions hold a removed "extra" field: still readable
    assert TrainConfig.from_dict({"steps": 3, "extra": {"note": 1}}) == TrainConfig(steps=3)


def test_training_with_the_contrastive_loss(ring):
    trainer = Trainer(_model(ring), ring, _config(steps=20, cdl_weight=0.1, cdl_samples=2))
    before = _held_out_loss(trainer.model, ring)
    history = trainer.run(progress=False)
    assert all("cdl" in h and h["cdl"] > 0 for h in history)
    assert _held_out_loss(trainer.model, ring) < before


def test_evaluation_hook_runs_every_n_steps(ring):
    seen = []

    def evaluate(trainer):
        seen.append(trainer.step)
        return {"held_out": _held_out_loss(trainer.ema, ring)}

    trainer = Trainer(_model(ring), ring, _config(steps=10, eval_every=4), eval_fn=evaluate)
    history = trainer.run(progress=False)
    assert seen == [4, 8]
    assert [h["step"] for h in history if "held_out" in h] == [4, 8]


@pytest.mark.parametrize(
    "option,value,error,match",
    [
        ("steps", 2.5, TypeError, "steps must be a whole number"),
        ("steps", True, TypeError, "steps must be a whole number"),
        ("steps", 0, ValueError, "steps must be >= 1"),
        ("batch_size", "64", TypeError, "batch_size must be a whole number"),
        ("warmup_steps", -5, ValueError, "warmup_steps must be >= 0"),
        ("checkpoint_every", -1, ValueError, "checkpoint_every must be >= 0"),
        ("seed", -1, ValueError, "seed must be >= 0"),
        ("lr", float("inf"), ValueError, "lr must be finite"),
        ("lr", float("nan"), ValueError, "lr must be finite"),
        ("lr", 0.0, ValueError, "lr and time_std must be > 0"),
        ("lr", "1e-3", TypeError, "lr must be a number"),
        ("weight_decay", -0.1, ValueError, "weight_decay must be >= 0"),
        ("grad_clip", float("nan"), ValueError, "grad_clip must be finite"),
        ("p_t", 1.5, ValueError, r"p_t must be in \[0.0, 1.0\]"),
        ("time_std", -1.0, ValueError, "time_std must be >= 0"),
        ("time_mean", float("inf"), ValueError, "time_mean must be finite"),
        ("ema_decay", 1.0, ValueError, "ema_decay < 1"),
        ("cdl_weight", float("-inf"), ValueError, "cdl_weight must be finite"),
        ("bf16", "yes", TypeError, "bf16 must be true or false"),
        ("time_distribution", "normal", ValueError, "time_distribution must be one of"),
    ],
)
def test_a_bad_training_option_is_refused_by_name(option, value, error, match):
    with pytest.raises(error, match=match):
        _config(**{option: value})


class NaNAfter(torch.nn.Module):
    """A denoiser whose output turns NaN from its `after`-th call on."""

    def __init__(self, inner, after):
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0
        for name in ("prediction", "schedule", "num_classes", "supports_noise_dropout"):
            setattr(self, name, getattr(inner, name))

    def forward(self, x, t, y=None, *, drop_t=None, drop_y=None):
        self.calls += 1
        out = self.inner(x, t, y, drop_t=drop_t, drop_y=drop_y)
        return out * float("nan") if self.calls >= self.after else out


def test_a_non_finite_loss_stops_training_with_its_step_and_keeps_the_good_weights(ring, tmp_path):
    model = NaNAfter(_model(ring), after=7)
    trainer = Trainer(model, ring, _config(checkpoint_every=5))
    with pytest.raises(ne.training.NonFiniteLossError, match="at step 7; nothing of this step"):
        trainer.run(progress=False)
    assert trainer.step == 6
    clean = Trainer(_model(ring), ring, _config())
    clean.run(until=6, progress=False)
    for a, b in zip(clean.model.state_dict().values(), trainer.model.inner.state_dict().values()):
        assert torch.equal(a, b)  # the failed step changed nothing


@pytest.mark.parametrize("which", ["model", "data", "config"])
def test_trainer_arguments_of_the_wrong_kind_are_named(which):
    args = {
        "model": MLPDenoiser(dim=2, hidden=8, depth=1),
        "data": load_dataset("ring", n=64, seed=0),
        "config": TrainConfig(steps=1),
    }
    args[which] = {"steps": 1} if which == "config" else "wrong"
    with pytest.raises(TypeError, match=f"{which} must be a"):
        Trainer(args["model"], args["data"], args["config"])
