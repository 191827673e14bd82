"""Hostile input to the `nag-engine` command: every bad option ends, before any work, with exit
status 2 and one line on stderr, `nag-engine COMMAND: error: ...`, that names the option and the
fix; no traceback, nothing written, nothing sampled or trained (the work functions fail the test
if called). The happy paths are in test_cli.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nag_engine.cli import COMMANDS, main

# words by which a message says what to do
FIX_WORDS = (
    "pass",
    "give",
    "name ",
    "choose",
    "use ",
    "add ",
    "drop",
    "remove",
    "check the",
    "again",
    "see `",
    "e.g.",
    "lower",
)


# ---------------------------------------------------------------------- the workspace
@pytest.fixture
def paths(tmp_path, monkeypatch) -> dict[str, Path]:
    """A working folder (also the current directory, so default outputs would land in it) with
    a regular file, a folder, a file that is no checkpoint and folders named like output files."""
    found = {
        "tmp": tmp_path,
        "file": tmp_path / "file.png",
        "dir": tmp_path / "adir",
        "junk": tmp_path / "junk.safetensors",
        "list": tmp_path / "list.json",
    }
    found["file"].write_bytes(b"x")
    found["dir"].mkdir()
    found["junk"].write_text("hello")
    found["list"].write_text("[1, 2]")
    for name in ("taken.npz", "taken.png", "pic.png"):  # folders where files would go
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    return found


def tree(root: Path) -> set[str]:
    """Every path under root, relative, folders marked with a trailing /."""
    found = set()
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        found.update(f"{rel / d}/" for d in dirs)
        found.update(str(rel / f) for f in files)
    return found


@pytest.fixture
def work(monkeypatch) -> dict[str, int]:
    """The commands' work fails the test if it starts; model loads are counted."""
    from nag_engine import convert, shards, vae
    from nag_engine.analysis import noise_shift
    from nag_engine.cli import common, demo
    from nag_engine.sampler import Sampler
    from nag_engine.training.trainer import Trainer

    def started(*args, **kwargs):
        pytest.fail("work started before the bad option was refused")

    for owner, name in (
        (Sampler, "sample"),
        (Sampler, "stream"),
        (shards, "sample_to_disk"),
        (noise_shift, "measure_noise_shift"),
        (Trainer, "__init__"),
        (Trainer, "run"),
        (Trainer, "resume"),
        (Trainer, "finetune"),
        (vae, "encode_images"),
        (convert, "convert_checkpoint"),
    ):
        monkeypatch.setattr(owner, name, started)
    counts = {"models": 0}
    load = common.resolve_model

    def counted(name):
        counts["models"] += 1
        return load(name)

    monkeypatch.setattr(common, "resolve_model", counted)
    monkeypatch.setattr(demo, "resolve_model", counted)
    return counts


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `nag-engine ARGV`, run in this process."""
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, out: str, err: str, command: str, *options: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr naming the option(s) and a fix; the line."""
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    prefix = f"nag-engine {command}: error: " if command else "nag-engine: error: "
    assert line.startswith(prefix), line
    assert all(option in line for option in options), line
    assert any(word in line for word in FIX_WORDS), f"no fix in: {line}"
    assert out == "", out
    return line


# ---------------------------------------------------------------------- the cases
SAMPLE = ["sample", "--steps", "2", "--n", "8", "--no-progress", "--out", "{tmp}/s.npz"]
DEMO = ["demo", "--steps", "2", "--n-toy", "20", "--n-digits", "10", "--out", "{tmp}/demo"]
ANALYZE = ["analyze", "--model", "ring-exact", "--n", "8", "--steps", "2", "--out", "{tmp}/an"]
TRAIN = ["train", "--steps", "2", "--no-progress", "--out", "{tmp}/run"]
ENCODE = ["encode", "{dir}", "{tmp}/lat.npz", "--vae", "{dir}"]
CONVERT = ["convert", "{junk}", "{tmp}/dst.safetensors", "--format", "dit"]
HUGE = str(10**12)


