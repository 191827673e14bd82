"""nag_engine: a sampling engine for diffusion and flow-matching models built around
Noise Awareness Guidance (NAG)."""

from .checkpoints import load_checkpoint, save_checkpoint
from .convert import convert_checkpoint
from .guidance import Guidance, GuidancePlan
from .models import Denoiser, TrainableDenoiser
from .parallel import ParallelResult, ParallelSampler, ParallelStats
from .plan import NonFiniteStateError, SamplingPlan, make_plan
from .sampler import (
    SampleBatch,
    Sampler,
    StepInfo,
    sample,
    sample_trajectory,
)
from .schedules import get_schedule, time_grid
from .shards import load_shards, sample_to_disk

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "Guidance",
    "GuidancePlan",
    "NonFiniteStateError",
    "ParallelResult",
    "ParallelSampler",
    "ParallelStats",
    "SampleBatch",
    "Sampler",
    "SamplingPlan",
    "StepInfo",
    "TrainableDenoiser",
    "convert_checkpoint",
    "get_schedule",
    "load_checkpoint",
    "load_shards",
    "make_plan",
    "sample",
    "sample_to_disk",
    "sample_trajectory",
    "save_checkpoint",
    "time_grid",
]
