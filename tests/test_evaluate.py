"""`nag-engine evaluate` and `export` (nag_engine.evaluation): FID and Inception Score through
torchmetrics against independent numpy / scipy computations, precision/recall against brute
force, every input form read alike, the ADM export read back, and bad input refused in one line.

The feature network is a tiny randomly initialised module with the call of NVIDIA's TorchScript
Inception (`net(images, return_features=True)`, `net.output`), scripted and saved with
torch.jit as the real file is."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial.distance import cdist
from torch import nn

import nag_engine as ne
from nag_engine.cli import main
from nag_engine.evaluation.export import export_adm
from nag_engine.evaluation.inception import (
    INCEPTION_ENV,
    INCEPTION_URL,
    inception_path,
    load_inception,
)
from nag_engine.evaluation.inputs import open_images
from nag_engine.evaluation.metrics import evaluate
from nag_engine.images import to_uint8
from nag_engine.models import FunctionDenoiser, ring_mixture

FIX_WORDS = ("pass", "give", "name ", "choose", "use ", "drop", "remove", "check the", "again")


# ---------------------------------------------------------------------- the tiny network
class TinyInception(nn.Module):
    """The call of inception-2015-12-05.pt on a few random weights: images [N, 3, H, W] in
    [0, 255] of any size -> 16 features, or softmax probabilities over 10 classes. With `scale`
    other than 1 its probabilities are not those of its `output` layer alone."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.output = nn.Linear(16, 10)
        self.scale = scale

    def forward(
        self,
        img: torch.Tensor,
        return_features: bool = False,
        use_fp16: bool = False,
        no_output_bias: bool = False,
    ) -> torch.Tensor:
        x = F.interpolate(img.to(torch.float32), size=(12, 12), mode="bilinear")
        x = torch.relu(self.conv((x - 128) / 128))
        features = torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)
        if return_features:
            return features
        if no_output_bias:
            logits = F.linear(features, self.output.weight)
        else:
            logits = self.output(features)
        return torch.softmax(logits * self.scale, 1)