def case(group: str, name: str, argv: list[str], *named: str, loads: bool = False):
    """One hostile call: argv (a later option wins over the base's), what its error must name
    (the option, and any hint), and whether it may load the model before refusing (the checks
    against the model: --label, a damaged checkpoint)."""
    return pytest.param(argv, named, loads, id=f"{group}-{name}")


CASES = [
    # sample: counts
    case("sample", "n-zero", SAMPLE + ["--n", "0"], "--n"),
    case("sample", "n-negative", SAMPLE + ["--n", "-3"], "--n"),
    case("sample", "n-text", SAMPLE + ["--n", "abc"], "--n"),
    case("sample", "n-float-notation", SAMPLE + ["--n", "1e9"], "--n", "1000000000"),
    case("sample", "n-cannot-fit", SAMPLE + ["--n", HUGE], "--n"),
    case("sample", "steps-zero", SAMPLE + ["--steps", "0"], "--steps"),
    case("sample", "steps-negative", SAMPLE + ["--steps", "-1"], "--steps"),
    case("sample", "steps-billions", SAMPLE + ["--steps", "3000000000"], "--steps"),
    case("sample", "batch-size-zero", SAMPLE + ["--batch-size", "0"], "--batch-size"),
    case(
        "sample",
        "shard-size-zero",
        SAMPLE + ["--shards", "{tmp}/sh", "--shard-size", "0"],
        "--shard-size",
    ),
    # sample: outputs
    case("sample", "out-is-a-folder", SAMPLE + ["--out", "{tmp}/taken.npz"], "--out"),
    case("sample", "out-default-name-folder", SAMPLE + ["--out", "{dir}"], "--out"),
    case("sample", "out-under-a-file", SAMPLE + ["--out", "{file}/x.npz"], "--out"),
    case("sample", "out-wrong-suffix", SAMPLE + ["--out", "{tmp}/s.txt"], "--out"),
    case("sample", "out-picture-is-a-folder", SAMPLE + ["--out", "{tmp}/pic.npz"], "--out"),
    case("sample", "shards-is-a-file", SAMPLE + ["--shards", "{file}"], "--shards"),
    case("sample", "shards-under-a-file", SAMPLE + ["--shards", "{file}/sub"], "--shards"),
    case("sample", "grid-is-a-folder", SAMPLE + ["--grid", "{tmp}/taken.png"], "--grid"),
    case("sample", "grid-not-png", SAMPLE + ["--grid", "{tmp}/g.jpg"], "--grid"),
    case(
        "sample",
        "grid-with-shards",
        SAMPLE + ["--grid", "{tmp}/g.png", "--shards", "{tmp}/sh"],
        "--grid",
    ),
    # sample: inputs
    case("sample", "model-missing", SAMPLE + ["--model", "{tmp}/missing.safetensors"], "--model"),
    case("sample", "model-is-a-folder", SAMPLE + ["--model", "{dir}"], "--model"),
    case("sample", "model-not-a-checkpoint", SAMPLE + ["--model", "{junk}"], "--model", loads=True),
    case("sample", "vae-missing", SAMPLE + ["--vae", "{tmp}/novae"], "--vae"),
    case("sample", "vae-is-a-file", SAMPLE + ["--vae", "{file}"], "--vae"),
    # sample: numbers and choices
    case("sample", "cfg-nan", SAMPLE + ["--cfg-scale", "nan"], "--cfg-scale"),
    case("sample", "cfg-inf", SAMPLE + ["--cfg-scale", "inf"], "--cfg-scale"),
    case("sample", "cfg-text", SAMPLE + ["--cfg-scale", "abc"], "--cfg-scale"),
    case("sample", "nag-nan", SAMPLE + ["--nag-scale", "nan"], "--nag-scale"),
    case("sample", "seed-negative", SAMPLE + ["--seed", "-1"], "--seed"),
    case("sample", "seed-2-to-the-64", SAMPLE + ["--seed", str(2**64)], "--seed"),
    case("sample", "dtype-bogus", SAMPLE + ["--dtype", "bogus"], "--dtype"),
    case("sample", "device-bogus", SAMPLE + ["--device", "bogus"], "--device"),
    case("sample", "solver-bogus", SAMPLE + ["--solver", "bogus"], "--solver"),
    case("sample", "time-shift-zero", SAMPLE + ["--time-shift", "0"], "--time-shift"),
    case(
        "sample", "interval-reversed", SAMPLE + ["--cfg-interval", "0.8", "0.2"], "--cfg-interval"
    ),
    case("sample", "interval-nan", SAMPLE + ["--nag-interval", "nan", "1"], "--nag-interval"),
    case("sample", "shift-window-negative", SAMPLE + ["--shift-window", "-0.1"], "--shift-window"),
    case("sample", "variance-without-ddpm", SAMPLE + ["--variance", "large"], "--variance"),
    case("sample", "label-out-of-range", SAMPLE + ["--label", "99"], "--label", loads=True),
    case("sample", "label-negative", SAMPLE + ["--label", "-1"], "--label", loads=True),
    # demo
    case("demo", "out-is-a-file", DEMO + ["--out", "{file}"], "--out"),
    case("demo", "out-under-a-file", DEMO + ["--out", "{file}/d"], "--out"),
    case("demo", "n-toy-zero", DEMO + ["--n-toy", "0"], "--n-toy"),
    case("demo", "n-toy-cannot-fit", DEMO + ["--n-toy", str(10**7)], "--n-toy"),
    case("demo", "n-digits-cannot-fit", DEMO + ["--n-digits", HUGE], "--n-digits"),
    case("demo", "steps-zero", DEMO + ["--steps", "0"], "--steps"),
    case("demo", "seed-negative", DEMO + ["--seed", "-1"], "--seed"),
    case("demo", "cfg-nan", DEMO + ["--cfg-scale", "nan"], "--cfg-scale"),
    # analyze
    case("analyze", "out-is-a-file", ANALYZE + ["--out", "{file}"], "--out"),
    case("analyze", "out-under-a-file", ANALYZE + ["--out", "{file}/an"], "--out"),
    case("analyze", "n-zero", ANALYZE + ["--n", "0"], "--n"),
    case("analyze", "n-cannot-fit", ANALYZE + ["--n", HUGE], "--n"),
    case("analyze", "steps-zero", ANALYZE + ["--steps", "0"], "--steps"),
    case("analyze", "settings-empty", ANALYZE + ["--settings", ","], "--settings"),
    case("analyze", "settings-unknown", ANALYZE + ["--settings", "none,magic"], "--settings"),
    case("analyze", "estimator-missing", ANALYZE + ["--estimator", "{tmp}/head.st"], "--estimator"),
    case("analyze", "model-missing", ANALYZE + ["--model", "{tmp}/missing.st"], "--model"),
    case("analyze", "seed-too-large", ANALYZE + ["--seed", str(2**64)], "--seed"),
    case("analyze", "scale-nan", ANALYZE + ["--classifier-nag-scale", "nan"], "--classifier-nag"),
    # train
    case("train", "out-is-a-file", TRAIN + ["--out", "{file}"], "--out"),
    case("train", "out-under-a-file", TRAIN + ["--out", "{file}/run"], "--out"),
    case("train", "out-missing", ["train", "--steps", "2"], "--out"),
    case("train", "steps-zero", TRAIN + ["--steps", "0"], "--steps"),
    case("train", "steps-fraction", TRAIN + ["--steps", "2.5"], "--steps"),
    case("train", "set-without-value", TRAIN + ["--set", "lr"], "--set"),
    case("train", "set-unknown-key", TRAIN + ["--set", "bogus=1"], "--set bogus=1"),
    case("train", "set-nan", TRAIN + ["--set", "lr=NaN"], "--set lr=NaN"),
    case("train", "set-text-for-int", TRAIN + ["--set", "batch_size=abc"], "--set batch_size"),
    case("train", "set-negative-seed", TRAIN + ["--set", "seed=-1"], "--set seed=-1"),
    case("train", "config-missing", TRAIN + ["--config", "{tmp}/nope.json"], "--config"),
    case("train", "config-not-json", TRAIN + ["--config", "{junk}"], "--config"),
    case("train", "config-is-a-folder", TRAIN + ["--config", "{dir}"], "--config"),
    case("train", "config-not-an-object", TRAIN + ["--config", "{list}"], "--config"),
    case("train", "preset-unknown", TRAIN + ["--preset", "nope"], "--preset"),
    case("train", "finetune-missing", TRAIN + ["--finetune", "{tmp}/no.safetensors"], "--finetune"),
    case("train", "finetune-is-a-folder", TRAIN + ["--finetune", "{dir}"], "--finetune"),
    case("train", "finetune-not-a-checkpoint", TRAIN + ["--finetune", "{junk}"], "--finetune"),
    case("train", "resume-without-checkpoint", TRAIN + ["--resume"], "--resume"),
    case("train", "data-missing", TRAIN + ["--data", "{tmp}/nope.npz"], "--data"),
    case("train", "export-dtype-bogus", TRAIN + ["--export-dtype", "fp64"], "--export-dtype"),
    # encode
    case(
        "encode",
        "images-missing",
        ["encode", "{tmp}/no", "{tmp}/l.npz", "--vae", "{dir}"],
        "IMAGES",
    ),
    case(
        "encode", "out-under-a-file", ["encode", "{dir}", "{file}/l.npz", "--vae", "{dir}"], "OUT"
    ),
    case(
        "encode", "out-is-a-folder", ["encode", "{dir}", "{tmp}/taken.npz", "--vae", "{dir}"], "OUT"
    ),
    case("encode", "out-wrong-suffix", ["encode", "{dir}", "{tmp}/l.txt", "--vae", "{dir}"], "OUT"),
    case("encode", "vae-missing", ENCODE + ["--vae", "{tmp}/novae"], "--vae"),
    case("encode", "vae-is-a-file", ENCODE + ["--vae", "{file}"], "--vae"),
    case("encode", "classes-missing", ENCODE + ["--classes", "{tmp}/classes.txt"], "--classes"),
    case("encode", "seed-negative", ENCODE + ["--seed", "-1"], "--seed"),
    case("encode", "size-zero", ENCODE + ["--size", "0"], "--size"),
    # convert
    case(
        "convert",
        "src-missing",
        ["convert", "{tmp}/no.pt", "{tmp}/d.safetensors", "--format", "dit"],
        "SRC",
    ),
    case("convert", "src-file-for-diffusers", CONVERT + ["--format", "diffusers"], "SRC"),
    case("convert", "dst-is-a-folder", ["convert", "{junk}", "{dir}", "--format", "dit"], "DST"),
    case(
        "convert",
        "dst-under-a-file",
        ["convert", "{junk}", "{file}/d.safetensors", "--format", "dit"],
        "DST",
    ),
    case(
        "convert", "dst-wrong-suffix", ["convert", "{junk}", "{tmp}/d.pt", "--format", "dit"], "DST"
    ),
    case("convert", "format-bogus", CONVERT + ["--format", "bogus"], "--format"),
    case("convert", "null-class-not-diffusers", CONVERT + ["--null-class", "3"], "--null-class"),
    # info (its one argument is named by its value)
    case("info", "missing", ["info", "{tmp}/no.safetensors"], "no.safetensors"),
    case("info", "folder", ["info", "{dir}"], "adir"),
    case("info", "not-a-checkpoint", ["info", "{junk}"], "junk.safetensors"),
    # the command itself
    case("main", "no-command", [], "COMMAND"),
    case("main", "unknown-command", ["bogus"], "bogus"),
]


