"""Reference networks (MLP, DiT), the exact Gaussian-mixture model and adapters (diffusers
models, plain functions); the model protocol (`protocol.Denoiser`); and `ARCHITECTURES`, the one
registry of architecture names, which checkpoints (`nag_engine.checkpoints`) and training presets
(`nag_engine.presets`) name their models by."""

from __future__ import annotations

from torch import nn

from .analytic import GaussianMixtureModel, random_mixture, ring_mixture
from .diffusers_models import DiffusersDenoiser, DiffusersDiT
from .dit import DIT_CONFIGS, DiT, DiT_B_2, DiT_L_2, DiT_S_2, DiT_XL_2
from .mlp import MLPDenoiser
from .noise_head import NoiseLevelHead
from .protocol import DENOISER_DEFAULTS, Denoiser, TrainableDenoiser
from .wrappers import FunctionDenoiser

# The architectures a checkpoint config or a training preset may name ("architecture"), by name.
# The names are stored in checkpoint files: never rename one. Denoisers implement
# `protocol.TrainableDenoiser`; `NoiseLevelHead` is the noise-level regressor.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "MLPDenoiser": MLPDenoiser,
    "DiT": DiT,
    "NoiseLevelHead": NoiseLevelHead,
    "DiffusersDenoiser": DiffusersDenoiser,
}

__all__ = [
    "ARCHITECTURES",
    "DENOISER_DEFAULTS",
    "DIT_CONFIGS",
    "Denoiser",
    "DiT",
    "DiT_B_2",
    "DiT_L_2",
    "DiT_S_2",
    "DiT_XL_2",
    "DiffusersDenoiser",
    "DiffusersDiT",
    "FunctionDenoiser",
    "GaussianMixtureModel",
    "MLPDenoiser",
    "NoiseLevelHead",
    "TrainableDenoiser",
    "random_mixture",
    "ring_mixture",
]
