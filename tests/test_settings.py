"""Named sampler settings, estimator resolution and the data-set reference."""

from __future__ import annotations

import pytest
import torch

from nag_engine import Sampler
from nag_engine.analysis.noise_level import ExactPosterior
from nag_engine.analysis.settings import (
    SETTINGS,
    DataSetReference,
    Scales,
    data_variance,
    resolve_estimator,
    setting_options,
)
from nag_engine.models import NoiseLevelHead
from nag_engine.models.analytic import ring_mixture
from nag_engine.training.data import load_dataset


def test_every_setting_builds_a_sampler_with_the_intended_options():
    model = ring_mixture(8, num_classes=8)
    exact = ExactPosterior(model)
    scales = Scales(cfg_scale=3.0, nag_scale=0.7, classifier_nag_scale=0.2, shift_window=0.1)
    for name in SETTINGS:
        sampler = Sampler(model, 4, **setting_options(name, scales, exact))
        parts = name.split("+")
        assert sampler.guidance.cfg_scale == (3.0 if "cfg" in parts else 1.0)
        assert sampler.guidance.nag_scale == (0.7 if "nag" in parts else 0.0)
        assert sampler.classifier_nag_scale == (0.2 if "cnag" in parts else 0.0)
        assert (sampler.plan.time_shift is not None) == (name == "time-shift")
    with pytest.raises(ValueError, match="unknown setting"):
        setting_options("cfg++", scales)
    with pytest.raises(ValueError, match="estimator"):
        setting_options("cnag", scales, None)


def test_resolve_estimator():
    model = ring_mixture(8, num_classes=8)
    assert isinstance(resolve_estimator("auto", "ring-exact", model, model), ExactPosterior)
    with pytest.raises(ValueError, match="no shipped noise-level head"):
        resolve_estimator("auto", "mine", model, None)
    assert isinstance(resolve_estimator("head", "digits", model, None), NoiseLevelHead)
    with pytest.raises(ValueError, match="mixture"):
        resolve_estimator("exact", "digits", model, None)


def test_data_set_reference_draws_the_requested_classes():
    data = load_dataset("digits")
    reference = DataSetReference(data)
    y = torch.tensor([3, 1, 3, 0, 9])
    x, labels = reference.sample_data(5, y=y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(labels, y) and x.shape == (5, 1, 8, 8)
    for row, label in zip(x, y):  # each drawn image is a real example of its class
        match = (data.x == row).flatten(1).all(1)
        assert match.any() and bool((data.y[match] == label).all())
    assert data_variance(reference) == pytest.approx(float(data.x.flatten(1).var(0).mean()))
    assert data_variance(None) is None
