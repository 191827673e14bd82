"""Hostile processes: training and sampling run in real child processes (fresh interpreters, a
different PYTHONHASHSEED each, one thread), killed with SIGKILL mid-run and resumed, must give
results bit for bit equal to uninterrupted runs.

* `nag-engine train` twice in two processes writes bit-identical checkpoints (another seed does
  not);
* training SIGKILLed while it writes its second checkpoint (the temp file half written), resumed
  with `nag-engine train --resume`, ends where an uninterrupted run ends;
* `sample_to_disk` SIGKILLed while it writes a shard, run again, equals an uninterrupted run, and a
  different run into its folder is refused, naming what differs;
* `nag_engine.sample` with a fixed seed gives the same samples in two processes.

All the children that do not wait for another are started at once, when the first test asks for
them (the `children` fixture), so they share the cores and their start-up (importing torch); the
kill tests come first, so that a kill's resume or rerun runs beside the children still running."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nag_engine.checkpoints import read_checkpoint, read_header
from nag_engine.shards import load_shards

POSIX = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals (SIGKILL)")
TIMEOUT = 240  # seconds for any one child, far above its run time (a loaded machine)
TRAIN_SETS = ("steps=6", "checkpoint_every=3", "batch_size=64")
_HASH_SEEDS = itertools.count(101)  # every child gets a different PYTHONHASHSEED


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED=str(next(_HASH_SEEDS)))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    """A fresh Python interpreter running `args`."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait(proc: subprocess.Popen) -> tuple[str, str]:
    """(stdout, stderr) of a child once it has ended; killed if it runs past TIMEOUT."""
    try:
        return proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child {proc.args} ran past {TIMEOUT} s\n{out}\n{err}")


def finish(proc: subprocess.Popen) -> str:
    """Wait for a child; its stdout, or a failure showing its output."""
    out, err = wait(proc)
    assert proc.returncode == 0, f"child {proc.args} failed ({proc.returncode}):\n{out}\n{err}"
    return out


def script(tmp: Path, name: str, source: str) -> str:
    path = tmp / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def train_cli(out: Path, *extra: str) -> list[str]:
    sets = [arg for item in TRAIN_SETS for arg in ("--set", item)]
    return ["-m", "nag_engine.cli", "train", "--preset", "toy2d", "--out", str(out), *sets, *extra]


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Tensors bit-identical (torch.equal, dtype too) and the nag_engine configs equal: the
    contents, as safetensors writes its metadata keys in a random order."""
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype, name
        assert torch.equal(ta[name], tb[name]), f"{name} differs between {a} and {b}"
    assert read_header(a) == read_header(b)
    assert read_checkpoint(a)[0] == read_checkpoint(b)[0]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = TIMEOUT) -> None:
    """Poll (short intervals) until `path` exists; fail if the child exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited ({proc.returncode}) before {path} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- child scripts
# training as `nag-engine train --preset toy2d --set KEY=VALUE ...` builds its run, through the
# library; the second checkpoint's temp file is cut to half (as if the kill came while writing
# it), then the parent is told (an atomic marker file) and the child waits for its SIGKILL
TRAIN_KILLED = """
    import os, sys, time
    from pathlib import Path

    from nag_engine.presets import PRESETS
    from nag_engine.training import Trainer, load_dataset

    out, marker = Path(sys.argv[1]), Path(sys.argv[2])
    sets = dict(item.split("=") for item in sys.argv[3:])
    preset = PRESETS["toy2d"]
    config = preset.train_config(**{k: int(v) for k, v in sets.items()})
    data = load_dataset(preset.dataset, **preset.dataset_params)
    trainer = Trainer(preset.build_model(config.seed), data, config, out=out)
    real_replace, saves = os.replace, []

    def hostile_replace(src, dst, *args, **kwargs):
        if Path(dst).name == "checkpoint.safetensors":
            saves.append(trainer.step)
            if len(saves) == 2:
                os.truncate(src, os.path.getsize(src) // 2)
                note = marker.with_suffix(".part")
                note.write_text(f"{trainer.step} {Path(src).name}")
                real_replace(note, marker)
                while True:
                    time.sleep(0.05)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = hostile_replace
    trainer.run(progress=False)
    sys.exit("the run ended without being killed")
"""

N, SHARD, SEED = 40, 8, 3
SAMPLER = f"""
    import os, signal, sys
    from pathlib import Path

    import torch
    import nag_engine
    from nag_engine import Sampler, sample_to_disk
    from nag_engine.models import ring_mixture

    N, SHARD, SEED = {N}, {SHARD}, {SEED}
    LABELS = torch.arange(N) % 4

    def build_sampler(model=None, **changes):
        model = model if model is not None else ring_mixture(8, num_classes=4, time_points=64)
        options = {{**dict(cfg_scale=2.0, nag_scale=0.5, solver="euler-maruyama"), **changes}}
        return Sampler(model, 6, **options)

    def run(out, sampler=None, seed=SEED):
        sampler = sampler if sampler is not None else build_sampler()
        return sample_to_disk(
            sampler, N, out, y=LABELS, seed=seed, shard_size=SHARD, progress=False
        )
"""

