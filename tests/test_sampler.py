"""The sampler: determinism, batching, latents, callbacks, trajectories, static buffers, the
absence of per-step host syncs and concatenations, bad input, and the reference networks."""

from __future__ import annotations

import pytest
import torch
from conftest import randomized

import nag_engine as ne
import nag_engine.sampler
from nag_engine.models import DiT, FunctionDenoiser, MLPDenoiser, ring_mixture
from nag_engine.noise import CounterNoise


@pytest.fixture(scope="module")
def mixture():
    return ring_mixture(8, num_classes=4, time_points=64)


def test_same_seed_same_samples_and_different_seed_differs(mixture):
    a = ne.sample(mixture, 50, 10, solver="euler-maruyama", seed=3, progress=False)
    b = ne.sample(mixture, 50, 10, solver="euler-maruyama", seed=3, progress=False)
    c = ne.sample(mixture, 50, 10, solver="euler-maruyama", seed=4, progress=False)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("solver", ["euler", "heun", "euler-maruyama", "ddpm"])
def test_results_do_not_depend_on_batch_size(mixture, solver):
    y = torch.arange(37) % 4
    kwargs = dict(y=y, solver=solver, seed=11, nag_scale=0.5, cfg_scale=2.0, progress=False)
    whole = ne.sample(mixture, 37, 8, **kwargs)
    for batch_size in (1, 7, 16):
        split = ne.sample(mixture, 37, 8, batch_size=batch_size, **kwargs)
        torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)


def test_network_results_do_not_depend_on_batch_size():
    model = randomized(MLPDenoiser(2, hidden=32, depth=2, num_classes=3))
    kwargs = dict(y=torch.arange(20) % 3, cfg_scale=1.5, nag_scale=0.5, seed=2, progress=False)
    whole = ne.sample(model, 20, 6, **kwargs)
    split = ne.sample(model, 20, 6, batch_size=6, **kwargs)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)


def test_default_latents_are_the_counter_noise_of_the_seed(mixture):
    latents = CounterNoise(9, (2,), "cpu").normal(torch.arange(30), 0)
    own = ne.sample(mixture, 30, 5, latents=latents, progress=False)
    assert torch.equal(own, ne.sample(mixture, 30, 5, seed=9, progress=False))


def test_trajectory_starts_at_the_latents_and_ends_at_the_samples(mixture):
    latents = torch.randn(12, 2)
    kw = dict(solver="heun", latents=latents, progress=False, batch_size=5)
    traj = ne.sample_trajectory(mixture, 12, 6, **kw)
    x = ne.sample(mixture, 12, 6, **kw)
    assert traj.shape == (7, 12, 2)
    assert torch.equal(traj[0], latents) and torch.equal(traj[-1], x)


def test_callback_sees_every_step(mixture):
    seen = []
    latents = torch.randn(8, 2)

    def callback(info):
        seen.append(
            (
                info.step,
                info.t,
                info.t_next,
                info.x.clone(),
                info.x_next.clone(),
                info.prediction.shape,
                info.batch_start,
            )
        )

    traj = ne.sample_trajectory(
        mixture, 8, 4, solver="heun", latents=latents, callback=callback, progress=False
    )
    grid = ne.time_grid(4)
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    for i, (_, t, t_next, x_i, x_next, pred_shape, start) in enumerate(seen):
        assert t == pytest.approx(float(grid[i])) and t_next == pytest.approx(float(grid[i + 1]))
        assert torch.equal(x_i, traj[i]) and torch.equal(x_next, traj[i + 1])
        assert pred_shape == (8, 2) and start == 0


@pytest.mark.parametrize(
    "solver,steps", [("euler", 3), ("heun", 3), ("dpm++2m", 3), ("dpm++2m", 6)]
)  # dpm++2m: first order throughout at 3 steps (no g_prev), multistep at 6
def test_callback_prediction_is_the_model_output_at_the_step_start(mixture, solver, steps):
    seen = []
    ne.sample(
        mixture,
        8,
        steps,
        solver=solver,
        progress=False,
        nag_scale=0.0,
        callback=lambda info: seen.append((info.t, info.x.clone(), info.prediction.clone())),
    )
    for t, x, prediction in seen:
        torch.testing.assert_close(prediction, mixture(x, torch.full((8,), t)))


