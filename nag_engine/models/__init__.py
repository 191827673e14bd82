"""Reference networks (MLP, DiT), the exact Gaussian-mixture model and adapters (diffusers
models, plain functions)."""

from .analytic import GaussianMixtureModel, random_mixture, ring_mixture
from .diffusers_models import DiffusersDenoiser, DiffusersDiT
from .dit import DIT_CONFIGS, DiT, DiT_B_2, DiT_L_2, DiT_S_2, DiT_XL_2
from .mlp import MLPDenoiser
from .noise_head import NoiseLevelHead
from .wrappers import FunctionDenoiser

__all__ = [
    "DIT_CONFIGS",
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
    "random_mixture",
    "ring_mixture",
]