# sample_to_disk, SIGKILLing itself as the named shard's (complete) temp file is renamed
SAMPLE_TO_DISK = (
    SAMPLER
    + """
    out, kill_at = Path(sys.argv[1]), sys.argv[2]
    if kill_at != "none":
        real_replace = os.replace

        def hostile_replace(src, dst, *args, **kwargs):
            if Path(dst).name == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst, *args, **kwargs)

        os.replace = hostile_replace
    run(out)
    """
)

# samples with fixed seeds (saved with torch.save), and an uninterrupted sample_to_disk run
SAMPLE = (
    SAMPLER
    + """
    from nag_engine.checkpoints import load_checkpoint
    from nag_engine.presets import shipped_checkpoint

    out = Path(sys.argv[1])
    kw = dict(cfg_scale=2.0, nag_scale=0.5, progress=False)
    y = torch.arange(48) % 4
    mixture = ring_mixture(8, num_classes=4, time_points=64)
    network = load_checkpoint(shipped_checkpoint("toy2d"))  # an MLP: real matmuls
    torch.save(
        {
            "mixture": nag_engine.sample(mixture, 48, 6, y=y, seed=11, solver="heun", **kw),
            "mixture_sde": nag_engine.sample(
                mixture, 48, 6, y=y, seed=11, solver="euler-maruyama", **kw
            ),
            "network": nag_engine.sample(network, 48, 6, y=y % 8, seed=11, **kw),
            "network_seed12": nag_engine.sample(network, 48, 6, y=y % 8, seed=12, **kw),
        },
        out / "samples.pt",
    )
    run(out / "shards")
    """
)


