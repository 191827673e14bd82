"""CUDA graphs without a GPU: the eager/graph decision, and the captured stage body run through
a fake graph runner (capture = warm up and keep the body; replay = run it), which must give
exactly the eager samples with no host work per step."""

from __future__ import annotations

import inspect

import pytest
import torch

import nag_engine as ne
from nag_engine import graphs
from nag_engine.models import FunctionDenoiser, ring_mixture


class FakeGraphs:
    """Stands in for graphs.CudaGraphs on CPU: runs the warm-up, returns the body as replay
    (`fail`: raised by every capture, or by those of batches larger than `fail_above`)."""

    def __init__(self, fail: Exception | None = None, fail_above: int = 0):
        self.captured, self.fail, self.fail_above = 0, fail, fail_above

    def capture(self, body, reset, warmup=2):
        if self.fail is not None and self.batch(body) > self.fail_above:
            raise self.fail
        for _ in range(warmup):
            reset()
            body()
        reset()
        self.captured += 1
        return body

    @staticmethod
    def batch(body) -> int:
        """The batch size a captured stage runs (from the sampler's buffers it closes over)."""
        bufs = inspect.getclosurevars(body).nonlocals.get("bufs")
        return bufs.batch if bufs is not None else 0


def graphed(model, steps, runner=None, **options):
    """A CPU sampler that takes its graph path through a fake runner."""
    return ne.Sampler(model, steps, graph_runner=runner or FakeGraphs(), **options)


@pytest.fixture(scope="module")
def mixture():
    return ring_mixture(8, num_classes=4, time_points=64)


