"""Guidance: plans, weights, intervals, and the one-batch combined forward against separate
forward passes combined by hand."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nag_engine as ne
from nag_engine.guidance import COND, UNCOND_CLASS, UNCOND_NOISE, UNCOND_NOISE_CLASS, Guidance
from nag_engine.models import FunctionDenoiser, ring_mixture


class RowCounter(torch.nn.Module):
    """Wraps a model and records the batch size and drop flags of every forward call."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls: list[tuple[int, float, int, int]] = []
        for name in ("prediction", "schedule", "num_classes", "sample_shape"):
            setattr(self, name, getattr(model, name))
        self.supports_noise_dropout = True

    def forward(self, x, t, y=None, *, drop_t=None, drop_y=None):
        n_t = 0 if drop_t is None else int(drop_t.sum())
        n_y = 0 if drop_y is None else int(drop_y.sum())
        self.calls.append((len(x), float(t[0]), n_t, n_y))
        return self.model(x, t, y, drop_t=drop_t, drop_y=drop_y)


@given(
    cfg=st.floats(-3, 10, allow_nan=False),
    nag=st.floats(-3, 10, allow_nan=False),
    t=st.floats(0, 1),
)
def test_weights_sum_to_one(cfg, nag, t):
    guidance = Guidance(cfg, nag, cfg_interval=(0.2, 0.7), nag_interval=(0.0, 0.5))
    passes, weights = guidance.passes_at(t)
    assert passes[0] == COND
    assert sum(weights) == pytest.approx(1.0, abs=1e-9)
    assert (UNCOND_CLASS in passes) == (cfg != 1.0 and 0.2 <= t <= 0.7)
    assert (UNCOND_NOISE in passes) == (nag != 0.0 and t <= 0.5)


