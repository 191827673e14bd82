"""`nag-engine encode`: images (a class folder tree, a flat folder or an ADM .npz) into
training latents through a VAE."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..dtypes import DTYPES
from .common import (
    DEVICE_HELP,
    DEVICE_OPTION,
    check_input,
    check_output_file,
    check_output_folder,
    check_seed_option,
    positive_int,
    resolve_device,
    whole_number,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `encode` command and its options."""
    encode = commands.add_parser(
        "encode",
        help="encode an image folder into training latents with a VAE",
        description="Encodes IMAGES (a folder with one subfolder per class, a flat folder, or "
        "an ADM .npz with arr_0 uint8 [N, H, W, 3]) with the diffusers AutoencoderKL in "
        "--vae DIR, after DiT's centre crop to --size, into OUT (latents times the VAE's "
        "scale, labels, class names) for `nag-engine train --data OUT`. OUT.npz is written "
        "atomically at the end; OUT a folder gets parts written as they complete, and rerunning "
        "the command resumes an interrupted run.",
    )
    encode.add_argument("images", type=Path)
    encode.add_argument("out", type=Path)
    encode.add_argument(
        "--vae",
        type=Path,
        required=True,
        metavar="DIR",
        help="a local diffusers AutoencoderKL folder (config.json + weights)",
    )
    encode.add_argument("--size", type=positive_int, default=256, help="image size (default 256)")
    encode.add_argument("--batch-size", type=positive_int, default=32)
    encode.add_argument(
        "--latent",
        default="sample",
        choices=("sample", "mean"),
        help="one seeded draw from the VAE posterior per image (default; DiT's training draws "
        "afresh every step) or the posterior mean",
    )
    encode.add_argument(
        "--classes",
        type=Path,
        default=None,
        metavar="FILE",
        help="a text file naming the model's class folders in id order, one per line (e.g. "
        "the 1,000 ImageNet synsets), when IMAGES holds only some of them; default: the "
        "sorted subfolders are classes 0, 1, ...",
    )
    encode.add_argument(
        "--part-size",
        type=positive_int,
        default=10_000,
        help="with OUT a folder: images per part file, each written as it completes (a rerun "
        "skips the parts on disk; default 10,000)",
    )
    encode.add_argument("--seed", type=whole_number, default=0)
    encode.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    encode.add_argument(*DEVICE_OPTION, **DEVICE_HELP)
    encode.add_argument("--no-progress", action="store_true")


def check(args: argparse.Namespace) -> None:
    """The arguments, before the VAE is loaded: the paths read, OUT (an .npz file or a folder:
    not a folder for a file, not under a file, writable) and the seed."""
    check_input("IMAGES", args.images, "any", "image folder or .npz")
    check_input("--vae", args.vae, "folder", "VAE folder")
    if args.classes is not None:
        check_input("--classes", args.classes, "file", "class list (a text file)")
    if args.out.suffix.lower() == ".npz":
        check_output_file("OUT", args.out, suffixes=(".npz",))
    elif args.out.suffix == "":
        check_output_folder("OUT", args.out)
    else:
        raise ValueError(
            f"OUT {args.out}: give an .npz file (e.g. {args.out.with_suffix('.npz')}) or a folder "
            "(no suffix) for parts written as they complete"
        )
    check_seed_option(args.seed)


def run(args: argparse.Namespace) -> int:
    from ..vae import encode_images, read_class_list

    check(args)
    device = resolve_device(args.device)
    classes = read_class_list(args.classes) if args.classes is not None else None
    start = time.perf_counter()
    summary = encode_images(
        args.images,
        args.out,
        args.vae,
        size=args.size,
        batch_size=args.batch_size,
        mode=args.latent,
        seed=args.seed,
        classes=classes,
        part_size=args.part_size,
        device=device,
        dtype=DTYPES[args.dtype],
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    labelled = f"{summary['classes']} classes" if summary["classes"] else "unlabelled"
    shape = summary["latent_shape"]
    parts = ""
    if summary["parts_written"] is not None:
        parts = f"; {summary['parts_written']} parts written, {summary['parts_on_disk']} were done"
    print(
        f"encoded {summary['images']} images of {args.images} into {args.out}: latents "
        f"{shape if shape else '(all on disk already)'}, {labelled}{parts} ({seconds:.1f} s on "
        f"{device})"
    )
    return 0
