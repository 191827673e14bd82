"""Which process of a torch.distributed run this is, and the start of one under `torchrun`.

The engine scales out on the field's own tools: `torchrun` starts one process per GPU (or per
CPU worker) and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the processes
join one process group (NCCL between GPUs, gloo on CPUs). A library call (`sample_to_disk`,
`Trainer`) asks `current()` and works alone when no group is initialised, so the same code runs
in one process, under torchrun, or in a group the caller set up itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, Union

import torch
import torch.distributed as dist

T = TypeVar("T")

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: `rank` of `world_size`, `local_rank` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes what is written once (manifests, checkpoints)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_initialized() -> bool:
    """Whether this process belongs to an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def current() -> Ranks:
    """The ranks of this process: those of the initialised process group, else a single
    process (rank 0 of 1)."""
    if not is_initialized():
        return Ranks()
    rank = dist.get_rank()
    return Ranks(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))


def launched_by_torchrun() -> bool:
    """Whether the environment holds a torchrun launch (RANK and WORLD_SIZE are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_label() -> str:
    """ " (rank R)" for messages of a process in a run of several (in a process group, or started
    by torchrun with WORLD_SIZE > 1 before it joins one); "" for a single process."""
    if is_initialized() and dist.get_world_size() > 1:
        return f" (rank {dist.get_rank()})"
    if launched_by_torchrun() and os.environ["WORLD_SIZE"] != "1":
        return f" (rank {os.environ['RANK']})"
    return ""


def rank_device(device: Union[str, torch.device]) -> torch.device:
    """The device of this process for a run on `device`: under torchrun, "cuda" (no index)
    becomes "cuda:LOCAL_RANK", one GPU per process; anything else is returned unchanged."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def init_from_environment(device: Union[str, torch.device]) -> Ranks:
    """Join the process group torchrun describes (NCCL for CUDA devices, gloo otherwise) and
    return this process's ranks; a plain process (no torchrun variables) stays alone. Nothing is
    done when a group is initialised already."""
    if is_initialized() or not launched_by_torchrun():
        return current()
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"RANK and WORLD_SIZE are set but {', '.join(missing)} are not: start the command "
            "with `torchrun --nproc_per_node N -m nag_engine.cli ...`, or unset RANK and "
            "WORLD_SIZE to run one process"
        )
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return current()


def finish() -> None:
    """Leave the process group (a no-op in a single process)."""
    if is_initialized():
        dist.destroy_process_group()


def broadcast(value: T, src: int = 0) -> T:
    """`value` as rank `src` holds it, on every rank (any picklable object)."""
    if not is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class DistributedRunError(RuntimeError):
    """Another rank of the run failed; its error is in the message."""


def on_main(work: Callable[[], T]) -> T:
    """Run `work` on rank 0 only and give its result to every rank; an exception it raises is
    raised on every rank (the same type and message), so no rank goes on alone."""
    if not is_initialized():
        return work()
    outcome: Any = None
    if dist.get_rank() == 0:
        try:
            outcome = ("ok", work())
        except Exception as err:  # re-raised below, on every rank
            outcome = ("error", err)
    kind, value = broadcast(outcome)
    if kind == "error":
        if dist.get_rank() == 0:
            raise value
        raise type(value)(*value.args)
    return value


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of `values` over every rank (all-reduce sum / world size), the
    same on every rank; `values` itself in a single process. A NaN or infinity on one rank
    reaches every rank, so a check of the result agrees everywhere."""
    if not is_initialized():
        return values
    total = values.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()