def test_sampler_object_is_reusable_and_keeps_its_buffers(mixture, monkeypatch):
    made = []
    original = nag_engine.sampler.make_buffers
    monkeypatch.setattr(
        nag_engine.sampler, "make_buffers", lambda *a: made.append(a[1:]) or original(*a)
    )
    sampler = ne.Sampler(mixture, 6, solver="ddim", eta=0.5, nag_scale=0.3)
    first = sampler.sample(16, seed=1, progress=False, batch_size=10)
    assert made == [(10, (2,), False), (6, (2,), False)]
    second = sampler.sample(16, seed=1, progress=False, batch_size=10)
    assert torch.equal(first, second) and len(made) == 2  # the same buffers served again
    sampler.sample(4, seed=1, progress=False)
    assert made[2:] == [(4, (2,), False)]


def _count_calls(monkeypatch, target, name):
    counter = {"n": 0}
    original = getattr(target, name)

    def counting(*args, **kwargs):
        counter["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, counting)
    return counter


@pytest.mark.parametrize(
    "options",
    [{}, {"eps_scaling": {"k": 0.01, "b": 1.002}, "time_shift_sampler": {"window": 0.05}}],
    ids=["plain", "corrections"],
)
def test_step_loop_neither_concatenates_nor_reads_tensors_back(monkeypatch, options):
    """The counts of torch.cat calls and tensor-to-host reads do not grow with the number of
    steps: no per-step concatenation and no per-step host synchronisation."""
    model = FunctionDenoiser(
        lambda x, t, y, dt, dy: -x, supports_noise_dropout=True, num_classes=3, sample_shape=(3,)
    )
    counts = []
    for steps in (3, 12):
        sampler = ne.Sampler(
            model, steps, cfg_scale=2.0, nag_scale=1.0, solver="euler-maruyama", **options
        )
        cat = _count_calls(monkeypatch, torch, "cat")
        reads = [
            _count_calls(monkeypatch, torch.Tensor, name)
            for name in ("item", "__bool__", "__int__", "__float__", "tolist")
        ]
        sampler.sample(10, y=torch.arange(10) % 3, progress=False)
        counts.append((cat["n"], sum(r["n"] for r in reads)))
        monkeypatch.undo()
    assert counts[0] == counts[1]
    # label range check (2), seed hash (1, a CPU scalar) and the non-finite flag read once (1)
    assert counts[0][1] <= 4


def test_non_finite_state_is_reported_with_its_first_step():
    def blows_up(x, t, y, dt, dy):
        return torch.where(t.view(-1, 1) <= 0.5, torch.full_like(x, float("nan")), -x)

    model = FunctionDenoiser(blows_up, sample_shape=(2,))
    with pytest.raises(ne.NonFiniteStateError, match=r"step 5 \(t=0\.5\)") as err:
        ne.sample(model, 4, 10, t_max=1.0, progress=False, time_shift=1.0)
    assert isinstance(err.value, ValueError)
    for parallel in (dict(window=10, tolerance=0.0), dict(window=3, tolerance=0.1)):
        with pytest.raises(ne.NonFiniteStateError, match=r"step 5 \(t=0\.5\).*samples 0\.\.3"):
            ne.sample(model, 4, 10, t_max=1.0, progress=False, parallel=parallel)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (dict(n=0), ValueError, "n must be > 0"),
        (dict(n=2.5), TypeError, "n must be an int"),
        (dict(steps=0), ValueError, "steps must be > 0"),
        (dict(solver="rk45"), ValueError, "unknown solver 'rk45'"),
        (dict(schedule="sigmoid"), ValueError, "unknown schedule 'sigmoid'"),
        (dict(cfg_scale=2.0), ValueError, "cfg_scale=2.0 needs class labels"),
        (dict(y=torch.zeros(3, dtype=torch.long)), ValueError, r"y must have shape \(4,\)"),
        (dict(y=torch.tensor([0, 1, 2, 4])), ValueError, r"y must lie in \[0, 4\)"),
        (dict(y=torch.tensor([0.0, 1.0, 2.0, 3.0])), TypeError, "y must hold integer"),
        (dict(latents=torch.zeros(3, 2)), ValueError, "latents must be a tensor"),
        (dict(batch_size=0), ValueError, "batch_size must be > 0"),
        (dict(dtype="fp64"), ValueError, "unknown dtype 'fp64'"),
        (dict(seed=3.0), TypeError, "seed must be an int"),
        (dict(return_trajectory=True), TypeError, "sample_trajectory"),
    ],
)
def test_bad_input_gets_a_clear_error(mixture, call, error, match):
    kwargs = dict(model=mixture, n=4, steps=3, progress=False)
    kwargs.update(call)
    with pytest.raises(error, match=match):
        ne.sample(**kwargs)


