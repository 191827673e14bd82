"""Large sampling runs written to disk in shards, resumable after an interruption.

`sample_to_disk(sampler, n, out_dir)` cuts the run into fixed shards of `shard_size` samples
(shard i holds samples i*shard_size ...), and writes each shard once it is complete, atomically:

* ``npz``: ``shard_00000.npz`` with ``samples`` (float32), ``index`` (int64) and ``labels``
  (int64, -1 when unconditional);
* ``png``: a folder ``shard_00000/`` with one ``0000000.png`` per sample (images with 1 or 3
  channels, values in [-1, 1]) and ``labels.json``.

With a `decoder` (a `nag_engine.vae.VAE`) the samples are latents: each shard is decoded on the
sampler's device as it completes; ``png`` writes the decoded images, ``npz`` adds them as
``images`` (uint8 [n, H, W, C]) beside the latents.

``manifest.json`` records what the run is: n, seed, shards, the labels, every option of the
plan that changes a sample and the model's configuration and weights digest
(`nag_engine.identity`). Run the same call again and it skips the shards on disk and samples
the rest: the sampler draws every sample from its own index, so the result equals one
uninterrupted run, without duplicates or gaps. A different run into the same folder is refused,
naming what differs.

In a torch.distributed process group (e.g. under `torchrun`) the ranks share the run: rank 0
claims the folder and lists the missing shards, rank r of N writes missing shards r, r + N, ...
The shards equal a single-process run's bit for bit for any N, and a run interrupted under one
N finishes under another. Rank 0 shows one progress line; an error on any rank ends every rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .arguments import check_positive_int, check_writable_folder
from .identity import model_identity, plan_identity
from .images import atomic_write_npz, claim_run_folder, encode_png, read_manifest
from .requests import check_request
from .sampler import Sampler

FORMATS = ("npz", "png")
MANIFEST = "manifest.json"


MAX_SHARDS = 1_000_000


def _run_identity(
    sampler: Sampler, n: int, seed: int, shard_size: int, fmt: str, labels, decoder=None
) -> dict:
    """What must match for a folder to be resumed: the request, the whole plan (every option
    that changes a sample) and the model's configuration and weights."""
    digest = None
    if labels is not None:
        digest = hashlib.sha256(labels.cpu().numpy().astype(np.int64).tobytes()).hexdigest()
    return {
        "n": n,
        "seed": seed,
        "shard_size": shard_size,
        "format": fmt,
        "labels_sha256": digest,
        "decoder": decoder.describe() if decoder is not None else None,
        "plan": plan_identity(sampler.plan),
        "model": model_identity(sampler.model),
    }


