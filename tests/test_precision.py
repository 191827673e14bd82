"""Mixed precision: the model runs in bf16 / fp16, the solver state, times and coefficients
stay float32 (computed in float64), and the samples match the fp32 run on the exact mixture."""

from __future__ import annotations

import pytest
import torch
from conftest import N_SAMPLES, mode_statistics

import nag_engine as ne
from nag_engine.models import ring_mixture


class Spy(torch.nn.Module):
    """The mixture, recording the dtypes and times it is called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []
        for name in ("prediction", "schedule", "num_classes", "supports_noise_dropout"):
            setattr(self, name, getattr(inner, name))
        self.sample_shape = (2,)

    def forward(self, x, t, y=None, *, drop_t=None, drop_y=None):
        self.seen.append((x.dtype, t.dtype, t[0].item()))
        return self.inner(x, t, y, drop_t=drop_t, drop_y=drop_y)


@pytest.fixture(scope="module")
def mixture():
    return ring_mixture(8, radius=2.0, std=0.25, num_classes=4, time_points=64)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_samples_match_fp32_on_the_exact_mixture(
    mixture, dtype, calibrated_tolerances
):
    y = torch.arange(N_SAMPLES) % 4
    kw = dict(y=y, solver="heun", cfg_scale=1.5, nag_scale=0.5, seed=1, progress=False)
    fp32 = ne.sample(mixture, N_SAMPLES, 12, **kw)
    low = ne.sample(mixture, N_SAMPLES, 12, dtype=dtype, **kw)
    assert low.dtype == torch.float32
    # per sample: the model's rounding moves each sample a little (bf16 has 8 bits)
    err = (low - fp32).norm(dim=1)
    assert float(err.median()) < (0.02 if dtype == "bf16" else 0.003)
    # as a distribution: the same modes, means and spreads
    a, b = mode_statistics(mixture, fp32), mode_statistics(mixture, low)
    assert abs(a["mean_err"] - b["mean_err"]) < calibrated_tolerances["mean_err"]
    assert abs(a["std_err"] - b["std_err"]) < calibrated_tolerances["std_err"]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_times_and_coefficients_are_never_rounded_to_the_model_dtype(mixture, dtype):
    spy = Spy(mixture)
    sampler = ne.Sampler(spy, 7, solver="heun", dtype=dtype, time_shift=3.0)
    sampler.sample(5, progress=False)
    wanted = ne.dtypes.dtype_from_name(dtype)
    assert {s[0] for s in spy.seen} == {wanted}  # the model input is in the model's dtype
    assert {s[1] for s in spy.seen} == {torch.float32}  # its times are not
    expected = torch.tensor(sampler.stages.t, dtype=torch.float64).float()
    assert torch.equal(torch.tensor([s[2] for s in spy.seen]), expected)
    assert sampler.plan.tables.coef.dtype == sampler.plan.tables.weights.dtype == torch.float32
    # and the float32 times differ from what the model dtype would have made of them
    assert not torch.equal(expected, expected.to(wanted).float())
