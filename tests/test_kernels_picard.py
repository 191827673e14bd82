"""The fused Picard update (Triton; TRITON_INTERPRET=1 on CPU) equals its torch reference, a
whole parallel run through it equals one through the reference, and it refuses tensors that are
not on the state's device (or CPU tensors outside the interpreter) by name."""

from __future__ import annotations

import pytest
import torch

from nag_engine import backends
from nag_engine.backends.reference import picard_update_reference
from nag_engine.models import ring_mixture
from nag_engine.parallel import ParallelSampler

pytest.importorskip("triton")
from nag_engine.kernels.picard import picard_update  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def window(length, passes, batch, shape, dtype, noisy, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {
        "out": torch.randn(length, passes, batch, *shape, generator=g).to(dtype),
        "weights": torch.randn(length, passes, generator=g),
        "a": 1 + 0.1 * torch.randn(length, generator=g),
        "b": torch.randn(length, generator=g),
        "c": torch.rand(length, generator=g),
        "xs": torch.randn(length + 1, batch, *shape, generator=g),
        "z": torch.randn(length, batch, *shape, generator=g) if noisy else None,
    }
    return {k: v.to(DEVICE) if v is not None else None for k, v in t.items()}


def both(t):
    results = []
    for fn in (picard_update, picard_update_reference):
        xs = t["xs"].clone()
        change = fn(t["out"], t["weights"], t["a"], t["b"], t["c"], xs, t["z"])
        results.append((xs, change))
    return results


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("passes", [1, 2, 3, 4])
@pytest.mark.parametrize("noisy", [False, True])
def test_kernel_equals_reference(dtype, passes, noisy):
    t = window(5, passes, 3, (7,), DTYPES[dtype], noisy, seed=passes)
    (xs1, c1), (xs2, c2) = both(t)
    torch.testing.assert_close(xs1, xs2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c1, c2, rtol=1e-4, atol=1e-6)
    assert torch.equal(xs1[0], t["xs"][0])  # the window's start is never written


@pytest.mark.parametrize("shape", [(1,), (2, 3, 5), (1500,)])  # 1500: two blocks per sample
@pytest.mark.parametrize("length", [1, 4])
def test_odd_shapes_and_window_lengths(shape, length):
    t = window(length, 3, 2, shape, torch.bfloat16, True, seed=len(shape))
    (xs1, c1), (xs2, c2) = both(t)
    torch.testing.assert_close(xs1, xs2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c1, c2, rtol=1e-4, atol=1e-6)


def test_bad_input_is_refused():
    t = window(3, 2, 2, (4,), torch.float32, False)
    with pytest.raises(ValueError, match="contiguous float32"):
        picard_update(t["out"], t["weights"], t["a"], t["b"], t["c"], t["xs"][:3])
    with pytest.raises(ValueError, match="weights"):
        picard_update(t["out"], t["weights"][:, :1], t["a"], t["b"], t["c"], t["xs"])


@pytest.mark.parametrize("moved", ["out", "weights", "a", "b", "c", "z"])
def test_every_tensor_must_be_on_the_states_device(moved):
    """A tensor on another device than xs is refused by name before the launch (on a GPU a CPU
    tensor otherwise fails inside Triton: "Pointer argument (at 0) cannot be accessed")."""
    t = window(3, 2, 2, (4,), torch.float32, True)
    t[moved] = t[moved].to("meta")
    with pytest.raises(ValueError, match=rf"^{moved} is on meta but xs on {t['xs'].device}"):
        picard_update(t["out"], t["weights"], t["a"], t["b"], t["c"], t["xs"], t["z"])


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    """Outside TRITON_INTERPRET=1 (a GPU machine) CPU tensors cannot reach the kernel."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    t = {
        k: None if v is None else v.cpu()
        for k, v in window(3, 2, 2, (4,), torch.float32, False).items()
    }
    with pytest.raises(ValueError, match="needs CUDA tensors.*got xs on cpu"):
        picard_update(t["out"], t["weights"], t["a"], t["b"], t["c"], t["xs"])


def recording_devices(monkeypatch) -> list[dict[str, torch.device]]:
    """Make every Picard implementation the parallel sampler picks record the device of each
    tensor argument it is called with; returns the list the calls are appended to."""
    calls: list[dict[str, torch.device]] = []
    original = backends.picard_implementation

    def recording(name):
        update = original(name)

        def record(out, weights, a, b, c, xs, z=None):
            named = dict(out=out, weights=weights, a=a, b=b, c=c, xs=xs, z=z)
            calls.append({k: v.device for k, v in named.items() if v is not None})
            return update(out, weights, a, b, c, xs, z)

        return record

    monkeypatch.setattr(backends, "picard_implementation", recording)
    return calls


@pytest.mark.parametrize("solver", ["euler", "ddpm"])
def test_a_parallel_run_through_the_kernel_equals_the_reference_run(solver, monkeypatch):
    model = ring_mixture(8, num_classes=4, time_points=64).to(DEVICE)
    calls = recording_devices(monkeypatch)
    runs = []
    for backend in ("triton", "reference"):  # the Picard update follows the step's backend
        runner = ParallelSampler(
            model,
            10,
            window=4,
            tolerance=0.1,
            solver=solver,
            cfg_scale=2.0,
            nag_scale=0.5,
            backend=backend,
        )
        assert runner.picard_backend == backend and runner.plan.device.type == DEVICE
        x, stats = runner.run(16, y=torch.arange(16) % 4, seed=2, progress=False)
        runs.append((x, stats.iterations))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-5)
    assert runs[0][1] == runs[1][1]
    # every tensor reached the Picard update on the state's device (z: ddpm is stochastic)
    assert len(calls) == runs[0][1] + runs[1][1]
    arguments = {"out", "weights", "a", "b", "c", "xs"} | ({"z"} if solver == "ddpm" else set())
    for devices in calls:
        assert set(devices) == arguments
        assert set(devices.values()) == {runner.plan.device}
