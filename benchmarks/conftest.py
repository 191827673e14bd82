"""pytest-benchmark helpers: benchmarks record their median under a (case, variant) key and
the session ends with a table of every variant's time as a ratio to the case's baseline,
measured in the same run (`--ratio-json PATH` also writes it as JSON)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

# the C++ kernels and torch share torch's thread pool; nothing here needs TRITON_INTERPRET
RATIOS: dict[str, dict[str, float]] = defaultdict(dict)
BASELINE = "torch chain"


def pytest_addoption(parser):
    parser.addoption("--ratio-json", default=None, help="write the ratio table here as JSON")


@pytest.fixture
def record():
    """record(case, variant, benchmark): keep the benchmark's median seconds."""

    def _record(case: str, variant: str, benchmark) -> None:
        stats = getattr(benchmark, "stats", None)
        if stats is not None:  # None under --benchmark-disable
            RATIOS[case][variant] = stats.stats.median

    return _record


def pytest_terminal_summary(terminalreporter, config):
    if not RATIOS:
        return
    variants = sorted({v for row in RATIOS.values() for v in row} - {BASELINE})
    write = terminalreporter.write_line
    write("")
    write(
        f"time relative to the {BASELINE} (median; < 1 is faster), "
        f"{torch.get_num_threads()} CPU threads"
    )
    write(f"{'case':<34} {BASELINE + ' us':>15} " + " ".join(f"{v:>14}" for v in variants))
    rows = []
    for case, times in RATIOS.items():
        base = times.get(BASELINE)
        if base is None:
            continue
        cells = [times[v] / base if v in times else float("nan") for v in variants]
        write(f"{case:<34} {base * 1e6:>15.1f} " + " ".join(f"{c:>14.3f}" for c in cells))
        rows.append({"case": case, "baseline_us": base * 1e6, **dict(zip(variants, cells))})
    path = config.getoption("--ratio-json")
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps({"baseline": BASELINE, "rows": rows}, indent=1))
        tmp.replace(path)
