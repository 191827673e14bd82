"""Training: data sets, the denoising loss with noise-condition and class dropout, the
contrastive diffusion loss (CDL) and the trainer with exact resume."""

from .data import DATASETS, DataSet, load_dataset, mixture_for
from .losses import denoising_loss, sample_time
from .trainer import TrainConfig, Trainer

__all__ = [
    "DATASETS",
    "DataSet",
    "TrainConfig",
    "Trainer",
    "denoising_loss",
    "load_dataset",
    "mixture_for",
    "sample_time",
]
