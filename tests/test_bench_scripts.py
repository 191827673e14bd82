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
    assert bench.main([*args, "--no-adaln", "--no-picard", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["available"] == backends.available()
    assert [r["dtype"] for r in payload["fused_step"]] == ["bfloat16", "float32"]
    row = payload["fused_step"][0]
    assert row["bytes_moved"] == 2 * 3 * 1024 * 2 + 12 * 1024
    runs_here = [k for k in bench.FUSED if f"{k}_us" in row]
    assert runs_here == [k for k in bench.FUSED if _runs_on_cpu(k)]
    table = capsys.readouterr().out
    assert "| 4 KiB | bfloat16 |" in table and "Device: cpu (smoke test)" in table


def test_fused_step_benchmark_times_the_picard_update(tmp_path, capsys, monkeypatch):
    # test-size windows: the Triton kernel runs in the interpreter here
    monkeypatch.setattr(bench, "PICARD_SHAPES", [("window 5, b2", 5, 2), ("window 3, b1", 3, 1)])
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--min-bytes", "4096", "--max-bytes", "4096", "--reps", "1"]
    assert bench.main([*args, "--no-adaln", "--picard-dim", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["picard_update"]
    assert [(r["shape"], r["dtype"]) for r in rows] == [
        (name, dtype) for dtype in ("bfloat16", "float32") for name, *_ in bench.PICARD_SHAPES
    ]
    window, batch = bench.PICARD_SHAPES[0][1:]
    assert rows[0]["bytes_moved"] == window * 3 * batch * 4 * 2 + (3 * window + 1) * batch * 4 * 4
    assert all(("triton_us" in r) == _runs_on_cpu("triton") for r in rows)
    assert "| Picard update | dtype |" in capsys.readouterr().out


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


def test_the_baseline_loops_compute_what_nag_engine_computes():
    """(a) and (b) must be the same guided Euler sampler as (d): checked in fp32, where they
    can agree tightly (a guidance-convention slip would show here)."""
    import nag_engine as ne
    from benchmarks import sampling

    model = sampling.make_model("tiny", True, torch.device("cpu"))
    with torch.no_grad():  # make the three passes differ clearly
        model.y_embedder.embedding_table.weight.mul_(50)
        model.t_embedder.null_embedding.mul_(50)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(3, *model.sample_shape, generator=gen)
    y = torch.tensor([1, 7, 999])
    sampler = ne.Sampler(model, 5, cfg_scale=sampling.CFG, nag_scale=sampling.NAG, solver="euler")
    with torch.no_grad():
        expected = sampler.sample(3, y=y, latents=latents, progress=False)
        eager = sampling.loop_eager(model, latents, y, sampler.grid.float())
        batched = sampling.loop_batched(model, latents, y, sampler.grid.float())  # bf16 latents
        plain = ne.Sampler(model, 5, solver="euler").sample(3, y=y, latents=latents, progress=False)
    assert (expected - plain).abs().max() > 0.05  # guidance matters for this model
    torch.testing.assert_close(eager, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batched, expected, rtol=0.05, atol=0.05)


def test_the_nag_finetune_study_writes_its_section(tmp_path):
    from benchmarks import nag_finetune

    assert nag_finetune.main(["--tiny", "--runs", str(tmp_path), "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "nag_finetune.json").read_text())
    assert {r["init"] for r in payload["init"]} == set(nag_finetune.INITS)
    assert payload["params"][1]["model"] == "DiT-XL/2" and payload["params"][1]["added"] == 1152
    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- nag_finetune.py: begin -->" in text and "| mean |" in text
    assert "unmeasured" in text  # no GPU here: the DiT-XL/2 row says so instead of a number