def save_scripted(module: nn.Module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit: the real file's format
        torch.jit.save(torch.jit.script(module), str(path))
    return path


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    torch.manual_seed(0)
    return save_scripted(
        TinyInception(), tmp_path_factory.mktemp("net") / "inception-2015-12-05.pt"
    )


@pytest.fixture(scope="module")
def net(net_file):
    return load_inception(net_file, "cpu")


def features_of(module: nn.Module, images: np.ndarray) -> np.ndarray:
    """float64 features of uint8 images [N, H, W, 3], by the module itself (float input)."""
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float()
    with torch.no_grad():
        return module(batch, return_features=True).double().numpy()


# ---------------------------------------------------------------------- independent numpy
def frechet_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """FID as the ADM evaluator computes it: np.cov, scipy.linalg.sqrtm."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def inception_score_numpy(probs: np.ndarray) -> float:
    """One split: exp(E_x KL(p(y|x) || p(y)))."""
    kl = probs * (np.log(probs) - np.log(probs.mean(0, keepdims=True)))
    return float(np.exp(kl.sum(1).mean()))


def precision_recall_numpy(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Brute force: radius = distance to the k-th nearest other point of the same set."""
    radius_real = np.sort(cdist(real, real), axis=1)[:, k]  # column 0: the point itself
    radius_fake = np.sort(cdist(fake, fake), axis=1)[:, k]
    between = cdist(fake, real)
    precision = (between <= radius_real[None, :]).any(1).mean()
    recall = (between.T <= radius_fake[None, :]).any(1).mean()
    return float(precision), float(recall)


# ---------------------------------------------------------------------- data
def random_images(n: int, seed: int, low: int = 0, high: int = 256, size: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (n, size, size, 3), dtype=np.uint8)


def adm_npz(path, images=None, labels=None, **extra):
    arrays = {} if images is None else {"arr_0": images}
    if labels is not None:
        arrays["arr_1"] = labels
    np.savez(path, **arrays, **extra)
    return path


class FakeDecoder:
    """What sample_to_disk asks of a VAE: here the 'latents' are images already."""

    def describe(self) -> dict:
        return {"vae": "identity"}

    def check_latents(self, shape) -> None:
        pass

    def decode_uint8(self, samples: torch.Tensor) -> np.ndarray:
        return to_uint8(samples)


def sample_run(out, fmt="npz", channels=3, n=7, decoder=None, shard_size=3):
    """A finished sample_to_disk run of small images with labels i % 3."""
    model = FunctionDenoiser(
        lambda x, t, y, dt, dy: -0.7 * x, num_classes=3, sample_shape=(channels, 8, 8)
    )
    sampler = ne.Sampler(model, 2)
    ne.sample_to_disk(
        sampler,
        n,
        out,
        y=torch.arange(n) % 3,
        seed=1,
        shard_size=shard_size,
        format=fmt,
        progress=False,
        decoder=decoder,
    )
    return out


def read_all(path) -> tuple[np.ndarray, np.ndarray]:
    images = open_images(path)
    parts = list(images.batches(4))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ---------------------------------------------------------------------- metrics
def test_fid_through_torchmetrics_equals_numpy_and_scipy(tmp_path, net):
    a, b = random_images(60, 0), random_images(50, 1, 40, 220)
    results = evaluate(
        open_images(adm_npz(tmp_path / "a.npz", a)),
        open_images(adm_npz(tmp_path / "b.npz", b)),
        net,
        ["fid"],
        batch_size=16,
        progress=False,
    )
    expected = frechet_numpy(features_of(net.module, b), features_of(net.module, a))
    assert expected > 0.01
    assert results["fid"] == pytest.approx(expected, rel=1e-9)
    assert results["fid_reference"] == "images"
    same = evaluate(open_images(tmp_path / "a.npz"), open_images(tmp_path / "a.npz"), net, ["fid"])
    assert abs(same["fid"]) < 1e-6


def test_fid_from_reference_mu_sigma_equals_fid_from_its_images(tmp_path, net):
    samples, ref = random_images(40, 2), random_images(45, 3, 50, 256)
    feats = features_of(net.module, ref)
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    from_images = evaluate(
        open_images(adm_npz(tmp_path / "s.npz", samples)),
        open_images(adm_npz(tmp_path / "r.npz", ref)),
        net,
        ["fid"],
        progress=False,
    )
    stats_only = open_images(adm_npz(tmp_path / "stats.npz", mu=mu, sigma=sigma))
    assert not stats_only.has_images and "mu/sigma" in stats_only.describe()
    from_stats = evaluate(open_images(tmp_path / "s.npz"), stats_only, net, ["fid"], progress=False)
    assert from_stats["fid_reference"] == "mu/sigma"
    assert from_stats["fid"] == pytest.approx(from_images["fid"], rel=1e-9)
    # an ADM reference batch with both: FID from its mu/sigma, as the ADM evaluator does
    both = open_images(adm_npz(tmp_path / "both.npz", random_images(5, 9), mu=mu, sigma=sigma))
    with_both = evaluate(open_images(tmp_path / "s.npz"), both, net, ["fid"], progress=False)
    assert with_both["fid"] == pytest.approx(from_images["fid"], rel=1e-9)


def test_inception_score_equals_numpy(tmp_path, net):
    images = random_images(64, 4)
    samples = open_images(adm_npz(tmp_path / "s.npz", images))
    one_split = evaluate(samples, None, net, ["is"], progress=False, is_splits=1)
    weight = net.module.output.weight.detach().double().numpy()
    logits = features_of(net.module, images) @ weight.T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert one_split["inception_score"] == pytest.approx(inception_score_numpy(probs), rel=1e-9)
    assert one_split["inception_score_std"] is None
    # the network's own probabilities without the output bias (StyleGAN's call), float32
    with torch.no_grad():
        own = net.module(torch.from_numpy(images).permute(0, 3, 1, 2), no_output_bias=True)
    assert one_split["inception_score"] == pytest.approx(
        inception_score_numpy(own.double().numpy()), rel=1e-5
    )
    assert net.weight is not None  # the logits came from the features: one pass
    # a network whose output layer does not give its probabilities: they come from its call
    torch.manual_seed(1)
    other = load_inception(save_scripted(TinyInception(scale=2.0), tmp_path / "other.pt"))
    assert other.weight is None
    with torch.no_grad():
        own = other.module(torch.from_numpy(images).permute(0, 3, 1, 2), no_output_bias=True)
    score = evaluate(samples, None, other, ["is"], progress=False, is_splits=1)["inception_score"]
    assert score == pytest.approx(inception_score_numpy(own.double().numpy()), rel=1e-6)
    ten = evaluate(samples, None, net, ["is"], progress=False)
    assert ten == evaluate(samples, None, net, ["is"], progress=False)  # the shuffle is seeded
    assert ten["inception_score_std"] > 0


def test_precision_recall_equal_brute_force(tmp_path, net):
    real = random_images(30, 5)
    fake = np.concatenate([real[:10], random_images(15, 6, 60, 256)])  # some in, some out
    results = evaluate(
        open_images(adm_npz(tmp_path / "f.npz", fake)),
        open_images(adm_npz(tmp_path / "r.npz", real)),
        net,
        ["pr"],
        batch_size=7,
        progress=False,
    )
    expected = precision_recall_numpy(features_of(net.module, real), features_of(net.module, fake))
    assert (results["precision"], results["recall"]) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # not a trivial case
    same = evaluate(open_images(tmp_path / "r.npz"), open_images(tmp_path / "r.npz"), net, ["pr"])
    assert (same["precision"], same["recall"]) == (1.0, 1.0)


# ---------------------------------------------------------------------- inputs and export
def test_every_input_form_gives_the_same_images(tmp_path):
    npz = sample_run(tmp_path / "npz")  # samples in [-1, 1] -> pixels
    decoded = sample_run(tmp_path / "decoded", decoder=FakeDecoder())  # "images" beside them
    png = sample_run(tmp_path / "png", fmt="png")
    images, labels = read_all(npz)
    assert images.dtype == np.uint8 and images.shape == (7, 8, 8, 3)
    assert np.array_equal(labels, np.arange(7) % 3)
    for other in (decoded, png):
        again, again_labels = read_all(other)
        assert np.array_equal(again, images) and np.array_equal(again_labels, labels)
    assert (
        open_images(decoded).samples_key == "images" and open_images(npz).samples_key == "samples"
    )
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    assert np.array_equal(read_all(folder)[0], images)
    adm = adm_npz(tmp_path / "adm.npz", images, labels)
    assert np.array_equal(read_all(adm)[0], images)
    assert np.array_equal(read_all(adm)[1], labels)
    np.savez_compressed(tmp_path / "zipped.npz", images)  # deflated members stream too
    assert np.array_equal(read_all(tmp_path / "zipped.npz")[0], images)


def test_grey_images_repeat_their_channel_and_jpegs_read_as_pillow_decodes_them(tmp_path):
    grey_png = sample_run(tmp_path / "grey-png", fmt="png", channels=1)
    grey_npz = sample_run(tmp_path / "grey-npz", channels=1)
    images = read_all(grey_npz)[0]
    assert images.shape == (7, 8, 8, 3)
    assert np.array_equal(images[..., 0], images[..., 2])
    assert np.array_equal(read_all(grey_png)[0], images)
    folder = tmp_path / "jpg"
    (folder / "cats").mkdir(parents=True)
    (folder / "dogs").mkdir()
    Image.fromarray(images[0]).save(folder / "cats" / "a.jpg")
    Image.fromarray(images[1, ..., 0]).save(folder / "dogs" / "b.jpeg")  # grey JPEG
    read, labels = read_all(folder)
    with Image.open(folder / "cats" / "a.jpg") as a, Image.open(folder / "dogs" / "b.jpeg") as b:
        expected = np.stack([np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))])
    assert np.array_equal(read, expected) and labels.tolist() == [0, 1]


