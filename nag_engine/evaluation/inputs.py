"""The images `nag-engine evaluate` and `export` read, from every form the engine and the standard
tools write, as batches of uint8 [B, H, W, 3] (RGB) with their labels, so that 50,000 images
never sit in memory at once.

* a `nag_engine.shards.sample_to_disk` run folder (manifest.json + shards): ``npz`` shards give
  their ``images`` (decoded by a VAE) or else their ``samples`` when those are images [C, H, W]
  in [-1, 1] with C in (1, 3), turned into pixels as `nag_engine.images.to_uint8` does; ``png``
  shards give their PNG files;
* a folder of images (png, jpg, ...; flat, or one subfolder per class as `nag-engine encode`
  reads it);
* an ADM-format ``.npz`` (``arr_0`` uint8 [N, H, W, 3], labels in ``arr_1``), streamed from the
  file as the ADM evaluator streams it. An ADM reference batch may also hold ``mu`` / ``sigma``,
  the mean and covariance of the reference's pool features, which FID uses in place of the
  images (as the ADM evaluator does); a file with only ``mu`` / ``sigma`` is a statistics-only
  reference.

Grey images repeat their channel three times, as torch-fidelity, clean-fid and the ADM suite do
(Pillow's ``convert("RGB")``). `open_images` checks the whole set before any image is decoded: a
finished run, readable files, one image size.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional, Union

import numpy as np
import torch
from PIL import Image

from ..images import read_manifest, to_uint8
from ..shards import MANIFEST, shard_layout
from ..vae import ImageSource

NO_LABEL = -1  # the label of an image that has none (as sample_to_disk writes it)

NPZ_SHARDS, PNG_SHARDS, FOLDER, ADM_NPZ = "npz shards", "png shards", "image folder", "ADM npz"


@dataclass
class ImageSet:
    """A set of images on disk, checked by `open_images`: `kind` says where they come from,
    `count` and `height` x `width` what they are (0 for a statistics-only reference), `mu` and
    `sigma` the reference statistics an ADM reference batch carries (else None)."""

    path: Path
    kind: str
    count: int = 0
    height: int = 0
    width: int = 0
    mu: Optional[np.ndarray] = None
    sigma: Optional[np.ndarray] = None
    parts: list[Path] = field(default_factory=list)  # shards, or image files, in order
    part_sizes: list[int] = field(default_factory=list)  # images per shard
    labels: Optional[np.ndarray] = None  # folder and ADM labels (shards hold their own)
    samples_key: str = "images"  # what npz shards are read from: "images" or "samples"

    @property
    def has_images(self) -> bool:
        return self.count > 0

    def describe(self) -> str:
        """E.g. "1,000 images 32x32 (npz shards)" or "mu/sigma of 2048 features (ADM npz)"."""
        what = []
        if self.has_images:
            what.append(f"{self.count:,} images {self.height}x{self.width}")
        if self.mu is not None:
            what.append(f"mu/sigma of {len(self.mu)} features")
        return f"{' + '.join(what)} ({self.kind})"

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(uint8 [B, H, W, 3], int64 labels [B], -1 where none) in order, B <= batch_size."""
        if not self.has_images:
            raise ValueError(f"{self.path} holds no images, only mu/sigma")
        if self.kind == NPZ_SHARDS:
            yield from self._npz_shard_batches(batch_size)
        elif self.kind == PNG_SHARDS:
            yield from self._png_shard_batches(batch_size)
        elif self.kind == FOLDER:
            yield from self._file_batches(self.parts, self._labels(), batch_size)
        else:
            yield from self._adm_batches(batch_size)

    # ------------------------------------------------------------------ readers
    def _labels(self) -> np.ndarray:
        if self.labels is not None:
            return self.labels
        return np.full(self.count, NO_LABEL, dtype=np.int64)

    def _checked(self, images: np.ndarray, where: Path) -> np.ndarray:
        images = rgb(images)
        if images.shape[1:3] != (self.height, self.width):
            raise ValueError(
                f"{where} holds images of {images.shape[1]}x{images.shape[2]}, the others "
                f"{self.height}x{self.width}: remove it, or evaluate one size at a time"
            )
        return images

    def _npz_shard_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for path, size in zip(self.parts, self.part_sizes):
            with np.load(path, allow_pickle=False) as shard:
                values, labels = shard[self.samples_key], shard["labels"].astype(np.int64)
            if len(values) != size or len(labels) != size:
                raise ValueError(
                    f"{path} holds {len(values)} samples, its run says {size}: remove it and run "
                    "the same `nag-engine sample` command again"
                )
            for start in range(0, size, batch_size):
                chunk = values[start : start + batch_size]
                if self.samples_key == "samples":
                    chunk = to_uint8(torch.from_numpy(chunk))
                yield self._checked(chunk, path), labels[start : start + batch_size]

    def _png_shard_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for folder in self.parts:
            files = sorted(folder.glob("*.png"))
            names = json.loads((folder / "labels.json").read_text())
            labels = np.array([names.get(str(int(f.stem)), NO_LABEL) for f in files], np.int64)
            yield from self._file_batches(files, labels, batch_size)

    def _file_batches(
        self, files: list[Path], labels: np.ndarray, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            images = [self._checked(read_image(path)[None], path)[0] for path in chunk]
            yield np.stack(images), labels[start : start + batch_size]

    def _adm_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        labels = self._labels()
        with zipfile.ZipFile(self.path) as archive, archive.open("arr_0.npy") as member:
            shape, _, fortran = read_npy_header(member)
            whole = np.load(self.path)["arr_0"] if fortran else None  # (rare) not streamable
            per_image = int(np.prod(shape[1:]))
            for start in range(0, self.count, batch_size):
                count = min(batch_size, self.count - start)
                if whole is not None:
                    chunk = whole[start : start + count]
                else:
                    data = member.read(count * per_image)
                    if len(data) != count * per_image:
                        raise ValueError(
                            f"{self.path}: arr_0 ends early (the file is cut short): write it again"
                        )
                    chunk = np.frombuffer(data, np.uint8).reshape(count, *shape[1:])
                yield self._checked(chunk, self.path), labels[start : start + count]


# ---------------------------------------------------------------------- pixels and files
def rgb(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W], [B, H, W, 1] or [B, H, W, 3] -> [B, H, W, 3] (grey repeated)."""
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


def read_image(path: Path) -> np.ndarray:
    """uint8 [H, W, 3]: an image file converted to RGB by Pillow (grey repeated, alpha dropped)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as err:
        raise ValueError(f"cannot read the image {path} ({err}): remove it or replace it") from None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except OSError as err:
        raise ValueError(f"cannot read the image {path} ({err}): remove it or replace it") from None


def read_npy_header(member: IO[bytes]) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, Fortran order) of an .npy stream, left positioned at its data."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype, fortran


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} of an .npz file, read from its headers only."""
    try:
        with zipfile.ZipFile(path) as archive:
            headers = {}
            for name in archive.namelist():
                if name.endswith(".npy"):
                    with archive.open(name) as member:
                        shape, dtype, _ = read_npy_header(member)
                    headers[name[: -len(".npy")]] = (shape, dtype)
            return headers
    except (zipfile.BadZipFile, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable .npz file ({err}): check the path, or write it again"
        ) from None


# ---------------------------------------------------------------------- opening a set
def open_images(path: Union[str, Path]) -> ImageSet:
    """The images at `path` (a sample run folder, an image folder or an ADM .npz; see the module
    docstring), checked before any is decoded. Raises ValueError / FileNotFoundError naming what
    is wrong and the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return _open_run(path)
        return _open_folder(path)
    if path.suffix.lower() == ".npz":
        return _open_adm(path)
    raise ValueError(
        f"{path} is a {path.suffix or 'suffix-less'} file: give a sample run folder, a folder "
        "of images or an ADM .npz (arr_0 = uint8 [N, H, W, 3])"
    )