def test_weights_match_the_formulas():
    passes, weights = Guidance(cfg_scale=4.0, nag_scale=1.5).passes_at(0.5)
    assert passes == (COND, UNCOND_CLASS, UNCOND_NOISE)
    assert weights == (5.5, -3.0, -1.5)  # c + 3 (c - u_c) + 1.5 (c - u_t)
    assert Guidance(cfg_scale=1.0, nag_scale=0.0).passes_at(0.3) == ((COND,), (1.0,))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(cfg_scale="2"), "cfg_scale"),
        (dict(nag_scale=float("nan")), "nag_scale"),
        (dict(cfg_interval=(0.8, 0.2)), "cfg_interval"),
        (dict(nag_interval=(0.0, 1.5)), "nag_interval"),
        (dict(nag_interval=0.5), "nag_interval"),
    ],
)
def test_bad_guidance_settings(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        Guidance(**kwargs)


def test_combined_forward_equals_separate_passes_by_hand():
    model = ring_mixture(8, num_classes=4, time_points=128)
    cfg, nag, n = 3.0, 0.8, 64
    y = torch.arange(n) % 4
    seen = []
    ne.sample(
        model,
        n,
        6,
        y=y,
        cfg_scale=cfg,
        nag_scale=nag,
        progress=False,
        callback=lambda info: seen.append((info.t, info.x.clone(), info.prediction.clone())),
    )
    assert len(seen) == 6
    for t, x, prediction in seen:
        tt = torch.full((n,), t)
        cond = model(x, tt, y)
        uncond_class = model(x, tt, y, drop_y=torch.ones(n, dtype=torch.bool))
        uncond_noise = model(x, tt, y, drop_t=torch.ones(n, dtype=torch.bool))
        by_hand = cond + (cfg - 1) * (cond - uncond_class) + nag * (cond - uncond_noise)
        torch.testing.assert_close(prediction, by_hand, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_nag_null_class_drops_the_class_in_the_nag_pass(cfg):
    """nag_null_class: the NAG pass is out(null t, null c), by hand on the exact mixture, with
    and without CFG; the default keeps c in it."""
    model = ring_mixture(8, num_classes=4, time_points=128)
    nag, n = 0.8, 64
    y = torch.arange(n) % 4
    passes, _ = Guidance(cfg, nag, nag_null_class=True).passes_at(0.5)
    assert passes[-1] == UNCOND_NOISE_CLASS and UNCOND_NOISE not in passes
    seen = []
    ne.sample(
        model,
        n,
        4,
        y=y,
        cfg_scale=cfg,
        nag_scale=nag,
        nag_null_class=True,
        progress=False,
        callback=lambda info: seen.append((info.t, info.x.clone(), info.prediction.clone())),
    )
    every = torch.ones(n, dtype=torch.bool)
    for t, x, prediction in seen:
        tt = torch.full((n,), t)
        cond = model(x, tt, y)
        uncond_class = model(x, tt, y, drop_y=every)
        uncond_both = model(x, tt, y, drop_t=every, drop_y=every)
        by_hand = cond + (cfg - 1) * (cond - uncond_class) + nag * (cond - uncond_both)
        torch.testing.assert_close(prediction, by_hand, rtol=1e-5, atol=1e-5)
        uncond_noise = model(x, tt, y, drop_t=every)
        assert not torch.allclose(uncond_both, uncond_noise, atol=1e-3)  # the forms differ


def test_nag_null_class_needs_a_class_conditional_model_and_a_bool():
    model = ring_mixture(8, time_points=64)
    with pytest.raises(ValueError, match="nag_null_class=True .* no num_classes"):
        ne.Sampler(model, 4, nag_scale=0.5, nag_null_class=True)
    with pytest.raises(TypeError, match="nag_null_class must be True or False"):
        Guidance(nag_scale=0.5, nag_null_class="yes")


def test_guided_euler_run_equals_a_hand_written_loop():
    model = ring_mixture(8, num_classes=2, time_points=128)
    n, steps, cfg, nag = 32, 5, 2.0, 0.5
    y = torch.arange(n) % 2
    latents = torch.randn(n, 2, generator=torch.Generator().manual_seed(3))
    out = ne.sample(
        model, n, steps, y=y, cfg_scale=cfg, nag_scale=nag, latents=latents, progress=False
    )
    x = latents.clone()
    grid = ne.time_grid(steps)
    all_rows = torch.ones(n, dtype=torch.bool)
    for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        tt = torch.full((n,), t)
        c = model(x, tt, y)
        v = (
            c
            + (cfg - 1) * (c - model(x, tt, y, drop_y=all_rows))
            + nag * (c - model(x, tt, y, drop_t=all_rows))
        )
        x = x + (t_next - t) * v  # Euler on a velocity model, linear schedule
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


def test_intervals_remove_passes_from_the_batch():
    model = RowCounter(ring_mixture(8, num_classes=4, time_points=64))
    n, steps = 10, 10
    ne.sample(
        model,
        n,
        steps,
        y=torch.zeros(n, dtype=torch.long),
        cfg_scale=2.0,
        nag_scale=1.0,
        cfg_interval=(0.0, 0.5),
        nag_interval=(0.3, 1.0),
        progress=False,
    )
    assert len(model.calls) == steps  # one forward per step, all passes in it
    for rows, t, n_drop_t, n_drop_y in model.calls:
        cfg_on, nag_on = t <= 0.5, t >= 0.3
        assert rows == n * (1 + cfg_on + nag_on)
        assert n_drop_y == n * cfg_on and n_drop_t == n * nag_on


def test_disabled_guidance_is_bit_for_bit_unguided():
    model = ring_mixture(8, num_classes=4, time_points=64)
    y = torch.arange(100) % 4
    base = ne.sample(model, 100, 8, y=y, progress=False, seed=5)
    for kwargs in (
        dict(nag_scale=0.0),
        dict(cfg_scale=1.0),
        dict(cfg_scale=1.0, nag_scale=0.0),
    ):
        assert torch.equal(ne.sample(model, 100, 8, y=y, progress=False, seed=5, **kwargs), base)
    with pytest.warns(UserWarning, match="nag guidance is off"):  # never on the grid's times
        off = ne.sample(
            model, 100, 8, y=y, progress=False, seed=5, nag_scale=2.0, nag_interval=(0.95, 0.99)
        )
    assert torch.equal(off, base)


def test_unconditional_model_supports_nag_alone():
    model = RowCounter(ring_mixture(8, time_points=64))
    x = ne.sample(model, 20, 4, nag_scale=1.0, progress=False)
    assert x.shape == (20, 2)
    assert all(rows == 40 and n_t == 20 for rows, _, n_t, _ in model.calls)
    with pytest.raises(ValueError, match="cfg_scale"):
        ne.sample(model, 20, 4, cfg_scale=2.0, progress=False)


def test_nag_needs_a_model_with_noise_dropout():
    plain = FunctionDenoiser(lambda x, t, y, dt, dy: -x, sample_shape=(2,))
    with pytest.raises(ValueError, match="nag_scale.*noise-condition dropout"):
        ne.sample(plain, 4, 2, nag_scale=1.0, progress=False)


def test_nag_moves_samples_and_cfg_sharpens_classes():
    """Guidance has an effect in the expected direction on the exact model: CFG pulls
    class-conditional samples toward their class's modes."""
    model = ring_mixture(8, num_classes=2, std=0.35, time_points=128)
    y = torch.zeros(400, dtype=torch.long)
    plain = ne.sample(model, 400, 20, y=y, progress=False)
    guided = ne.sample(model, 400, 20, y=y, cfg_scale=3.0, progress=False)
    in_class = model.classes[model.component_of(plain)] == 0
    in_class_guided = model.classes[model.component_of(guided)] == 0
    assert in_class_guided.float().mean() >= in_class.float().mean()
    spread = (plain - model.means[model.component_of(plain)]).norm(dim=1).mean()
    spread_guided = (guided - model.means[model.component_of(guided)]).norm(dim=1).mean()
    assert spread_guided < spread
    nag = ne.sample(model, 400, 20, y=y, nag_scale=1.0, progress=False)
    assert not torch.allclose(nag, plain)


def test_an_interval_that_holds_no_evaluation_time_is_warned_about():
    import warnings

    import nag_engine as ne
    from nag_engine.models import ring_mixture

    model = ring_mixture(8, num_classes=4)
    with pytest.warns(UserWarning, match=r"nag_interval=\(0.0, 0.05\) contains none .* 0\.1\)"):
        ne.Sampler(model, 10, nag_scale=0.5, nag_interval=(0.0, 0.05))
    with pytest.warns(UserWarning, match="cfg guidance is off for the whole run"):
        ne.Sampler(model, 4, cfg_scale=2.0, cfg_interval=(0.3, 0.4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ne.Sampler(model, 10, nag_scale=0.5, nag_interval=(0.0, 0.1))  # holds t = 0.1
        ne.Sampler(model, 10, nag_interval=(0.0, 0.05))  # NAG is off anyway: nothing to say


def test_nag_null_class_is_part_of_a_runs_identity_only_when_set():
    """A sharded run sampled with the other NAG form is a different run; manifests written
    before the option existed (without the key) still match the default."""
    from nag_engine.identity import plan_identity

    model = ring_mixture(8, num_classes=4, time_points=64)
    default = plan_identity(ne.Sampler(model, 4, nag_scale=0.5).plan)
    null_class = plan_identity(ne.Sampler(model, 4, nag_scale=0.5, nag_null_class=True).plan)
    assert "nag_null_class" not in default
    assert null_class["nag_null_class"] is True
    assert {
        k: v for k, v in null_class.items() if k not in ("nag_null_class", "tables_sha256")
    } == {k: v for k, v in default.items() if k != "tables_sha256"}
