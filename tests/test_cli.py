"""The `nag-engine` command (the image helpers it uses: test_images.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from nag_engine.cli import main


def _decode_png(data: bytes) -> np.ndarray:
    """The pixels of a PNG file's bytes."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def _caption_height(image: np.ndarray, picture_height: int) -> int:
    """Rows above a picture `picture_height` tall; checks that they hold dark (text) pixels."""
    height = image.shape[0] - picture_height
    assert height > 0 and (image[:height] < 100).any()
    return height


def test_sample_command_writes_samples_and_picture(tmp_path, capsys):
    out = tmp_path / "run" / "samples.npz"
    code = main(
        [
            "sample",
            "--model",
            "ring-exact",
            "--n",
            "200",
            "--steps",
            "8",
            "--nag-scale",
            "0.5",
            "--cfg-scale",
            "1.5",
            "--out",
            str(out),
            "--no-progress",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    saved = np.load(out)
    assert saved["samples"].shape == (200, 2) and saved["labels"].shape == (200,)
    assert np.isfinite(saved["samples"]).all()
    image = _decode_png(out.with_suffix(".png").read_bytes())
    assert image.shape[1] == 3 * 256 + 2 * 8  # data | unguided | guided, labelled, titled
    _caption_height(image, 256)
    assert not list(out.parent.glob(".*.tmp"))  # nothing half-written left behind
    assert "samples/s" in capsys.readouterr().out


def test_sample_command_takes_the_nag_null_class_form(tmp_path):
    """--nag-null-class reaches the sampler: with NAG on, the same seed gives other samples
    than the default NAG form; with NAG off, the very same samples."""
    args = ["sample", "--model", "ring-exact", "--n", "64", "--steps", "6", "--seed", "3"]
    args += ["--cfg-scale", "1.5", "--no-progress", "--no-png"]

    def samples(*extra: str) -> np.ndarray:
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}.npz"
        assert main([*args, *extra, "--out", str(out)]) == 0
        return np.load(out)["samples"]

    nag = ["--nag-scale", "0.8"]
    assert not np.allclose(samples(*nag), samples(*nag, "--nag-null-class"), atol=1e-3)
    np.testing.assert_array_equal(samples(), samples("--nag-null-class"))


def test_sample_command_reports_bad_input(tmp_path, capsys):
    assert (
        main(["sample", "--model", "ring-exact", "--steps", "0", "--out", str(tmp_path / "x.npz")])
        == 2
    )
    assert "steps must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_demo_runs_on_the_shipped_models(tmp_path, capsys):
    code = main(
        ["demo", "--out", str(tmp_path), "--steps", "4", "--n-toy", "200", "--n-digits", "100"]
    )
    assert code == 0
    text = capsys.readouterr().out
    for setting in ("baseline", "cfg", "nag", "cfg+nag"):
        assert setting in text
    toy = _decode_png((tmp_path / "demo_toy2d.png").read_bytes())
    assert toy.shape[1] == 5 * 256 + 4 * 8  # data | baseline | cfg | nag | cfg+nag
    _caption_height(toy, 256)
    digits = _decode_png((tmp_path / "demo_digits.png").read_bytes())
    # four 10 x 10 grids of 8 x 8 digits, drawn 8 times larger
    assert digits.shape[1] == 4 * 8 * (10 * 9 - 1) + 3 * 32
    _caption_height(digits, 8 * (10 * 9 - 1))
    import json

    rows = json.loads((tmp_path / "demo_metrics.json").read_text())
    assert {(r["model"], r["setting"]) for r in rows} == {
        (m, s) for m in ("toy2d", "digits") for s in ("baseline", "cfg", "nag", "cfg+nag")
    }


def test_info_describes_a_checkpoint(capsys):
    assert main(["info", "toy2d"]) == 0
    text = capsys.readouterr().out
    assert "MLPDenoiser" in text and "NAG supported" in text and "p_t=0.2" in text
    assert main(["info", "/no/such/file.safetensors"]) == 2


def test_train_resume_and_config_file(tmp_path, capsys):
    import json

    out = tmp_path / "run"
    args = [
        "train",
        "--preset",
        "toy2d",
        "--out",
        str(out),
        "--steps",
        "6",
        "--no-progress",
        "--set",
        "batch_size=32",
        "--set",
        "checkpoint_every=3",
    ]
    assert main(args) == 0
    assert (out / "checkpoint.safetensors").is_file() and (out / "model.safetensors").is_file()
    assert main(["info", str(out / "checkpoint.safetensors")]) == 0
    assert "resumable True" in capsys.readouterr().out
    resume = ["train", "--preset", "toy2d", "--out", str(out), "--resume", "--no-progress"]
    assert main(resume + ["--steps", "9"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert main(["info", str(out / "checkpoint.safetensors")]) == 0
    assert "step          9" in capsys.readouterr().out
    spec = {
        "dataset": "moons",
        "dataset_params": {"n": 500},
        "architecture": "MLPDenoiser",
        "model": {"dim": 2, "hidden": 16, "depth": 1, "num_classes": 2},
        "train": {"steps": 4, "batch_size": 16},
    }
    config = tmp_path / "moons.json"
    config.write_text(json.dumps(spec))
    assert (
        main(["train", "--config", str(config), "--out", str(tmp_path / "moons"), "--no-progress"])
        == 0
    )
    assert main(["info", str(tmp_path / "moons" / "model.safetensors")]) == 0
    assert '"name": "moons"' in capsys.readouterr().out
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2


def test_analyze_writes_figure_json_csv_and_a_table(tmp_path, capsys):
    import csv
    import io
    import json

    out = tmp_path / "an"
    args = ["analyze", "--model", "ring-exact", "--settings", "none,nag,cnag,time-shift"]
    code = main(args + ["--n", "64", "--steps", "4", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    for setting in ("none", "nag", "cnag", "time-shift"):
        assert setting in text
    image = _decode_png((out / "noise_shift.png").read_bytes())
    assert image.shape[:2] == (500, 1280)  # a 12.8 x 5 inch matplotlib figure at 100 dpi
    data = json.loads((out / "noise_shift.json").read_text())
    assert data["estimator"] == "ExactPosterior"
    assert list(data["settings"]) == ["none", "nag", "cnag", "time-shift"]
    assert data["settings"]["nag"]["meta"]["nag_scale"] == 0.5
    rows = list(csv.DictReader(io.StringIO((out / "noise_shift.csv").read_text())))
    assert len(rows) == 4 * 4 and {r["setting"] for r in rows} == set(data["settings"])
    for name, report in data["settings"].items():
        shifts = [float(r["shift"]) for r in rows if r["setting"] == name]
        assert shifts == pytest.approx(report["shift"])


def test_analyze_refuses_bad_settings_and_estimators(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert main(["analyze", "--model", "ring-exact", "--settings", "none,magic", "--out", out]) == 2
    assert "magic" in capsys.readouterr().err
    assert main(["analyze", "--model", "digits", "--estimator", "exact", "--out", out]) == 2
    assert "mixture" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_analyze_digits_with_the_shipped_head(tmp_path, capsys):
    out = tmp_path / "d"
    code = main(
        [
            "analyze",
            "--model",
            "digits",
            "--settings",
            "none,cnag",
            "--n",
            "20",
            "--steps",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "NoiseLevelHead" in capsys.readouterr().out
    assert (out / "noise_shift.png").is_file()


def test_info_describes_a_noise_level_head(capsys):
    assert main(["info", "digits-level"]) == 0
    text = capsys.readouterr().out
    assert "NoiseLevelHead" in text and "noise-level head" in text


def test_info_without_a_path_lists_the_backends(capsys):
    from nag_engine import backends

    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for name, why in backends.available().items():
        assert f"{name:<10} {why}" in text
    assert f"auto picks {backends.select('cpu')!r} for CPU tensors" in text


def test_bad_devices_and_counts_get_a_clear_error(tmp_path, capsys):
    out = str(tmp_path / "x.npz")
    assert main(["sample", "--model", "ring-exact", "--device", "gpu", "--out", out]) == 2
    assert "--device 'gpu': use auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["sample", "--model", "ring-exact", "--device", "cuda", "--out", out]) == 2
        assert "no CUDA device here" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: "expected a positive integer, got 0"
        main(["sample", "--model", "ring-exact", "--decode-batch-size", "0"])
    assert "expected a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