def _image_shape(shape: tuple[int, ...], layout: str) -> Optional[tuple[int, int]]:
    """(H, W) of an array of images [N, H, W(, C)] ("NHWC") or [N, C, H, W] ("NCHW") with C in
    (1, 3); None if it is not one."""
    if layout == "NHWC" and len(shape) == 3:
        return shape[1], shape[2]
    if layout == "NHWC" and len(shape) == 4 and shape[3] in (1, 3):
        return shape[1], shape[2]
    if layout == "NCHW" and len(shape) == 4 and shape[1] in (1, 3):
        return shape[2], shape[3]
    return None


def _open_run(path: Path) -> ImageSet:
    manifest = read_manifest(path / MANIFEST, "sample_to_disk run")
    n, shard_size, fmt = manifest.get("n"), manifest.get("shard_size"), manifest.get("format")
    if not isinstance(n, int) or not isinstance(shard_size, int) or fmt not in ("npz", "png"):
        raise ValueError(f"{path / MANIFEST} is no sample run manifest: check the path")
    parts, sizes = shard_layout(path, n, shard_size, fmt)
    count, done = len(parts), sum(p.exists() for p in parts)
    if done < count:
        raise ValueError(
            f"{path} is an unfinished sample run: {done} of {count} shards on disk; run the same "
            "`nag-engine sample` command again to finish it"
        )
    images = ImageSet(path, NPZ_SHARDS if fmt == "npz" else PNG_SHARDS, n, parts=parts)
    images.part_sizes = sizes
    if fmt == "png":
        files = [f for p in parts for f in sorted(p.glob("*.png"))]
        if len(files) != n:
            raise ValueError(f"{path} holds {len(files)} PNG files, its run says {n}: sample again")
        images.height, images.width = _one_size(files, path)
        return images
    for part, size in zip(parts, sizes):
        headers = npz_headers(part)
        key = "images" if "images" in headers else "samples"
        shape, dtype = headers.get(key, ((), None))
        layout = "NHWC" if key == "images" else "NCHW"
        hw = _image_shape(shape, layout)
        if "labels" not in headers or not shape or shape[0] != size:
            raise ValueError(
                f"{path}: {part.name} is no shard of this run ({size} samples and their labels "
                "expected): remove it and run the same `nag-engine sample` command again"
            )
        if hw is None or (key == "images" and dtype != np.uint8):
            raise ValueError(
                f"{path}: the samples in {part.name} have shape {shape}, not images [n, 1 or 3, "
                "H, W] in [-1, 1]; sample latents with a VAE (--vae) so the shards hold decoded "
                "images, or use an image-shaped model"
            )
        if part is parts[0]:
            images.samples_key, (images.height, images.width) = key, hw
        elif hw != (images.height, images.width):
            raise ValueError(
                f"{path}: {part.name} holds images of {hw[0]}x{hw[1]}, {parts[0].name} "
                f"{images.height}x{images.width}: check the run (one image size per run)"
            )
    return images


