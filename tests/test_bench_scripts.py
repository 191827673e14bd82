"""The GPU benchmark script runs end to end (on CPU tensors here, as a smoke test), so the
first session with a GPU measures instead of debugging; it never asserts a speed."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_fused_step_gpu as bench
from nag_engine import backends


def test_fused_step_benchmark_writes_its_table(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--min-bytes", "4096", "--max-bytes", "4096", "--reps", "2"]
    assert bench.main([*args, "--no-adaln", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["available"] == backends.available()
    assert [r["dtype"] for r in payload["fused_step"]] == ["bfloat16", "float32"]
    row = payload["fused_step"][0]
    assert row["bytes_moved"] == 2 * 3 * 1024 * 2 + 12 * 1024
    runs_here = [k for k in bench.FUSED if f"{k}_us" in row]
    assert runs_here == [k for k in bench.FUSED if _runs_on_cpu(k)]
    table = capsys.readouterr().out
    assert "| 4 KiB | bfloat16 |" in table and "Device: cpu (smoke test)" in table


def _runs_on_cpu(name: str) -> bool:
    try:
        backends.select("cpu", name)
    except ValueError:
        return False
    return True


def test_layernorm_benchmark_row():
    pytest.importorskip("triton")
    row = bench.measure_adaln("tiny", (2, 3, 16), torch.float32, torch.device("cpu"), reps=1)
    assert row["shape"] == "tiny" and row["fused_us"] > 0 and row["torch_us"] > 0
