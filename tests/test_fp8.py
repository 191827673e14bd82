"""dtype="fp8": the transformer blocks' Linear layers in float8 with row-wise scales
(torch._scaled_mm, which runs on the CPU too), the rest of the model in bf16."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nag_engine as ne
from nag_engine.fp8 import Float8Linear, check_fp8_device, fp8_layer_names, to_fp8
from nag_engine.identity import plan_identity
from nag_engine.models import ring_mixture
from nag_engine.models.dit import DiT


def drawn_dit(seed: int = 0) -> DiT:
    """A small DiT with every weight drawn (no zero init, so every block changes the output)."""
    torch.manual_seed(seed)
    model = DiT(input_size=8, in_channels=4, hidden_size=64, depth=2, num_heads=2, num_classes=10)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.05)
    model.supports_noise_dropout = True
    return model.eval()


def psnr(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / ((x - reference) ** 2).mean()))


@pytest.mark.parametrize("rows", [1, 16, 37])  # 37: padded to 48 rows for _scaled_mm
def test_a_float8_linear_is_the_linear_to_float8_precision(rows):
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(rows, 64)
    exact = linear(x)
    out = Float8Linear(linear)(x)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 32)
    error = (out.float() - exact).abs().max() / exact.abs().max()
    assert error < 0.06  # e4m3 keeps 3 mantissa bits: ~3 % per element, less after the sum
    assert error > 0  # it did round: this is not the bf16 matmul


def test_leading_dimensions_are_kept():
    linear = nn.Linear(32, 16)
    x = torch.randn(2, 5, 32)
    assert Float8Linear(linear)(x).shape == (2, 5, 16)


def test_sizes_not_divisible_by_16_are_refused():
    with pytest.raises(ValueError, match="divisible by 16"):
        Float8Linear(nn.Linear(24, 16))


def test_only_the_blocks_attention_and_mlp_layers_are_converted():
    model = drawn_dit()
    names = fp8_layer_names(model)
    assert names == [
        f"blocks.{i}.{layer}"
        for i in range(2)
        for layer in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")
    ]
    converted = to_fp8(model)
    assert converted.fp8_layers == tuple(names)
    assert isinstance(converted.blocks[0].attn.qkv, Float8Linear)
    assert isinstance(converted.blocks[0].adaLN_modulation[1], nn.Linear)
    assert converted.t_embedder.mlp[0].weight.dtype == torch.bfloat16
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float32  # the given model is kept
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear)


def test_a_model_without_transformer_blocks_is_refused():
    with pytest.raises(ValueError, match="dtype='bf16'"):
        ne.Sampler(ring_mixture(4), 4, dtype="fp8")


def test_fp8_samples_stay_close_to_fp32_and_record_their_dtype():
    model = drawn_dit()
    y = torch.arange(16) % 10
    runs = {
        dtype: ne.Sampler(model, 8, cfg_scale=1.5, nag_scale=0.5, dtype=dtype).sample(
            16, y=y, seed=3, progress=False
        )
        for dtype in ("fp32", "bf16", "fp8")
    }
    assert psnr(runs["bf16"], runs["fp32"]) > psnr(runs["fp8"], runs["fp32"]) > 30
    assert not torch.equal(runs["fp8"], runs["bf16"])
    fp8 = ne.Sampler(model, 8, cfg_scale=1.5, nag_scale=0.5, dtype="fp8")
    assert fp8.dtype == torch.bfloat16 and plan_identity(fp8.plan)["dtype"] == "fp8"
    bf16 = ne.Sampler(model, 8, cfg_scale=1.5, nag_scale=0.5, dtype="bf16")
    assert plan_identity(bf16.plan)["dtype"] == "bfloat16"


def test_a_gpu_without_fp8_tensor_cores_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(ValueError, match="NVIDIA A100 has 8.0: use dtype='bf16'"):
        check_fp8_device(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_fp8_device(torch.device("cuda", 0))  # Hopper


def test_the_cli_samples_in_fp8(tmp_path, capsys):
    from nag_engine.checkpoints import save_checkpoint
    from nag_engine.cli import main

    path = tmp_path / "dit.safetensors"
    save_checkpoint(path, drawn_dit(), {"p_t": 0.2})
    out = tmp_path / "s.npz"
    args = ["sample", "--model", str(path), "--num-samples", "4", "--steps", "3", "--dtype",
            "fp8", "--out", str(out), "--no-png", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert out.exists() and "4 samples" in capsys.readouterr().out
