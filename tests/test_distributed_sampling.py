"""Sampling under torch.distributed: `torchrun` with 2 or 3 gloo ranks on CPU writes the same
shards as one process, bit for bit; a rank killed with SIGKILL leaves a folder that a run with
another number of ranks finishes to the same samples; a failing rank ends every rank with an
error naming it. The README's torchrun command runs as written on tiny models."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributed.run import get_args_parser

import nag_engine as ne
from nag_engine import distributed
from nag_engine.checkpoints import save_checkpoint
from nag_engine.cli import main
from nag_engine.models import DiT, ring_mixture
from nag_engine.shards import MANIFEST, load_shards

README = Path(__file__).resolve().parents[1] / "README.md"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # what the `torchrun` script runs


def readme_torchrun_command() -> str:
    text = README.read_text()
    block = text.split("<!-- torchrun sampling: begin -->")[1].split("<!-- torchrun sampling")[0]
    (command,) = [line for line in block.splitlines() if line.startswith("torchrun ")]
    return command


def torchrun(
    args: list[str], cwd: Path, timeout: int = 300, **env: str
) -> subprocess.CompletedProcess:
    """Run `torchrun ARGS` in a child process with one thread per rank (2 cores here) and the
    extra environment `env`, outside any torchrun of this process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    for name in distributed.TORCHRUN_VARIABLES:
        env.pop(name, None)
    return subprocess.run(
        TORCHRUN + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def same_shards(a: Path, b: Path) -> None:
    """The two run folders hold identical shards (every array, bit for bit) and manifests."""
    names = sorted(p.name for p in a.glob("shard_*.npz"))
    assert names == sorted(p.name for p in b.glob("shard_*.npz")) and names
    for name in names:
        with np.load(a / name) as x, np.load(b / name) as y:
            assert x.files == y.files
            for key in x.files:
                assert np.array_equal(x[key], y[key]), (name, key)
    assert json.loads((a / MANIFEST).read_text()) == json.loads((b / MANIFEST).read_text())
    assert not list(a.glob(".*")), "temporary files left behind"


# ----------------------------------------------------------------------------- the command line
def test_the_readme_command_line_survives_torchrun_and_reaches_the_sampler():
    command = shlex.split(readme_torchrun_command())
    launch = get_args_parser().parse_args(command[1:])
    assert launch.module and launch.training_script == "nag_engine.cli"
    assert launch.nproc_per_node == "8" and launch.standalone
    from nag_engine.cli import _parser

    args = _parser().parse_args(launch.training_script_args)
    assert args.command == "sample" and args.n == 50_000 and args.shards is not None


def test_n_is_the_short_form_of_num_samples():
    from nag_engine.cli import _parser

    short = _parser().parse_args(["sample", "--n", "12"])
    assert short.n == 12 == _parser().parse_args(["sample", "--num-samples", "12"]).n


def test_sampling_under_torchrun_without_shards_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["sample", "--model", "ring-exact", "--num-samples", "8", "--out",
                 str(tmp_path / "s.npz")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "(rank 1)" in err and "pass --shards DIR" in err
    assert not list(tmp_path.iterdir())


def test_the_readme_command_runs_on_two_ranks_and_equals_one_process(tmp_path):
    """The README's line as written (8 GPUs, 50k samples and 250 steps made 2 CPU ranks, 24
    samples, 3 steps), on a tiny NAG-capable DiT and a tiny VAE saved under its file names."""
    pytest.importorskip("diffusers")
    from test_vae import save_tiny_vae

    torch.manual_seed(0)
    dit = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2,
              num_classes=10, prediction="eps", schedule="vp-discrete")  # fmt: skip
    (tmp_path / "runs" / "dit-nag").mkdir(parents=True)
    save_checkpoint(tmp_path / "runs/dit-nag/model.safetensors", dit, {"p_t": 0.2})
    save_tiny_vae(tmp_path / "sd-vae-ft-mse")
    tiny = {"--nproc_per_node 8": "--nproc_per_node 2", "--num-samples 50000": "--num-samples 24",
            "--steps 250": "--steps 3", "--batch-size 125": "--batch-size 4"}  # fmt: skip
    command = readme_torchrun_command()
    for old, new in tiny.items():
        assert old in command
        command = command.replace(old, new)
    args = shlex.split(command)[1:] + ["--shard-size", "5", "--device", "cpu"]
    run = torchrun(args, cwd=tmp_path)
    printed = f"stdout:\n{run.stdout[-2000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode == 0, printed
    assert "24 samples" in run.stdout and "on 2 ranks" in run.stdout, printed
    assert run.stdout.count("nag_engine") == 1, printed  # rank 0 alone reports
    sample_args = args[args.index("nag_engine.cli") + 1 :]
    alone = [*sample_args, "--no-progress"]
    alone[alone.index("runs/dit-nag-50k")] = "alone"
    single = subprocess.run(  # one plain process with the ranks' thread count
        [sys.executable, "-m", "nag_engine.cli", *alone],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    same_shards(tmp_path / "runs/dit-nag-50k", tmp_path / "alone")
    with np.load(tmp_path / "alone" / "shard_00004.npz") as last:  # decoded images beside
        assert last["images"].shape == (4, 16, 16, 3) and last["samples"].shape == (4, 4, 8, 8)


# ----------------------------------------------------------------------------- from Python
SCRIPT = """
import os, signal, sys
import torch
import torch.distributed as dist
import nag_engine as ne
from nag_engine import shards
from nag_engine.models import ring_mixture

dist.init_process_group("gloo")
rank = dist.get_rank()
kill, fail = os.environ.get("KILL_RANK_AFTER"), os.environ.get("FAIL_RANK_AFTER")
write, written = shards.atomic_write_npz, []

def write_then_stop(path, **arrays):
    write(path, **arrays)
    written.append(path)
    if kill and rank == int(kill.split(":")[0]) and len(written) == int(kill.split(":")[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    if fail and rank == int(fail.split(":")[0]) and len(written) == int(fail.split(":")[1]):
        raise OSError("the disk is full (a test's stand-in)")

shards.atomic_write_npz = write_then_stop
sampler = ne.Sampler(ring_mixture(4, num_classes=4), 4, solver="euler-maruyama", nag_scale=0.0)
try:
    ne.sample_to_disk(sampler, {n}, sys.argv[1], y=torch.arange({n}) % 4, seed=7,
                      shard_size={shard_size}, progress=False)
except Exception as err:
    print(f"rank {{rank}}: {{type(err).__name__}}: {{err}}", file=sys.stderr)
    sys.exit(3)
finally:
    dist.destroy_process_group()
"""
N, SHARD_SIZE = 90, 6  # 15 shards


def reference_run(folder: Path) -> None:
    sampler = ne.Sampler(ring_mixture(4, num_classes=4), 4, solver="euler-maruyama")
    ne.sample_to_disk(sampler, N, folder, y=torch.arange(N) % 4, seed=7, shard_size=SHARD_SIZE,
                      progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("script") / "write_shards.py"
    path.write_text(SCRIPT.format(n=N, shard_size=SHARD_SIZE))
    return path


def launch(script: Path, ranks: int, folder: Path, **env: str) -> subprocess.CompletedProcess:
    return torchrun(["--standalone", f"--nproc_per_node={ranks}", str(script), str(folder)],
                    cwd=folder.parent, **env)  # fmt: skip


def test_a_rank_killed_mid_run_is_finished_by_three_ranks_to_the_same_samples(tmp_path, script):
    folder = tmp_path / "run"
    killed = launch(script, 2, folder, KILL_RANK_AFTER="1:2")  # rank 1 dies after 2 shards
    assert killed.returncode != 0
    assert "exitcode  : -9" in killed.stderr, killed.stderr[-3000:]
    on_disk = sorted(folder.glob("shard_*.npz"))
    assert 2 <= len(on_disk) < 15  # rank 1's other shards were never written
    finished = launch(script, 3, folder)
    assert finished.returncode == 0, finished.stderr[-3000:]
    reference_run(tmp_path / "alone")
    same_shards(folder, tmp_path / "alone")
    samples, labels = load_shards(folder)  # every index exactly once
    assert len(samples) == N and torch.equal(labels, torch.arange(N) % 4)


def test_a_failing_rank_ends_every_rank_with_an_error_naming_it(tmp_path, script):
    folder = tmp_path / "run"
    failed = launch(script, 2, folder, FAIL_RANK_AFTER="1:1")
    assert failed.returncode != 0
    assert "rank 1: OSError: the disk is full" in failed.stderr
    assert "rank 0: DistributedRunError: sample_to_disk failed on rank 1 (OSError" in failed.stderr
    assert "run the same call again to finish" in failed.stderr
    # rank 0 wrote all 8 of its shards (0, 2, ..., 14) before hearing of it, rank 1 one
    assert len(list(folder.glob("shard_*.npz"))) == 9


def test_a_different_run_in_the_folder_is_refused_on_every_rank(tmp_path, script):
    folder = tmp_path / "run"
    sampler = ne.Sampler(ring_mixture(4, num_classes=4), 5, solver="euler")
    ne.sample_to_disk(sampler, N, folder, y=torch.arange(N) % 4, seed=7, shard_size=SHARD_SIZE,
                      progress=False)  # fmt: skip
    before = sorted(p.stat().st_mtime_ns for p in folder.iterdir())
    refused = launch(script, 2, folder)
    assert refused.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: ValueError: {folder} holds a different sample_to_disk run" in (
            refused.stderr
        )
    assert sorted(p.stat().st_mtime_ns for p in folder.iterdir()) == before


def test_one_process_runs_as_before_without_a_process_group(tmp_path):
    assert not torch.distributed.is_initialized()
    reference_run(tmp_path / "a")
    shards = sorted((tmp_path / "a").glob("shard_*.npz"))
    assert len(shards) == 15 and distributed.current().world_size == 1
