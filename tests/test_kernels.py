"""The fused guidance + solver step: every kernel equals the torch reference.

The kernels under test are those that run here: on a machine without a GPU, the Triton kernel
on CPU tensors under TRITON_INTERPRET=1 (set in conftest.py) and the C++ kernel of
nag_engine._C; on a GPU machine, Triton and the CUDA kernel on CUDA tensors."""

from __future__ import annotations

import math
import os
import sys
from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nag_engine import Sampler, backends
from nag_engine.guidance import combine_reference
from nag_engine.models import MLPDenoiser
from nag_engine.models.analytic import ring_mixture

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def kernels_for(device: str) -> list[str]:
    """The fused-step kernels that run here on `device` tensors (the C++ one on CPU tensors
    only, the CUDA one on CUDA tensors only)."""
    return [
        name
        for name in ("triton", "cuda", "cpp")
        if backends.available()[name].startswith("yes")
        and (name == "triton" or (name == "cuda") == (device == "cuda"))
    ]


def native_binding_skip_reason() -> Optional[str]:
    """Why the direct test of nag_engine._C's C++ binding cannot run here, or None: it takes
    CPU tensors, so it runs wherever the extension imports, GPU machine or not."""
    why = backends.available()["cpp"]
    return None if why == "yes" else why


KERNELS = kernels_for(DEVICE)
if not KERNELS:
    pytest.skip("no fused-step kernel runs here", allow_module_level=True)


@pytest.fixture(params=KERNELS)
def kernel(request):
    """(name, fused-step function) of each kernel that runs on DEVICE tensors here."""
    return request.param, backends.implementation(request.param)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# solver forms: (keep, uses g_prev, uses z, hands on g + d x with d != 0)
FORMS = {
    "euler": (True, False, False, False),
    "heun-predictor": (False, False, False, False),
    "multistep": (True, True, False, False),
    "dpm-multistep": (True, True, False, True),
    "sde": (True, False, True, False),
    "all": (True, True, True, True),
}


def case(passes, dtype, n, form, slots=2, seed=0, shape=None, device=DEVICE):
    """Random inputs of one step on `device`, and the number of next-input slots."""
    g = torch.Generator().manual_seed(seed)
    shape = shape or (n,)
    keep, uses_prev, uses_z, uses_d = FORMS[form]
    stages = 3
    weights = torch.randn(stages, 4, generator=g)
    coef = torch.randn(stages, 5, generator=g)
    coef[:, 4] = float(keep)
    inputs = {
        "out": torch.randn(passes, *shape, generator=g).to(dtype),
        "weights": weights,
        "coef": coef,
        "stage": torch.tensor(1, dtype=torch.int32),
        "x": torch.randn(*shape, generator=g),
        "g_prev": torch.randn(*shape, generator=g) if uses_prev else None,
        "z": torch.randn(*shape, generator=g) if uses_z else None,
    }
    d = torch.randn(stages, 1, generator=g) if uses_d else torch.zeros(stages, 1)
    inputs["coef"] = torch.cat([coef, d], dim=1)  # COEF_COLUMNS: a, b, b2, c, keep, d
    inputs = {k: v.to(device) if v is not None else None for k, v in inputs.items()}
    return inputs, slots


def run(fn, inputs, slots, dtype):
    x = inputs["x"].clone()
    g_out = torch.empty_like(x)
    next_input = torch.empty(slots, *x.shape, dtype=dtype, device=x.device)
    fn(
        inputs["out"],
        inputs["weights"],
        inputs["coef"],
        inputs["stage"],
        x,
        g_prev=inputs["g_prev"],
        z=inputs["z"],
        g_out=g_out,
        next_input=next_input,
    )
    return x, g_out, next_input


def assert_same(fused_step, inputs, slots, dtype):
    x1, g1, n1 = run(fused_step, inputs, slots, dtype)
    x2, g2, n2 = run(backends.reference_step, inputs, slots, dtype)
    torch.testing.assert_close(x1, x2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-5)
    # the next input is x_out rounded to the model's dtype: equal up to one rounding step of
    # its own size (not the state's: a stage that keeps the old state can grow x_out past it)
    scale = float(n2.float().abs().amax()) if n2.numel() else 0.0
    ulp = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps * scale
    torch.testing.assert_close(n1.float(), n2.float(), rtol=0, atol=max(ulp, 1e-5))


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("passes", [1, 2, 3, 4])
def test_kernel_equals_reference(kernel, passes, dtype, form):
    inputs, slots = case(passes, DTYPES[dtype], 1023, form)
    assert_same(kernel[1], inputs, slots, DTYPES[dtype])


