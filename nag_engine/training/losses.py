"""The denoising loss with noise-condition dropout and class dropout.

For data x0, a time t from the training distribution and noise eps, the network sees
x_t = alpha_t x0 + sigma_t eps and regresses the target of its prediction type (velocity
alpha' x0 + sigma' eps, eps, or x0). With probability `p_t` a row's time condition is replaced by
the null noise embedding (`drop_t`), with probability `p_c` its class by the null class
(`drop_y`); the target is unchanged. A network trained this way answers both with and without
its noise level, which is what classifier-free NAG needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from ..predictions import check_prediction
from ..schedules import DiscreteVPSchedule, Schedule, get_schedule

Tensor = torch.Tensor

TIME_DISTRIBUTIONS = ("uniform", "logit-normal")


def sample_time(
    n: int,
    generator: torch.Generator,
    *,
    distribution: str = "uniform",
    mean: float = 0.0,
    std: float = 1.0,
    t_min: float = 1e-3,
    device: Union[str, torch.device] = "cpu",
) -> Tensor:
    """n training times in [t_min, 1): uniform, or logit-normal (SD3: sigmoid of N(mean, std))."""
    if distribution == "uniform":
        u = torch.rand(n, generator=generator, device=device)
    elif distribution == "logit-normal":
        u = torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))
    else:
        raise ValueError(
            f"unknown time distribution {distribution!r}: choose one of {TIME_DISTRIBUTIONS}"
        )
    return t_min + (1.0 - t_min) * u


def training_times(
    schedule: Schedule,
    distribution: str = "uniform",
    *,
    mean: float = 0.0,
    std: float = 1.0,
    count: int = 1000,
    t_min: float = 1e-3,
) -> Tensor:
    """An even float64 quadrature of the training time distribution that `forward_noise` draws
    from: the knots of a discrete schedule (uniform), else `count` quantile midpoints."""
    if distribution == "uniform" and isinstance(schedule, DiscreteVPSchedule):
        steps = schedule.num_steps
        return (torch.arange(steps, dtype=torch.float64) + 1.0) / steps
    u = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    if distribution == "logit-normal":
        u = torch.sigmoid(mean + std * torch.special.ndtri(u))
    elif distribution != "uniform":
        raise ValueError(
            f"unknown time distribution {distribution!r}: choose one of {TIME_DISTRIBUTIONS}"
        )
    return t_min + (1.0 - t_min) * u


def forward_noise(
    x0: Tensor,
    schedule: Schedule,
    generator: torch.Generator,
    *,
    distribution: str = "uniform",
    mean: float = 0.0,
    std: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """(t, eps, x_t): training times, noise and the forward-process states
    x_t = alpha_t x0 + sigma_t eps for a batch of clean data x0. On a discrete schedule
    (`vp-discrete`) "uniform" draws the training timesteps themselves, t = (tau + 1) / T, as the
    model was trained."""
    if distribution == "uniform" and isinstance(schedule, DiscreteVPSchedule):
        steps = schedule.num_steps
        tau = torch.randint(steps, (len(x0),), generator=generator, device=x0.device)
        t64 = (tau.double() + 1.0) / steps
        t = t64.float()
    else:
        t = sample_time(
            len(x0), generator, distribution=distribution, mean=mean, std=std, device=x0.device
        )
        t64 = t.double()
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    alpha = schedule.alpha(t64).float().view(shape)
    sigma = schedule.sigma(t64).float().view(shape)
    return t, eps, alpha * x0 + sigma * eps


def training_target(
    x0: Tensor, eps: Tensor, t: Tensor, schedule: Schedule, prediction: str
) -> Tensor:
    """The regression target of a prediction type at (x0, eps, t)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    shape = (-1,) + (1,) * (x0.ndim - 1)
    if prediction == "v":
        alpha = schedule.alpha(t.double()).float().view(shape)
        sigma = schedule.sigma(t.double()).float().view(shape)
        return alpha * eps - sigma * x0
    if prediction == "velocity":
        d_alpha = schedule.d_alpha(t.double()).float().view(shape)
        d_sigma = schedule.d_sigma(t.double()).float().view(shape)
        return d_alpha * x0 + d_sigma * eps
    raise ValueError(f"cannot train a {prediction!r} model: use velocity, eps, x0 or v")


def _rows_of(values: Optional[Tensor], share: slice) -> Optional[Tensor]:
    return None if values is None else values[share]


