"""Fused DiT hot paths (Triton) against the DiT's plain torch ops; TRITON_INTERPRET=1 on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 7, 48), (3, 16, 64), (2, 5, 130)])
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
