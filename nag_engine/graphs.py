"""CUDA graphs for the sampling loop: whether the sampler may capture its stage (model forward
on the static input buffer + fused guidance/solver step), and the capture itself.

The captured stage reads everything that changes from stage to stage on the device -- the
stage counter, the time, coefficient and weight tables, the noise seed -- so one graph per
batch shape and pass set (a guidance interval changes the pass set) serves every stage and
every batch of that shape. What cannot be captured runs eagerly, and `Sampler.graph_status()`
says why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional, Union

import torch

Mode = Union[str, bool]
MODES = ("auto", True, False)


def check_mode(mode: Mode) -> Mode:
    """cuda_graphs: "auto" (capture where possible), True (capture or raise), False (eager)."""
    if mode not in MODES or (isinstance(mode, int) and not isinstance(mode, bool)):
        raise ValueError(f"cuda_graphs must be 'auto', True or False, got {mode!r}")
    return mode


def static_reason(
    device: torch.device,
    mode: Mode,
    *,
    classifier_nag: bool,
    time_shift_sampler: bool,
    any_device: bool = False,
) -> Optional[str]:
    """Why the sampler's stages cannot be captured at all, or None (`any_device`: a custom
    graph runner captures on any device)."""
    if mode is False:
        return "cuda_graphs=False"
    if device.type != "cuda" and not any_device:
        return f"{device.type} tensors (CUDA graphs need a CUDA device)"
    if classifier_nag:
        return "classifier-based NAG runs the noise-level estimator's autograd every step"
    if time_shift_sampler:
        return "the time-shift sampler picks each sample's time from its state every step"
    return None


def call_reason(has_callback: bool, return_trajectory: bool) -> Optional[str]:
    """Why this sample() call runs eagerly although the sampler could capture, or None."""
    if has_callback:
        return "a callback reads the state after every step"
    if return_trajectory:
        return "return_trajectory copies the state after every step"
    return None


class CudaGraphs:
    """Captures stage bodies as CUDA graphs that share one memory pool (they run one after
    another and pass data only through the sampler's static buffers)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.captured = 0

    def capture(
        self, body: Callable[[], None], reset: Callable[[], None], warmup: int = 2
    ) -> Callable[[], None]:
        """Run `body` `warmup` times on a side stream (lazy init, autotuning), capture it, and
        return the replay; `reset` runs before each (outside the graph) -- the sampler's resets
        its stage counter, so the warm-up runs stay inside the stage tables."""
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(warmup):
                reset()
                body()
        current.wait_stream(side)
        reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            body()
        self.captured += 1
        return graph.replay
