"""The benchmarks' plain-torch DiT (written like DiT's models.py, no project kernels) computes
the same function as the project DiT whose weights it loads, so the peer loops of
benchmarks/sampling.py time the same model."""

from __future__ import annotations

import pytest
import torch

from benchmarks.plain_dit import PlainDiT, plain_dit_from, plain_state_dict
from nag_engine.models import DiT
from nag_engine.models.embeddings import model_timestep

CONFIGS = {
    "tiny": dict(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=2),
    "patch 4, mlp 2": dict(input_size=16, patch_size=4, hidden_size=48, depth=1, num_heads=3),
}


def project_dit(**config) -> DiT:
    """A project DiT with every weight random (its adaLN-Zero layers start at zero) and null
    embeddings far from the rest, so each pass differs clearly."""
    torch.manual_seed(0)
    model = DiT(in_channels=4, num_classes=10, **config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        model.y_embedder.embedding_table.weight[-1].mul_(20)
        model.t_embedder.null_embedding.mul_(20)
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_plain_dit_equals_the_project_dit(name):
    config = dict(CONFIGS[name], mlp_ratio=2.0 if "mlp 2" in name else 4.0)
    model = project_dit(**config)
    plain = plain_dit_from(model)
    assert isinstance(plain, PlainDiT) and plain.pos_embed.shape == model.pos_embed.shape
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, *model.sample_shape, generator=gen)
    t = torch.rand(6, generator=gen)
    y = torch.randint(0, 10, (6,), generator=gen)
    null = torch.full_like(y, 10)
    drop_t = torch.tensor([False, True, False, True, False, True])
    drop_y = torch.tensor([False, False, True, True, False, False])
    tau = model_timestep(t)
    with torch.no_grad():
        cases = {
            "labels": (model(x, t, y), plain(x, tau, y)),
            "no labels (null class)": (model(x, t), plain(x, tau, null)),
            "labels dropped per row": (
                model(x, t, y, drop_y=drop_y),
                plain(x, tau, torch.where(drop_y, null, y)),
            ),
            "null noise per row": (
                model(x, t, y, drop_t=drop_t, drop_y=drop_y),
                plain(x, tau, torch.where(drop_y, null, y), drop_t),
            ),
        }
        different = model(x, t, y, drop_t=drop_t) - model(x, t, y)
    assert different.abs().max() > 0.1  # the null noise embedding changes the output
    for case, (expected, got) in cases.items():
        diff = float((expected - got).abs().max())
        assert diff <= 1e-5, f"{case}: max abs diff {diff}"


def test_the_state_dict_maps_every_name():
    model = project_dit(**CONFIGS["tiny"])
    state = plain_state_dict(model.state_dict())
    plain = PlainDiT(input_size=8, hidden_size=64, depth=2, num_heads=2, num_classes=10)
    assert set(state) == set(plain.state_dict())
    assert "blocks.1.mlp.fc2.bias" in state and "t_embedder.mlp.0.weight" in state


def test_the_plain_dit_keeps_the_dtype_and_refuses_other_conventions():
    model = project_dit(**CONFIGS["tiny"]).to(torch.bfloat16)
    assert plain_dit_from(model).blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="class-conditional"):
        plain_dit_from(DiT(input_size=8, hidden_size=64, depth=1, num_heads=2, num_classes=None))
    with pytest.raises(ValueError, match="1000 t"):
        plain_dit_from(DiT(input_size=8, hidden_size=64, depth=1, num_heads=2, time_offset=-1.0))
