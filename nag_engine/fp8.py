"""FP8 linear layers for sampling (`dtype="fp8"`): the transformer blocks' matmuls in float8.

The recipe is the usual one for FP8 inference on Hopper GPUs (torchao's "dynamic row-wise"
float8): each weight row is scaled to the e4m3 range once, when the model is converted; each
activation row is scaled the same way at every call; `torch._scaled_mm` multiplies the two in
float8 with float32 accumulation and writes bf16, adding the bias. Everything else runs in bf16.

Only the Linear layers of the transformer blocks are converted (`fp8_layer_names`): the
attention and MLP projections, where a DiT spends its FLOPs. Embeddings, the adaLN modulation
(one row per sample: little work, and every token depends on it) and the final layer keep bf16.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

Tensor = torch.Tensor

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
ALIGN = 16  # _scaled_mm wants both dimensions of each operand divisible by 16
KEEP_BF16 = re.compile(r"adaln|norm|emb", re.IGNORECASE)


def _row_scaled(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [M, K] as float8 rows scaled to the e4m3 range, and the float32 scales [M, 1]."""
    amax = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Float8Linear(nn.Module):
    """A Linear layer whose matmul runs in float8 with row-wise scales (inference only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.in_features % ALIGN or linear.out_features % ALIGN:
            raise ValueError(
                f"fp8 needs Linear sizes divisible by {ALIGN}, got {linear.in_features} -> "
                f"{linear.out_features}"
            )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = _row_scaled(linear.weight.detach())
        self.register_buffer("weight_fp8", weight)  # [out, in]
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # [1, out]
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features)
        count = rows.shape[0]
        pad = -count % ALIGN
        if pad:
            rows = torch.cat([rows, rows.new_zeros(pad, self.in_features)])
        quantized, scale = _row_scaled(rows)
        out = torch._scaled_mm(
            quantized,
            self.weight_fp8.t(),  # column-major, as _scaled_mm wants its second operand
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=torch.bfloat16,
        )
        return out[:count].reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3"


def fp8_layer_names(model: nn.Module) -> list[str]:
    """The Linear layers `to_fp8` converts: those inside a module list named like `blocks`
    (DiT's `blocks`, diffusers' `transformer_blocks`), except adaLN / norm / embedding layers,
    with both sizes divisible by 16."""
    names = []
    for name, module in model.named_modules():
        parts = name.split(".")
        inside_blocks = any(part.endswith("blocks") for part in parts[:-1])
        if (
            isinstance(module, nn.Linear)
            and inside_blocks
            and not KEEP_BF16.search(name)
            and module.in_features % ALIGN == 0
            and module.out_features % ALIGN == 0
        ):
            names.append(name)
    return names


def check_fp8_device(device: torch.device) -> None:
    """Float8 matmuls run on GPUs with FP8 tensor cores (compute capability 8.9+: Ada,
    Hopper and later) and, slowly, on the CPU (for tests)."""
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 9):
            raise ValueError(
                f"dtype='fp8' needs a GPU with FP8 tensor cores (compute capability 8.9+: Ada, "
                f"Hopper); {torch.cuda.get_device_name(device)} has {capability[0]}."
                f"{capability[1]}: use dtype='bf16'"
            )
    elif device.type != "cpu":
        raise ValueError(f"dtype='fp8' runs on CUDA GPUs and the CPU, not on {device.type}")


def to_fp8(model: nn.Module) -> nn.Module:
    """A copy of `model` in bf16 with the transformer blocks' Linear layers in float8 (see the
    module docstring); the given model is left as it is."""
    names = fp8_layer_names(model)
    if not names:
        raise ValueError(
            f"dtype='fp8' converts the Linear layers of a model's transformer blocks (a module "
            f"list named like 'blocks', sizes divisible by {ALIGN}); {type(model).__name__} has "
            "none: use dtype='bf16'"
        )
    converted = copy.deepcopy(model).to(torch.bfloat16).eval()
    for name in names:  # quantized from the given weights, not from their bf16 copies
        parent_name, _, child = name.rpartition(".")
        setattr(
            converted.get_submodule(parent_name), child, Float8Linear(model.get_submodule(name))
        )
    converted.fp8_layers = tuple(names)
    return converted
