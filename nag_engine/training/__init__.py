"""Training: data sets, the denoising loss with noise-condition and class dropout, the
contrastive diffusion loss (CDL) and the trainer with exact resume."""

from .cdl import cdl_loss, gaussian_log_ratio, noise_log_ratio
from .config import NonFiniteLossError, TrainConfig
from .data import DATASETS, DataSet, load_dataset, mixture_for
from .losses import denoising_loss, sample_time
from .trainer import Trainer

__all__ = [
    "DATASETS",
    "DataSet",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "cdl_loss",
    "denoising_loss",
    "load_dataset",
    "gaussian_log_ratio",
    "mixture_for",
    "noise_log_ratio",
    "sample_time",
]
