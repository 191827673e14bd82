"""What identifies a sampling run: every option of the plan that changes a sample, and the
model's configuration and weights. A run folder (`nag_engine.shards`) records it in its
manifest and refuses to be resumed by anything else, so one folder never mixes two runs."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

import torch
from torch import nn

from .plan import SamplingPlan

Tensor = torch.Tensor


def tensor_digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over named tensors in name order: each name, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        raw = tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(memoryview(raw.numpy()))  # (no copy of the bytes)
    return digest.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers (its state dict)."""
    return tensor_digest(dict(model.state_dict()))


def _plain(value: Any) -> Any:
    """value as JSON would read it back (tuples as lists, unknown objects as their repr)."""
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def model_identity(model: nn.Module) -> dict[str, Any]:
    """The model's class, protocol attributes, configuration and weights digest."""
    config = getattr(model, "checkpoint_config", None) or getattr(model, "config", None)
    return _plain(
        {
            "class": type(model).__name__,
            "prediction": getattr(model, "prediction", "velocity"),
            "schedule": getattr(model, "schedule", None),
            "num_classes": getattr(model, "num_classes", None),
            "supports_noise_dropout": getattr(model, "supports_noise_dropout", False),
            "config": config if isinstance(config, dict) else None,
            "weights_sha256": weights_digest(model),
        }
    )


def _corrections(plan: SamplingPlan) -> dict[str, Optional[dict[str, Any]]]:
    """The corrections around the model: eps scaling, time-shift sampler, classifier NAG."""
    shift, classifier = plan.time_shift, plan.classifier
    scaling = plan.eps_scaling
    return {
        "eps_scaling": {"k": scaling[0], "b": scaling[1]} if scaling is not None else None,
        "time_shift_sampler": (
            {
                "window": shift.window,
                "data_variance": shift.data_variance,
                "candidates": len(shift.offsets),
            }
            if shift is not None
            else None
        ),
        "classifier_nag": (
            {
                "scale": classifier.scale,
                "interval": classifier.interval,
                "estimator": model_identity(classifier.estimator)
                if isinstance(classifier.estimator, nn.Module)
                else type(classifier.estimator).__name__,
            }
            if classifier is not None
            else None
        ),
    }


def plan_identity(plan: SamplingPlan) -> dict[str, Any]:
    """Everything in the plan that changes a sample: readable entries for the options, and a
    digest of the tables the step reads (grid, coefficients, guidance weights) so that no
    option that reaches them can differ unnoticed."""
    guidance = plan.guidance
    tables = {
        "grid": plan.grid,
        "coef": plan.tables.coef,
        "weights": plan.tables.weights,
        "times": plan.tables.times,
        "keep": plan.tables.keep,
    }
    return _plain(
        {
            "steps": plan.steps,
            "solver": plan.solver,
            "solver_options": dict(plan.solver_options),
            "schedule": getattr(plan.schedule, "name", repr(plan.schedule)),
            "t_max": plan.t_max,
            "time_shift": plan.grid_shift,
            "spacing": plan.spacing,
            "grid": [float(t) for t in plan.grid],
            "cfg_scale": guidance.cfg_scale,
            "nag_scale": guidance.nag_scale,
            "cfg_interval": guidance.cfg_interval,
            "nag_interval": guidance.nag_interval,
            # only when set: manifests written before the option existed stay valid
            **({"nag_null_class": True} if guidance.nag_null_class else {}),
            **_corrections(plan),
            "sample_shape": plan.sample_shape,
            "dtype": "fp8" if plan.fp8 else str(plan.dtype).replace("torch.", ""),
            "backend": plan.backend,
            "compiled": plan.compiled,
            "tables_sha256": tensor_digest(tables),
        }
    )