def test_a_reused_sampler_checks_the_seed_of_every_call(mixture):
    sampler = ne.Sampler(mixture, 3)
    sampler.sample(4, seed=3, progress=False)  # its buffers now hold seed 3
    for bad in (3.0, True):
        with pytest.raises(TypeError, match="seed must be an int"):
            sampler.sample(4, seed=bad, progress=False)


def test_y_on_an_unconditional_model_and_wrong_output_shape():
    with pytest.raises(ValueError, match="unconditional"):
        ne.sample(ring_mixture(4), 4, 2, y=0, progress=False)
    wrong = FunctionDenoiser(lambda x, t, y, dt, dy: x[:, :1], sample_shape=(2,))
    with pytest.raises(ValueError, match=r"model output has shape \(4, 1\), expected \(4, 2\)"):
        ne.sample(wrong, 4, 2, progress=False)
    with pytest.raises(ValueError, match="sample shape"):
        ne.sample(FunctionDenoiser(lambda x, t, y, dt, dy: x), 4, 2, progress=False)
    with pytest.raises(TypeError, match="FunctionDenoiser"):
        ne.sample(lambda x, t: x, 4, 2, progress=False)


def test_an_int_label_means_every_sample_has_that_class(mixture):
    a = ne.sample(mixture, 6, 4, y=2, cfg_scale=2.0, progress=False)
    b = ne.sample(mixture, 6, 4, y=torch.full((6,), 2), cfg_scale=2.0, progress=False)
    assert torch.equal(a, b)


def test_dit_samples_with_cfg_and_nag_in_bf16_close_to_fp32():
    model = randomized(
        DiT(
            input_size=8,
            patch_size=2,
            in_channels=4,
            hidden_size=32,
            depth=2,
            num_heads=2,
            num_classes=10,
        )
    )
    kwargs = dict(y=torch.arange(3), cfg_scale=2.0, nag_scale=0.5, seed=0, progress=False)
    fp32 = ne.sample(model, 3, 4, **kwargs)
    bf16 = ne.sample(model, 3, 4, dtype="bf16", **kwargs)
    assert fp32.shape == bf16.shape == (3, 4, 8, 8) and bf16.dtype == torch.float32
    assert torch.isfinite(bf16).all()
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()


def test_mlp_eps_model_on_vp_uses_its_declared_schedule():
    model = randomized(MLPDenoiser(2, hidden=16, depth=1, prediction="eps", schedule="vp"))
    sampler = ne.Sampler(model, 5, solver="ddpm")
    assert sampler.schedule.name == "vp" and sampler.prediction == "eps"
    assert torch.isfinite(sampler.sample(8, progress=False)).all()


def test_device_must_match_the_model(mixture):
    with pytest.raises(ValueError, match="device=meta but the model's weights are on cpu"):
        ne.Sampler(mixture, 4, device="meta")
    weightless = FunctionDenoiser(lambda x, t, y, dt, dy: -x, sample_shape=(2,))
    assert ne.Sampler(weightless, 2, device="cpu").device == torch.device("cpu")