CASES = {
    "euler cfg+nag": dict(solver="euler", cfg_scale=2.0, nag_scale=0.5),
    "heun cfg+nag": dict(solver="heun", cfg_scale=2.0, nag_scale=0.5),
    "euler-maruyama": dict(solver="euler-maruyama", cfg_scale=1.5, nag_scale=0.5),
    "ddpm intervals": dict(
        solver="ddpm", cfg_scale=2.0, nag_scale=0.5, cfg_interval=(0.2, 0.9), nag_interval=(0, 0.5)
    ),
    "ddim eta": dict(solver="ddim", eta=0.5, cfg_scale=2.0),
    "dpm++2m cfg+nag": dict(solver="dpm++2m", cfg_scale=2.0, nag_scale=0.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_captured_stage_gives_the_eager_samples(mixture, case):
    y = torch.arange(21) % 4
    kw = dict(y=y, seed=7, batch_size=8, progress=False)
    eager = ne.Sampler(mixture, 9, **CASES[case])
    runner = FakeGraphs()
    sampler = graphed(mixture, 9, runner, **CASES[case])
    expected = eager.sample(21, **kw)
    torch.testing.assert_close(sampler.sample(21, **kw), expected, rtol=0, atol=0)
    pass_sets = len(sampler.plan.guidance_plan.distinct_pass_sets())
    assert runner.captured == 2 * pass_sets  # batch shapes 8 and 5
    # replayed for a new seed: the seed lives on the device, nothing is captured again
    torch.testing.assert_close(
        sampler.sample(21, **{**kw, "seed": 8}),
        eager.sample(21, **{**kw, "seed": 8}),
        rtol=0,
        atol=0,
    )
    assert runner.captured == 2 * pass_sets
    assert sampler.graph_status().startswith("CUDA graphs")


def test_the_captured_path_reads_nothing_back_per_step(monkeypatch):
    model = FunctionDenoiser(
        lambda x, t, y, dt, dy: -x, supports_noise_dropout=True, num_classes=3, sample_shape=(3,)
    )
    counts = []
    for steps in (3, 12):
        sampler = graphed(model, steps, cfg_scale=2.0, nag_scale=1.0, solver="ddpm")
        reads = {"n": 0}
        for name in ("item", "__bool__", "__int__", "__float__", "tolist"):
            original = getattr(torch.Tensor, name)

            def counting(self, *a, _original=original, _reads=reads, **k):
                _reads["n"] += 1
                return _original(self, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counting)
        sampler.sample(10, y=torch.arange(10) % 3, progress=False)
        monkeypatch.undo()
        counts.append(reads["n"])
    assert counts[0] == counts[1]


def test_the_decision_and_its_reasons(mixture):
    cpu = torch.device("cpu")
    assert "CUDA device" in graphs.static_reason(
        cpu, "auto", classifier_nag=False, time_shift_sampler=False
    )
    cuda = torch.device("cuda")
    assert (
        graphs.static_reason(cuda, "auto", classifier_nag=False, time_shift_sampler=False) is None
    )
    assert graphs.static_reason(cuda, False, classifier_nag=False, time_shift_sampler=False)
    assert "autograd" in graphs.static_reason(
        cuda, True, classifier_nag=True, time_shift_sampler=False
    )
    assert "time-shift" in graphs.static_reason(
        cuda, True, classifier_nag=False, time_shift_sampler=True
    )
    assert "callback" in graphs.call_reason(True, False)
    assert "trajectory" in graphs.call_reason(False, True)
    assert graphs.call_reason(False, False) is None
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="cuda_graphs"):
            ne.Sampler(mixture, 3, cuda_graphs=bad)
    assert (
        ne.Sampler(mixture, 3).graph_status()
        == "eager: cpu tensors (CUDA graphs need a CUDA device)"
    )
    with pytest.raises(RuntimeError, match="cuda_graphs=True.*CUDA device"):
        ne.Sampler(mixture, 3, cuda_graphs=True)


def test_calls_that_need_the_host_every_step_run_eagerly(mixture):
    runner = FakeGraphs()
    sampler = graphed(mixture, 4, runner, solver="heun")
    eager = ne.Sampler(mixture, 4, solver="heun")
    steps = []
    got = sampler.sample(6, seed=1, progress=False, callback=lambda info: steps.append(info.step))
    assert steps == [0, 1, 2, 3] and runner.captured == 0
    assert "last call ran eagerly: a callback" in sampler.graph_status()
    torch.testing.assert_close(got, eager.sample(6, seed=1, progress=False), rtol=0, atol=0)
    traj = sampler.trajectory(6, seed=1, progress=False)
    assert traj.shape == (5, 6, 2) and "trajectory" in sampler.graph_status()
    strict = graphed(mixture, 4, solver="heun", cuda_graphs=True)
    with pytest.raises(RuntimeError, match="callback"):
        strict.sample(6, progress=False, callback=lambda info: None)


def test_a_failed_capture_falls_back_or_fails_loudly(mixture):
    failure = RuntimeError("operation not permitted when stream is capturing")
    sampler = graphed(mixture, 4, FakeGraphs(fail=failure))
    with pytest.warns(UserWarning, match="capturing the step failed"):
        got = sampler.sample(6, seed=2, progress=False)
    torch.testing.assert_close(got, ne.Sampler(mixture, 4).sample(6, seed=2, progress=False))
    assert "eager: capturing the step failed" in sampler.graph_status()
    strict = graphed(mixture, 4, FakeGraphs(fail=failure), cuda_graphs=True)
    with pytest.raises(RuntimeError, match="cuda_graphs=True, but capturing the step failed"):
        strict.sample(6, progress=False)


def test_out_of_memory_while_capturing_halves_the_batch_and_keeps_capturing(mixture):
    runner = FakeGraphs(fail=torch.cuda.OutOfMemoryError("fake: capture"), fail_above=4)
    sampler = graphed(mixture, 4, runner, solver="heun")
    batches = list(sampler.stream(12, seed=2, batch_size=8, progress=False))
    assert [len(b.samples) for b in batches] == [4, 4, 4]  # 8 failed, 4 captured
    assert runner.captured == 1 and sampler.graph_status().startswith("CUDA graphs")
    got = torch.cat([b.samples for b in batches])
    torch.testing.assert_close(got, ne.Sampler(mixture, 4, solver="heun").sample(12, seed=2))


def test_a_compiled_forward_gives_the_same_samples(mixture):
    from nag_engine.models import MLPDenoiser

    torch.manual_seed(0)
    model = MLPDenoiser(2, hidden=16, depth=1, num_classes=4).eval()
    kw = dict(cfg_scale=2.0, nag_scale=0.5)
    eager = ne.Sampler(model, 4, **kw).sample(8, y=1, seed=3, progress=False)
    compiled = graphed(model, 4, compile={"backend": "eager"}, **kw)
    torch.testing.assert_close(compiled.sample(8, y=1, seed=3, progress=False), eager)
    with pytest.raises(TypeError, match="compile must be"):
        ne.Sampler(model, 4, compile="max-autotune")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", ["euler", "heun", "euler-maruyama"])
def test_real_cuda_graphs_give_the_eager_samples(solver):
    from conftest import randomized

    from nag_engine.models import DiT

    torch.manual_seed(0)
    model = randomized(
        DiT(
            input_size=8,
            patch_size=2,
            in_channels=4,
            hidden_size=64,
            depth=2,
            num_heads=2,
            num_classes=10,
        )
    ).cuda()
    kw = dict(solver=solver, cfg_scale=1.5, nag_scale=0.5, nag_interval=(0.0, 0.6))
    y = torch.arange(12, device="cuda") % 10
    eager = ne.Sampler(model, 6, cuda_graphs=False, **kw).sample(12, y=y, progress=False)
    sampler = ne.Sampler(model, 6, cuda_graphs=True, **kw)
    graphed_x = sampler.sample(12, y=y, progress=False)
    assert sampler.graph_status().startswith("CUDA graphs (2 captured")  # two pass sets
    torch.testing.assert_close(graphed_x, eager, rtol=1e-4, atol=1e-4)