@dataclass
class LossOutput:
    """The loss and what went into it (for logging and tests)."""

    loss: Tensor  # scalar, differentiable
    t: Tensor  # [B] training times
    drop_t: Tensor  # [B] bool, rows trained without their noise level
    drop_y: Optional[Tensor]  # [B] bool, rows trained with the null class (None if unlabelled)


def denoising_loss(
    model: nn.Module,
    x0: Tensor,
    y: Optional[Tensor] = None,
    *,
    generator: torch.Generator,
    schedule: Union[None, str, Schedule] = None,
    p_t: float = 0.0,
    p_c: float = 0.0,
    time_distribution: str = "uniform",
    time_mean: float = 0.0,
    time_std: float = 1.0,
    share: Optional[slice] = None,
) -> LossOutput:
    """Mean squared error of the model's prediction on a batch of clean data x0, with
    noise-condition dropout (p_t) and class dropout (p_c). All randomness comes from
    `generator`, so a run is reproducible and resumable.

    `share` (a data-parallel rank's rows of the batch): the randomness is drawn for the whole
    batch x0, then the model sees and the loss averages only these rows, so N ranks with equal
    shares make the draws, and (averaged) the gradient, of one process on the whole batch."""
    for name, p in (("p_t", p_t), ("p_c", p_c)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    if p_t > 0 and not getattr(model, "supports_noise_dropout", False):
        raise ValueError(
            "p_t > 0 needs a model with a null noise embedding (supports_noise_dropout)"
        )
    prediction = check_prediction(getattr(model, "prediction", "velocity"), "model.prediction")
    sched = get_schedule(schedule if schedule is not None else getattr(model, "schedule", "linear"))
    batch, device = len(x0), x0.device
    t, eps, x_t = forward_noise(
        x0, sched, generator, distribution=time_distribution, mean=time_mean, std=time_std
    )
    drop_t = torch.rand(batch, generator=generator, device=device) < p_t
    drop_y = None
    if y is not None:
        drop_y = torch.rand(batch, generator=generator, device=device) < p_c
    if share is not None:
        x0, eps, t, x_t, drop_t = x0[share], eps[share], t[share], x_t[share], drop_t[share]
        y, drop_y = _rows_of(y, share), _rows_of(drop_y, share)
    out = model(x_t, t, y, drop_t=drop_t if p_t > 0 else None, drop_y=drop_y)
    target = training_target(x0, eps, t, sched, prediction)
    loss = ((out.float() - target) ** 2).mean()
    return LossOutput(loss, t, drop_t, drop_y)


def noise_level_loss(
    head: nn.Module,
    x0: Tensor,
    y: Optional[Tensor] = None,
    *,
    generator: torch.Generator,
    p_c: float = 0.0,
    time_distribution: str = "uniform",
    time_mean: float = 0.0,
    time_std: float = 1.0,
    share: Optional[slice] = None,
) -> LossOutput:
    """Gaussian negative log-likelihood of the clipped log-SNR of forward-noised data under a
    noise-level head (`nag_engine.models.NoiseLevelHead`): the head sees x_t alone. Class
    dropout `p_c` trains the head both with and without labels. `share`: as in
    `denoising_loss`."""
    if not hasattr(head, "target") or not hasattr(head, "schedule_obj"):
        raise TypeError(
            f"the noise_level objective trains a NoiseLevelHead, got {type(head).__name__}; "
            "build one with NoiseLevelHead.from_denoiser(model)"
        )
    batch, device = len(x0), x0.device
    t, _, x_t = forward_noise(
        x0,
        head.schedule_obj,
        generator,
        distribution=time_distribution,
        mean=time_mean,
        std=time_std,
    )
    drop_y = None
    if y is not None and getattr(head, "num_classes", None) is not None:
        drop_y = torch.rand(batch, generator=generator, device=device) < p_c
    else:
        y = None
    if share is not None:
        t, x_t, y, drop_y = t[share], x_t[share], _rows_of(y, share), _rows_of(drop_y, share)
        batch = len(t)
    mu, log_var = head(x_t, y, drop_y=drop_y)
    target = head.target(t.double()).float()
    nll = 0.5 * ((target - mu) ** 2 * torch.exp(-log_var) + log_var)
    return LossOutput(nll.mean(), t, torch.ones(batch, dtype=torch.bool, device=device), drop_y)