def _one_size(files: list[Path], where: Path) -> tuple[int, int]:
    """The one (height, width) of all the image files; else an error naming two that differ."""
    size = image_size(files[0])
    for path in files[1:]:
        other = image_size(path)
        if other != size:
            raise ValueError(
                f"{where}: images of two sizes, {files[0].name} {size[0]}x{size[1]} and "
                f"{path.name} {other[0]}x{other[1]}: give one size only (FID compares images "
                "at one resolution); remove the others"
            )
    return size


def _open_folder(path: Path) -> ImageSet:
    try:
        source = ImageSource(path)
    except ValueError as err:  # no images in it
        raise ValueError(
            f"{err}: give a folder of images (flat, or one subfolder per class), a sample run "
            "folder or an ADM .npz"
        ) from None
    images = ImageSet(path, FOLDER, len(source.files), parts=list(source.files))
    images.labels = source.labels
    images.height, images.width = _one_size(images.parts, path)
    return images


def _open_adm(path: Path) -> ImageSet:
    headers = npz_headers(path)
    images = ImageSet(path, ADM_NPZ)
    if "mu" in headers and "sigma" in headers:
        with np.load(path, allow_pickle=False) as data:
            images.mu, images.sigma = (
                data["mu"].astype(np.float64),
                data["sigma"].astype(np.float64),
            )
        d = images.mu.shape[0] if images.mu.ndim == 1 else -1
        if d < 2 or images.sigma.shape != (d, d):
            raise ValueError(
                f"{path}: mu {images.mu.shape} and sigma {images.sigma.shape} are not a mean [D] "
                "and covariance [D, D]; check the file"
            )
    if "arr_0" not in headers:
        if images.mu is None:
            raise ValueError(
                f"{path} has no arr_0 (uint8 images [N, H, W, 3]) and no mu/sigma: give an ADM "
                "batch (e.g. one written by `nag-engine export`)"
            )
        return images
    shape, dtype = headers["arr_0"]
    hw = _image_shape(shape, "NHWC")
    if dtype != np.uint8 or hw is None or shape[0] == 0:
        raise ValueError(
            f"{path}: arr_0 must be uint8 images [N, H, W, 3] (N > 0), got {dtype} {shape}; "
            "give an ADM batch (e.g. one written by `nag-engine export`)"
        )
    images.count, (images.height, images.width) = shape[0], hw
    label_shape, label_dtype = headers.get("arr_1", ((), None))
    if label_shape == (shape[0],) and np.issubdtype(label_dtype, np.integer):
        with np.load(path, allow_pickle=False) as data:
            images.labels = data["arr_1"].astype(np.int64)
    return images