def test_export_writes_an_adm_batch_that_reads_back_identically(tmp_path):
    run = sample_run(tmp_path / "run", fmt="png")
    images, labels = read_all(run)
    summary = export_adm(open_images(run), tmp_path / "adm" / "samples.npz", progress=False)
    assert summary == {"images": 7, "height": 8, "width": 8, "labelled": True}
    with np.load(tmp_path / "adm" / "samples.npz") as data:
        assert sorted(data.files) == ["arr_0", "arr_1"]
        assert data["arr_0"].dtype == np.uint8 and np.array_equal(data["arr_0"], images)
        assert data["arr_1"].dtype == np.int64 and np.array_equal(data["arr_1"], labels)
    assert np.array_equal(read_all(tmp_path / "adm" / "samples.npz")[0], images)
    assert [p.name for p in (tmp_path / "adm").iterdir()] == ["samples.npz"]  # no temporaries
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    Image.fromarray(images[0]).save(unlabelled / "x.png")
    export_adm(open_images(unlabelled), tmp_path / "flat.npz", progress=False)
    with np.load(tmp_path / "flat.npz") as data:
        assert data.files == ["arr_0"]


# ---------------------------------------------------------------------- the network file
def test_a_missing_inception_file_says_where_to_get_it_and_which_option_takes_it(
    tmp_path, monkeypatch, net_file
):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    for given in (None, tmp_path / "nowhere.pt", tmp_path):
        with pytest.raises(FileNotFoundError) as caught:
            inception_path(given)
        text = str(caught.value)
        assert "--inception PATH" in text and INCEPTION_ENV in text and INCEPTION_URL in text
        assert "inception-2015-12-05.pt" in text
    monkeypatch.setenv(INCEPTION_ENV, str(net_file))
    assert inception_path(None) == net_file
    assert inception_path(net_file.parent) == net_file  # a folder holding the file
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a network")
    with pytest.raises(ValueError, match="not the TorchScript Inception network") as caught:
        load_inception(junk)
    assert INCEPTION_URL in str(caught.value)


