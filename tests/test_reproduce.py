"""The reproduction report script: its section of RESULTS.md and a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.reproduce import (
    BEGIN,
    END,
    late_cell,
    main,
    real_subset,
    replace_section,
    signs_cell,
    summarise,
)
from nag_engine.checkpoints import read_checkpoint


def test_replace_section_keeps_the_rest_of_the_file(tmp_path):
    path = tmp_path / "RESULTS.md"
    assert replace_section(path, "one") == f"{BEGIN}\none\n{END}\n"
    path.write_text(f"# head\n\n{BEGIN}\nold\n{END}\n\n## kernels\ntable\n")
    text = replace_section(path, "new")
    assert text == f"# head\n\n{BEGIN}\nnew\n{END}\n\n## kernels\ntable\n"
    path.write_text("# only a head\n")
    assert replace_section(path, "x") == f"# only a head\n\n{BEGIN}\nx\n{END}\n"


def test_tiny_run_writes_tables_figure_and_data(tmp_path, capsys):
    (tmp_path / "RESULTS.md").write_text("# kept\n")
    args = ["--models", "toy2d", "--steps", "3", "--sweep", "1.0", "--sweep-steps", "3"]
    assert main(args + ["--n-mixture", "40", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# kept\n") and BEGIN in text and END in text
    payload = json.loads((tmp_path / "reproduce.json").read_text())
    settings = {r["setting"] for r in payload["rows"]}
    assert settings == {"none", "cfg", "nag", "cfg+nag", "cnag", "eps-scaling", "time-shift"}
    assert {r["solver"] for r in payload["rows"]} == {"euler", "euler-maruyama"}
    assert [r["nag_scale"] for r in payload["sweep"]] == [1.0, 1.0]
    assert len(text.split("| 3 | euler |")) - 1 == 7  # one table row per setting
    # two sampling seeds by default, mean and standard error over them; floors; both readings
    row = payload["rows"][0]
    assert row["seeds"] == [0, 1] and len(row["per_seed"]) == 2
    assert row["shift_late"] == pytest.approx(np.mean([r["shift_late"] for r in row["per_seed"]]))
    assert row["energy_se"] >= 0 and row["ml_shift_late_se_within"] > 0
    floor = payload["floors"]["toy2d"]
    assert floor["draws"] == 4 and floor["energy"] > 0 and floor["energy_se"] > 0
    assert text.count("**floor** (exact samples, 4 draws)") == 2  # settings and sweep tables
    assert "late shift, max. likelihood" in text and "differ in sign" in text
    with Image.open(tmp_path / "noise_level_density_toy2d.png") as image:
        assert image.format == "PNG"
    figure = tmp_path / "noise_shift_toy2d.png"
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.size == (1280, 500)
    reports = json.loads((tmp_path / "noise_shift_toy2d.json").read_text())
    assert list(reports) == list(payload["figures"]["toy2d"]["settings"])
    assert len(reports["nag"]["shift"]) == 3  # the per-step data the figure draws
    before = text
    figure.unlink()
    assert main(["--render-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "RESULTS.md").read_text() == before
    assert figure.is_file()  # redrawn from noise_shift_toy2d.json


def test_signs_flag_where_the_two_late_readings_disagree():
    row = {"shift_late": -0.01, "shift_late_se_within": 0.001, "ml_shift_late_se_within": 0.002}
    assert signs_cell({**row, "ml_shift_late": -0.003}) == ""
    assert signs_cell({**row, "ml_shift_late": 0.003}) == "≠"  # the ML reading within noise
    assert signs_cell({**row, "ml_shift_late": 0.005}) == "≠ *"  # both > 2 se from 0
    assert signs_cell({**row, "ml_shift_late": None}) == "—"
    edge = {"ml_shift_late": -0.1, "ml_shift_late_se": 0.002, "ml_shift_late_se_within": math.nan}
    assert late_cell(edge, "ml_shift_late") == "-0.1000 ± 0.0020 [edge]"  # no within-run se
    assert late_cell(row | {"shift_late_se": 0.003}, "shift_late") == "-0.0100 ± 0.0030 [0.0010]"


def test_summarise_gives_mean_and_standard_error_over_seeds():
    per_seed = [
        {"seed": 0, "shift": 0.1, "shift_late": 0.2, "shift_late_se": 0.03, "seconds": 1.0},
        {"seed": 1, "shift": 0.3, "shift_late": 0.4, "shift_late_se": 0.04, "seconds": 2.0},
    ]
    row = summarise(per_seed)
    assert row["seeds"] == [0, 1] and row["seconds"] == 3.0
    assert row["shift"] == pytest.approx(0.2) and row["shift_se"] == pytest.approx(0.1)
    assert row["shift_late_se_within"] == pytest.approx(0.025)  # sqrt(0.03^2 + 0.04^2) / 2
    assert "energy" not in row and "ml_shift_late" not in row


def test_real_subset_is_class_balanced_and_disjoint_from_the_rest():
    images = torch.arange(40, dtype=torch.float32)[:, None]
    classes = torch.arange(40) % 4
    labels = torch.arange(10) % 4  # 3, 3, 2, 2 of classes 0..3
    subset, subset_classes, rest = real_subset(
        images, classes, labels, torch.Generator().manual_seed(0)
    )
    assert sorted(subset_classes.tolist()) == sorted(labels.tolist())
    assert torch.equal(subset_classes, classes[subset[:, 0].long()])
    assert len(rest) == 30 and not set(subset[:, 0].tolist()) & set(rest[:, 0].tolist())


def test_cdl_eval_trains_a_pair_and_writes_its_section(tmp_path, monkeypatch):
    from benchmarks import cdl_eval

    # the ring set at test size: 64 samples, batches of 64 (CDL steps cost ~12 plain ones)
    ring_set = {**cdl_eval.SETS["ring"], "n": 64}
    ring_set["train"] = {**ring_set["train"], "batch_size": 64}
    monkeypatch.setitem(cdl_eval.SETS, "ring", ring_set)
    monkeypatch.setattr(
        cdl_eval,
        "SAMPLERS",
        [
            ("DDPM 20", "ddpm", 20, None),
            ("parallel DDPM 20", "ddpm", 20, dict(window=20, tolerance=0.1)),
        ],
    )
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nhand-written text\n")
    args = [
        "--train-steps",
        "20",
        "--runs",
        str(tmp_path / "runs"),
        "--json",
        str(tmp_path / "c.json"),
        "--results",
        str(results),
    ]
    assert cdl_eval.main(args) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "ring-cdl0.1.safetensors",
        "ring-cdl0.safetensors",
    ]
    payload = json.loads((tmp_path / "c.json").read_text())
    ring = payload["sets"]["ring"]
    assert ring["n"] == 64 and ring["training"] == "20 steps from scratch"
    floor, *rows = ring["rows"]
    assert floor["sampler"] == "exact samples (floor)" and floor["energy"] >= 0
    assert [(r["sampler"], r["cdl"]) for r in rows] == [
        ("DDPM 20", "no"),
        ("DDPM 20", "yes"),
        ("parallel DDPM 20", "no"),
        ("parallel DDPM 20", "yes"),
    ]
    assert all(r["iterations"] <= 20 and r["energy"] >= 0 for r in rows)
    assert rows[0]["iterations"] == 20 and rows[2]["iterations"] <= 20
    text = results.read_text()
    assert "hand-written text" in text and "<!-- cdl_eval.py: begin -->" in text
    # rendering again replaces the section instead of adding a second one
    assert cdl_eval.main([*args, "--render-only"]) == 0
    assert results.read_text().count("cdl_eval.py: begin") == 1
    # recomputing the floors alone gives the same floor and keeps the model rows
    assert cdl_eval.main([*args, "--floors-only"]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["sets"]["ring"] == ring

    # a set with a fine-tuning budget: one shared base without CDL, then the pair from it;
    # the ring rows of the first run stay in the table
    tuned = {**ring_set, "finetune": dict(steps=3, batch_size=64, seed=1)}
    monkeypatch.setitem(cdl_eval.SETS, "tuned", tuned)
    assert cdl_eval.main([*args, "--sets", "tuned", "--finetune-steps", "2"]) == 0
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert [n for n in names if n.startswith("tuned")] == [
        "tuned-base.safetensors",
        "tuned-cdl0.1.safetensors",
        "tuned-cdl0.safetensors",
    ]
    config = read_checkpoint(tmp_path / "runs" / "tuned-cdl0.1.safetensors")[0]
    assert config["finetuned_from"].endswith("tuned-base.safetensors")
    assert config["cdl_weight"] == 0.1 and config["step"] == 2
    second = json.loads((tmp_path / "c.json").read_text())
    assert second["sets"]["ring"] == ring
    assert second["sets"]["tuned"]["training"] == (
        "a shared base of 20 steps without CDL, then 2 fine-tuning steps each"
    )
    text = results.read_text()
    assert "**ring**" in text and "**tuned**" in text


def test_cdl_eval_digits_floor_is_the_spread_of_class_balanced_real_subsets(monkeypatch):
    from benchmarks import cdl_eval

    monkeypatch.setitem(cdl_eval.SETS, "digits", {**cdl_eval.SETS["digits"], "n": 30})
    monkeypatch.setattr(cdl_eval, "FLOOR_SUBSETS", 3)
    (row,) = cdl_eval.floor_row("digits", None, seed=0)
    assert row["cdl"] == "—" and "3 class-balanced subsets" in row["sampler"]
    assert row["fd_digits"] > 0 and row["fd_sd"] > 0  # three different subsets
    assert 0.8 <= row["accuracy"] <= 1.0  # real digits, read by the trained classifier
    assert cdl_eval.floor_row("digits", None, seed=0) == [row]  # seeded