@pytest.mark.parametrize("n", [1, 7, 1023, 4097])
@pytest.mark.parametrize("slots", [0, 1, 3])
def test_odd_sizes_and_slot_counts(kernel, n, slots):
    inputs, _ = case(3, torch.bfloat16, n, "all", seed=n)
    assert_same(kernel[1], inputs, slots, torch.bfloat16)


@pytest.mark.parametrize("moved", ["out", "weights", "coef", "stage", "g_prev", "z"])
def test_every_tensor_must_be_on_the_states_device(kernel, moved):
    """A tensor on another device than the state is refused by name before the launch (on a
    GPU a CPU tensor otherwise fails inside the launch, or inside Triton without a name)."""
    inputs, slots = case(2, torch.float32, 16, "all")
    inputs[moved] = inputs[moved].to("meta")
    with pytest.raises(ValueError, match=rf"^{moved} is on meta but x on {DEVICE}"):
        run(kernel[1], inputs, slots, torch.float32)


def test_keep_false_leaves_the_state_but_writes_the_next_input(kernel):
    fused_step = kernel[1]
    inputs, slots = case(2, torch.float32, 100, "heun-predictor")
    before = inputs["x"].clone()
    x, _, next_input = run(fused_step, inputs, slots, torch.float32)
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    assert not torch.allclose(next_input[0], before)


def test_g_out_is_g_plus_d_times_the_state_read(kernel):
    """g_out = g + d x with x the state before the update, also when the state is updated in
    place and g_out overwrites g_prev (how the sampler calls a multistep solver)."""
    fused_step = kernel[1]
    inputs, slots = case(3, torch.bfloat16, 1000, "dpm-multistep")
    a, b, b2, _, _, d = inputs["coef"][1].tolist()
    assert d != 0.0 and b2 != 0.0
    x, g_prev = inputs["x"].clone(), inputs["g_prev"].clone()
    args = (inputs["out"], inputs["weights"], inputs["coef"], inputs["stage"], x)
    fused_step(*args, g_prev=g_prev, g_out=g_prev)
    g = combine_reference(list(inputs["out"]), inputs["weights"][1, :3].tolist())
    expected_x = a * inputs["x"] + b * g + b2 * inputs["g_prev"]
    torch.testing.assert_close(x, expected_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_prev, g + d * inputs["x"], rtol=1e-5, atol=1e-5)