# ---------------------------------------------------------------------- the commands
def test_evaluate_and_export_commands_end_to_end(tmp_path, net_file, capsys):
    run = sample_run(tmp_path / "run", n=12, shard_size=5)
    ref = adm_npz(tmp_path / "ref.npz", random_images(10, 7, size=8))
    out = tmp_path / "metrics" / "m.json"
    argv = ["evaluate", str(run), "--ref", str(ref), "--inception", str(net_file)]
    assert main([*argv, "--out", str(out), "--batch-size", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "FID" in printed and "precision" in printed and "12 images 8x8 (npz shards)" in printed
    record = json.loads(out.read_text())
    assert set(record["metrics"]) == {
        "fid",
        "fid_reference",
        "inception_score",
        "inception_score_std",
        "precision",
        "recall",
    }
    assert record["inception_sha256"] and record["samples"] == str(run)
    assert [p.name for p in out.parent.iterdir()] == ["m.json"]  # written atomically
    # the export of the run evaluates the same
    assert main(["export", str(run), str(tmp_path / "run.npz"), "--no-progress"]) == 0
    assert "exported 12 images 8x8" in capsys.readouterr().out
    again = tmp_path / "again.json"
    argv[1] = str(tmp_path / "run.npz")
    assert main([*argv, "--out", str(again), "--no-progress"]) == 0
    metrics = json.loads(again.read_text())["metrics"]  # (in batches of 64: float32 rounding)
    assert metrics.pop("fid_reference") == record["metrics"].pop("fid_reference") == "images"
    assert metrics == pytest.approx(record["metrics"], rel=1e-6)


def _refused(argv, capsys, *named) -> str:
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nag-engine {argv[0]}: error: "), err
    assert all(word in lines[0] for word in named), lines[0]
    assert any(word in lines[0] for word in FIX_WORDS), f"no fix in: {lines[0]}"
    return lines[0]


def test_bad_inputs_are_refused_in_one_line_before_any_work(
    tmp_path, net_file, capsys, monkeypatch
):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    ref = adm_npz(tmp_path / "ref.npz", random_images(6, 0, size=8))
    stats = adm_npz(tmp_path / "stats.npz", mu=np.zeros(16), sigma=np.eye(16))
    empty = tmp_path / "empty"
    empty.mkdir()
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    Image.fromarray(random_images(1, 1, size=8)[0]).save(sizes / "a.png")
    Image.fromarray(random_images(1, 1, size=9)[0]).save(sizes / "b.png")
    unfinished = sample_run(tmp_path / "unfinished")
    (unfinished / "shard_00001.npz").unlink()
    points = tmp_path / "points"
    ne.sample_to_disk(ne.Sampler(ring_mixture(4), 2), 4, points, shard_size=2, progress=False)
    net = ["--inception", str(net_file)]
    out = tmp_path / "m.json"

    def evaluate_cli(samples, *more):
        return ["evaluate", str(samples), "--ref", str(ref), *net, "--out", str(out), *more]

    _refused(evaluate_cli(tmp_path / "none"), capsys, "SAMPLES", "none")
    _refused(evaluate_cli(empty), capsys, "SAMPLES", "holds no images")
    _refused(evaluate_cli(sizes), capsys, "SAMPLES", "a.png 8x8", "b.png 9x9")
    _refused(evaluate_cli(unfinished), capsys, "SAMPLES", "unfinished", "2 of 3 shards")
    _refused(evaluate_cli(points), capsys, "SAMPLES", "not images")
    _refused(evaluate_cli(ref, "--metrics", "fid,bogus"), capsys, "--metrics")
    line = _refused(["evaluate", str(ref), "--ref", str(stats), *net], capsys, "--ref", "pr")
    assert "mu/sigma" in line
    _refused(["evaluate", str(ref), *net], capsys, "--ref")
    _refused(["evaluate", str(ref), "--ref", str(ref)], capsys, "--inception", INCEPTION_URL)
    _refused(evaluate_cli(ref)[:-2] + ["--out", str(tmp_path)], capsys, "--out")
    _refused(["export", str(stats), str(tmp_path / "x.npz")], capsys, "SAMPLES", "mu/sigma")
    _refused(["export", str(ref), str(tmp_path / "x.txt")], capsys, "OUT")
    assert not out.exists() and not (tmp_path / "x.npz").exists()
