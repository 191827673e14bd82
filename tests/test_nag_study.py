"""The NAG study (benchmarks/nag_study.py): the quick gmm32 part end to end, and the pieces its
conclusions rest on -- the exact-sample floor, paired differences, the autoguidance wrapper."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import nag_study
from benchmarks import nag_study_gmm32 as gmm32
from nag_engine import Sampler
from nag_engine.analysis.metrics import frechet_distance
from nag_engine.models import MLPDenoiser, random_mixture

RESULTS = Path(nag_study.__file__).resolve().parent / "RESULTS.md"


def _random_mlp(seed: int, dim: int = 4) -> MLPDenoiser:
    """A small class-conditional MLP with every weight random (a fresh one outputs zeros)."""
    torch.manual_seed(seed)
    model = MLPDenoiser(dim, hidden=16, depth=1, num_classes=2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return model.eval()


def _without_section(text: str) -> str:
    """RESULTS.md as it was before the study wrote its section (markers and all)."""
    begin, end = nag_study.markers("gmm32")
    if begin not in text:
        return text
    head, rest = text.split(begin)
    return head + rest.split(end)[1].removeprefix("\n\n")


def _preregistered(text: str) -> str:
    start = text.index(nag_study.STUDY_HEADING)
    return text[start : text.index("\n## ", start)]


# ----------------------------------------------------------------------------- end to end
def test_quick_gmm32_study_writes_json_figure_and_its_section(tmp_path):
    original = _without_section(RESULTS.read_text())
    (tmp_path / "RESULTS.md").write_text(original)
    args = ["gmm32", "--quick", "--no-progress", "--out", str(tmp_path)]
    assert nag_study.main(args) == 0

    payload = json.loads((tmp_path / "nag_study_gmm32.json").read_text())
    size = gmm32.SIZES["quick"]
    cells = size.train_seeds * len(size.checkpoints) * len(gmm32.SOLVERS) * size.sample_seeds
    assert len(payload["runs"]) == cells * len(payload["methods"])
    for run in payload["runs"]:
        method = next(m for m in payload["methods"] if m["name"] == run["method"])
        if method["family"] == "baseline":
            assert run["nfe"] == size.steps
        else:  # every other setting costs about twice the baseline
            assert abs(run["nfe"] - 2 * size.steps) <= 1, run["method"]
        if method["measure_shift"]:
            assert math.isfinite(run["late_shift"]) and run["late_shift_se"] > 0
            assert run["shift_states_max_diff"] < 1e-3  # the shift is read on the same samples
    assert {"summary", "paired", "best_nag", "nag_vs_controls"} <= set(payload["analysis"])
    assert (tmp_path / "nag_study_gmm32.png").stat().st_size > 0

    text = (tmp_path / "RESULTS.md").read_text()
    begin, end = nag_study.markers("gmm32")
    prediction = _preregistered(original)
    assert prediction in text  # the pre-registered paragraph is untouched ...
    assert text.index(prediction) < text.index(begin) < text.index(end)  # ... and comes first
    head, rest = text.split(begin)
    section, tail = rest.split(end)
    headers = [line for line in section.splitlines() if line.startswith("| solver |")]
    assert len(headers) >= 7 and all("| NFE |" in line for line in headers)  # NFE in every table
    assert head + tail.removeprefix("\n\n") == original  # the rest of the file is kept

    # re-rendering from the JSON rewrites the same section in place
    assert nag_study.main(["gmm32", "--render-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "RESULTS.md").read_text() == text


def test_markers_go_after_the_study_text_before_the_next_heading():
    text = f"# R\n\n{nag_study.STUDY_HEADING}\n\nPrediction.\n\n## Next\n\nmore\n"
    placed = nag_study.with_markers(text, "gmm32")
    begin, end = nag_study.markers("gmm32")
    assert placed.index("Prediction.") < placed.index(begin) < placed.index(end)
    assert placed.index(end) < placed.index("## Next")
    assert nag_study.with_markers(placed, "gmm32") == placed
    assert nag_study.with_markers("# R\n", "gmm32").endswith(f"{begin}\n{end}\n")


# ----------------------------------------------------------------------------- statistics
def test_paired_difference_by_hand():
    result = nag_study.paired_difference([3, 5, 4, 6], [1, 4, 4, 3], groups=[0, 1, 0, 1])
    # differences 2, 1, 0, 3: mean 1.5, sample std sqrt(5/3), SE sqrt(5/3) / 2
    assert result["mean"] == pytest.approx(1.5)
    assert result["se"] == pytest.approx(math.sqrt(5 / 3) / 2)
    assert result["n"] == 4
    # group means (2 + 0) / 2 = 1 and (1 + 3) / 2 = 2: SE over them 0.5
    assert result["se_clustered"] == pytest.approx(0.5)
    assert nag_study.significant(result) == 1  # 1.5 > 2 * 0.645
    assert nag_study.significant({"mean": -1.0, "se": 0.6}) == 0
    assert nag_study.significant({"mean": -1.3, "se": 0.6}) == -1
    with pytest.raises(ValueError):
        nag_study.paired_difference([1, 2], [1, 2, 3])


def test_gaussian_frechet_equals_the_two_sample_formula():
    torch.manual_seed(0)
    x = torch.randn(300, 5, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0]) + 1.0
    mean = torch.tensor([0.0, 1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    variance = torch.tensor([0.5, 1.0, 2.0, 0.3, 1.5], dtype=torch.float64)
    # a point set whose sample mean and covariance are exactly (mean, diag(variance))
    z = torch.randn(400, 5, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T
    y = mean + z * variance.sqrt()
    assert gmm32.gaussian_frechet(x, mean, variance) == pytest.approx(
        frechet_distance(x, y), rel=1e-9
    )


@pytest.fixture(scope="module")
def mixture():
    return random_mixture(32, num_modes=8, std=0.3, num_classes=4)


def test_exact_samples_sit_on_the_floor(mixture):
    labels = gmm32.class_labels(mixture, 400)
    floor = gmm32.exact_floor(mixture, labels, seeds=range(8))
    again = gmm32.exact_floor(mixture, labels, seeds=range(100, 108))
    for metric in gmm32.METRICS:
        excess = again[metric]["mean"] - floor[metric]["mean"]
        error = math.hypot(again[metric]["se"], floor[metric]["se"])
        assert abs(excess) < 4 * error, metric


def test_the_calibration_sees_sharpened_and_blurred_samples(mixture):
    labels = gmm32.class_labels(mixture, 2000)
    rows = gmm32.spread_calibration(mixture, labels, seeds=range(3), factors=(0.8, 1.0, 1.2))
    sharp, same, blurred = rows
    assert same["fd"] == 0 and same["energy"] == 0  # the same draw, unscaled
    assert sharp["spread"] == pytest.approx(-0.2, abs=0.01)
    assert blurred["spread"] == pytest.approx(0.2, abs=0.01)
    for row in (sharp, blurred):  # both far above the floor at n = 2000
        assert row["fd"] > 10 * row["fd_se"] and row["energy"] > 5 * row["energy_se"]


def test_labels_follow_the_class_weights_in_every_prefix(mixture):
    labels = gmm32.class_labels(mixture, 2000)
    weights = torch.zeros(4, dtype=torch.float64).index_add_(
        0, mixture.classes, mixture.log_weights.exp()
    )
    for n in (2000, 500):
        counts = torch.bincount(labels[:n], minlength=4).double()
        assert (counts - n * weights).abs().max() <= 1.5


def test_nag_on_an_interval_gets_the_steps_that_cost_twice_the_baseline():
    steps = gmm32.interval_steps(25, gmm32.INTERVAL, 50)
    model = _random_mlp(0)
    sampler = Sampler(model, steps, nag_scale=1.0, nag_interval=gmm32.INTERVAL)
    nfe = sum(len(p) for p in sampler.plan.guidance_plan.passes)
    assert nfe == 50 and 25 < steps < 50


# ----------------------------------------------------------------------------- autoguidance
def test_autoguidance_with_the_same_model_twice_is_no_guidance():
    model = _random_mlp(0)
    y = torch.arange(10) % 2
    plain = Sampler(model, 6).sample(10, y=y, seed=3, progress=False)
    guided = nag_study.AutoguidanceModel(model, model)
    for scale in (0.5, 2.0):
        x = Sampler(guided, 6, nag_scale=scale).sample(10, y=y, seed=3, progress=False)
        torch.testing.assert_close(x, plain, atol=1e-5, rtol=1e-5)


def test_autoguidance_runs_the_weak_model_on_dropped_rows_only():
    strong, weak = _random_mlp(0), _random_mlp(1)
    wrapper = nag_study.AutoguidanceModel(strong, weak)
    assert wrapper.supports_noise_dropout and wrapper.num_classes == 2
    x, t = torch.randn(6, 4), torch.rand(6)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    drop = torch.tensor([False, True, True, False, False, True])
    with torch.no_grad():
        out = wrapper(x, t, y, drop_t=drop)
        torch.testing.assert_close(out[~drop], strong(x, t, y)[~drop])
        torch.testing.assert_close(out[drop], weak(x, t, y)[drop])  # WITH the time condition
        torch.testing.assert_close(wrapper(x, t, y), strong(x, t, y))


def test_autoguidance_step_is_the_karras_combination():
    strong, weak = _random_mlp(0), _random_mlp(1)
    latents = torch.randn(5, 4)
    y = torch.tensor([0, 1, 1, 0, 1])
    s = 0.7
    sampler = Sampler(nag_study.AutoguidanceModel(strong, weak), 1, nag_scale=s)
    x = sampler.sample(5, y=y, latents=latents, progress=False)
    t = torch.ones(5)
    with torch.no_grad():
        d1, d0 = strong(latents, t, y), weak(latents, t, y)
    velocity = d0 + (1 + s) * (d1 - d0)  # D_w = D0 + w (D1 - D0), w = 1 + s
    torch.testing.assert_close(x, latents - velocity, atol=1e-5, rtol=1e-5)