@pytest.mark.parametrize("argv, named, loads", CASES)
def test_hostile_input_is_refused_in_one_line_before_any_work(
    argv, named, loads, paths, work, capsys
):
    argv = [arg.format(**paths) for arg in argv]
    before = tree(paths["tmp"])
    code, out, err = run_cli(argv, capsys)
    command = argv[0] if argv and argv[0] in COMMANDS else ""
    assert_refused(code, out, err, command, *named)
    assert tree(paths["tmp"]) == before, "the refused call created files or folders"
    if not loads:
        assert work["models"] == 0, "the option was checked only after a model was loaded"


# ---------------------------------------------------------------------- unwritable folders
UNWRITABLE = [
    pytest.param(SAMPLE + ["--out", "{locked}/s.npz"], "--out", id="sample-out"),
    pytest.param(SAMPLE + ["--shards", "{locked}/shards"], "--shards", id="sample-shards"),
    pytest.param(SAMPLE + ["--grid", "{locked}/new/g.png"], "--grid", id="sample-grid"),
    pytest.param(DEMO + ["--out", "{locked}/demo"], "--out", id="demo-out"),
    pytest.param(ANALYZE + ["--out", "{locked}"], "--out", id="analyze-out"),
    pytest.param(TRAIN + ["--out", "{locked}/run"], "--out", id="train-out"),
    pytest.param(ENCODE[:2] + ["{locked}/l.npz"] + ENCODE[3:], "OUT", id="encode-out"),
    pytest.param(CONVERT[:2] + ["{locked}/d.safetensors"] + CONVERT[3:], "DST", id="convert"),
]


