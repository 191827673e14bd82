"""Large runs: streaming batch by batch, halving the batch on CUDA out-of-memory (with a fake
model that raises it), and shards on disk that resume after an interruption without duplicating
or losing samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nag_engine import Sampler
from nag_engine.models import FunctionDenoiser, ring_mixture
from nag_engine.shards import load_shards, sample_to_disk

KW = dict(cfg_scale=2.0, nag_scale=0.5, solver="euler-maruyama")


@pytest.fixture(scope="module")
def mixture():
    return ring_mixture(8, num_classes=4, time_points=64)


class Flaky(torch.nn.Module):
    """The mixture, but out of memory above `max_rows` rows, or failing after `fail_after`
    forward calls (an interruption)."""

    def __init__(self, inner, max_rows=None, fail_after=None):
        super().__init__()
        self.inner, self.max_rows, self.fail_after, self.calls = inner, max_rows, fail_after, 0
        for name in ("prediction", "schedule", "num_classes", "supports_noise_dropout"):
            setattr(self, name, getattr(inner, name))
        self.sample_shape = (2,)

    def forward(self, x, t, y=None, *, drop_t=None, drop_y=None):
        self.calls += 1
        if self.max_rows is not None and len(x) > self.max_rows:
            raise torch.cuda.OutOfMemoryError(f"fake: {len(x)} rows")
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("fake interruption")
        return self.inner(x, t, y, drop_t=drop_t, drop_y=drop_y)


def test_out_of_memory_halves_the_batch_and_keeps_the_samples(mixture):
    y = torch.arange(40) % 4
    expected = Sampler(mixture, 6, **KW).sample(40, y=y, seed=5, progress=False)
    sampler = Sampler(Flaky(mixture, max_rows=3 * 5), 6, **KW)  # 3 passes: 5 samples fit
    batches = list(sampler.stream(40, y=y, seed=5, batch_size=16, progress=False))
    assert [len(b.samples) for b in batches] == [4] * 10  # 16 -> 8 -> 4, and 4 from then on
    got = torch.cat([b.samples for b in batches])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # even one sample does not fit
        Sampler(Flaky(mixture, max_rows=2), 6, **KW).sample(3, y=1, progress=False)


def test_stream_yields_the_run_batch_by_batch(mixture):
    sampler = Sampler(mixture, 5, **KW)
    y = torch.arange(23) % 4
    whole = sampler.sample(23, y=y, seed=2, progress=False)
    batches = list(sampler.stream(23, y=y, seed=2, batch_size=10, progress=False))
    assert [b.start for b in batches] == [0, 10, 20]
    torch.testing.assert_close(torch.cat([b.samples for b in batches]), whole, rtol=0, atol=1e-6)
    assert torch.equal(torch.cat([b.labels for b in batches]), y)
    part = list(sampler.stream(23, y=y, seed=2, indices=range(7, 12), progress=False))
    torch.testing.assert_close(part[0].samples, whole[7:12], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="sub-range"):
        list(sampler.stream(23, y=y, indices=range(20, 30)))


def test_shards_resume_after_an_interruption(mixture, tmp_path):
    y = torch.arange(50) % 4
    expected = Sampler(mixture, 6, **KW).sample(50, y=y, seed=3, progress=False)
    flaky = Flaky(mixture, fail_after=6 * 2 + 3)  # dies inside the third shard
    sampler = Sampler(flaky, 6, **KW)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        sample_to_disk(sampler, 50, out, y=y, seed=3, shard_size=12, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "shard_00000.npz",
        "shard_00001.npz",
    ]  # two complete shards, nothing half-written
    flaky.fail_after = None
    calls = flaky.calls
    shards = sample_to_disk(sampler, 50, out, y=y, seed=3, shard_size=12, progress=False)
    assert len(shards) == 5 and all(p.exists() for p in shards)
    assert flaky.calls - calls == 6 * 3  # only the three missing shards were sampled
    samples, labels = load_shards(out)
    torch.testing.assert_close(samples, expected, rtol=0, atol=1e-6)
    assert torch.equal(labels, y)
    # a finished run is not sampled again, a different one is refused
    sample_to_disk(sampler, 50, out, y=y, seed=3, shard_size=12, progress=False)
    assert flaky.calls - calls == 6 * 3
    with pytest.raises(ValueError, match="different sample_to_disk run.*seed"):
        sample_to_disk(sampler, 50, out, y=y, seed=4, shard_size=12, progress=False)


def test_incomplete_runs_and_bad_arguments_are_refused(mixture, tmp_path):
    sampler = Sampler(mixture, 3)
    with pytest.raises(ValueError, match="format"):
        sample_to_disk(sampler, 4, tmp_path / "a", format="jpeg")
    with pytest.raises(ValueError, match="shard_size"):
        sample_to_disk(sampler, 4, tmp_path / "a", shard_size=0)
    with pytest.raises(ValueError, match="needs images"):
        sample_to_disk(sampler, 4, tmp_path / "b", format="png", progress=False)
    (tmp_path / "c").mkdir()
    sample_to_disk(sampler, 6, tmp_path / "c", shard_size=2, progress=False)
    (tmp_path / "c" / "shard_00001.npz").unlink()
    with pytest.raises(ValueError, match="2 of 3 shards"):
        load_shards(tmp_path / "c")


def test_png_shards_hold_one_image_per_sample(tmp_path):
    def fn(x, t, y=None, drop_t=None, drop_y=None):
        return -x  # velocity toward zero-ish images

    model = FunctionDenoiser(fn, sample_shape=(1, 4, 4))
    sampler = Sampler(model, 2)
    shards = sample_to_disk(
        sampler, 5, tmp_path / "png", shard_size=3, format="png", progress=False
    )
    assert [p.name for p in shards] == ["shard_00000", "shard_00001"]
    names = sorted(f.name for p in shards for f in p.glob("*.png"))
    assert names == [f"{i:07d}.png" for i in range(5)]
    for path in shards:
        assert path.joinpath(sorted(path.glob("*.png"))[0].name).read_bytes()[:4] == b"\x89PNG"
    labels = json.loads((shards[1] / "labels.json").read_text())
    assert labels == {"3": -1, "4": -1}
    assert np.array_equal(sorted(int(k) for k in labels), [3, 4])


def test_the_sample_command_writes_resumable_shards(tmp_path, capsys):
    from nag_engine.cli import main

    args = ["sample", "--model", "ring-exact", "--n", "30", "--steps", "4", "--no-progress"]
    assert main([*args, "--shards", str(tmp_path / "s"), "--shard-size", "8"]) == 0
    assert "4 npz shards" in capsys.readouterr().out
    samples, labels = load_shards(tmp_path / "s")
    assert samples.shape == (30, 2) and labels is not None
    whole = tmp_path / "whole.npz"
    assert main([*args, "--out", str(whole), "--no-png"]) == 0
    np.testing.assert_allclose(samples.numpy(), np.load(whole)["samples"], rtol=0, atol=1e-6)
