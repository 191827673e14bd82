"""Fused DiT hot paths (Triton) against the DiT's plain torch ops; TRITON_INTERPRET=1 on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import small_dit as conftest_small_dit

from nag_engine.models.dit import gated_residual as gated_reference
from nag_engine.models.dit import modulate

pytest.importorskip("triton")
from nag_engine.kernels.adaln import gated_residual, layernorm_modulate  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def tensors(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    batch, _, dim = shape
    x = (3 * torch.randn(shape, generator=g) + 1).to(dtype).to(DEVICE)
    per_sample = [torch.randn(batch, dim, generator=g).to(dtype).to(DEVICE) for _ in range(2)]
    return x, per_sample


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 7, 48), (3, 16, 64), (2, 5, 130), (3, 3, 1152)])
def test_layernorm_modulate_equals_the_dit_ops(shape, dtype):
    x, (shift, scale) = tensors(shape, DTYPES[dtype], sum(shape))
    got = layernorm_modulate(x, shift, scale, eps=1e-6)
    normed = F.layer_norm(x.float(), (shape[-1],), eps=1e-6)
    expected = modulate(normed, shift.float(), scale.float())
    assert got.dtype == x.dtype and got.shape == x.shape
    tol = TOL[DTYPES[dtype]]
    torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 7, 48), (2, 5, 130)])
def test_gated_residual_equals_the_dit_op(shape, dtype):
    x, (gate, _) = tensors(shape, DTYPES[dtype], 7)
    y = torch.randn(shape).to(DTYPES[dtype]).to(DEVICE)
    got = gated_residual(x, gate, y)
    expected = gated_reference(x.float(), gate.float(), y.float())
    tol = TOL[DTYPES[dtype]]
    torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol * 4)


def test_non_contiguous_inputs_and_bad_shapes():
    x, (shift, scale) = tensors((2, 6, 32), torch.float32, 1)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not xt.is_contiguous()
    torch.testing.assert_close(
        layernorm_modulate(xt, shift, scale), layernorm_modulate(x, shift, scale)
    )
    with pytest.raises(ValueError, match="tokens"):
        layernorm_modulate(x[0], shift, scale)
    with pytest.raises(ValueError, match="shift"):
        layernorm_modulate(x, shift[:, :5], scale)
    with pytest.raises(ValueError, match="y must"):
        gated_residual(x, shift, x[:, :3])


def test_row_strided_per_sample_views_are_read_in_place():
    """DiT passes chunks of its adaLN projection: [B, D] views with row stride 6 D."""
    x, _ = tensors((3, 5, 40), torch.bfloat16, 2)
    mod = torch.randn(3, 6 * 40).to(torch.bfloat16).to(DEVICE)
    shift, scale, gate = mod.chunk(6, dim=1)[:3]
    assert shift.stride() == (240, 1)
    torch.testing.assert_close(
        layernorm_modulate(x, shift, scale),
        layernorm_modulate(x, shift.contiguous(), scale.contiguous()),
        rtol=0,
        atol=0,
    )
    y = torch.randn_like(x)
    torch.testing.assert_close(
        gated_residual(x, gate, y), gated_residual(x, gate.contiguous(), y), rtol=0, atol=0
    )


def small_dit(seed=0):
    return conftest_small_dit(seed).to(DEVICE)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_dit_forward_through_the_fused_kernels_equals_the_plain_one(dtype):
    model = small_dit().to(DTYPES[dtype])
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, 8, 8, generator=g).to(DEVICE)
    t = torch.rand(3, generator=g).to(DEVICE)
    y = torch.tensor([0, 3, 1], device=DEVICE)
    drop_t = torch.tensor([False, True, False], device=DEVICE)
    with torch.no_grad():
        plain = model.set_fused_kernels("off")(x, t, y, drop_t=drop_t)
        fused = model.set_fused_kernels("on")(x, t, y, drop_t=drop_t)
    assert not torch.equal(plain, torch.zeros_like(plain))
    # fp32 statistics in the kernels vs a bf16 LayerNorm output in torch: bf16 rounding apart
    tol = 1e-4 if dtype == "fp32" else 0.1
    torch.testing.assert_close(fused.float(), plain.float(), rtol=tol, atol=tol)


def test_fused_dit_modes():
    model = small_dit()
    x, t = torch.randn(2, 2, 8, 8, device=DEVICE), torch.rand(2, device=DEVICE)
    with pytest.raises(ValueError, match="fused kernel mode"):
        model.set_fused_kernels("always")
    model.set_fused_kernels("on")
    with pytest.raises(RuntimeError, match="forward only"):
        model(x, t)  # autograd on
    # "auto" takes the plain path under autograd (training) and off CUDA: gradients flow
    model.set_fused_kernels("auto")
    model(x, t, torch.tensor([0, 1], device=DEVICE)).square().sum().backward()
    assert model.blocks[0].mlp[0].weight.grad is not None


def test_sampling_a_dit_with_fused_kernels_gives_the_same_samples():
    from nag_engine import Sampler

    model = small_dit(1)
    runs = {}
    for mode in ("off", "on"):
        model.set_fused_kernels(mode)
        sampler = Sampler(model, 2, solver="euler", cfg_scale=1.5, nag_scale=0.5)
        runs[mode] = sampler.sample(2, y=2, seed=3, progress=False)
    torch.testing.assert_close(runs["on"], runs["off"], rtol=1e-4, atol=1e-4)
