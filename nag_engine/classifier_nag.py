"""Classifier-based NAG: steer the state toward the noise level the schedule says it has.

With a noise-level estimator p(t | x) (the exact posterior of a Gaussian mixture, or a
fine-tuned `NoiseLevelHead`), the guided score is

    score(x, t) + s * grad_x log p(t | x),

the classifier-guidance form with the noise level as the "class". In the model's prediction
type the added term is ``B(t) * s * grad`` with ``B`` the coefficient of the score in the exact
conversion score -> prediction (`nag_engine.predictions.conversion_coefficients`). It is added to
every pass of the model evaluation; the pass weights sum to one, so the guided combination (CFG,
classifier-free NAG) gains exactly that term, and the result stacks with both.

Cost: one forward and backward pass of the estimator per model evaluation inside the interval.
The gradient is taken at the model's input state and the nominal t of the evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import torch

from .guidance import check_interval, inside
from .predictions import conversion_coefficients
from .schedules import Schedule

Tensor = torch.Tensor


class ClassifierNAG:
    """Per-stage coefficients of classifier-based NAG for one sampler configuration."""

    def __init__(
        self,
        estimator: Any,
        scale: float,
        stage_times: Sequence[float],
        schedule: Schedule,
        prediction: str,
        interval: Optional[tuple[float, float]] = None,
    ):
        if not callable(getattr(estimator, "grad_log_prob", None)):
            raise TypeError(
                f"classifier-based NAG needs a noise-level estimator with grad_log_prob(x, t, y) "
                f"(ExactPosterior, NoiseLevelHead), got {type(estimator).__name__}"
            )
        if not math.isfinite(scale):
            raise ValueError(f"classifier_nag_scale must be finite, got {scale}")
        self.estimator = estimator
        self.scale = float(scale)
        self.interval = check_interval("classifier_nag_interval", interval)
        coefficients = []
        for t in stage_times:
            if not inside(t, self.interval):
                coefficients.append(0.0)
                continue
            _, b = conversion_coefficients("score", prediction, schedule, float(t))
            b = float(b) * self.scale
            # where the score does not enter the prediction (b = 0, e.g. at sigma = 0) or is
            # singular (alpha = 0 for some targets), no guidance is applied
            coefficients.append(b if math.isfinite(b) else 0.0)
        self.coefficients = coefficients
        self.stage_times = [float(t) for t in stage_times]

    def active(self, stage: int) -> bool:
        """Does stage `stage` get a guidance term?"""
        return self.coefficients[stage] != 0.0

    def delta(self, stage: int, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """The term added to the model output at stage `stage` for model inputs x [B, ...]."""
        grad = self.estimator.grad_log_prob(x, self.stage_times[stage], y)
        return (self.coefficients[stage] * grad).to(x.dtype)