# the Triton interpreter evaluates both sides of tl.where: 0 * inf warns in numpy
@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")
@pytest.mark.parametrize("form", ["multistep", "all"])
def test_d_zero_hands_on_exactly_g(form):
    """With d = 0, g_out is the guided prediction g itself, as before the d column existed: bit
    for bit on CPU (where the kernels form g like the reference; CUDA may fuse multiply-adds),
    and no NaN from 0 * inf where the state is infinite."""
    inputs, slots = case(3, torch.float16, 1023, form)
    inputs["coef"][:, 5] = 0.0
    inputs["x"][5], inputs["x"][700] = math.inf, -math.inf
    g = combine_reference(list(inputs["out"]), inputs["weights"][1, :3].tolist())
    assert torch.isfinite(g).all()
    for fused_step in [backends.reference_step] + [backends.implementation(k) for k in KERNELS]:
        _, g_out, _ = run(fused_step, inputs, slots, torch.float16)
        if DEVICE == "cpu":
            assert torch.equal(g_out, g), fused_step.__name__
        else:
            torch.testing.assert_close(g_out, g, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("counter", [torch.int32, torch.int64])
def test_stage_counter_selects_the_row(kernel, counter):
    fused_step = kernel[1]
    inputs, slots = case(2, torch.float32, 64, "all")
    results = []
    for stage in range(3):
        inputs["stage"] = torch.tensor(stage, dtype=counter, device=DEVICE)
        results.append(run(fused_step, inputs, slots, torch.float32)[0])
        assert_same(fused_step, inputs, slots, torch.float32)
    assert not torch.allclose(results[0], results[1])


def test_tables_with_a_row_stride(kernel):
    """Coefficient and weight tables that are views of wider tables are read by row stride."""
    inputs, slots = case(3, torch.float32, 64, "all")
    wide = torch.randn(3, 8, device=DEVICE)
    wide[:, :6] = inputs["coef"]
    inputs["coef"] = wide[:, :6]
    wide_w = torch.randn(3, 7, device=DEVICE)
    wide_w[:, :4] = inputs["weights"]
    inputs["weights"] = wide_w[:, :4]
    assert inputs["coef"].stride(0) == 8 and inputs["weights"].stride(0) == 7
    assert_same(kernel[1], inputs, slots, torch.float32)


def test_non_contiguous_inputs_and_channels_last(kernel):
    fused_step = kernel[1]
    g = torch.Generator().manual_seed(3)
    inputs, slots = case(2, torch.float16, 0, "all", shape=(3, 4, 5, 6))
    # a strided view of a bigger tensor, and noise in another layout
    big = torch.randn(2, 3, 4, 5, 12, generator=g).to(torch.float16).to(DEVICE)
    inputs["out"] = big[..., ::2]
    inputs["z"] = inputs["z"].transpose(2, 3).contiguous().transpose(2, 3)
    assert not inputs["out"].is_contiguous() and not inputs["z"].is_contiguous()
    assert_same(fused_step, inputs, slots, torch.float16)
    # a channels-last state with channels-last outputs
    last = {k: v for k, v in inputs.items()}
    last["x"] = inputs["x"].to(memory_format=torch.channels_last)
    x = last["x"].clone(memory_format=torch.channels_last)
    g_out = torch.empty_like(x)
    next_input = torch.empty(2, *x.shape, dtype=torch.float16, device=x.device)
    next_input = next_input.as_strided(next_input.shape, (x.numel(), *x.stride()))
    fused_step(
        last["out"],
        last["weights"],
        last["coef"],
        last["stage"],
        x,
        g_prev=last["g_prev"],
        z=last["z"],
        g_out=g_out,
        next_input=next_input,
    )
    x_ref, g_ref, _ = run(backends.reference_step, inputs, slots, torch.float16)
    torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused(kernel):
    fused_step = kernel[1]
    inputs, slots = case(2, torch.float32, 16, "euler")
    with pytest.raises(ValueError, match="1 <= P <= 4"):
        fused_step(
            inputs["out"].repeat(3, 1),
            inputs["weights"],
            inputs["coef"],
            inputs["stage"],
            inputs["x"],
        )
    with pytest.raises(ValueError, match="float32"):
        fused_step(
            inputs["out"], inputs["weights"], inputs["coef"], inputs["stage"], inputs["x"].double()
        )
    with pytest.raises(ValueError, match=r"coef \[stages, 6\]"):
        fused_step(
            inputs["out"], inputs["weights"], inputs["coef"][:, :5], inputs["stage"], inputs["x"]
        )
    with pytest.raises(ValueError, match="strides"):
        fused_step(
            inputs["out"],
            inputs["weights"],
            inputs["coef"],
            inputs["stage"],
            inputs["x"],
            g_out=torch.empty(32, device=DEVICE)[::2],
        )


@settings(max_examples=25, deadline=None)
@given(
    passes=st.integers(1, 4),
    n=st.integers(1, 300),
    form=st.sampled_from(list(FORMS)),
    dtype=st.sampled_from(list(DTYPES)),
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_reference_property(passes, n, form, dtype, seed):
    inputs, slots = case(passes, DTYPES[dtype], n, form, seed=seed)
    for name in KERNELS:
        assert_same(backends.implementation(name), inputs, slots, DTYPES[dtype])


@pytest.mark.parametrize("solver", ["euler", "heun", "euler-maruyama", "ddim", "dpm++2m"])
def test_sampling_gives_the_same_samples_on_every_backend(solver):
    torch.manual_seed(0)
    model = MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=3).to(DEVICE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    runs = {}
    for name in ("reference", *KERNELS):
        sampler = Sampler(model, 6, solver=solver, cfg_scale=1.5, nag_scale=0.5, backend=name)
        assert sampler.backend == name
        runs[name] = sampler.sample(32, y=1, seed=4, progress=False)
    for name in KERNELS:
        torch.testing.assert_close(runs[name], runs["reference"], rtol=1e-5, atol=1e-5)


def test_backend_selection(monkeypatch):
    assert backends.select("cpu", "reference") == "reference"
    with pytest.raises(ValueError, match="unknown backend"):
        backends.select("cpu", "fortran")
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.select(DEVICE) == "reference"
    monkeypatch.delenv(backends.ENV_VAR)
    have = {name for name, why in backends.available().items() if why.startswith("yes")}
    if DEVICE == "cuda":
        auto = "triton" if "triton" in have else ("cuda" if "cuda" in have else "reference")
    else:
        auto = "cpp" if "cpp" in have else "reference"
    assert backends.select(DEVICE) == auto
    assert set(backends.available()) == set(backends.BACKENDS)
    with pytest.raises(ValueError, match="backend"):
        Sampler(ring_mixture(4), 3, backend="fortran")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        backends.select("cpu", "cuda")


def test_auto_falls_back_in_order(monkeypatch):
    from nag_engine.backends import native

    monkeypatch.setattr(backends, "_triton_status", lambda: "ImportError: no triton")
    monkeypatch.setattr(native, "status", lambda: {"cpp": None, "cuda": None})
    assert backends.select("cpu") == "cpp"
    assert backends.select("cuda") == "cuda"
    monkeypatch.setattr(native, "status", lambda: {"cpp": "not built", "cuda": "not built"})
    assert backends.select("cpu") == "reference"
    assert backends.select("cuda") == "reference"
    assert backends.available()["cpp"] == "not built"
    with pytest.raises(ValueError, match="not built"):
        backends.select("cpu", "cpp")
    with pytest.raises(ValueError, match="no triton"):
        backends.select("cuda", "triton")


def test_native_extension_is_built_where_required():
    """CI installs with NAG_ENGINE_REQUIRE_EXT=1: there the C++ kernel must be importable."""
    if os.environ.get("NAG_ENGINE_REQUIRE_EXT") != "1":
        pytest.skip("NAG_ENGINE_REQUIRE_EXT is not set")
    assert backends.available()["cpp"] == "yes"


def test_the_binding_test_runs_wherever_the_extension_is_built(monkeypatch):
    """On a GPU machine the C++ kernel is not among the kernels for DEVICE tensors, but its
    binding test (CPU tensors) must still run there when nag_engine._C imports (issue 17: it
    skipped saying "not built" next to a built extension); where _C is missing, the skip gives
    the import's own reason."""
    from nag_engine.backends import native

    monkeypatch.setattr(sys.modules[__name__], "DEVICE", "cuda")  # as on a GPU machine
    monkeypatch.setattr(native, "status", lambda: {"cpp": None, "cuda": None})
    assert "cpp" not in kernels_for("cuda")
    assert native_binding_skip_reason() is None
    missing = "nag_engine._C is not built (ImportError: no _C); reinstall with ..."
    monkeypatch.setattr(native, "status", lambda: {"cpp": missing, "cuda": missing})
    assert native_binding_skip_reason() == missing


def test_native_binding_checks_its_arguments():
    """A direct call of nag_engine._C (without the Python wrapper's checks) cannot read past an
    array."""
    reason = native_binding_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from nag_engine import _C

    inputs, _ = case(2, torch.float32, 16, "euler", device="cpu")  # the C++ binding's tensors
    args = [inputs[k] for k in ("out", "weights", "coef", "stage", "x")]
    with pytest.raises(RuntimeError, match="shape and strides"):
        _C.fused_step_cpu(*args, torch.empty(8), None, None, None, None)
    with pytest.raises(RuntimeError, match="past the end"):
        args[3] = torch.tensor(7, dtype=torch.int32)
        _C.fused_step_cpu(*args, inputs["x"].clone(), None, None, None, None)
    args[3] = inputs["stage"]
    args[2] = inputs["coef"][:, :5].contiguous()  # the table before the d column
    with pytest.raises(RuntimeError, match="6 columns"):
        _C.fused_step_cpu(*args, inputs["x"].clone(), None, None, None, None)
