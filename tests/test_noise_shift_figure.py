"""The noise-shift figure: matplotlib axes, labels, legend, bands, and the PNG it writes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from nag_engine.analysis.noise_shift import NoiseShiftReport
from nag_engine.analysis.shift_figure import describe_reports, shift_bound, shift_figure
from nag_engine.images import write_figure


def constant_shift_report(value: float, steps: int = 8, se: float = 0.001) -> NoiseShiftReport:
    """A report whose shift is `value` at every step (standard error `se`)."""
    t = np.linspace(1.0, 1.0 / steps, steps)
    zeros = np.zeros(steps)
    return NoiseShiftReport(
        step=np.arange(steps),
        t=t,
        sampler_mean=t + value,
        sampler_std=zeros + 0.05,
        forward_mean=t,
        forward_std=zeros + 0.05,
        shift=zeros + value,
        shift_se=zeros + se,
        sampler_spread=zeros,
        forward_spread=zeros,
        sampler_quantiles=np.zeros((steps, 5)),
        forward_quantiles=np.zeros((steps, 5)),
        n=100,
        meta={"steps": steps, "solver": "euler", "estimator": "ExactPosterior"},
    )


def legend_texts(axes) -> list[str]:
    return [text.get_text() for text in axes.get_legend().get_texts()]


@pytest.fixture
def reports() -> dict[str, NoiseShiftReport]:
    return {
        "none": constant_shift_report(0.0),
        "cfg": constant_shift_report(0.03),
        "nag": constant_shift_report(-0.015, se=0.0),
    }


def test_every_setting_is_a_labelled_line_on_one_shift_axis(reports):
    figure = shift_figure(reports)
    levels, shifts = figure.axes
    assert legend_texts(shifts) == ["none", "cfg", "nag"]
    lines = {line.get_label(): line for line in shifts.get_lines()}
    for name, report in reports.items():
        np.testing.assert_array_equal(lines[name].get_ydata(), report.shift)
        np.testing.assert_array_equal(lines[name].get_xdata(), report.t)
    assert len({lines[name].get_color() for name in reports}) == 3  # a colour each
    assert len(shifts.collections) == 2  # a +-2 SE band where the standard error is not 0
    assert shifts.get_ylim() == pytest.approx((-0.05, 0.05))  # shift_bound, symmetric
    assert legend_texts(levels) == ["sampler states", "forward-process samples", "estimate = t"]


def test_axes_are_labelled_and_time_runs_as_sampling_does(reports):
    figure = shift_figure(reports, title="Noise shift of toy2d")
    assert figure.get_suptitle() == "Noise shift of toy2d"
    for axes in figure.axes:
        assert axes.get_xlim() == (1.0, 0.0)  # t = 1 (noise) on the left
        assert "nominal noise level t" in axes.get_xlabel() and axes.get_ylabel()
        assert axes.get_title()
    assert "noise shift" in figure.axes[1].get_ylabel()
    default = shift_figure(reports, show_levels=False)
    assert len(default.axes) == 1 and legend_texts(default.axes[0]) == list(reports)
    assert default.get_suptitle() == "Noise shift: " + describe_reports(reports)
    assert describe_reports(reports) == (
        "8 euler steps, n = 100 samples per setting, read by ExactPosterior"
    )
    with pytest.raises(ValueError, match="at least one report"):
        shift_figure({})


def test_the_figure_file_is_a_png_of_the_figure_size(tmp_path, reports):
    path = tmp_path / "noise_shift.png"
    write_figure(path, shift_figure(reports))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1280, 500)
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels < 100).mean() > 0.005  # text, ticks and lines drawn on white
    write_figure(path, shift_figure(reports, show_levels=False), dpi=50)
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        assert image.size == (400, 250)
    assert [p.name for p in tmp_path.iterdir()] == ["noise_shift.png"]  # no temporary left


def test_shift_bound_rounds_up_to_one_two_five(reports):
    assert shift_bound(reports) == pytest.approx(0.05)  # 0.032 rounded up to 1-2-5
    assert shift_bound({"a": constant_shift_report(0.15, se=0.0)}) == pytest.approx(0.2)