def check_out_dir(out_dir: Union[str, Path], name: str = "out_dir") -> Path:
    """A folder path that is, or can be made, a writable folder; else an error naming it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{name} {out_dir} is a file; pass the path of a folder for the shards")
    check_writable_folder(name, out_dir, out_dir)
    return out_dir


def shard_layout(
    out_dir: Union[str, Path], n: int, shard_size: int, fmt: str
) -> tuple[list[Path], list[int]]:
    """The shards of a run of n samples in shards of `shard_size` in format `fmt`: their paths
    under `out_dir` (``shard_00000.npz`` or the folder ``shard_00000``) and their sizes."""
    count = -(-n // shard_size)
    suffix = ".npz" if fmt == "npz" else ""
    paths = [Path(out_dir) / f"shard_{i:05d}{suffix}" for i in range(count)]
    return paths, [min(shard_size, n - i * shard_size) for i in range(count)]


def _to_uint8_images(samples: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] with C in (1, 3) -> uint8 [B, H, W] or [B, H, W, 3]."""
    if samples.ndim != 4 or samples.shape[1] not in (1, 3):
        raise ValueError(
            f"format='png' needs images [B, 1 or 3, H, W], got samples of shape "
            f"{tuple(samples.shape)}; use format='npz'"
        )
    pixels = ((samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)


def _write_shard(
    path: Path, fmt: str, start: int, samples: torch.Tensor, labels, decoder=None
) -> None:
    index = np.arange(start, start + len(samples), dtype=np.int64)
    label_array = (
        labels.cpu().numpy().astype(np.int64) if labels is not None else np.full(len(index), -1)
    )
    decoded = decoder.decode_uint8(samples) if decoder is not None else None
    if fmt == "npz":
        arrays = {"samples": samples.cpu().numpy(), "index": index, "labels": label_array}
        if decoded is not None:
            arrays["images"] = decoded
        atomic_write_npz(path, **arrays)
        return
    if decoded is not None:  # uint8 [B, H, W, C]: grey images as [B, H, W]
        images = decoded[..., 0] if decoded.shape[-1] == 1 else decoded
    else:
        images = _to_uint8_images(samples)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        for i, image in zip(index, images):
            (tmp / f"{i:07d}.png").write_bytes(encode_png(image))
        (tmp / "labels.json").write_text(
            json.dumps(dict(zip(map(int, index), map(int, label_array))))
        )
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)  # the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_leftovers(out_dir: Path) -> None:
    """Temporary files and folders of a shard whose writing was interrupted."""
    for stale in out_dir.glob(".shard_*.tmp"):  # (the manifest's: claim_run_folder)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def sample_to_disk(
    sampler: Sampler,
    n: int,
    out_dir: Union[str, Path],
    *,
    y: Any = None,
    seed: int = 0,
    shard_size: int = 1000,
    format: str = "npz",
    batch_size: Optional[int] = None,
    progress: bool = True,
    decoder: Any = None,
) -> list[Path]:
    """Sample n samples into shards under `out_dir` (see the module docstring), skipping the
    shards a previous run of the same call already wrote. Returns the shard paths in order.
    `decoder` (a `nag_engine.vae.VAE`) decodes latent samples into the images written."""
    if not isinstance(sampler, Sampler):
        raise TypeError(
            f"sampler must be a nag_engine.Sampler, got {type(sampler).__name__}; build one with "
            "nag_engine.Sampler(model, steps, ...)"
        )
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    shard_size = check_positive_int("shard_size", shard_size)
    n, _, shape, labels = check_request(
        sampler.plan,
        n,
        y=y,
        seed=seed,
        latents=None,
        batch_size=batch_size,
        progress=progress,
        default_batch=1,
    )
    if -(-n // shard_size) > MAX_SHARDS:
        raise ValueError(
            f"n={n:,} in shards of {shard_size:,} makes {-(-n // shard_size):,} shards, more "
            f"than the {MAX_SHARDS:,} a folder holds: pass shard_size >= {-(-n // MAX_SHARDS):,}"
        )
    if format == "png" and decoder is None and (len(shape) != 3 or shape[0] not in (1, 3)):
        raise ValueError(
            f"format='png' needs images [1 or 3, H, W], but the samples have shape {shape}; "
            "use format='npz'"
        )
    if decoder is not None:
        decoder.check_latents(shape)
    out_dir = check_out_dir(out_dir)  # made only once the arguments are known to be good
    identity = _run_identity(sampler, n, seed, shard_size, format, labels, decoder)
    shards, sizes = shard_layout(out_dir, n, shard_size, format)

    def claim() -> list[int]:
        out_dir.mkdir(parents=True, exist_ok=True)
        claim_run_folder(out_dir / MANIFEST, identity, "sample_to_disk run")
        _remove_leftovers(out_dir)
        return [i for i, path in enumerate(shards) if not path.exists()]

    # rank 0 alone claims the folder and lists what is missing; the others wait for its answer
    # (or its error), so every rank splits the same list
    missing = distributed.on_main(claim)
    ranks = distributed.current()
    mine = missing[ranks.rank :: ranks.world_size]
    bar = _CombinedProgress(shards, sizes, missing, ranks, enabled=progress and ranks.is_main)

    def write_mine() -> None:  # each shard drawn from its own sample indices
        for i in mine:
            lo, hi = i * shard_size, i * shard_size + sizes[i]
            parts = sampler.stream(
                n,
                y=labels,
                seed=seed,
                batch_size=batch_size,
                progress=progress and ranks.is_main,
                indices=range(lo, hi),
            )
            samples = torch.cat([b.samples for b in parts])
            shard_labels = None if labels is None else labels[lo:hi]
            _write_shard(shards[i], format, lo, samples, shard_labels, decoder)
            bar.wrote(i)

    if not ranks.distributed:
        with bar:
            write_mine()
        return shards
    failure: Optional[Exception] = None
    try:
        write_mine()
    except Exception as err:  # kept until every rank is at the end, to hear of it there
        failure = err
    bar.wait_for_all()
    _raise_any_failure(failure, ranks)
    return shards


class _CombinedProgress:
    """One progress line for the whole run, on rank 0: the samples on disk and, under several
    ranks, each rank's shards done. All ranks write into one folder and a shard appears whole
    (it is renamed into place), so rank 0 reads the other ranks' progress from the folder."""

    def __init__(
        self,
        shards: list[Path],
        sizes: list[int],
        missing: list[int],
        ranks: distributed.Ranks,
        enabled: bool,
    ):
        self.shards, self.sizes, self.ranks, self.enabled = shards, sizes, ranks, enabled
        self.owner = {i: k % ranks.world_size for k, i in enumerate(missing)}
        self.owned = [len(missing[r :: ranks.world_size]) for r in range(ranks.world_size)]
        self.done = [0] * ranks.world_size
        self.pending = set(missing)
        self.bar = tqdm(
            total=sum(sizes),
            initial=sum(sizes) - sum(sizes[i] for i in missing),
            desc="samples on disk",
            unit="sample",
            disable=not enabled,
        )

    def wrote(self, shard: int) -> None:
        """This rank wrote `shard`; under several ranks, look at the others' too."""
        if not self.enabled:
            return
        if self.ranks.distributed:
            self._look()
        else:
            self._count(shard)

    def _count(self, shard: int) -> None:
        self.pending.discard(shard)
        self.done[self.owner[shard]] += 1
        self.bar.update(self.sizes[shard])

    def _look(self) -> None:
        for shard in sorted(i for i in self.pending if self.shards[i].exists()):
            self._count(shard)
        done = " ".join(f"{d}/{t}" for d, t in zip(self.done, self.owned))
        self.bar.set_postfix_str(f"shards per rank {done}", refresh=True)

    def wait_for_all(self) -> None:
        """Wait at a barrier for every rank; rank 0 keeps its line up to date meanwhile."""
        waiting = torch.distributed.barrier(async_op=True)
        while self.enabled and not waiting.is_completed():
            self._look()
            time.sleep(0.5)
        waiting.wait()
        self.close()

    def close(self) -> None:
        if self.enabled and self.ranks.distributed:
            self._look()
        self.bar.close()

    def __enter__(self) -> _CombinedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raise_any_failure(failure: Optional[BaseException], ranks: distributed.Ranks) -> None:
    """Raise on every rank when any rank failed, naming the ranks and their errors."""
    failures = [None] * ranks.world_size
    torch.distributed.all_gather_object(
        failures, None if failure is None else f"{type(failure).__name__}: {failure}"
    )
    if failure is not None:
        raise failure
    failed = [(r, message) for r, message in enumerate(failures) if message is not None]
    if failed:
        raise distributed.DistributedRunError(
            "sample_to_disk failed on "
            + "; ".join(f"rank {r} ({message})" for r, message in failed)
            + ": the shards written are kept; run the same call again to finish"
        )


def load_shards(out_dir: Union[str, Path]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(samples [n, ...], labels [n] or None) of a finished ``npz`` run, in sample order."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir / MANIFEST, "sample_to_disk run")
    if manifest.get("format") != "npz":
        raise ValueError(f"load_shards reads npz runs; {out_dir} is a {manifest['format']} run")
    paths = sorted(out_dir.glob("shard_*.npz"))
    expected = (manifest["n"] + manifest["shard_size"] - 1) // manifest["shard_size"]
    if len(paths) != expected:
        raise ValueError(
            f"{out_dir} has {len(paths)} of {expected} shards: run sample_to_disk again to finish"
        )
    samples, labels, index = [], [], []
    for path in paths:
        with np.load(path) as shard:
            samples.append(shard["samples"])
            labels.append(shard["labels"])
            index.append(shard["index"])
    order = np.concatenate(index)
    if not np.array_equal(order, np.arange(manifest["n"])):
        raise ValueError(f"the shards in {out_dir} do not cover samples 0..n-1 exactly once")
    label_array = np.concatenate(labels)
    return (
        torch.from_numpy(np.concatenate(samples)),
        None if (label_array < 0).all() else torch.from_numpy(label_array),
    )
