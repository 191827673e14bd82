"""`nag-engine evaluate`: FID, Inception Score and precision/recall of samples against a
reference, with the Inception network from a local file (nag_engine.evaluation)."""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .common import (
    DEVICE_HELP,
    DEVICE_OPTION,
    check_output_file,
    one_line,
    positive_int,
    print_table,
    resolve_device,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `evaluate` command and its options."""
    from ..evaluation.inception import INCEPTION_ENV, INCEPTION_FILE, INCEPTION_URL

    evaluate = commands.add_parser(
        "evaluate",
        help="FID, Inception Score and precision/recall of samples against a reference",
        description="Computes FID and Inception Score (torchmetrics) and improved precision/"
        "recall (k = 3, as the ADM evaluator) of SAMPLES against --ref REF, with the Inception "
        "network of the standard tools read from a local file (nothing is downloaded). SAMPLES "
        "and REF are each a `nag-engine sample --shards` run folder (npz shards holding images "
        "or decoded images, or png shards), a folder of images, or an ADM .npz (arr_0 = uint8 "
        "[N, H, W, 3]); an ADM reference batch's mu/sigma are used for FID in place of its "
        "images, as the ADM evaluator does.",
    )
    evaluate.add_argument("samples", type=Path, metavar="SAMPLES")
    evaluate.add_argument(
        "--ref",
        type=Path,
        default=None,
        metavar="REF",
        help="the reference: a run folder, an image folder or an ADM .npz (images and/or "
        "mu/sigma, e.g. ADM's VIRTUAL_imagenet256_labeled.npz); needed for fid and pr",
    )
    evaluate.add_argument(
        "--inception",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"{INCEPTION_FILE}, NVIDIA's TorchScript Inception-v3 ({INCEPTION_URL}); "
        f"default: ${INCEPTION_ENV}",
    )
    evaluate.add_argument(
        "--metrics", default="fid,is,pr", help="comma-separated: fid, is, pr (default all)"
    )
    evaluate.add_argument(
        "--batch-size", type=positive_int, default=64, help="images per network call (64)"
    )
    evaluate.add_argument(*DEVICE_OPTION, **DEVICE_HELP)
    evaluate.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="also write the metrics (and what was compared) to this JSON file, atomically",
    )
    evaluate.add_argument("--no-progress", action="store_true")


@dataclass
class Inputs:
    """What `check` found: the metrics asked for, the two image sets, the network's file."""

    metrics: tuple[str, ...]
    samples: Any
    reference: Optional[Any]
    inception: Path


def _open(option: str, path: Path) -> Any:
    from ..evaluation.inputs import open_images

    try:
        return open_images(path)
    except (ValueError, OSError) as err:
        raise ValueError(f"{option}: {one_line(err)}") from None


def check(args: argparse.Namespace) -> Inputs:
    """The arguments, before the network is loaded or any image decoded: --metrics, --out, the
    Inception file, SAMPLES and REF opened and checked (complete, one image size), and what
    the metrics need of them."""
    from ..evaluation.inception import inception_path
    from ..evaluation.metrics import check_inputs, parse_metrics

    metrics = parse_metrics(args.metrics)
    if args.out is not None:
        check_output_file("--out", args.out, suffixes=(".json",), example="metrics.json")
    if args.ref is None and ("fid" in metrics or "pr" in metrics):
        raise ValueError(
            "fid and pr compare with a reference: pass --ref REF, or use --metrics is alone"
        )
    inception = inception_path(args.inception)
    samples = _open("SAMPLES", args.samples)
    reference = _open("--ref", args.ref) if args.ref is not None else None
    check_inputs(samples, reference, metrics)
    return Inputs(metrics, samples, reference, inception)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.inception import load_inception
    from ..evaluation.metrics import IS_SPLITS, PR_NEIGHBOURS, check_inputs, evaluate
    from ..images import atomic_write_bytes

    inputs = check(args)
    device = resolve_device(args.device)
    network = load_inception(inputs.inception, device)
    check_inputs(inputs.samples, inputs.reference, inputs.metrics, network.num_features)
    start = time.perf_counter()
    results = evaluate(
        inputs.samples,
        inputs.reference,
        network,
        inputs.metrics,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    record = {
        "samples": os.fspath(inputs.samples.path),
        "samples_read": inputs.samples.describe(),
        "reference": os.fspath(inputs.reference.path) if inputs.reference is not None else None,
        "reference_read": inputs.reference.describe() if inputs.reference is not None else None,
        "inception": os.fspath(network.path),
        "inception_sha256": network.sha256,
        "metrics": results,
        "inception_score_splits": IS_SPLITS if "is" in inputs.metrics else None,
        "precision_recall_k": PR_NEIGHBOURS if "pr" in inputs.metrics else None,
        "seconds": round(seconds, 1),
        "device": str(device),
    }
    if args.out is not None:
        atomic_write_bytes(args.out, (json.dumps(record, indent=1) + "\n").encode())
    print(f"samples    {record['samples']}: {record['samples_read']}")
    if inputs.reference is not None:
        fid_from = " (FID from its mu/sigma)" if results.get("fid_reference") == "mu/sigma" else ""
        print(f"reference  {record['reference']}: {record['reference_read']}{fid_from}")
    names = {
        "fid": "FID",
        "inception_score": "IS",
        "inception_score_std": "IS std",
        "precision": "precision",
        "recall": "recall",
    }
    row = {names[k]: v for k, v in results.items() if k in names and v is not None}
    print_table([row])
    written = f"; metrics in {args.out}" if args.out is not None else ""
    print(f"({seconds:.1f} s on {device}{written})")
    return 0
