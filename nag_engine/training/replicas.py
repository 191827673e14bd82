"""Data-parallel training: the loss of one step as a module that DistributedDataParallel wraps,
and each rank's share of the global batch.

Under N ranks every process draws the same global minibatch and the same global randomness
(times, noise, dropout masks, CDL draws) from the same generators a single process would, and
computes the loss on its own share of the rows, ``[rank * B / N, (rank + 1) * B / N)``.
DistributedDataParallel averages the gradients over the ranks, and the mean of the N shares'
mean losses is the mean loss of the whole batch, so every rank takes the step one process would
take on the whole batch (up to the order of floating-point sums) and the generators stay equal
on every rank.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from ..distributed import Ranks
from .cdl import cdl_loss
from .config import TrainConfig
from .losses import denoising_loss, noise_level_loss

Tensor = torch.Tensor


def check_batch_split(batch_size: int, world_size: int) -> None:
    """Refuse a global batch that `world_size` ranks cannot split into equal shares."""
    if world_size > 1 and batch_size % world_size:
        multiple = max(1, round(batch_size / world_size)) * world_size
        raise ValueError(
            f"batch_size {batch_size} is the global batch, split over the ranks, and must be "
            f"divisible by the world size {world_size} (the number of processes): use e.g. "
            f"batch_size {multiple}, or a number of processes that divides {batch_size}"
        )


def share_of(batch: int, ranks: Ranks) -> Optional[slice]:
    """The rows of a global batch of `batch` rows that this rank trains on; None in a single
    process (all of them)."""
    if not ranks.distributed:
        return None
    check_batch_split(batch, ranks.world_size)
    size = batch // ranks.world_size
    return slice(ranks.rank * size, (ranks.rank + 1) * size)


class StepLoss(nn.Module):
    """The loss of one training step of `model` (the objective, plus CDL when configured) as a
    module, so that DistributedDataParallel sees one forward per step (the model itself runs
    several times a step with CDL, which DDP's bookkeeping of used parameters does not follow).

    ``forward(x0, y, config, generator, share)`` returns ``(loss, terms)``: the loss to
    differentiate and the terms to log ({"loss": ...} and "cdl" when ``config.cdl_weight > 0``).
    ``share`` is this rank's rows of the global batch ``x0`` (None: all of them)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        x0: Tensor,
        y: Optional[Tensor],
        config: TrainConfig,
        generator: torch.Generator,
        share: Optional[slice] = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        common = {
            "generator": generator,
            "p_c": config.p_c,
            "time_distribution": config.time_distribution,
            "time_mean": config.time_mean,
            "time_std": config.time_std,
            "share": share,
        }
        if config.objective == "noise_level":
            out = noise_level_loss(self.model, x0, y, **common)
        else:
            out = denoising_loss(self.model, x0, y, p_t=config.p_t, **common)
        loss = out.loss
        terms = {"loss": out.loss}
        if config.cdl_weight > 0:
            cdl = cdl_loss(
                self.model,
                x0,
                y=y,
                generator=generator,
                num_samples=config.cdl_samples,
                share=share,
            )
            loss = loss + config.cdl_weight * cdl
            terms["cdl"] = cdl
        return loss, terms


def replicate(module: nn.Module, device: Union[str, torch.device]) -> nn.Module:
    """`module` wrapped in DistributedDataParallel for the initialised process group (gloo on
    CPU, NCCL on CUDA with this process's GPU as its one device). static_graph: the parameters
    a step uses are the same every step (a null embedding that the options leave unused is
    skipped without a search through the graph each step)."""
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(
            module, device_ids=[index], output_device=index, static_graph=True
        )
    return DistributedDataParallel(module, static_graph=True)
