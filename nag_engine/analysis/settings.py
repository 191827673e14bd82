"""Named sampler settings to compare, and the estimator that reads their noise level.

The same names are used by ``nag-engine analyze`` and by the reproduction report
(``benchmarks/reproduce.py``):

======================  ==========================================================
none                    no guidance, no correction
cfg                     classifier-free guidance (cfg_scale)
nag                     classifier-free NAG (nag_scale)
cfg+nag                 both
cnag                    classifier-based NAG (classifier_nag_scale, needs an estimator)
cfg+cnag                CFG with classifier-based NAG
eps-scaling             epsilon scaling, Ning et al. (eps divided by k t + b)
time-shift              the time-shift sampler, Li et al. (window in t)
======================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

SETTINGS = ("none", "cfg", "nag", "cfg+nag", "cnag", "cfg+cnag", "eps-scaling", "time-shift")


@dataclass(frozen=True)
class Scales:
    """The strength of every setting (what "cfg", "nag", ... mean in numbers)."""

    cfg_scale: float = 2.0
    nag_scale: float = 0.5
    classifier_nag_scale: float = 0.1
    eps_scaling: tuple[float, float] = (0.0, 1.005)  # (k, b): eps / (k t + b)
    shift_window: float = 0.05
    data_variance: float = 1.0  # per dimension, for the time-shift sampler


def setting_options(name: str, scales: Scales, estimator: Any = None) -> dict[str, Any]:
    """Sampler keyword arguments of a named setting."""
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}: choose from {', '.join(SETTINGS)}")
    options: dict[str, Any] = {}
    parts = name.split("+")
    if "cfg" in parts:
        options["cfg_scale"] = scales.cfg_scale
    if "nag" in parts:
        options["nag_scale"] = scales.nag_scale
    if "cnag" in parts:
        if estimator is None or not callable(getattr(estimator, "grad_log_prob", None)):
            raise ValueError(
                f"setting {name!r} needs a differentiable noise-level estimator (exact or head)"
            )
        options["noise_estimator"] = estimator
        options["classifier_nag_scale"] = scales.classifier_nag_scale
    if name == "eps-scaling":
        k, b = scales.eps_scaling
        options["eps_scaling"] = {"k": k, "b": b}
    if name == "time-shift":
        options["time_shift_sampler"] = {
            "window": scales.shift_window,
            "data_variance": scales.data_variance,
        }
    return options


def resolve_estimator(
    spec: Union[str, Path], model_name: str, model: nn.Module, reference: Any
) -> Any:
    """A noise-level estimator from a spec: "auto" (the exact posterior for Gaussian-mixture
    data, else the shipped regressor head of a shipped model), "exact", "head" (the shipped head
    of `model_name`), "implicit" (the CDL implicit classifier of the model itself), or a path to
    a `NoiseLevelHead` checkpoint."""
    from ..checkpoints import load_checkpoint
    from ..models import GaussianMixtureModel
    from ..presets import SHIPPED, shipped_checkpoint
    from .noise_level import ExactPosterior, ImplicitClassifier

    spec = str(spec)
    mixture = reference if isinstance(reference, GaussianMixtureModel) else None
    if spec == "auto":
        spec = "exact" if mixture is not None else "head"
    if spec == "exact":
        if mixture is None:
            raise ValueError(
                f"--estimator exact needs Gaussian-mixture data; {model_name} has none. Use "
                "--estimator head (shipped models) or a NoiseLevelHead checkpoint path"
            )
        return ExactPosterior(mixture)
    if spec == "implicit":
        return ImplicitClassifier(model)
    if spec == "head":
        if f"{model_name}-level" not in SHIPPED:
            raise ValueError(
                f"no shipped noise-level head for {model_name!r}; train one with `nag-engine "
                "train --preset <name>-level` or `--set objective=noise_level --finetune "
                "CHECKPOINT`, then pass its path as --estimator"
            )
        spec = str(shipped_checkpoint(f"{model_name}-level"))
    head = load_checkpoint(spec)
    if not callable(getattr(head, "estimate", None)):
        raise ValueError(f"{spec} is not a noise-level head (it has no estimate())")
    return head


def data_variance(reference: Any, seed: int = 0, n: int = 20000) -> Optional[float]:
    """Mean per-dimension variance of the data (for the time-shift sampler), from a data set
    (all of it) or an exact mixture (n draws); None if unknown."""
    if reference is None:
        return None
    if hasattr(reference, "x"):  # a data set (or a DataSetReference): all of it
        x = reference.x
    else:
        x = reference.sample_data(n, generator=torch.Generator().manual_seed(seed))[0]
    return float(x.double().flatten(1).var(0).mean())


class DataSetReference:
    """Clean reference data for `measure_noise_shift` from a labelled DataSet:
    ``sample_data(n, y, generator)`` draws random training examples of the requested classes
    (of any class where y is None)."""

    def __init__(self, dataset: Any):
        self.x, self.labels = dataset.x, dataset.y

    def sample_data(
        self,
        n: int,
        y: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if y is None or self.labels is None:
            index = torch.randint(len(self.x), (n,), generator=generator)
            return self.x[index], None
        index = torch.empty(n, dtype=torch.long)
        for c in torch.unique(y).tolist():
            rows = (y == c).nonzero().flatten()
            pool = (self.labels == c).nonzero().flatten()
            if len(pool) == 0:
                raise ValueError(f"the data set has no example of class {c}")
            index[rows] = pool[torch.randint(len(pool), (len(rows),), generator=generator)]
        return self.x[index], self.labels[index]
