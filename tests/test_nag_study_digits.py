"""The digits part of the NAG study (benchmarks/nag_study_digits.py): its floor, its paired
analysis, and a tiny run end to end into a copy of RESULTS.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from benchmarks import nag_study
from benchmarks import nag_study_digits as digits
from nag_engine.analysis.metrics import frechet_distance

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "RESULTS.md"


def test_the_floor_is_half_the_distance_of_disjoint_halves():
    features = torch.randn(400, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    floor = digits.fd_floor(features, splits=5, seed=1)
    assert len(floor["values"]) == 5 and floor["se"] > 0
    order = torch.randperm(400, generator=torch.Generator().manual_seed(1))
    by_hand = 0.5 * frechet_distance(features[order[:200]], features[order[200:]])
    assert floor["values"][0] == pytest.approx(by_hand)


def synthetic_payload() -> dict:
    """Two checkpoints, two seeds: NAG 0.5 lowers FD by 1.0 at the first, nothing at the second."""
    size = digits.Size(checkpoints=(10, 20), sample_seeds=2)
    methods = digits.study_methods(size)
    runs = []
    for checkpoint in size.checkpoints:
        for seed in (0, 1):
            for m in methods:
                fd = 5.0 + seed * 0.1
                if m.name == "nag 0.5" and checkpoint == 10:
                    fd -= 1.0 + 0.01 * seed
                runs.append(dict(method=m.name, train_seed=0, sample_seed=seed,
                                 checkpoint=checkpoint, fd=fd, accuracy=0.9))  # fmt: skip
    methods = [{**m.__dict__, "options": dict(m.options), "nfe": digits.nfe(m)} for m in methods]
    return dict(size=size.__dict__, methods=methods, runs=runs, floor=dict(mean=2.0, se=0.1),
                machine="test", wall_s=60.0, feature_net_held_out_accuracy=0.98)  # fmt: skip


def test_the_paired_gain_and_the_verdict_follow_the_runs():
    payload = synthetic_payload()
    analysis = digits.analyse(payload)
    gain = digits._row(analysis, "nag 0.5", 10)["gain"]
    assert gain["mean"] == pytest.approx(1.005) and gain["se"] == pytest.approx(0.005)
    assert digits._row(analysis, "nag 0.5", 10)["significant"] == 1
    assert digits._row(analysis, "nag 0.5", 20)["gain"]["mean"] == pytest.approx(0.0)
    assert digits._row(analysis, "baseline", 10)["excess"] == pytest.approx(3.05)
    text = digits.render(payload, analysis)
    assert "10 steps (NAG 0.5: 1.0050 ± 0.0050)" in text
    assert "nfe" not in text and "| nag 0.5 | 50 |" in text


def test_a_tiny_run_writes_its_json_figure_and_section(tmp_path, monkeypatch):
    tiny = digits.Size(n=24, steps=2, checkpoints=(2, 4), sample_seeds=2, floor_splits=2)
    monkeypatch.setitem(digits.SIZES, "quick", tiny)
    monkeypatch.setattr(digits, "study_methods", lambda size: [
        digits.Method("baseline", "baseline", 0.0, size.steps),
        digits.Method("nag 0.5", "nag", 0.5, size.steps, (("nag_scale", 0.5),)),
        digits.Method("autoguidance w = 2", "autoguidance", 1.0, size.steps,
                      (("nag_scale", 1.0),)),
    ])  # fmt: skip
    results = tmp_path / "RESULTS.md"
    results.write_text(RESULTS.read_text())
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    digits.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--quick", "--runs", str(tmp_path / "runs")])
    assert digits.run(args) == 0
    payload = json.loads((tmp_path / "nag_study_digits.json").read_text())
    assert len(payload["runs"]) == 2 * 2 * 3
    assert (tmp_path / "nag_study_digits.png").stat().st_size > 0
    text = results.read_text()
    begin, end = nag_study.markers("digits")
    assert text.index(nag_study.STUDY_HEADING) < text.index(begin) < text.index(end)
    assert "**Pre-registered prediction.**" in text  # the pre-registration is kept
    assert "a `--quick` smoke run" in text[text.index(begin) : text.index(end)]

    # a second run takes every result from the cache (a killed study resumes) and agrees
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again although the result is cached")

    monkeypatch.setattr(digits, "run_method", no_sampling)
    assert digits.run(args) == 0
    again = json.loads((tmp_path / "nag_study_digits.json").read_text())
    assert again["runs"] == payload["runs"]
