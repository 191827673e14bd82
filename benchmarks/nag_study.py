"""The NAG study (issue 18): where NAG helps and where it does not, on models that are not
already perfect, with floors, seeds and paired standard errors.

    python -m benchmarks.nag_study gmm32                 # 32-D mixture (66 min, 2 CPU cores)
    python -m benchmarks.nag_study gmm32 --quick         # a smoke run (< 1 min)
    python -m benchmarks.nag_study gmm32 --render-only   # RESULTS section + figure from the JSON
    python -m benchmarks.nag_study digits                # digits DiT over training (resumable)

Each part of the study is a subcommand (`PARTS`, one module ``benchmarks/nag_study_<part>.py``
with ``add_arguments(parser)`` and ``run(args) -> int``). A part writes ``nag_study_<part>.json``
(every number), ``nag_study_<part>.png`` and its section of ``RESULTS.md`` (all into ``--out``,
default ``benchmarks/``) between ``<!-- nag_study <part>: begin -->`` and ``... end -->``, placed
after the study's pre-registered prediction, which is never rewritten.

This module also holds what the parts share: the autoguidance wrapper (`AutoguidanceModel`),
means with standard errors, paired differences, and writing a part's section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from benchmarks.reproduce import replace_section
from nag_engine.images import atomic_write_bytes
from nag_engine.models.protocol import DENOISER_DEFAULTS

Tensor = torch.Tensor

HERE = Path(__file__).resolve().parent
PARTS = {
    "gmm32": "benchmarks.nag_study_gmm32",
    "digits": "benchmarks.nag_study_digits",
}  # later: finetune, cdl
STUDY_HEADING = "## Where NAG helps and where it does not: the study (benchmarks/nag_study.py)"


# ----------------------------------------------------------------------------- autoguidance
class AutoguidanceModel(nn.Module):
    """Autoguidance (Karras et al. 2024) run by the engine's NAG machinery.

    The rows the engine marks noise-dropped (``drop_t``: NAG's second pass) are evaluated by
    `weak` -- an earlier, weaker checkpoint of the same run -- WITH their time condition; every
    other row by `strong`. With ``nag_scale = s`` the engine's ``out + s (out - out_dropped)``
    becomes ``D1 + s (D1 - D0) = D0 + w (D1 - D0)`` with ``w = 1 + s`` (w = 1: no guidance), at
    two evaluations per step in one call of this module."""

    supports_noise_dropout = True

    def __init__(self, strong: nn.Module, weak: nn.Module) -> None:
        super().__init__()
        self.strong, self.weak = strong, weak
        for name in ("prediction", "schedule", "num_classes", "sample_shape"):
            setattr(self, name, getattr(strong, name, DENOISER_DEFAULTS[name]))

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Optional[Tensor] = None,
        *,
        drop_t: Optional[Tensor] = None,
        drop_y: Optional[Tensor] = None,
    ) -> Tensor:
        """`strong`'s prediction on rows without ``drop_t``, `weak`'s (at time t) on the rest."""
        if drop_t is None or not bool(drop_t.any()):
            return self.strong(x, t, y, drop_y=drop_y)
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(len(x))
        out = torch.empty_like(x)
        for model, rows in ((self.strong, ~drop_t), (self.weak, drop_t)):
            if bool(rows.any()):
                out[rows] = model(x[rows], t[rows], _rows(y, rows), drop_y=_rows(drop_y, rows))
        return out


def _rows(value: Optional[Tensor], rows: Tensor) -> Optional[Tensor]:
    return None if value is None else value[rows]


# ----------------------------------------------------------------------------- statistics
def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std with ddof 1 over sqrt(n); NaN for one value)."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 0:
        return math.nan, math.nan
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    return float(a.mean()), se


def paired_difference(
    reference: Sequence[float],
    treated: Sequence[float],
    groups: Optional[Sequence[Any]] = None,
) -> dict[str, float]:
    """Mean and standard error of ``reference[i] - treated[i]`` over the pairs i (each pair: the
    same training seed, sampling seed and checkpoint). A positive mean: the treatment lowers the
    quantity.

    ``se`` treats the pairs as independent. With `groups` (e.g. the training seed of each pair),
    ``se_clustered`` is the standard error over the group means instead: pairs that share a model
    share its error, so this is the honest error for another draw of models (NaN below 2 groups).
    """
    ref = np.asarray(reference, dtype=np.float64)
    new = np.asarray(treated, dtype=np.float64)
    if ref.shape != new.shape:
        raise ValueError(f"paired values must match: {ref.shape} vs {new.shape}")
    diff = ref - new
    mean, se = mean_se(diff)
    out = {"mean": mean, "se": se, "n": int(len(diff)), "se_clustered": math.nan}
    if groups is not None:
        keys = list(groups)
        means = [diff[[k == g for k in keys]].mean() for g in dict.fromkeys(keys)]
        out["se_clustered"] = mean_se(means)[1]
    return out


def significant(entry: dict[str, float], sigmas: float = 2.0) -> int:
    """+1 / -1 when a paired mean lies more than `sigmas` standard errors above / below 0,
    else 0 (also when its error is unknown)."""
    mean, se = entry["mean"], entry["se"]
    if not (math.isfinite(mean) and math.isfinite(se)):
        return 0
    if mean > sigmas * se:
        return 1
    if mean < -sigmas * se:
        return -1
    return 0


def format_pm(mean: float, se: float, bold: bool = False) -> str:
    """``mean ± se`` with as many decimals as the error warrants, in scientific notation for
    numbers under 1e-3 (bold in markdown if asked)."""
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(se) or se <= 0:
        text = f"{mean:.4g}"
    elif max(abs(mean), se) < 1e-3:
        text = f"{mean:.2e} ± {se:.1e}"
    else:
        places = min(6, max(1, 1 - math.floor(math.log10(se))))
        text = f"{mean:.{places}f} ± {se:.{places}f}"
    return f"**{text}**" if bold else text


def machine_description() -> str:
    """The CPU cores, this process's niceness, its torch threads and the torch version."""
    threads = torch.get_num_threads()
    return (
        f"{os.cpu_count()} CPU cores ({platform.machine()}), niceness {os.nice(0)}, {threads} "
        f"torch thread{'s' if threads != 1 else ''}, torch {torch.__version__}"
    )


# ----------------------------------------------------------------------------- RESULTS.md
def markers(part: str) -> tuple[str, str]:
    """The begin / end comments around `part`'s section of RESULTS.md."""
    return f"<!-- nag_study {part}: begin -->", f"<!-- nag_study {part}: end -->"


def with_markers(text: str, part: str) -> str:
    """`text` (RESULTS.md) with empty markers for `part` where it has none: after the study's
    pre-registered text, before the next ``## `` heading (at the end of the file when the study
    heading is missing). Text that is already there is not changed."""
    begin, end = markers(part)
    if begin in text and end in text:
        return text
    block = f"{begin}\n{end}\n"
    start = text.find(STUDY_HEADING)
    if start < 0:
        return (text.rstrip() + "\n\n" if text.strip() else "") + block
    following = text.find("\n## ", start + len(STUDY_HEADING))
    if following < 0:
        return text.rstrip() + "\n\n" + block
    return text[: following + 1] + block + "\n" + text[following + 1 :]


def write_section(path: Path, part: str, body: str) -> None:
    """Write `body` between `part`'s markers in the RESULTS.md at `path` (atomically), placing
    the markers first where they are missing; the rest of the file is kept."""
    old = path.read_text() if path.is_file() else ""
    placed = with_markers(old, part)
    if placed != old:
        atomic_write_bytes(path, placed.encode())
    atomic_write_bytes(path, replace_section(path, body, f"nag_study {part}").encode())


# ----------------------------------------------------------------------------- command line
def main(argv: Optional[list[str]] = None) -> int:
    """Run one part of the study (a subcommand)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nag_study",
        description=" ".join(__doc__.split("\n\n")[0].split()),
    )
    sub = parser.add_subparsers(dest="part", required=True)
    modules = {}
    for part, module_name in PARTS.items():
        module = importlib.import_module(module_name)
        modules[part] = module
        part_parser = sub.add_parser(part, help=module.__doc__.splitlines()[0])
        part_parser.add_argument("--out", type=Path, default=HERE, help="output folder")
        module.add_arguments(part_parser)
    args = parser.parse_args(argv)
    return modules[args.part].run(args)


if __name__ == "__main__":
    raise SystemExit(main())
