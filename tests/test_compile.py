"""torch.compile through the Triton kernels: the DiT's LayerNorm + adaLN and gated residual and
the fused step are torch operators (nag_engine::...), so a compiled forward or step has no graph
break and computes what the eager one does. On a machine without a GPU the kernels run on CPU
tensors under TRITON_INTERPRET=1 (conftest.py) and compile uses CPU backends (eager,
aot_eager)."""

from __future__ import annotations

import pytest
import torch
from conftest import small_dit

from nag_engine import Sampler, backends

pytest.importorskip("triton")
if not backends.available()["triton"].startswith("yes"):
    pytest.skip("the Triton kernels cannot run here", allow_module_level=True)

# importing the kernels registers the operators
from nag_engine.kernels import adaln, fused_step  # noqa: E402, F401

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPS = torch.ops.nag_engine
# a DiT small enough for the Triton interpreter: 2 x 2 tokens of width 32, one block
DIT = dict(input_size=4, depth=1, hidden_size=32, num_heads=2)


def dit_inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 2, 4, 4, generator=g).to(DEVICE)
    t = torch.rand(batch, generator=g).to(DEVICE)
    y = torch.arange(batch, device=DEVICE) % 4
    drop_t = torch.arange(batch, device=DEVICE) == 1
    return x, t, y, drop_t


def graph_ops(explanation) -> list[str]:
    """The nag_engine operators in the captured graphs, in order."""
    return [
        node.target.name()
        for graph in explanation.graphs
        for node in graph.graph.nodes
        if getattr(node.target, "namespace", None) == "nag_engine"
    ]


def test_the_dit_forward_with_its_triton_kernels_compiles_to_one_graph():
    torch._dynamo.reset()
    model = small_dit(**DIT).to(DEVICE).set_fused_kernels("on")
    x, t, y, drop_t = dit_inputs()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(x, t, y, drop_t=drop_t)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
        # the Triton path is in the graph: the block's two norms and two gated residuals, then
        # the final layer's norm
        ops = ["layernorm_modulate", "gated_residual"] * 2 + ["layernorm_modulate"]
        assert graph_ops(explanation) == [f"nag_engine::{op}" for op in ops]

        eager = model(x, t, y, drop_t=drop_t)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x, t, y, drop_t=drop_t), eager, rtol=1e-6, atol=1e-6)
        plain = model.set_fused_kernels("off")(x, t, y, drop_t=drop_t)
    torch.testing.assert_close(eager, plain, rtol=1e-4, atol=1e-4)
    assert not torch.equal(eager, torch.zeros_like(eager))


def step_case(in_place: bool, seed: int = 0):
    """Inputs of one fused step (3 passes, bf16 outputs, g_prev and z, 2 next-input slots).
    in_place: the state updated in place and g_out written over g_prev, as the sampler does."""
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, 4, 4)

    def randn(*size, dtype=torch.float32):
        return torch.randn(*size, generator=g).to(dtype).to(DEVICE)

    coef = randn(4, 6)
    coef[:, 4] = 1.0  # keep
    inputs = dict(
        out=randn(3, *shape, dtype=torch.bfloat16),
        weights=randn(4, 4),
        coef=coef,
        stage=torch.tensor(2, device=DEVICE),
        x=randn(*shape),
    )
    g_prev = randn(*shape)
    outputs = dict(
        g_prev=g_prev,
        z=randn(*shape),
        g_out=g_prev if in_place else torch.empty(shape, device=DEVICE),
        next_input=torch.zeros(2, *shape, dtype=torch.bfloat16, device=DEVICE),
    )
    if not in_place:
        outputs["x_new"] = torch.empty(shape, device=DEVICE)
    return inputs, outputs