def _refused_unwritable(argv, option, paths, capsys) -> None:
    argv = [arg.format(**paths) for arg in argv]
    before = tree(paths["tmp"])
    code, out, err = run_cli(argv, capsys)
    line = assert_refused(code, out, err, argv[0], option)
    assert "permission denied" in line
    assert tree(paths["tmp"]) == before


@pytest.mark.parametrize("argv, option", UNWRITABLE)
def test_a_read_only_folder_is_refused_before_work(argv, option, paths, work, capsys):
    locked = paths["tmp"] / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root (or a capability) writes anyway
            pytest.skip("this user can write in a 0o500 folder (root?): nothing to refuse")
        _refused_unwritable(argv, option, {**paths, "locked": locked}, capsys)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("argv, option", UNWRITABLE)
def test_a_folder_the_user_cannot_write_is_refused(argv, option, paths, work, capsys, monkeypatch):
    """The same with the permission check told the folder is read-only (runs as root too)."""
    locked = paths["tmp"] / "locked"
    locked.mkdir()
    access = os.access

    def denied(path, mode, **kwargs):
        if Path(path).resolve() == locked.resolve() and mode & os.W_OK:
            return False
        return access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", denied)
    _refused_unwritable(argv, option, {**paths, "locked": locked}, capsys)


# ---------------------------------------------------------------------- errors during the run
@pytest.mark.parametrize(
    "error, words",
    [
        (ValueError("steps must be > 0\n  got 0"), "steps must be > 0 got 0"),
        (TypeError("seed must be an int, got str"), "seed must be an int"),
        (PermissionError(13, "Permission denied", "/x/samples.npz"), "Permission denied"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory"), "ran out of memory"),
    ],
    ids=["library-value-error", "library-type-error", "os-error", "allocation"],
)
def test_errors_from_the_library_become_one_line(error, words, paths, monkeypatch, capsys):
    """What the library raises while the command runs (its own argument checks, a failed write,
    a failed allocation) ends as one line with status 2, not a traceback."""
    from nag_engine.sampler import Sampler

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(Sampler, "stream", fail)
    code, out, err = run_cli(
        ["sample", "--model", "ring-exact", "--n", "8", "--steps", "2", "--no-progress"], capsys
    )
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [err.strip()] and err.startswith("nag-engine sample: error: ")
    assert words in err
    assert not (paths["tmp"] / "out").exists()
