"""Behavioural tests for the reference denoisers (MLPDenoiser, DiT) and their embeddings."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import nn

from nag_engine.models.dit import (
    DIT_CONFIGS,
    DiT,
    DiT_B_2,
    DiT_L_2,
    DiT_S_2,
    DiT_XL_2,
    gated_residual,
    get_2d_sincos_pos_embed,
    modulate,
)
from nag_engine.models.embeddings import TimestepEmbedder, timestep_embedding
from nag_engine.models.mlp import MLPDenoiser

NUM_CLASSES = 5
BATCH = 4


def tiny_mlp(num_classes: int | None = NUM_CLASSES) -> MLPDenoiser:
    return MLPDenoiser(dim=3, hidden=32, depth=2, num_classes=num_classes, time_embed_dim=16)


def tiny_dit(num_classes: int | None = NUM_CLASSES) -> DiT:
    return DiT(
        input_size=8,
        patch_size=2,
        in_channels=3,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=num_classes,
    )


FACTORIES: dict[str, Callable[[int | None], nn.Module]] = {"mlp": tiny_mlp, "dit": tiny_dit}


def perturbed(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Re-draw every parameter from N(0, std) so that zero-initialised layers become live."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def sample_x(model: nn.Module, batch: int = BATCH, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if isinstance(model, DiT):
        shape = (batch, model.in_channels, model.input_size, model.input_size)
    else:
        shape = (batch, model.dim)
    return torch.randn(shape, generator=gen)


def make(kind: str, conditional: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return perturbed(FACTORIES[kind](NUM_CLASSES if conditional else None))


KINDS = pytest.mark.parametrize("kind", ["mlp", "dit"])


# ------------------------------------------------------------------------------------------
# Protocol attributes, shapes, dtypes
# ------------------------------------------------------------------------------------------


@KINDS
@pytest.mark.parametrize("conditional", [True, False])
def test_output_shape_dtype_and_attributes(kind: str, conditional: bool) -> None:
    model = make(kind, conditional)
    assert model.supports_noise_dropout is True
    assert model.prediction == "velocity"
    assert model.schedule == "linear"
    assert model.num_classes == (NUM_CLASSES if conditional else None)
    x = sample_x(model)
    t = torch.rand(BATCH)
    y = torch.arange(BATCH) % NUM_CLASSES if conditional else None
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert out.abs().max() > 1e-3  # perturbed weights: not trivially zero
    assert torch.isfinite(out).all()


@KINDS
def test_fresh_model_outputs_zero(kind: str) -> None:
    """adaLN-Zero / zero final layer: an untrained model predicts exactly zero."""
    model = FACTORIES[kind](NUM_CLASSES)
    x = sample_x(model)
    with torch.no_grad():
        out = model(x, torch.rand(BATCH), torch.zeros(BATCH, dtype=torch.long))
    assert torch.equal(out, torch.zeros_like(x))


@KINDS
def test_scalar_t_is_broadcast(kind: str) -> None:
    model = make(kind)
    x = sample_x(model)
    with torch.no_grad():
        a = model(x, torch.tensor(0.3))
        b = model(x, torch.full((BATCH,), 0.3))
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------
# Null noise embedding (drop_t)
# ------------------------------------------------------------------------------------------


@KINDS
def test_drop_t_uses_null_embedding_regardless_of_t(kind: str) -> None:
    model = make(kind)
    x = sample_x(model)
    y = torch.arange(BATCH) % NUM_CLASSES
    drop_t = torch.tensor([True, False, True, False])
    t1 = torch.tensor([0.1, 0.2, 0.3, 0.4])
    t2 = torch.tensor([0.9, 0.2, 0.0, 0.4])  # differs from t1 only on dropped rows
    t3 = torch.tensor([0.1, 0.8, 0.3, 0.0])  # differs from t1 only on kept rows
    with torch.no_grad():
        out1 = model(x, t1, y, drop_t=drop_t)
        out2 = model(x, t2, y, drop_t=drop_t)
        out3 = model(x, t3, y, drop_t=drop_t)
    # Dropped rows ignore t entirely (bit-exact: the conditioning vector is identical).
    assert torch.equal(out1, out2)
    assert torch.equal(out1[drop_t], out3[drop_t])
    # Kept rows do depend on t.
    assert (out1[~drop_t] - out3[~drop_t]).abs().max() > 1e-4
    # Dropping every row gives a t-independent output.
    all_drop = torch.ones(BATCH, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(model(x, t1, y, drop_t=all_drop), model(x, t3, y, drop_t=all_drop))
    # The null embedding is not the embedding of the given t.
    with torch.no_grad():
        real = model(x, t1, y)
    assert (real[drop_t] - out1[drop_t]).abs().max() > 1e-4


def test_timestep_embedder_returns_null_embedding_on_dropped_rows() -> None:
    emb = perturbed(TimestepEmbedder(16, frequency_embedding_size=8))
    t = torch.tensor([0.0, 0.5, 1.0])
    drop = torch.tensor([True, False, True])
    with torch.no_grad():
        out = emb(t, drop)
        plain = emb(t)
    assert torch.equal(out[0], emb.null_embedding.detach())
    assert torch.equal(out[2], emb.null_embedding.detach())
    assert torch.equal(out[1], plain[1])
    assert isinstance(emb.null_embedding, nn.Parameter)


def test_timestep_embedding_is_float32_and_uses_t_times_1000() -> None:
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.bfloat16)
    emb = timestep_embedding(t, 8)
    assert emb.dtype == torch.float32
    assert emb.shape == (3, 8)
    # First cosine / sine frequency is 1: cos(t * 1000), sin(t * 1000).
    torch.testing.assert_close(emb[:, 0], torch.cos(t.float() * 1000))
    torch.testing.assert_close(emb[:, 4], torch.sin(t.float() * 1000))


# ------------------------------------------------------------------------------------------
# Null class (y=None / drop_y)
# ------------------------------------------------------------------------------------------


@KINDS
def test_y_none_equals_all_dropped_and_drop_y_ignores_label(kind: str) -> None:
    model = make(kind)
    x = sample_x(model)
    t = torch.rand(BATCH)
    y = torch.tensor([0, 1, 2, 3])
    y_other = torch.tensor([4, 1, 0, 3])  # differs only on rows 0 and 2
    drop_y = torch.tensor([True, False, True, False])
    with torch.no_grad():
        uncond = model(x, t, None)
        all_dropped = model(x, t, y, drop_y=torch.ones(BATCH, dtype=torch.bool))
        part = model(x, t, y, drop_y=drop_y)
        part_other = model(x, t, y_other, drop_y=drop_y)
        cond = model(x, t, y)
    assert torch.equal(uncond, all_dropped)
    assert torch.equal(part, part_other)
    assert torch.equal(part[drop_y], uncond[drop_y])
    assert torch.equal(part[~drop_y], cond[~drop_y])
    assert (cond[drop_y] - uncond[drop_y]).abs().max() > 1e-4  # labels matter


@KINDS
def test_rows_are_independent(kind: str) -> None:
    model = make(kind)
    x = sample_x(model)
    t = torch.tensor([0.1, 0.5, 0.7, 1.0])
    y = torch.tensor([0, 1, 2, 3])
    drop_t = torch.tensor([False, True, False, True])
    drop_y = torch.tensor([True, False, False, True])
    with torch.no_grad():
        batched = model(x, t, y, drop_t=drop_t, drop_y=drop_y)
        for i in range(BATCH):
            s = slice(i, i + 1)
            single = model(x[s], t[s], y[s], drop_t=drop_t[s], drop_y=drop_y[s])
            torch.testing.assert_close(single, batched[s], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# Argument validation
# ------------------------------------------------------------------------------------------


@KINDS
def test_y_on_unconditional_model_raises(kind: str) -> None:
    model = make(kind, conditional=False)
    x = sample_x(model)
    with pytest.raises(ValueError, match=r"\by\b"):
        model(x, torch.rand(BATCH), torch.zeros(BATCH, dtype=torch.long))
    # drop_y without y is accepted (and ignored) by an unconditional model.
    out = model(x, torch.rand(BATCH), drop_y=torch.ones(BATCH, dtype=torch.bool))
    assert out.shape == x.shape


@KINDS
def test_wrong_shapes_raise(kind: str) -> None:
    model = make(kind)
    x = sample_x(model)
    t = torch.rand(BATCH)
    with pytest.raises(ValueError, match=r"\bx\b"):
        model(x[..., :-1], t)
    with pytest.raises(ValueError, match=r"\bx\b"):
        model(x[0], t[:1])
    with pytest.raises(ValueError, match=r"\bt\b"):
        model(x, t[:2])
    with pytest.raises(ValueError, match="drop_t"):
        model(x, t, drop_t=torch.ones(BATCH))  # not bool
    with pytest.raises(ValueError, match="drop_y"):
        model(x, t, drop_y=torch.ones(BATCH + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\by\b"):
        model(x, t, torch.zeros(BATCH))  # float labels


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="prediction"):
        MLPDenoiser(2, prediction="noise")
    with pytest.raises(ValueError, match="attention"):
        DiT(input_size=8, hidden_size=32, depth=1, num_heads=2, attention="flash")
    with pytest.raises(ValueError):
        DiT(input_size=9, patch_size=2, hidden_size=32, depth=1, num_heads=2)


# ------------------------------------------------------------------------------------------
# Config round trip, dtypes
# ------------------------------------------------------------------------------------------


@KINDS
@pytest.mark.parametrize("conditional", [True, False])
def test_config_rebuilds_model(kind: str, conditional: bool) -> None:
    model = make(kind, conditional)
    config = json.loads(json.dumps(model.config))  # plain JSON-serialisable dict
    rebuilt = type(model)(**config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = sample_x(model)
    t = torch.rand(BATCH)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x, t), model(x, t))


def test_config_keeps_non_default_arguments() -> None:
    model = MLPDenoiser(4, hidden=16, depth=1, num_classes=3, prediction="eps", schedule="vp")
    assert model.config["prediction"] == "eps" and model.config["schedule"] == "vp"
    assert model.prediction == "eps" and model.schedule == "vp"
    dit = DiT_S_2(input_size=8, depth=1, num_classes=None, prediction="x0")
    assert dit.config["hidden_size"] == 384 and dit.config["num_classes"] is None
    assert dit.prediction == "x0"


@KINDS
def test_bf16_forward_close_to_fp32(kind: str) -> None:
    model = make(kind)
    x = sample_x(model)
    t = torch.rand(BATCH)
    y = torch.arange(BATCH) % NUM_CLASSES
    drop_t = torch.tensor([True, False, False, True])
    with torch.no_grad():
        ref = model(x, t, y, drop_t=drop_t)
        model_bf16 = make(kind).to(torch.bfloat16)
        out = model_bf16(x.to(torch.bfloat16), t, y, drop_t=drop_t)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05, f"relative bf16 error {err:.3g}"


# ------------------------------------------------------------------------------------------
# DiT specifics
# ------------------------------------------------------------------------------------------


def test_modulate_and_gated_residual() -> None:
    x = torch.randn(2, 3, 4)
    shift, scale, gate, y = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4), x.flip(0)
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None])
    torch.testing.assert_close(gated_residual(x, gate, y), x + gate[:, None] * y)


def test_pos_embed_is_fixed_buffer() -> None:
    model = tiny_dit()
    assert "pos_embed" in dict(model.named_buffers())
    assert all(name != "pos_embed" for name, _ in model.named_parameters())
    pe = get_2d_sincos_pos_embed(32, 4)
    assert pe.shape == (16, 32)
    torch.testing.assert_close(model.pos_embed[0], pe)
    assert len({tuple(row.tolist()) for row in pe}) == 16  # every position distinct


def test_unpatchify_inverts_patchify_layout() -> None:
    model = tiny_dit()
    p, c, g = model.patch_size, model.in_channels, model.grid_size
    img = torch.randn(2, c, g * p, g * p)
    # Reference patchify: token (i, j) holds the p x p x C patch, flattened as (p, q, c).
    tokens = img.reshape(2, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(2, g * g, p * p * c)
    assert torch.equal(model.unpatchify(tokens), img)


# Paper (Table 4 / appendix): DiT-S/2 33.0M, B/2 130.5M, L/2 458.1M, XL/2 675.1M parameters;
# "Gflops" 6.06, 23.01, 80.71, 118.64 at 32x32x4 latents.
PRESETS = [
    ("DiT-S/2", DiT_S_2, 33.0e6, 6.06e9),
    ("DiT-B/2", DiT_B_2, 130.5e6, 23.01e9),
    ("DiT-L/2", DiT_L_2, 458.1e6, 80.71e9),
    ("DiT-XL/2", DiT_XL_2, 675.1e6, 118.64e9),
]


@pytest.mark.parametrize(("name", "factory", "params", "paper_gflops"), PRESETS)
def test_presets_match_paper(
    name: str, factory: Callable[..., DiT], params: float, paper_gflops: float
) -> None:
    with torch.device("meta"):
        model = factory(num_classes=1000)
    assert model.pos_embed.is_meta
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params / params - 1) < 0.03, f"{name}: {n_params / 1e6:.1f}M params"
    assert {k: model.config[k] for k in DIT_CONFIGS[name]} == DIT_CONFIGS[name]
    # The paper's "Gflops" count multiply-accumulates; forward_flops counts 2 FLOPs per MAC.
    assert model.forward_flops() == 2 * model.forward_macs()
    assert abs(model.forward_macs() / paper_gflops - 1) < 0.10


def test_dit_xl_forward_flops() -> None:
    with torch.device("meta"):
        model = DiT_XL_2(input_size=32, in_channels=4, num_classes=1000)
    # 118.6 GMACs in the paper -> about 237 GFLOPs at 2 FLOPs per multiply-accumulate.
    assert abs(model.forward_flops() / (2 * 118.6e9) - 1) < 0.10


def test_preset_overrides() -> None:
    model = DiT_S_2(input_size=8, in_channels=2, depth=1, num_classes=7)
    assert model.config["depth"] == 1 and model.num_classes == 7
    assert model.hidden_size == 384
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        assert model(x, torch.rand(1), torch.tensor([3])).shape == x.shape


def test_the_models_implement_the_protocol():
    from nag_engine.models import (
        ARCHITECTURES,
        Denoiser,
        FunctionDenoiser,
        NoiseLevelHead,
        TrainableDenoiser,
        ring_mixture,
    )

    for model in (tiny_mlp(), tiny_dit(None)):
        assert isinstance(model, TrainableDenoiser)
    assert isinstance(ring_mixture(), Denoiser)
    plain = FunctionDenoiser(lambda x, t, y, drop_t, drop_y: x)
    assert isinstance(plain, Denoiser) and not isinstance(plain, TrainableDenoiser)
    assert not isinstance(nn.Linear(2, 2), Denoiser)
    # every registered architecture but the noise-level head is a trainable denoiser
    for name, cls in ARCHITECTURES.items():
        assert cls is NoiseLevelHead or hasattr(cls, "init_null_noise"), name
