"""pytest-benchmark helpers: benchmarks record their median under a (case, variant) key and
the session ends with a table of every variant's time as a ratio to the case's baseline
variant, measured in the same run (`--ratio-json PATH` also writes it as JSON)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

# the C++ kernels and torch share torch's thread pool; nothing here needs TRITON_INTERPRET
RATIOS: dict[str, dict[str, float]] = defaultdict(dict)
BASELINES: dict[str, str] = {}  # case -> its baseline variant


def pytest_addoption(parser):
    parser.addoption("--ratio-json", default=None, help="write the ratio table here as JSON")


@pytest.fixture
def record():
    """record(case, variant, benchmark, baseline): keep the benchmark's median seconds."""

    def _record(case: str, variant: str, benchmark, baseline: str) -> None:
        BASELINES[case] = baseline
        stats = getattr(benchmark, "stats", None)
        if stats is not None:  # None under --benchmark-disable
            RATIOS[case][variant] = stats.stats.median

    return _record


def pytest_terminal_summary(terminalreporter, config):
    if not RATIOS:
        return
    write = terminalreporter.write_line
    rows = []
    for baseline in dict.fromkeys(BASELINES.values()):  # one table per baseline
        cases = [c for c in RATIOS if BASELINES[c] == baseline and baseline in RATIOS[c]]
        variants = sorted({v for c in cases for v in RATIOS[c]} - {baseline})
        write("")
        write(
            f"time relative to {baseline!r} (median; < 1 is faster), "
            f"{torch.get_num_threads()} CPU threads"
        )
        write(f"{'case':<40} {'baseline us':>12} " + " ".join(f"{v:>16}" for v in variants))
        for case in cases:
            base = RATIOS[case][baseline]
            cells = [
                RATIOS[case][v] / base if v in RATIOS[case] else float("nan") for v in variants
            ]
            write(f"{case:<40} {base * 1e6:>12.1f} " + " ".join(f"{c:>16.3f}" for c in cells))
            rows.append(
                {
                    "case": case,
                    "baseline": baseline,
                    "baseline_us": base * 1e6,
                    **dict(zip(variants, cells)),
                }
            )
    path = config.getoption("--ratio-json")
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps({"rows": rows}, indent=1))
        tmp.replace(path)
