"""nag_engine: a sampling engine for diffusion and flow-matching models built around
Noise Awareness Guidance (NAG)."""

from .checkpoints import load_checkpoint, save_checkpoint
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
    "load_checkpoint",
    "sample",
    "save_checkpoint",
    "time_grid",
]
