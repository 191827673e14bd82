"""diffusers' UNet2DModel / DiTTransformer2DModel through nag_engine: the wrapper maps the
scheduler's prediction type and betas to ours so that nag_engine's DDIM / DDPM reproduce
diffusers' own scheduler loops, converts saved folders, and becomes NAG-capable by fine-tuning
its one null noise vector with the rest of the network."""

from __future__ import annotations

import copy

import pytest
import torch

import nag_engine as ne
from nag_engine.models import DiffusersDenoiser, DiffusersDiT
from nag_engine.noise import CounterNoise
from nag_engine.training import TrainConfig, Trainer, load_dataset

diffusers = pytest.importorskip("diffusers")


def tiny_unet(channels=2, classes=5, seed=0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=classes,
    )
    with torch.no_grad():  # diffusers zero-initialises some outputs: make every part count
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


def tiny_dit(seed=0):
    torch.manual_seed(seed)
    return diffusers.DiTTransformer2DModel(
        sample_size=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=8,
    ).eval()


def _close(got, expected, rtol=1e-4):
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * scale)


def test_the_wrapper_calls_the_unet_at_the_matching_timestep():
    unet = tiny_unet()
    model = DiffusersDenoiser.wrap(unet, null_class=4)
    assert (model.prediction, model.schedule, model.num_classes) == ("eps", "vp-discrete", 4)
    tau = torch.tensor([0, 17, 500, 999])
    x = torch.randn(4, 2, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    drop_y = torch.tensor([False, True, False, True])
    with torch.no_grad():
        got = model(x, ((tau + 1) / 1000).float(), y, drop_y=drop_y)
        expected = unet(x, tau, class_labels=torch.tensor([0, 4, 2, 4])).sample
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_reproduces_diffusers_ddim_scheduler(prediction_type, spacing):
    unet = tiny_unet()
    scheduler = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing=spacing,
    )
    model = DiffusersDenoiser.wrap(unet, scheduler=scheduler, null_class=4)
    assert model.schedule == "vp-discrete:scaled_linear:0.00085:0.012:1000"
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2])
    scheduler.set_timesteps(20)
    expected = x.clone()
    with torch.no_grad():
        for step in scheduler.timesteps:
            out = unet(expected, step, class_labels=y).sample
            expected = scheduler.step(out, step, expected).prev_sample
    got = ne.sample(model, 3, 20, y=y, solver="ddim", spacing=spacing, latents=x, progress=False)
    _close(got, expected)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_reproduces_diffusers_ddpm_scheduler(monkeypatch, variance):
    import diffusers.schedulers.scheduling_ddpm as ddpm_module

    unet = tiny_unet()
    scheduler = diffusers.DDPMScheduler(clip_sample=False, variance_type=f"fixed_{variance}")
    model = DiffusersDenoiser.wrap(unet, scheduler=scheduler, null_class=4)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([3, 2, 1])
    draws, rows = CounterNoise(5, (2, 8, 8), "cpu"), torch.arange(3)
    scheduler.set_timesteps(25)
    expected = x.clone()
    with torch.no_grad():
        for k, step in enumerate(scheduler.timesteps):  # the same per-step noise as ours
            monkeypatch.setattr(
                ddpm_module, "randn_tensor", lambda *a, k=k, **kw: draws.normal(rows, k + 1)
            )
            out = unet(expected, step, class_labels=y).sample
            expected = scheduler.step(out, step, expected).prev_sample
    got = ne.sample(
        model, 3, 25, y=y, solver="ddpm", variance=variance, spacing="leading", latents=x,
        seed=5, progress=False,
    )  # fmt: skip
    _close(got, expected)


def test_the_dit_wrapper_reproduces_diffusers_ddim():
    transformer = tiny_dit()
    model = DiffusersDiT(transformer)
    scheduler = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([5, 6])
    scheduler.set_timesteps(10)
    expected = x.clone()
    with torch.no_grad():
        for step in scheduler.timesteps:
            out = transformer(expected, timestep=step.expand(2), class_labels=y).sample[:, :4]
            expected = scheduler.step(out, step, expected).prev_sample
    got = ne.sample(model, 2, 10, y=y, solver="ddim", spacing="leading", latents=x, progress=False)
    _close(got, expected)


@pytest.mark.parametrize(
    "build",
    [lambda: DiffusersDenoiser.wrap(tiny_unet(), null_class=4), lambda: DiffusersDiT(tiny_dit())],
)
def test_drop_t_rows_get_the_one_null_noise_vector(build):
    model = build()
    names = [n for n, _ in model.named_parameters() if "null" in n]
    assert names == ["null_noise"]  # one vector for the whole model
    x = torch.randn(4, *model.sample_shape)
    t, y = torch.tensor([0.2, 0.2, 0.7, 0.7]), torch.tensor([1, 1, 2, 2])
    drop = torch.tensor([False, True, False, True])
    with torch.no_grad():
        before = model(x, t, y, drop_t=drop)
        model.null_noise.add_(1.0)
        after = model(x, t, y, drop_t=drop)
        plain = model(x, t, y)
    assert torch.equal(before[~drop], after[~drop]) and torch.equal(before[~drop], plain[~drop])
    assert not torch.allclose(before[drop], after[drop])
    twin = copy.deepcopy(model)  # the trainer's EMA copy: its hooks use its own null vector
    with torch.no_grad():
        twin.null_noise.zero_()
        assert not torch.allclose(twin(x, t, y, drop_t=drop)[drop], after[drop])
        assert torch.equal(model(x, t, y, drop_t=drop), after)


