"""Images (a sample run, an image folder, an ADM .npz) as an ADM sample batch, the file the ADM
evaluation suite (guided-diffusion/evaluations/evaluator.py) reads: an ``.npz`` with ``arr_0``
uint8 [N, H, W, 3] (grey images with their channel repeated: the suite reads RGB only) and
``arr_1`` int64 [N], the class labels, when every image has one.

The file is written as ``np.savez`` writes it (uncompressed .npy members in a zip archive), but
streamed one batch at a time through `nag_engine.images.atomic_file` (a temporary file beside
the output, renamed into place once complete: the output appears whole or not at all), and
memory holds one batch, not the 9.8 GB of 50,000 images of 256 x 256.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Union

import numpy as np
from tqdm.auto import tqdm

from ..images import atomic_file, remove_stale_temporaries
from .inputs import NO_LABEL, ImageSet


def _npy_header(shape: tuple[int, ...], dtype: Any) -> dict[str, Any]:
    return {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": shape,
    }


def export_adm(
    images: ImageSet, out: Union[str, Path], *, batch_size: int = 256, progress: bool = True
) -> dict[str, Any]:
    """Write `images` to `out` (.npz) as an ADM batch (see the module docstring). Returns
    {"images": N, "height", "width", "labelled": bool}."""
    if not images.has_images:
        raise ValueError(f"{images.path} holds only mu/sigma, no images to export")
    out = Path(out)
    remove_stale_temporaries(out)  # left by a run killed while writing
    shape = (images.count, images.height, images.width, 3)
    labels = []
    with atomic_file(out) as file, zipfile.ZipFile(file, "w") as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, _npy_header(shape, np.uint8))
            with tqdm(total=images.count, desc="export", unit="img", disable=not progress) as bar:
                for batch, batch_labels in images.batches(batch_size):
                    member.write(np.ascontiguousarray(batch, dtype=np.uint8).tobytes())
                    labels.append(batch_labels)
                    bar.update(len(batch))
        label_array = np.concatenate(labels).astype(np.int64)
        if len(label_array) != images.count:
            raise ValueError(f"{images.path} gave {len(label_array)} images, not {images.count}")
        labelled = bool((label_array != NO_LABEL).all())
        if labelled:
            with archive.open("arr_1.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, label_array, allow_pickle=False)
    return {
        "images": images.count,
        "height": images.height,
        "width": images.width,
        "labelled": labelled,
    }
