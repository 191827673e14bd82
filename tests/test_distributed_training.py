"""Training under torch.distributed: 2 gloo ranks on CPU train what one process trains with the
same global batch (to float tolerance), write each checkpoint once (rank 0), resume exactly,
refuse a batch they cannot split, and agree on a non-finite loss; `torchrun` runs the CLI.

The rank processes run with OMP_NUM_THREADS=1; every comparison is of values, none of times."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

import nag_engine.distributed
from nag_engine.cli import main
from nag_engine.cli.train import add_parser
from nag_engine.distributed import Ranks
from nag_engine.models import MLPDenoiser
from nag_engine.training import NonFiniteLossError, TrainConfig, Trainer, load_dataset

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
# N ranks sum each weight gradient over the batch in N partial sums plus an all-reduce, one
# process in one sum: the results differ in the last bits, and Adam carries that on
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def _ring():
    return load_dataset("ring", n=2000, seed=0)


def _model(num_classes):
    torch.manual_seed(0)
    return MLPDenoiser(2, hidden=32, depth=2, num_classes=num_classes)


# the runs both sides make: a conditional denoiser with noise dropout, class dropout and CDL,
# and an unconditional one without noise dropout (its null noise embedding gets no gradient)
RUNS = {
    "cdl": dict(p_t=0.2, p_c=0.1, cdl_weight=0.1, cdl_samples=2),
    "no_dropout": dict(p_t=0.0, p_c=0.0),
}


def _config(run: str, **overrides) -> TrainConfig:
    base = dict(steps=10, batch_size=16, lr=3e-3, ema_decay=0.9, checkpoint_every=4, seed=3)
    return TrainConfig(**{**base, **RUNS[run], **overrides})


def _trainer(run: str, data, **kwargs) -> Trainer:
    classes = data.num_classes if run == "cdl" else None
    return Trainer(_model(classes), data, _config(run), **kwargs)


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    state.update({f"ema.{k}": v.clone() for k, v in trainer.ema.state_dict().items()})
    for index, values in trainer.optimizer.state_dict()["state"].items():
        state.update({f"optim.{index}.{k}": torch.as_tensor(v).clone() for k, v in values.items()})
    state["rng.data"] = trainer.data_generator.get_state()
    state["rng.noise"] = trainer.noise_generator.get_state()
    return state


# ----------------------------------------------------------------------------- the rank processes
def _rank_main(rank: int, port: int, folder: str) -> None:
    """One rank of the 2-rank group: train the RUNS, a resumed run, a batch it cannot split and
    a non-finite step; what it saw goes to FOLDER/rank{rank}.pt."""
    import nag_engine.training.trainer as trainer_module

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        folder_path, data, seen = Path(folder), _ring(), {}
        writes: list[str] = []
        real_save = trainer_module.save_checkpoint

        def counted_save(path, *args, **kwargs):
            writes.append(Path(path).name)
            return real_save(path, *args, **kwargs)

        trainer_module.save_checkpoint = counted_save
        for run in RUNS:
            trainer = _trainer(run, data, out=folder_path / run)
            trainer.run(progress=False)
            seen[run] = {"state": _state(trainer), "history": trainer.history}
            trainer.export(folder_path / run / "model.safetensors")
        seen["writes"] = list(writes)

        # stopped after step 6 (last checkpoint: step 4), resumed at once on every rank: the
        # checkpoint must be complete on disk when rank 0's save returns on the other ranks
        stopped = _trainer("cdl", data, out=folder_path / "resumed")
        stopped.run(until=6, progress=False)
        resumed = Trainer.resume(folder_path / "resumed" / "checkpoint.safetensors", data)
        seen["resumed_from"] = resumed.step
        resumed.run(progress=False)
        seen["resumed"] = _state(resumed)

        try:
            Trainer(_model(data.num_classes), data, _config("cdl", batch_size=15))
        except ValueError as err:
            seen["unsplittable"] = str(err)

        # a NaN in rank 1's share of the global batch (rank 0's loss is finite): every rank
        # raises, none steps
        trainer = _trainer("no_dropout", data)
        before = _state(trainer)
        x0 = data.x[:16].clone()
        x0[12] = float("nan")
        try:
            trainer.train_step(x0, None)
        except NonFiniteLossError:
            seen["non_finite_raised"] = True
        seen["non_finite_unchanged"] = all(  # the weights, EMA and optimizer
            torch.equal(before[k], v) for k, v in _state(trainer).items() if "rng." not in k
        )
        torch.save(seen, folder_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What rank 0 and rank 1 of a 2-rank gloo group saw, and their folder."""
    folder = tmp_path_factory.mktemp("ranks")
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the spawned ranks inherit it
    try:
        mp.spawn(_rank_main, args=(_free_port(), str(folder)), nprocs=WORLD, join=True)
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    seen = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return seen, folder


