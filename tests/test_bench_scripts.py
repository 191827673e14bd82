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


def test_host_overhead_benchmark_times_every_backend_that_runs(tmp_path, capsys):
    from benchmarks import host_overhead

    out = tmp_path / "host.json"
    host_overhead.main(["--calls", "3", "--repeats", "2", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    runnable = [k for k in backends.BACKENDS if _runs_on_cpu(k)]
    assert [r["backend"] for r in rows] == runnable
    assert all(r["checked_us"] > 0 and r["bound_us"] > 0 for r in rows)
    assert "| cpp |" in capsys.readouterr().out or "cpp" not in runnable


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
    args = ["--tiny", "--device", "cpu", "--variants", "a,p1,p3,p4,n1,n3", "--reps", "1"]
    assert sampling.main([*args, "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["diff_reference"] == "a" and row["a"]["max_abs_diff"] == 0.0
    # the same weights, latents, labels and guidance: the bf16 loops stay near the fp32 loop
    for key in ("p1", "n1"):
        assert 0 < row[key]["max_abs_diff"] < 0.05 and row[key]["passes"] == 3
    # on the CPU the CUDA-only variants are skipped with their reason, and p1 is the best peer
    assert "CUDA" in row["p3"]["skipped"] and "CUDA graphs" in row["p4"]["skipped"]
    assert "CUDA only" in row["n3"]["skipped"]
    assert row["best_peer"] == "p1" and row["p1"]["vs_best_peer"] == 1.0
    ratio = row["p1"]["ms_per_step"] / row["n1"]["ms_per_step"]
    assert row["n1"]["vs_best_peer"] == pytest.approx(ratio)
    assert row["n1"]["backend"] == backends.select("cpu")
    assert "eager: cpu tensors" in row["n1"]["graphs"]
    table = capsys.readouterr().out
    assert "| tiny DiT | 4 | (n1) nag_engine | 3 |" in table and "| vs best peer |" in table
    assert "best peer (p1)" in table and "nag_engine best (n1)" in table
    assert "| skipped: needs CUDA" in table
    with pytest.raises(SystemExit):
        sampling.main(["--models", "DiT-Q/9"])
    with pytest.raises(SystemExit):
        sampling.main(["--tiny", "--variants", "b"])  # the old loop names are gone


def test_the_sampling_summary_reports_the_issue_targets():
    from benchmarks import sampling

    row = {"model": "DiT-S/2", "batch": 64, "best_peer": "p2", "p2": {"ms_per_step": 7.5}}
    row["n1"] = {"vs_best_peer": 0.93}
    row["n2"] = {"vs_best_peer": 1.31}
    text = sampling.summary(row)
    assert "best peer (p2) 7.50 ms/step" in text and "nag_engine best (n2) 1.31×" in text
    assert "target ≥ 1.3×: met" in text
    row["n2"]["vs_best_peer"] = 1.01
    assert "target ≥ 1.3×: not met" in sampling.summary(row)
    assert sampling.summary({"model": "tiny DiT", "batch": 4}) == "no peer loop timed"


def test_the_peer_loops_compute_what_nag_engine_computes():
    """The plain DiT's loops -- (a) three forwards, and the peers' one 3B-batch step -- must be
    the same guided Euler sampler as nag_engine on the project DiT: checked in fp32, where they
    agree tightly (a guidance-convention or weight-mapping slip would show here)."""
    import copy
    from functools import partial

    import nag_engine as ne
    from benchmarks import sampling
    from benchmarks.plain_dit import plain_dit_from

    model = sampling.make_model("tiny", True, torch.device("cpu"))
    with torch.no_grad():  # make the three passes differ clearly
        model.y_embedder.embedding_table.weight.mul_(50)
        model.t_embedder.null_embedding.mul_(50)
    plain = plain_dit_from(model)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(3, *model.sample_shape, generator=gen)
    y = torch.tensor([1, 7, 999])
    sampler = ne.Sampler(model, 5, cfg_scale=sampling.CFG, nag_scale=sampling.NAG, solver="euler")
    inputs = sampling.peer_inputs(sampler.grid, y, 1000)
    plain16 = plain_dit_from(copy.deepcopy(model).to(torch.bfloat16))
    with torch.no_grad():
        expected = sampler.sample(3, y=y, latents=latents, progress=False)
        reference = sampling.loop_reference(plain, latents, inputs)
        peer = sampling.loop_peer(partial(sampling.peer_step, plain), latents, inputs)
        peer16 = sampling.loop_peer(partial(sampling.peer_step, plain16), latents, inputs)
        unguided = ne.Sampler(model, 5, solver="euler").sample(
            3, y=y, latents=latents, progress=False
        )
    assert (expected - unguided).abs().max() > 0.05  # guidance matters for this model
    torch.testing.assert_close(reference, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(peer, expected, rtol=1e-4, atol=1e-4)
    assert peer16.dtype == torch.float32  # the state stays fp32, the passes run in bf16
    torch.testing.assert_close(peer16, expected, rtol=0.05, atol=0.05)


def test_the_nag_finetune_study_writes_its_section(tmp_path):
    from benchmarks import nag_finetune

    assert nag_finetune.main(["--tiny", "--runs", str(tmp_path), "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "nag_finetune.json").read_text())
    assert {r["init"] for r in payload["init"]} == set(nag_finetune.INITS)
    assert payload["params"][1]["model"] == "DiT-XL/2" and payload["params"][1]["added"] == 1152
    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- nag_finetune.py: begin -->" in text and "| mean |" in text
    assert "unmeasured" in text  # no GPU here: the DiT-XL/2 row says so instead of a number
