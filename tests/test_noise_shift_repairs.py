"""The noise-shift measurement's repairs (issue 18): the late-step standard error from per-sample
averages, the maximum-likelihood reading of the level, the kept per-sample levels and the
level-density figure."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from nag_engine.analysis.level_density import level_density_figure, level_density_plot
from nag_engine.analysis.likelihood_level import max_likelihood_level, supports_likelihood
from nag_engine.analysis.noise_level import ExactPosterior, NoiseLevelEstimate
from nag_engine.analysis.noise_shift import (
    NoiseShiftReport,
    late_shift_stats,
    late_steps,
    measure_noise_shift,
)
from nag_engine.models.analytic import random_mixture
from nag_engine.sampler import StepInfo


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many small tensor ops: one thread is much faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FixedStates:
    """A stand-in for `Sampler` that reports given states [S, n, d] at the nominal times of
    `grid` [S + 1] through the callback, on `schedule` (default: alpha = 1, sigma = 0, so the
    forward samples are the reference's x0 themselves)."""

    def __init__(self, states: torch.Tensor, grid: list[float], schedule=None):
        self.states = states
        self.steps = len(grid) - 1
        self.grid = torch.tensor(grid, dtype=torch.float64)
        self.schedule = schedule or SimpleNamespace(
            name="identity", alpha=torch.ones_like, sigma=torch.zeros_like
        )
        self.device = torch.device("cpu")
        self.solver, self.prediction, self.classifier_nag_scale = "fixed", "x0", 0.0
        self.guidance = SimpleNamespace(cfg_scale=1.0, nag_scale=0.0)
        self.model = None

    def sample(self, n, *, y=None, seed=0, batch_size=None, progress=True, callback=None):
        for i in range(self.steps):
            x = self.states[i, :n]
            t, t_next = float(self.grid[i]), float(self.grid[i + 1])
            callback(StepInfo(i, t, t_next, x, x, x, 0))
        return self.states[-1, :n]


class FirstCoordinate:
    """An estimator without a likelihood: the level of x is its first coordinate."""

    def estimate(self, x, y=None):
        return NoiseLevelEstimate(mean=x[:, 0].double(), std=torch.zeros(len(x)))

    def log_prob(self, x, t, y=None):
        raise NotImplementedError


def constant(values: list[float]):
    """A reference returning the given clean samples (one coordinate each)."""

    def reference(n, generator=None):
        return torch.tensor(values, dtype=torch.float64)[:n, None]

    return reference


# --------------------------------------------------------------------------- late steps
GRID = [1.0, 0.5, 0.2, 0.1, 0.0]  # step start times 1, 0.5, 0.2, 0.1: the last two are late
SAMPLER_LEVELS = [
    [0.9, 0.8, 1.0],
    [0.5, 0.4, 0.6],
    [0.1, 0.3, 0.2],
    [0.3, 0.1, 0.2],
]
FORWARD_LEVELS = [0.1, 0.2, 0.6]  # alpha = 1, sigma = 0: the same at every step


def fixed_report(**options) -> NoiseShiftReport:
    states = torch.tensor(SAMPLER_LEVELS, dtype=torch.float64)[:, :, None]
    sampler = FixedStates(states, GRID)
    return measure_noise_shift(
        sampler, FirstCoordinate(), 3, reference=constant(FORWARD_LEVELS), **options
    )


def test_late_standard_error_averages_each_sample_over_the_late_steps_first():
    report = fixed_report()
    # by hand: each sample's late average is 0.2 (sampler: no spread at all) and
    # 0.1, 0.2, 0.6 (forward); shift 0.2 - 0.3; se = sqrt(var(0.1, 0.2, 0.6) / 3), var = 0.07
    assert report.late_shift == pytest.approx(-0.1)
    assert report.late_shift_se == pytest.approx(math.sqrt(0.07 / 3))
    # steps treated as independent would count the sampler's per-step spread (0.1 at each step)
    naive = math.sqrt(np.mean(report.shift_se[2:] ** 2) / 2)
    assert naive != pytest.approx(report.late_shift_se, rel=0.05)
    assert report.late_t_max == 0.2


def test_late_shift_stats_and_the_last_step_fallback():
    ours = np.array([[1.0, 2.0], [3.0, 6.0]])
    theirs = np.array([[0.0, 0.0], [2.0, 2.0]])
    late = late_steps(np.array([0.5, 0.1]), 0.2)
    assert late.tolist() == [False, True]
    shift, se = late_shift_stats(ours, theirs, late)
    assert shift == pytest.approx(4.5 - 2.0)
    assert se == pytest.approx(math.sqrt(np.var([3.0, 6.0], ddof=1) / 2))
    # no step at or below late_t_max: the last one stands for the late steps
    assert late_steps(np.array([0.9, 0.5]), 0.2).tolist() == [False, True]
    report = fixed_report(late_t_max=0.05)
    assert report.late_shift == pytest.approx(0.2 - 0.3)  # step 3 alone (t = 0.1)
    assert report.late_shift_se == pytest.approx(math.sqrt((0.01 + 0.07) / 3))  # var 0.3, .1, .2


def test_no_likelihood_no_maximum_likelihood_reading():
    estimator = FirstCoordinate()
    assert not supports_likelihood(estimator)
    assert max_likelihood_level(estimator, torch.zeros(4, 1)) is None
    report = fixed_report()
    assert report.sampler_ml_level is None and report.ml_shift is None
    assert report.late_ml_shift is None and report.mean_ml_shift is None
    data = json.loads(report.to_json())
    assert data["ml_shift"] is None and data["late_ml_shift"] is None
    assert data["late_shift"] == pytest.approx(-0.1)
    back = NoiseShiftReport.from_json(report.to_json())
    assert back.ml_shift is None and back.late_shift == report.late_shift
    assert "ml_shift" not in report.csv_header()


def test_keep_levels_at_keeps_the_nearest_steps():
    report = fixed_report(keep_levels_at=(0.55, 0.12))
    assert list(report.kept_levels) == ["0.55", "0.12"]
    near_half, near_tenth = report.kept_levels["0.55"], report.kept_levels["0.12"]
    assert (near_half["step"], near_half["t"]) == (1, 0.5)
    assert (near_tenth["step"], near_tenth["t"]) == (3, pytest.approx(0.1))
    assert near_half["sampler"].shape == near_half["forward"].shape == (3,)
    np.testing.assert_allclose(near_tenth["sampler"], SAMPLER_LEVELS[3])
    np.testing.assert_allclose(near_tenth["forward"], FORWARD_LEVELS)
    back = NoiseShiftReport.from_json(report.to_json())
    np.testing.assert_array_equal(back.kept_levels["0.12"]["sampler"], near_tenth["sampler"])
    assert back.kept_levels["0.12"]["step"] == 3
    assert fixed_report().kept_levels == {}


# --------------------------------------------------------------------------- likelihood reading
@pytest.fixture(scope="module")
def mixture32():
    return random_mixture(32, 8, num_classes=8, time_points=64)


def forward_states(mixture, grid: list[float], n: int, labels, seed: int) -> torch.Tensor:
    """True forward-process samples [S, n, d] at the grid's step start times."""
    gen = torch.Generator().manual_seed(seed)
    x0 = mixture.sample_data(n, y=labels, generator=gen)[0]
    times = torch.tensor(grid[:-1], dtype=torch.float64)
    alpha, sigma = mixture.schedule_obj.alpha(times), mixture.schedule_obj.sigma(times)
    eps = torch.randn((len(times), *x0.shape), generator=gen, dtype=torch.float64)
    return (alpha[:, None, None] * x0 + sigma[:, None, None] * eps).float()


def test_maximum_likelihood_level_is_the_argmax_of_the_batch_likelihood(mixture32):
    labels = torch.arange(300) % 8
    (x,) = forward_states(mixture32, [0.3, 0.0], 300, labels, seed=5)
    estimator = ExactPosterior(mixture32)
    reading = max_likelihood_level(estimator, x, labels)
    fine = torch.linspace(0.2, 0.4, 4001, dtype=torch.float64)
    brute = float(fine[estimator.log_likelihood(x, fine, labels).sum(0).argmax()])
    assert reading.level == pytest.approx(brute, abs=1e-4)
    assert abs(reading.level - 0.3) < 4 * reading.se and not reading.at_edge
    # searched only above the peak: the maximum is the range's end, flagged, with no error
    edge = max_likelihood_level(estimator, x, labels, t_range=(0.4, 1.0))
    assert edge.at_edge and edge.level == pytest.approx(0.4) and math.isnan(edge.se)
    np.testing.assert_allclose(  # the exact noisy density at any t, not only grid nodes
        estimator.log_likelihood(x[:3], 0.3137, labels[:3])[:, 0],
        mixture32.log_prob(x[:3].double(), 0.3137, labels[:3]),
        rtol=1e-10,
    )


def test_forward_samples_as_sampler_states_show_no_maximum_likelihood_shift(mixture32):
    grid = [0.9, 0.7, 0.4, 0.2, 0.1, 0.05, 0.0]  # at t = 1 the maximum may be the range's end
    n = 400
    labels = torch.arange(n) % 8
    states = forward_states(mixture32, grid, n, labels, seed=11)
    sampler = FixedStates(states, grid, schedule=mixture32.schedule_obj)
    report = measure_noise_shift(
        sampler, ExactPosterior(mixture32), n, y=labels, seed=3, reference=mixture32
    )
    assert report.ml_shift is not None and report.ml_shift_se is not None
    assert np.all(np.abs(report.ml_shift) < 4 * report.ml_shift_se), report.ml_shift
    assert np.all(report.ml_shift_se < 0.02)
    assert abs(report.late_ml_shift) < 4 * report.late_ml_shift_se
    # the ML reading of true forward samples has no prior pulling it: it reads t back
    assert np.all(np.abs(report.forward_ml_level - report.t) < 0.03)
    assert abs(report.late_shift) < 4 * report.late_shift_se  # the posterior mean: same
    header = report.csv_header()
    assert header[-4:] == ["sampler_ml_level", "forward_ml_level", "ml_shift", "ml_shift_se"]
    back = NoiseShiftReport.from_json(report.to_json())
    np.testing.assert_array_equal(back.ml_shift, report.ml_shift)
    assert back.late_ml_shift_se == report.late_ml_shift_se


def test_states_from_earlier_times_read_cleaner_in_the_likelihood_too(mixture32):
    """States that are really cleaner than nominal (forward samples at 0.8 t fed as states at t)
    give a negative ML shift, many standard errors from 0."""
    grid = [0.6, 0.4, 0.25, 0.0]
    n = 300
    labels = torch.arange(n) % 8
    cleaner = forward_states(mixture32, [0.8 * t for t in grid], n, labels, seed=2)
    sampler = FixedStates(cleaner, grid, schedule=mixture32.schedule_obj)
    report = measure_noise_shift(
        sampler, ExactPosterior(mixture32), n, y=labels, seed=4, reference=mixture32
    )
    assert np.all(report.ml_shift < -4 * report.ml_shift_se), report.ml_shift
    assert np.all(np.abs(report.ml_shift + 0.2 * report.t) < 4 * report.ml_shift_se)


# --------------------------------------------------------------------------- figure
def test_level_density_figure_writes_a_png_with_a_panel_per_kept_time(tmp_path):
    reports = {
        "none": fixed_report(keep_levels_at=(0.5, 0.2, 0.1)),
        "nag": fixed_report(keep_levels_at=(0.5, 0.2, 0.1)),
    }
    figure = level_density_plot(reports)
    assert len(figure.axes) == 3
    first = figure.axes[0]
    assert first.get_xlabel() == "estimated noise level of a sample"
    assert first.get_ylabel() == "density" and "t = 0.5" in first.get_title()
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == ["forward samples", "sampler states: none", "sampler states: nag", "nominal t"]
    path = tmp_path / "density.png"
    level_density_figure(reports, path, title="levels")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]
    assert [p.name for p in tmp_path.iterdir()] == ["density.png"]


def test_level_density_figure_without_kept_levels_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="keep_levels_at"):
        level_density_figure({"none": fixed_report()}, tmp_path / "density.png")
    with pytest.raises(ValueError, match="at least one report"):
        level_density_figure({}, tmp_path / "density.png")
    assert list(tmp_path.iterdir()) == []  # no file, no temporary
