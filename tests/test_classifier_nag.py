"""Classifier-based NAG in the sampler: the added term, its interval, stacking and errors."""

from __future__ import annotations

import pytest
import torch

from nag_engine import Sampler
from nag_engine.analysis.noise_level import ExactPosterior
from nag_engine.classifier_nag import ClassifierNAG
from nag_engine.models.analytic import random_mixture
from nag_engine.predictions import convert


@pytest.fixture(scope="module")
def mixture():
    return random_mixture(4, 3, num_classes=3, time_points=64)


def record(sampler: Sampler, n: int, **kwargs) -> list:
    """(t, x, prediction) at the start of every step."""
    seen = []

    def callback(info):
        seen.append((info.t, info.x.clone().double(), info.prediction.clone().double()))

    sampler.sample(n, callback=callback, progress=False, **kwargs)
    return seen


@pytest.mark.parametrize(("solver", "prediction"), [("euler", "velocity"), ("ddim", "eps")])
def test_guided_score_is_score_plus_scale_times_grad_log_prob(solver, prediction):
    """At every step the guided prediction, converted to a score, equals the unguided model's
    score at the same state plus s * grad_x log p(t | x) (autograd, itself checked against
    finite differences in test_noise_level)."""
    mixture = random_mixture(4, 3, num_classes=3, time_points=64, prediction=prediction)
    exact = ExactPosterior(mixture)
    scale = 0.7
    guided = Sampler(mixture, 6, solver=solver, noise_estimator=exact, classifier_nag_scale=scale)
    y = torch.tensor([0, 1, 2, 1])
    checked = 0
    for t, x, pred in record(guided, 4, y=y, seed=3):
        if not 0.0 < t < 1.0:
            continue
        plain = mixture(x, torch.full((4,), t, dtype=torch.float64), y).double()
        tt = torch.full((4,), t, dtype=torch.float64)
        score_guided = convert(pred, x, tt, mixture.schedule_obj, prediction, "score")
        score_plain = convert(plain, x, tt, mixture.schedule_obj, prediction, "score")
        expected = scale * exact.grad_log_prob(x, t, y)
        torch.testing.assert_close(score_guided - score_plain, expected, rtol=2e-3, atol=2e-3)
        checked += 1
    assert checked >= 4


def test_scale_zero_and_empty_interval_reproduce_the_plain_sampler(mixture):
    exact = ExactPosterior(mixture)
    plain = Sampler(mixture, 8).sample(16, seed=1, progress=False)
    off = Sampler(mixture, 8, noise_estimator=exact, classifier_nag_scale=0.0)
    torch.testing.assert_close(off.sample(16, seed=1, progress=False), plain, rtol=0, atol=0)
    with pytest.warns(UserWarning, match="classifier_nag guidance is off"):
        never = Sampler(
            mixture,
            8,
            noise_estimator=exact,
            classifier_nag_scale=1.0,
            classifier_nag_interval=(0.01, 0.02),
        )
    torch.testing.assert_close(never.sample(16, seed=1, progress=False), plain, rtol=0, atol=0)
    on = Sampler(mixture, 8, noise_estimator=exact, classifier_nag_scale=1.0)
    assert not torch.allclose(on.sample(16, seed=1, progress=False), plain)


def test_interval_selects_the_guided_stages(mixture):
    exact = ExactPosterior(mixture)
    stage_times = [1.0, 0.75, 0.5, 0.25, 0.0]
    guide = ClassifierNAG(exact, 2.0, stage_times, mixture.schedule_obj, "velocity", (0.2, 0.6))
    assert [guide.active(k) for k in range(5)] == [False, False, True, True, False]
    # at t = 1 the linear schedule's velocity does not depend on the score: no term there
    full = ClassifierNAG(exact, 2.0, stage_times, mixture.schedule_obj, "velocity")
    assert not full.active(0) and full.active(1)


def test_stacks_with_cfg_and_classifier_free_nag(mixture):
    """With CFG and classifier-free NAG on, the classifier term is added on top: the guided
    prediction minus the CFG+NAG one is still B(t) * s * grad."""
    exact = ExactPosterior(mixture)
    y = torch.tensor([0, 2, 1])
    options = {"cfg_scale": 2.0, "nag_scale": 0.5}
    both = Sampler(mixture, 5, noise_estimator=exact, classifier_nag_scale=0.5, **options)
    base = Sampler(mixture, 5, **options)
    for t, x, pred in record(both, 3, y=y, seed=2)[1:]:
        seen = {}

        def grab(info, seen=seen):
            seen["pred"] = info.prediction.clone().double()

        # the unguided CFG+NAG prediction at the same state: one Euler step from x
        base_step = Sampler(mixture, 1, t_max=t, cfg_scale=2.0, nag_scale=0.5)
        base_step.sample(3, y=y, latents=x.float(), callback=grab, progress=False)
        tt = torch.full((3,), t, dtype=torch.float64)
        diff = convert(pred, x, tt, mixture.schedule_obj, "velocity", "score")
        diff = diff - convert(seen["pred"], x, tt, mixture.schedule_obj, "velocity", "score")
        torch.testing.assert_close(diff, 0.5 * exact.grad_log_prob(x, t, y), rtol=2e-3, atol=2e-3)
    # no extra model passes
    assert base.plan.guidance_plan.max_passes == both.plan.guidance_plan.max_passes


def test_bad_configuration_is_refused(mixture):
    with pytest.raises(ValueError, match="noise_estimator"):
        Sampler(mixture, 4, classifier_nag_scale=1.0)
    with pytest.raises(TypeError, match="grad_log_prob"):
        Sampler(mixture, 4, noise_estimator=object(), classifier_nag_scale=1.0)
    with pytest.raises(ValueError, match="classifier_nag_interval"):
        Sampler(
            mixture,
            4,
            noise_estimator=ExactPosterior(mixture),
            classifier_nag_scale=1.0,
            classifier_nag_interval=(0.8, 0.2),
        )


def test_a_noise_level_head_is_not_sampled_from():
    from nag_engine.models import MLPDenoiser, NoiseLevelHead

    head = NoiseLevelHead.from_denoiser(MLPDenoiser(dim=2, hidden=8, depth=1))
    with pytest.raises(TypeError, match="not a denoiser"):
        Sampler(head, 4)
