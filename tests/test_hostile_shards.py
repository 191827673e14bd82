"""Hostile use of `sample_to_disk`: a folder never mixes two runs, a call that fails its checks
leaves nothing on disk, and bad folders are refused by name before any sampling."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

import nag_engine as ne
from nag_engine.models import ring_mixture
from nag_engine.shards import MANIFEST, load_shards

MODEL = ring_mixture(4, num_classes=4)
BASE = dict(steps=3, solver="ddim")


def write(out, n=6, model=MODEL, run=None, **options):
    """A run of n samples in shards of 2 (labels i % 4, seed 0 unless `run` says)."""
    labels = torch.arange(n) % 4 if isinstance(n, int) and 0 < n < 100 else 0
    run = {"y": labels, "seed": 0, "shard_size": 2, **(run or {})}
    sampler = ne.Sampler(model, **{**BASE, **options})
    return ne.sample_to_disk(sampler, n, out, progress=False, **run)


def interrupted(tmp_path):
    """A finished run with its last shard removed, as after a crash."""
    out = tmp_path / "run"
    shards = write(out)
    shards[-1].unlink()
    return out


def heavier_weights():
    model = copy.deepcopy(MODEL)
    with torch.no_grad():
        model.means[0, 0] += 1e-3
    return model


# (case, options that differ from the first run, the manifest key named in the refusal)
DIFFERENT_RUNS = [
    ("steps", dict(steps=4), "plan.steps"),
    ("solver", dict(solver="euler"), "plan.solver"),
    ("eta", dict(eta=0.5), "plan.solver_options"),
    ("schedule", dict(schedule="vp"), "plan.schedule"),
    ("time shift", dict(time_shift=2.0), "plan.time_shift"),
    ("t_max", dict(t_max=0.9), "plan.t_max"),
    ("cfg scale", dict(cfg_scale=2.0), "plan.cfg_scale"),
    ("nag scale", dict(nag_scale=0.5), "plan.nag_scale"),
    ("cfg interval", dict(cfg_scale=2.0, cfg_interval=(0.0, 0.6)), "plan.cfg_interval"),
    ("nag interval", dict(nag_scale=0.5, nag_interval=(0.3, 1.0)), "plan.nag_interval"),
    ("eps scaling", dict(eps_scaling={"k": 0.01, "b": 1.0}), "plan.eps_scaling"),
    ("time-shift sampler", dict(time_shift_sampler={"window": 0.05}), "plan.time_shift_sampler"),
    ("dtype", dict(dtype="bf16"), "plan.dtype"),
    ("backend", dict(backend="reference"), "plan.backend"),
    ("weights", dict(model=heavier_weights()), "model.weights_sha256"),
    ("seed", dict(run={"seed": 1}), "seed"),
    ("labels", dict(run={"y": torch.arange(6) % 3}), "labels_sha256"),
    ("shard size", dict(run={"shard_size": 3}), "shard_size"),
    ("n", dict(n=8), "n"),
]


@pytest.mark.parametrize(
    "options,key", [c[1:] for c in DIFFERENT_RUNS], ids=[c[0] for c in DIFFERENT_RUNS]
)
def test_a_different_run_cannot_resume_the_folder(tmp_path, options, key):
    out = interrupted(tmp_path)
    before = sorted(p.name for p in out.iterdir())
    if options.get("backend") == "reference" and ne.Sampler(MODEL, 3).backend == "reference":
        pytest.skip("the reference backend is this machine's default")
    with pytest.raises(ValueError, match="holds a different sample_to_disk run") as caught:
        write(out, **options)
    assert key in str(caught.value).split("differs in ")[1]
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


def test_the_same_run_resumes_to_the_uninterrupted_result(tmp_path):
    full = tmp_path / "full"
    write(full)
    out = interrupted(tmp_path)
    write(out)
    a, b = load_shards(full), load_shards(out)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_model_configuration_change_is_named(tmp_path):
    """Same weights, another declared configuration (what a checkpoint's config carries)."""
    out = interrupted(tmp_path)
    model = copy.deepcopy(MODEL)
    model.config = {"note": "another configuration"}
    with pytest.raises(ValueError, match=r"model\.config"):
        write(out, model=model)


@pytest.mark.parametrize(
    "call,error,text",
    [
        (dict(n=0), ValueError, "n must be > 0"),
        (dict(n=-5), ValueError, "n must be > 0"),
        (dict(n="6"), TypeError, "n must be an int"),
        (dict(run={"y": 9}), ValueError, "y must lie in [0, 4)"),
        (dict(run={"y": None}), None, None),  # unconditional sampling of a class model: fine
        (dict(run={"seed": -1}), ValueError, "seed must lie in"),
        (dict(run={"seed": 1.0}), TypeError, "seed must be an int"),
        (dict(run={"shard_size": 0}), ValueError, "shard_size must be > 0"),
        (dict(run={"shard_size": "2"}), TypeError, "shard_size must be an int"),
        (dict(run={"format": "jpg"}), ValueError, "format must be one of"),
        (dict(run={"format": "png"}), ValueError, "format='png' needs images"),
        (dict(run={"batch_size": 0}), ValueError, "batch_size must be > 0"),
        (dict(n=10**12, run={"shard_size": 1, "y": None}), ValueError, "pass shard_size >="),
    ],
    ids=[
        "n zero",
        "n negative",
        "n str",
        "labels out of range",
        "no labels",
        "seed negative",
        "seed float",
        "shard_size zero",
        "shard_size str",
        "format unknown",
        "png of non-images",
        "batch_size zero",
        "too many shards",
    ],
)
def test_a_call_that_fails_its_checks_leaves_nothing(tmp_path, call, error, text):
    out = tmp_path / "run"
    if error is None:
        write(out, **call)
        assert (out / MANIFEST).exists()
        return
    with pytest.raises(error) as caught:
        write(out, **call)
    assert text in str(caught.value)
    assert not out.exists()  # no folder, so no manifest to refuse the corrected call
    write(out)  # the corrected call runs
    assert len(load_shards(out)[0]) == 6


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "shards.npz"
    target.write_bytes(b"not a folder")
    with pytest.raises(ValueError, match="is a file; pass the path of a folder"):
        write(target)
    assert target.read_bytes() == b"not a folder"


def test_out_dir_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="lies under the file"):
        write(tmp_path / "file" / "run")


