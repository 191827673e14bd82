"""nag_engine: a sampling engine for diffusion and flow-matching models built around
Noise Awareness Guidance (NAG)."""

from .guidance import Guidance, GuidancePlan
from .sampler import NonFiniteStateError, Sampler, StepInfo, sample
from .schedules import get_schedule, time_grid

__version__ = "0.1.0"

__all__ = [
    "Guidance",
    "GuidancePlan",
    "NonFiniteStateError",
    "Sampler",
    "StepInfo",
    "get_schedule",
    "sample",
    "time_grid",
]
