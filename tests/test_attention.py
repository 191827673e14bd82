"""DiT attention backends: SDPA and xformers' memory-efficient attention (a stand-in module
with xformers' [B, N, heads, head_dim] layout where xformers is not installed) give the same
outputs; errors name the fix."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from conftest import small_dit

from nag_engine.models import dit as dit_module


def reference_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v on [B, N, heads, head_dim] tensors, written out."""
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), v)


@pytest.fixture
def fake_xformers(monkeypatch):
    calls = {"n": 0}

    def memory_efficient_attention(q, k, v):
        calls["n"] += 1
        return reference_attention(q, k, v)

    ops = types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention)
    monkeypatch.setitem(sys.modules, "xformers", types.SimpleNamespace(ops=ops))
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(dit_module, "_OPTIONAL_IMPORTS", {})  # forget earlier import attempts
    return calls


def small(attention="sdpa"):
    return small_dit(attention=attention)


def test_xformers_layout_gives_the_sdpa_outputs(fake_xformers):
    model = small()
    x, t, y = torch.randn(3, 2, 8, 8), torch.rand(3), torch.tensor([0, 1, 3])
    with torch.no_grad():
        sdpa = model(x, t, y)
        model.set_attention("xformers")
        xformers = model(x, t, y)
    assert fake_xformers["n"] == 2  # one call per block
    torch.testing.assert_close(xformers, sdpa, rtol=1e-4, atol=1e-5)
    assert model.config["attention"] == "xformers"
    # "auto" takes xformers on CUDA tensors only
    model.set_attention("auto")
    with torch.no_grad():
        model(x, t, y)
    assert fake_xformers["n"] == (4 if x.is_cuda else 2)


def test_missing_xformers_and_unknown_backends_are_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)  # import fails
    monkeypatch.setattr(dit_module, "_OPTIONAL_IMPORTS", {})  # forget earlier import attempts
    with pytest.raises(ValueError, match="needs the xformers package"):
        small("xformers")
    with pytest.raises(ValueError, match="needs the xformers package"):
        small().set_attention("xformers")
    assert small("auto").blocks[0].attn._uses_xformers(torch.zeros(1, 1, 48)) is False
    with pytest.raises(ValueError, match="attention must be one of"):
        small().set_attention("flash")
