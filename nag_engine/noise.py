"""Counter-based Gaussian noise: a pure function of (seed, sample index, stream, element).

The sampler draws the initial latents (stream 0) and the noise of every stochastic step
(stream k + 1 for step k) from here, so a sample's noise depends on its global index and not on
how `n` was split into batches, and is the same on every device. The generator is a 32-bit
integer hash (MurmurHash3's finaliser) evaluated with plain tensor ops: no host scalars change
per call, so it runs inside a captured CUDA graph. Two hashed uniforms make one normal by the
Box-Muller transform.
"""

from __future__ import annotations

import math
from typing import Union

import torch

Tensor = torch.Tensor
_MASK32 = 0xFFFFFFFF


def _mul32(a: Tensor, b: int) -> Tensor:
    """(a * b) mod 2^32 for int64 tensors a in [0, 2^32) without int64 overflow."""
    lo, hi = a & 0xFFFF, a >> 16
    return (lo * b + ((hi * (b & 0xFFFF)) << 16)) & _MASK32


def _fmix32(h: Tensor) -> Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _mix(h: Tensor, v: Union[Tensor, int]) -> Tensor:
    """Hash the pair (h, v) into 32 bits, for v in [0, 2^32); not symmetric in its arguments."""
    return _fmix32((_mul32(h, 0x9E3779B1) + v + 0x7F4A7C15) & _MASK32)


def _mix64(h: Tensor, v: Union[Tensor, int]) -> Tensor:
    """Hash h with a non-negative 64-bit integer v, one 32-bit word at a time."""
    return _mix(_mix(h, v & _MASK32), v >> 32)


MAX_SEED = (1 << 64) - 1  # seeds are 64-bit words: 0 <= seed <= MAX_SEED


def check_seed(seed: object) -> int:
    """seed, if it is an int in [0, MAX_SEED] (every such seed draws its own noise); else a
    TypeError / ValueError naming it."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must lie in [0, 2**64 - 1], got {seed}")
    return seed


def _seed_hash(seed: int) -> int:
    check_seed(seed)
    h = torch.tensor(0x6A09E667, dtype=torch.int64)
    for word in (seed & _MASK32, seed >> 32):
        h = _mix(h, word)
    return int(h)


def _uniform(h: Tensor) -> Tensor:
    """Map 32-bit hashes to float32 uniforms in the open interval (0, 1)."""
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


class CounterNoise:
    """Standard normal noise for samples of a fixed shape, addressed by (sample, stream)."""

    def __init__(self, seed: int, sample_shape: tuple[int, ...], device: torch.device | str):
        self.sample_shape = tuple(sample_shape)
        numel = math.prod(self.sample_shape)
        self._elements = torch.arange(numel, dtype=torch.int64, device=device).view(1, numel)
        # the seed's hash lives on the device, so a captured CUDA graph reads the current one
        self._seed = torch.zeros((), dtype=torch.int64, device=device)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Draw from `seed` from now on (no host sync: one device fill)."""
        self.seed = seed
        self.seed_hash = _seed_hash(seed)
        self._seed.fill_(self.seed_hash)

    def normal(self, sample_index: Tensor, stream: Union[Tensor, int]) -> Tensor:
        """float32 noise of shape [len(sample_index), *sample_shape].

        `sample_index` is an int64 tensor of global sample indices; `stream` an int or a 0-d int64
        tensor (a device-side step counter works and keeps the call free of host syncs)."""
        start = self._seed.expand_as(sample_index)
        row = _mix64(_mix64(start, sample_index), stream)
        key = _mix(row.view(-1, 1), self._elements)
        u1 = _uniform(_mix(key, 0x1B873593))
        u2 = _uniform(_mix(key, 0xCC9E2D51))
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
        return z.view(len(sample_index), *self.sample_shape)