class Children:
    """The independent children of this file, all started at once; `path(name)` is the folder
    each writes to, `finished(name)` its stdout once it has ended well."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.scripts = {
            name: script(tmp, f"{name}.py", source)
            for name, source in (
                ("train_killed", TRAIN_KILLED),
                ("sample_to_disk", SAMPLE_TO_DISK),
                ("sample", SAMPLE),
            )
        }
        commands = {
            "train_a": train_cli(tmp / "train_a", "--no-progress"),
            "train_b": train_cli(tmp / "train_b", "--no-progress"),
            "train_seed1": train_cli(tmp / "train_seed1", "--set", "seed=1", "--no-progress"),
            "sample_a": [self.scripts["sample"], str(tmp / "sample_a")],
            "sample_b": [self.scripts["sample"], str(tmp / "sample_b")],
        }
        if os.name == "posix":
            marker = str(tmp / "train_killed.marker")
            commands["train_killed"] = [
                self.scripts["train_killed"],
                str(tmp / "train_killed"),
                marker,
                *TRAIN_SETS,
            ]
            commands["sample_killed"] = [
                self.scripts["sample_to_disk"],
                str(tmp / "sample_killed"),
                "shard_00002.npz",
            ]
        (tmp / "sample_a").mkdir()
        (tmp / "sample_b").mkdir()
        self.procs = {name: spawn(args, tmp) for name, args in commands.items()}
        self.outputs: dict[str, str] = {}

    def path(self, name: str) -> Path:
        return self.tmp / name

    def finished(self, name: str) -> str:
        if name not in self.outputs:
            self.outputs[name] = finish(self.procs[name])
        return self.outputs[name]

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    started = Children(tmp_path_factory.mktemp("children"))
    try:
        yield started
    finally:
        started.close()


# ----------------------------------------------------------------------------- killed runs
@POSIX
def test_training_killed_mid_run_resumes_to_the_uninterrupted_result(children):
    proc, out = children.procs["train_killed"], children.path("train_killed")
    marker = children.path("train_killed.marker")
    wait_for(marker, proc)  # steps 1..6 trained, the step-3 checkpoint written
    checkpoint = out / "checkpoint.safetensors"
    assert checkpoint.is_file()
    os.kill(proc.pid, signal.SIGKILL)
    wait(proc)
    assert proc.returncode == -signal.SIGKILL
    step, temp_name = marker.read_text().split()
    assert step == "6"
    # the checkpoint on disk is the complete step-3 one (the step-6 write never replaced it)
    config, tensors = read_checkpoint(checkpoint)
    assert config["step"] == 3 and "rng.data" in tensors
    leftovers = sorted(p.name for p in out.iterdir() if p.name != "checkpoint.safetensors")
    assert leftovers == [temp_name] and temp_name.startswith(".checkpoint.safetensors.")
    assert temp_name.endswith(".tmp")
    # resumed in a fresh process, beside the half-written temp file
    printed = finish(spawn(train_cli(out, "--resume", "--no-progress"), children.tmp))
    assert "resuming" in printed and "at step 3 of 6" in printed
    children.finished("train_a")
    for name in ("checkpoint.safetensors", "model.safetensors"):
        assert_same_checkpoint(out / name, children.path("train_a") / name)


def sampler_namespace() -> dict:
    """build_sampler and run, as the sampling children define them, in this process."""
    namespace: dict = {}
    exec(textwrap.dedent(SAMPLER), namespace)
    return namespace


@POSIX
def test_sample_to_disk_killed_mid_run_resumes_to_the_uninterrupted_result(children):
    proc, killed = children.procs["sample_killed"], children.path("sample_killed")
    wait(proc)
    assert proc.returncode == -signal.SIGKILL
    names = sorted(p.name for p in killed.iterdir())
    temps = [n for n in names if n.startswith(".shard_00002.npz.") and n.endswith(".tmp")]
    assert len(temps) == 1, names  # the third shard written but never renamed into place
    assert [n for n in names if n not in temps] == [
        "manifest.json",
        "shard_00000.npz",
        "shard_00001.npz",
    ]
    before = {n: (killed / n).stat() for n in ("shard_00000.npz", "shard_00001.npz")}
    manifest = (killed / "manifest.json").read_bytes()

    # another run into the folder is refused, naming what differs (in this process)
    ns = sampler_namespace()
    changed_model = ns["ring_mixture"](8, num_classes=4, time_points=64)
    with torch.no_grad():
        changed_model.means[0, 0] += 1e-3
    refusals = {
        "seed": dict(seed=SEED + 1),
        "plan.nag_interval": dict(sampler=ns["build_sampler"](nag_interval=(0.0, 0.5))),
        "plan.cfg_interval": dict(sampler=ns["build_sampler"](cfg_interval=(0.0, 0.5))),
        "plan.grid": dict(sampler=ns["build_sampler"](time_shift=2.0)),  # time_shift moves t
        "plan.nag_scale": dict(sampler=ns["build_sampler"](nag_scale=0.75)),
        "model.weights_sha256": dict(sampler=ns["build_sampler"](model=changed_model)),
    }
    for what, kwargs in refusals.items():
        with pytest.raises(ValueError, match=rf"differs in [^)]*\b{re.escape(what)}\b"):
            ns["run"](killed, **kwargs)
    assert (killed / "manifest.json").read_bytes() == manifest  # the refusals wrote nothing
    assert sorted(p.name for p in killed.iterdir()) == names

    # rerun in a fresh process: the two shards on disk are kept, the rest sampled
    finish(spawn([children.scripts["sample_to_disk"], str(killed), "none"], children.tmp))
    names = sorted(p.name for p in killed.iterdir())
    assert names == ["manifest.json"] + [f"shard_{i:05d}.npz" for i in range(5)]  # no temps
    for name, stat in before.items():
        now = (killed / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name
    children.finished("sample_a")
    whole = children.path("sample_a") / "shards"
    samples, labels = load_shards(killed)
    expected, expected_labels = load_shards(whole)
    assert samples.shape == (N, 2) and samples.dtype == torch.float32
    assert torch.equal(samples, expected)
    assert torch.equal(labels, expected_labels) and torch.equal(labels, torch.arange(N) % 4)
    assert (killed / "manifest.json").read_bytes() == (whole / "manifest.json").read_bytes()


# ----------------------------------------------------------------------------- reproducibility
def test_training_reproduces_bit_for_bit_across_processes(children):
    a, b, other = (children.path(k) for k in ("train_a", "train_b", "train_seed1"))
    for name in ("train_a", "train_b", "train_seed1"):
        children.finished(name)
    for name in ("checkpoint.safetensors", "model.safetensors"):
        assert_same_checkpoint(a / name, b / name)
    config, _ = read_checkpoint(a / "checkpoint.safetensors")
    assert config["step"] == 6 and config["train"]["seed"] == 0
    assert config["train"]["checkpoint_every"] == 3 and config["train"]["batch_size"] == 64
    # the test can fail: another seed draws other initial weights (and batches)
    ta = load_file(str(a / "checkpoint.safetensors"))
    tc = load_file(str(other / "checkpoint.safetensors"))
    assert sorted(ta) == sorted(tc)
    weights = [k for k in ta if k.startswith(("model.", "ema.")) and ta[k].is_floating_point()]
    assert weights and all(not torch.equal(ta[k], tc[k]) for k in weights)
    assert read_header(other / "checkpoint.safetensors")[0]["train"]["seed"] == 1


def test_sampling_reproduces_bit_for_bit_across_processes(children):
    runs = [children.path(k) for k in ("sample_a", "sample_b")]
    for name in ("sample_a", "sample_b"):
        children.finished(name)
    a, b = (torch.load(out / "samples.pt", weights_only=True) for out in runs)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].shape == (48, 2) and torch.isfinite(a[name]).all(), name
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["network"], a["network_seed12"])  # the test can fail
    # and sample_to_disk: the same shards and manifest from both processes
    shards = [load_shards(out / "shards") for out in runs]
    assert torch.equal(shards[0][0], shards[1][0]) and torch.equal(shards[0][1], shards[1][1])
    manifests = [(out / "shards" / "manifest.json").read_bytes() for out in runs]
    assert manifests[0] == manifests[1]
