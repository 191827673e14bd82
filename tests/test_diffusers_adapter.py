"""nag_engine.models.DiffusersDiT: diffusers' DiTTransformer2DModel in the model protocol
(eps on the discrete DDPM schedule, timestep tau at t = (tau + 1) / 1000, null class for dropped
rows, learned variance dropped), checked against the transformer's own call."""

from __future__ import annotations

import pytest
import torch

import nag_engine as ne
from nag_engine.models import DiffusersDiT

diffusers = pytest.importorskip("diffusers")
from test_diffusers_models import tiny_dit  # noqa: E402  (needs diffusers)


@pytest.fixture
def transformer():  # (a fresh model per test: a wrapper changes its model in place)
    return tiny_dit()


def test_forward_is_the_transformers_eps_half(transformer):
    model = DiffusersDiT(transformer)
    assert (model.prediction, model.schedule, model.num_classes) == ("eps", "vp-discrete", 10)
    assert model.sample_shape == (4, 8, 8) and not model.supports_noise_dropout
    x, tau = torch.randn(3, 4, 8, 8), torch.tensor([49, 499, 899])
    t = (tau + 1) / 1000
    y, drop_y = torch.tensor([1, 2, 3]), torch.tensor([False, True, False])
    with torch.no_grad():
        got = model(x, t, y, drop_y=drop_y)
        labels = torch.tensor([1, 10, 3])  # 10 = the null class
        expected = transformer(x, timestep=tau, class_labels=labels).sample[:, :4]
        unconditional = model(x, t)
        null = transformer(x, timestep=tau, class_labels=torch.full((3,), 10)).sample[:, :4]
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(unconditional, null)


def test_it_samples_with_cfg_and_refuses_nag_before_a_finetune(transformer):
    model = DiffusersDiT(transformer)
    x = ne.sample(
        model, 4, 5, y=torch.tensor([0, 1, 2, 3]), cfg_scale=2.0, solver="ddim", progress=False
    )
    assert x.shape == (4, 4, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="noise-condition dropout"):
        ne.Sampler(model, 5, nag_scale=0.5)
    with pytest.raises(TypeError, match="class-conditional"):
        DiffusersDiT(torch.nn.Linear(2, 2))


def test_the_diffusers_benchmark_rows(capsys):
    from benchmarks import sampling

    assert sampling.main(["--tiny", "--variants", "a", "--diffusers", "--reps", "1"]) == 0
    table = capsys.readouterr().out
    assert "(e) diffusers DiTPipeline (CFG)" in table and "vs (e)" in table