def test_unsupported_schedulers_and_models_are_refused():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="trained_betas"):
        DiffusersDenoiser.wrap(unet, scheduler={"trained_betas": [0.1, 0.2]})
    with pytest.raises(ValueError, match="zero terminal SNR"):
        DiffusersDenoiser.wrap(unet, scheduler={"rescale_betas_zero_snr": True})
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusersDenoiser.wrap(unet, scheduler={"prediction_type": "flow"})
    with pytest.raises(TypeError, match="UNet2DModel"):
        DiffusersDenoiser(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="last class id"):
        DiffusersDenoiser.wrap(unet, null_class=2)
    DiffusersDenoiser.wrap(unet)  # (the refusals above left the model unwrapped)
    with pytest.raises(ValueError, match="already wrapped"):
        DiffusersDenoiser.wrap(unet)


def test_without_a_null_class_cfg_and_class_dropout_say_what_to_do():
    model = DiffusersDenoiser.wrap(tiny_unet())
    assert model.num_classes == 5 and model.null_class is None
    with pytest.raises(ValueError, match="no null class"):
        ne.sample(model, 2, 3, y=1, cfg_scale=2.0, progress=False)
    x = ne.sample(model, 2, 3, y=1, progress=False)  # conditional sampling works
    assert torch.isfinite(x).all()


def _save_pipeline(folder, unet, scheduler):
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")


def test_a_saved_folder_converts_to_a_checkpoint(tmp_path):
    unet = tiny_unet()
    scheduler = diffusers.DDIMScheduler(prediction_type="v_prediction")
    _save_pipeline(tmp_path / "pipe", unet, scheduler)
    out = ne.convert_checkpoint(tmp_path / "pipe", tmp_path / "u.safetensors", format="diffusers")
    model = ne.load_checkpoint(out)
    assert isinstance(model, DiffusersDenoiser) and model.prediction == "v"
    assert model.checkpoint_config["p_t"] == 0.0 and not model.supports_noise_dropout
    x, t, y = torch.randn(2, 2, 8, 8), torch.tensor([0.4, 0.9]), torch.tensor([0, 4])
    with torch.no_grad():
        expected = DiffusersDenoiser.wrap(unet, scheduler=scheduler)(x, t, y)
        torch.testing.assert_close(model(x, t, y), expected)
    with pytest.raises(FileNotFoundError, match="no diffusers folder"):
        ne.convert_checkpoint(tmp_path / "nope", tmp_path / "o.safetensors", format="diffusers")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        ne.convert_checkpoint(tmp_path / "empty", tmp_path / "o.safetensors", format="diffusers")


def test_a_fine_tuned_unet_samples_with_nag(tmp_path):
    """The NAG path for a diffusers model: a UNet trained without noise dropout (random weights
    here), converted, fine-tuned with p_t > 0 on digits, then sampled with NAG and CFG."""
    unet = tiny_unet(channels=1, classes=11)  # digits' 10 classes + a null class
    scheduler = diffusers.DDPMScheduler()
    _save_pipeline(tmp_path / "pipe", unet, scheduler)
    base = ne.convert_checkpoint(
        tmp_path / "pipe", tmp_path / "base.safetensors", format="diffusers", null_class=10
    )
    data = load_dataset("digits", n=64)
    config = TrainConfig(steps=6, batch_size=8, lr=1e-3, p_t=0.5, p_c=0.1, checkpoint_every=3)
    trainer = Trainer.finetune(base, data, config, out=tmp_path / "run")
    added = sum(p.numel() for n, p in trainer.model.named_parameters() if "null" in n)
    assert added == trainer.model.null_noise.numel() == 32  # one time-embedding vector
    start = trainer.model.null_noise.detach().clone()
    trainer.run(progress=False)
    assert not torch.equal(trainer.model.null_noise, start)
    model = ne.load_checkpoint(trainer.export(tmp_path / "nag.safetensors"))
    assert model.supports_noise_dropout and model.checkpoint_config["p_t"] == 0.5
    x = ne.sample(model, 4, 5, y=3, cfg_scale=1.5, nag_scale=0.5, solver="ddim", progress=False)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    resumed = Trainer.resume(tmp_path / "run" / "checkpoint.safetensors", data)
    assert resumed.step == 6 and isinstance(resumed.model, DiffusersDenoiser)


def test_an_unconditional_unet_samples_with_every_solver_and_fine_tunes_for_nag(tmp_path):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    model = DiffusersDenoiser.wrap(unet)
    assert model.num_classes is None
    for solver in ("euler", "heun", "euler-maruyama", "ddim", "ddpm"):
        x = ne.sample(model, 2, 4, solver=solver, progress=False)
        assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all(), solver
    data = load_dataset("digits", n=32)  # labelled, but the model ignores the labels
    trainer = Trainer(model, data, TrainConfig(steps=3, batch_size=8, p_t=0.5, p_c=0.0))
    trainer.run(progress=False)
    x = ne.sample(trainer.model, 2, 4, nag_scale=1.0, solver="ddim", progress=False)
    assert torch.isfinite(x).all()
