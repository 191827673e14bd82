"""The sampling grid of a plan: where sampling starts (t_max) and the times of its steps,
uniform (optionally shifted) or a discrete-time schedule's respaced training timesteps."""

from __future__ import annotations

from typing import Optional

import torch

from .arguments import check_positive_int
from .schedules import SPACINGS, Schedule, time_grid

Tensor = torch.Tensor

EPS_LOG_SNR_MIN = -11.0


def default_t_max(schedule: Schedule, prediction: str) -> float:
    """Where sampling starts: t = 1, except for eps / score models on schedules whose log-SNR at
    t = 1 is below EPS_LOG_SNR_MIN (-11; x0 = (x - sigma eps) / alpha is ill-posed as alpha -> 0):
    those start where the log-SNR is -11 (DDPM's own linear schedule ends at -10.05)."""
    if prediction in ("eps", "score") and float(schedule.log_snr(1.0)) < EPS_LOG_SNR_MIN:
        return float(schedule.t_from_log_snr(EPS_LOG_SNR_MIN))
    return 1.0


def respaced_grid(
    schedule: Schedule, steps: int, spacing: str, time_shift: float, t_max: Optional[float]
) -> Tensor:
    """The grid of a discrete-time schedule's respaced sampler ("adm", "leading", "trailing":
    the training timesteps the reference code visits, see `DiscreteVPSchedule.respaced`)."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}: choose one of {SPACINGS}")
    if not hasattr(schedule, "respaced"):
        raise ValueError(
            f"spacing={spacing!r} picks training timesteps of a discrete-time schedule, but the "
            f"schedule is {schedule.name!r}; use spacing='uniform' or schedule='vp-discrete'"
        )
    if time_shift != 1.0 or t_max is not None:
        raise ValueError(
            f"spacing={spacing!r} fixes the grid; time_shift and t_max apply to "
            "spacing='uniform' only"
        )
    return schedule.respaced(check_positive_int("steps", steps), spacing)


def sampling_grid(
    schedule: Schedule,
    prediction: str,
    steps: int,
    spacing: str,
    time_shift: float,
    t_max: Optional[float],
) -> Tensor:
    """The float64 grid [steps + 1] from t_max down to 0 that a plan steps along."""
    if spacing == "uniform":
        t_max = default_t_max(schedule, prediction) if t_max is None else t_max
        return time_grid(steps, shift=time_shift, t_max=t_max)
    return respaced_grid(schedule, steps, spacing, time_shift, t_max)