def test_out_dir_that_cannot_be_written_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user writes through read-only permissions (root)")
        with pytest.raises(ValueError, match="permission denied"):
            write(locked / "run")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    "content,text",
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe\x00", "is not valid JSON"),
        (b"[1, 2, 3]", "holds no sample_to_disk run manifest"),
        (b'"a string"', "holds no sample_to_disk run manifest"),
    ],
    ids=["broken json", "binary", "a list", "a string"],
)
def test_a_broken_manifest_is_named(tmp_path, content, text):
    out = tmp_path / "run"
    out.mkdir()
    (out / MANIFEST).write_bytes(content)
    with pytest.raises(ValueError, match=text) as caught:
        write(out)
    assert str(out / MANIFEST) in str(caught.value)
    with pytest.raises(ValueError, match=text):
        load_shards(out)


def test_an_older_manifest_without_the_new_keys_is_refused(tmp_path):
    out = interrupted(tmp_path)
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["plan"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"differs in plan"):
        write(out)


def test_load_shards_of_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        load_shards(tmp_path)


def test_sample_to_disk_needs_a_sampler(tmp_path):
    with pytest.raises(TypeError, match="sampler must be a nag_engine.Sampler"):
        ne.sample_to_disk(MODEL, 4, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_temporary_files_of_a_killed_write_are_removed(tmp_path):
    """A process killed between writing a temporary file and renaming it leaves it behind."""
    out = interrupted(tmp_path)
    stale = [out / ".manifest.json.x1.tmp", out / ".shard_00002.npz.x2.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    write(out)
    assert not any(path.exists() for path in stale)
    assert len(load_shards(out)[0]) == 6
