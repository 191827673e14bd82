"""The one table of dtypes the engine runs models in, by the names users type."""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
FP8 = "fp8"  # sampling only: bf16 with float8 matmuls in the transformer blocks (nag_engine.fp8)


def dtype_from_name(name: str) -> torch.dtype:
    """torch dtype of "fp32" / "bf16" / "fp16" (or "float32" / "bfloat16" / "float16")."""
    key = ALIASES.get(name, name)
    if key not in DTYPES:
        raise ValueError(
            f"unknown dtype {name!r}: choose one of {tuple(DTYPES)} (or 'fp8' for sampling)"
        )
    return DTYPES[key]


def resolve_dtype(dtype: Union[None, str, torch.dtype], model: nn.Module) -> torch.dtype:
    """The dtype the model runs in: given, else the dtype of its parameters, else float32."""
    if dtype is None:
        param = next(iter(model.parameters()), None)
        return param.dtype if param is not None and param.is_floating_point() else torch.float32
    if isinstance(dtype, str):
        return dtype_from_name(dtype)
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return dtype
