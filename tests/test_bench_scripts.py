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


def test_sampling_benchmark_runs_its_tiny_configuration(tmp_path, capsys):
    from benchmarks import sampling

    out = tmp_path / "sampling.json"
    assert sampling.main(["--tiny", "--variants", "a,b,d", "--reps", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["a"]["speedup_vs_a"] == 1.0 and row["a"]["max_abs_diff_vs_a"] == 0.0
    # the same latents, labels and guidance: (d) in bf16 stays near the fp32 loop
    assert 0 < row["d"]["max_abs_diff_vs_a"] < 0.05
    assert row["d"]["backend"] == backends.select("cpu")
    assert "eager: cpu tensors" in row["d"]["graphs"]
    table = capsys.readouterr().out
    assert "| tiny DiT | 4 | (d) nag_engine |" in table
    with pytest.raises(SystemExit):
        sampling.main(["--models", "DiT-Q/9"])