def run_step(step, in_place: bool) -> list[torch.Tensor]:
    """The new state, g_out and next input of one step through `step`."""
    inputs, outputs = step_case(in_place)
    new_state = step(*inputs.values(), **outputs)
    assert new_state is (inputs["x"] if in_place else outputs["x_new"])
    return [new_state, outputs["g_out"], outputs["next_input"]]


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "separate-outputs"])
def test_the_fused_step_compiles_to_one_graph(in_place):
    torch._dynamo.reset()
    step = backends.implementation("triton")
    inputs, outputs = step_case(in_place)
    explanation = torch._dynamo.explain(step)(*inputs.values(), **outputs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert graph_ops(explanation) == ["nag_engine::fused_step"]

    eager = run_step(step, in_place)
    compiled = run_step(torch.compile(step, backend="aot_eager", fullgraph=True), in_place)
    for got, expected in zip(compiled, eager):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    reference = run_step(backends.reference_step, in_place)
    for got, expected in zip(eager[:2], reference[:2]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def adaln_case(dtype: torch.dtype):
    """Tokens [2, 5, 40] and per-sample chunks of an adaLN projection (row stride 6 D)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 40, generator=g).to(dtype).to(DEVICE)
    shift, scale, gate = torch.randn(2, 6 * 40, generator=g).to(dtype).to(DEVICE).chunk(6, 1)[:3]
    return x, shift, scale, gate, torch.randn(2, 5, 40, generator=g).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_operators_pass_opcheck(dtype):
    """Schemas (nothing written but the declared arguments), fake against real outputs, and
    tracing through AOT dispatch."""
    x, shift, scale, gate, y = adaln_case(dtype)
    torch.library.opcheck(OPS.layernorm_modulate.default, (x, shift, scale, 1e-6))
    torch.library.opcheck(
        OPS.gated_residual.default, (x.transpose(0, 1).contiguous().transpose(0, 1), gate, y)
    )
    inputs, outputs = step_case(in_place=False)
    args = (*inputs.values(), outputs["x_new"], outputs["g_prev"], outputs["z"])
    torch.library.opcheck(OPS.fused_step.default, (*args, outputs["g_out"], None))
    torch.library.opcheck(
        OPS.fused_step.default,
        (*args[:5], outputs["x_new"], None, None, None, outputs["next_input"]),
    )


def test_the_fake_implementations_give_the_output_shapes_without_running():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        # tokens [3, 7, 48] in another memory order, and row-strided per-sample views
        x = mode.from_tensor(torch.empty(7, 3, 48, dtype=torch.bfloat16, device=DEVICE))
        x = x.transpose(0, 1)
        per_sample = mode.from_tensor(torch.empty(3, 6 * 48, dtype=torch.bfloat16, device=DEVICE))
        shift, scale = per_sample[:, :48], per_sample[:, 48:96]
        for out in (
            OPS.layernorm_modulate(x, shift, scale, 1e-6),
            OPS.gated_residual(x, shift, x),
        ):
            assert isinstance(out, torch._subclasses.FakeTensor)
            assert out.shape == (3, 7, 48) and out.dtype == torch.bfloat16
            assert out.is_contiguous() and out.device == x.device


def test_the_operators_are_inference_only():
    x, shift, scale, _, _ = adaln_case(torch.float32)
    out = OPS.layernorm_modulate(x.requires_grad_(), shift, scale, 1e-6)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        out.sum().backward()


def test_sampling_with_compile_and_the_triton_dit_has_no_graph_break():
    """plan.py's compile option around the DiT with its Triton kernels on: fullgraph=True
    raises at the first graph break; the samples equal those of the eager run."""
    torch._dynamo.reset()
    model = small_dit(**DIT).to(DEVICE).set_fused_kernels("on")
    runs = {}
    for name, compile in (
        ("eager", False),
        ("compiled", {"backend": "aot_eager", "fullgraph": True}),
    ):
        sampler = Sampler(
            model,
            2,
            solver="euler",
            cfg_scale=1.5,
            nag_scale=0.5,
            compile=compile,
            backend="triton",
        )
        runs[name] = sampler.sample(2, y=1, seed=4, progress=False)
    torch.testing.assert_close(runs["compiled"], runs["eager"], rtol=1e-5, atol=1e-5)