@pytest.fixture(scope="module")
def single():
    """The RUNS in this one process, with the same global batch."""
    data = _ring()
    out = {}
    for run in RUNS:
        trainer = _trainer(run, data)
        trainer.run(progress=False)
        out[run] = {"state": _state(trainer), "history": trainer.history}
    return out


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("run", sorted(RUNS))
def test_two_ranks_train_what_one_process_trains(ranks, single, run):
    (rank0, rank1), _ = ranks
    assert rank0[run]["state"].keys() == single[run]["state"].keys()
    for key, value in single[run]["state"].items():
        if key.startswith("rng."):  # the same draws, so the same generator states
            assert torch.equal(rank0[run]["state"][key], value), key
        else:
            torch.testing.assert_close(rank0[run]["state"][key], value, **TOLERANCE, msg=key)
    for ours, theirs in zip(rank0[run]["history"], single[run]["history"], strict=True):
        assert ours.keys() == theirs.keys() and ours["step"] == theirs["step"]
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
    # the weights, EMA, optimizer and generators are the same on every rank, bit for bit
    assert all(torch.equal(v, rank1[run]["state"][k]) for k, v in rank0[run]["state"].items())
    assert rank0[run]["history"] == rank1[run]["history"]


def test_rank_zero_alone_writes_each_checkpoint_once(ranks):
    (rank0, rank1), folder = ranks
    # checkpoint_every=4 of 10 steps: steps 4, 8 and the end; then the export
    once = ["checkpoint.safetensors"] * 3 + ["model.safetensors"]
    assert rank0["writes"] == once * len(RUNS)
    assert rank1["writes"] == []
    for run in RUNS:
        assert sorted(p.name for p in (folder / run).iterdir()) == [
            "checkpoint.safetensors",
            "model.safetensors",
        ]
    saved = load_file(str(folder / "cdl" / "checkpoint.safetensors"))
    for key, value in rank0["cdl"]["state"].items():
        assert torch.equal(saved[key], value), key


def test_a_resumed_two_rank_run_ends_where_the_uninterrupted_one_does(ranks):
    for seen in ranks[0]:
        assert seen["resumed_from"] == 4
        assert seen["resumed"].keys() == seen["cdl"]["state"].keys()
        for key, value in seen["cdl"]["state"].items():
            assert torch.equal(seen["resumed"][key], value), key


def test_a_batch_the_ranks_cannot_split_is_refused_by_name(ranks):
    for seen in ranks[0]:
        assert "batch_size 15" in seen["unsplittable"]
        assert "world size 2" in seen["unsplittable"]


def test_a_non_finite_loss_on_one_rank_stops_every_rank_before_the_step(ranks):
    for seen in ranks[0]:
        assert seen["non_finite_raised"] and seen["non_finite_unchanged"]


# ----------------------------------------------------------------------------- torchrun
# the command line the README documents, as torchrun reads it
TORCHRUN = ["--standalone", "--nproc_per_node", str(WORLD), "-m", "nag_engine.cli", "train"]


def test_torchrun_passes_every_train_option_through():
    from torch.distributed.run import get_args_parser

    commands = argparse.ArgumentParser().add_subparsers()
    add_parser(commands)
    options = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", commands.choices["train"].format_help()))
    assert {"--preset", "--steps", "--out", "--resume", "--set", "--no-progress"} <= options
    for option in sorted(options - {"--help"}):
        script = ["train", option, "value"]
        args = get_args_parser().parse_args(TORCHRUN[:-1] + script)
        assert args.module and args.training_script == "nag_engine.cli"
        assert args.training_script_args == script, option
    args = get_args_parser().parse_args(TORCHRUN + ["--preset", "toy2d", "--out", "runs/x"])
    assert args.nproc_per_node == str(WORLD) and args.standalone


def _torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", *TORCHRUN, *argv]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_torchrun_trains_and_one_process_resumes_to_what_one_process_trains(tmp_path, capsys):
    options = ["--device", "cpu", "--no-progress", "--set", "batch_size=64"]
    options += ["--set", "checkpoint_every=2"]
    out = tmp_path / "ranks"
    first = _torchrun(["--preset", "toy2d", "--steps", "4", "--out", str(out), *options])
    assert first.stdout.count("wrote ") == 1  # rank 0 speaks
    assert "trained on 2 ranks, global batch 64" in first.stdout
    # resumed by one process: the data order and the generators are the global ones
    assert main(["train", "--resume", "--steps", "6", "--out", str(out), *options[:3]]) == 0
    resumed = capsys.readouterr().out
    assert "resuming" in resumed and "at step 4 of 6" in resumed

    alone = tmp_path / "alone"
    assert main(["train", "--preset", "toy2d", "--steps", "6", "--out", str(alone), *options]) == 0
    capsys.readouterr()
    for name in ("checkpoint.safetensors", "model.safetensors"):
        ours, theirs = load_file(str(out / name)), load_file(str(alone / name))
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            if key.startswith("rng."):
                assert torch.equal(ours[key], value), key
            else:
                torch.testing.assert_close(ours[key], value, **TOLERANCE, msg=key)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors", "model.safetensors"]


def test_the_cli_refuses_a_batch_the_ranks_cannot_split_before_any_work(
    tmp_path, monkeypatch, capsys
):
    def joined(device: str) -> Ranks:  # as if torchrun had started this process as rank 0 of 2
        return Ranks(rank=0, world_size=WORLD)

    def started(*args, **kwargs):
        pytest.fail("training started with a batch the ranks cannot split")

    monkeypatch.setattr(nag_engine.distributed, "init_from_environment", joined)
    monkeypatch.setattr(Trainer, "__init__", started)
    out = tmp_path / "run"
    argv = ["train", "--preset", "toy2d", "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--set", "batch_size=63"]) == 2
    err = capsys.readouterr().err
    assert "batch_size 63" in err and "world size 2" in err and "batch_size 64" in err
