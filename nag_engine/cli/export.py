"""`nag-engine export`: samples (a run folder, an image folder, an ADM .npz) as an ADM sample
batch, the .npz the ADM evaluation suite reads (nag_engine.evaluation.export)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .common import check_output_file, one_line, positive_int

if TYPE_CHECKING:
    from ..evaluation.inputs import ImageSet


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `export` command and its arguments."""
    export = commands.add_parser(
        "export",
        help="write samples as an ADM batch .npz for the ADM evaluation suite",
        description="Writes the images of SAMPLES (a `nag-engine sample --shards` run folder, "
        "a folder of images or an ADM .npz) to OUT.npz as the ADM evaluation suite "
        "(guided-diffusion/evaluations/evaluator.py) reads a sample batch: arr_0 = uint8 "
        "[N, H, W, 3] (grey images repeated to RGB), arr_1 = int64 class labels when every "
        "sample has one. Streamed batch by batch and renamed into place when complete.",
    )
    export.add_argument("samples", type=Path, metavar="SAMPLES")
    export.add_argument("out", type=Path, metavar="OUT.npz")
    export.add_argument(
        "--batch-size", type=positive_int, default=256, help="images read at a time (256)"
    )
    export.add_argument("--no-progress", action="store_true")


def check(args: argparse.Namespace) -> ImageSet:
    """The arguments, before any image is read: OUT (an .npz file, not a folder, in a folder
    that can be written) and SAMPLES, opened and checked; returns the opened image set."""
    from ..evaluation.inputs import open_images

    check_output_file("OUT", args.out, suffixes=(".npz",), example="samples.npz")
    try:
        images = open_images(args.samples)
    except (ValueError, OSError) as err:
        raise ValueError(f"SAMPLES: {one_line(err)}") from None
    if not images.has_images:
        raise ValueError(
            f"SAMPLES {args.samples} holds only mu/sigma, no images: give images to export"
        )
    if args.out.resolve() == args.samples.resolve():
        raise ValueError(f"OUT {args.out} is SAMPLES itself: choose another file")
    return images


def run(args: argparse.Namespace) -> int:
    from ..evaluation.export import export_adm

    images = check(args)
    start = time.perf_counter()
    summary = export_adm(
        images, args.out, batch_size=args.batch_size, progress=not args.no_progress
    )
    labels = "with labels (arr_1)" if summary["labelled"] else "without labels"
    print(
        f"exported {summary['images']:,} images {summary['height']}x{summary['width']} of "
        f"{args.samples} ({images.kind}) to {args.out} as an ADM batch, {labels} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0
