"""Hostile checkpoint files: every broken, foreign or inconsistent file is refused with an error
that names the file and what to do, before any expensive work (reading the weights, building the
model at its real size)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save, save_file

from nag_engine.checkpoints import (
    CheckpointError,
    build_model,
    load_checkpoint,
    read_checkpoint,
    read_header,
    save_checkpoint,
)
from nag_engine.models import ARCHITECTURES, DiT, MLPDenoiser, NoiseLevelHead
from nag_engine.presets import SHIPPED, shipped_checkpoint

NAME = "hostile.safetensors"


def tiny_mlp() -> MLPDenoiser:
    torch.manual_seed(0)
    return MLPDenoiser(2, hidden=16, depth=2, num_classes=3, prediction="eps", schedule="vp")


def tiny_dit(hidden_size: int = 64) -> DiT:
    torch.manual_seed(0)
    return DiT(
        input_size=4,
        patch_size=2,
        in_channels=1,
        hidden_size=hidden_size,
        depth=1,
        num_heads=2,
        num_classes=None,
    )


def good(tmp_path: Path, model: torch.nn.Module | None = None, **kwargs: Any) -> Path:
    """A valid checkpoint of a tiny model."""
    model = model if model is not None else tiny_mlp()
    return save_checkpoint(tmp_path / "good.safetensors", model, {"p_t": 0.1}, **kwargs)


def parts(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(safetensors metadata, tensors) of a file."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def rewritten(
    tmp_path: Path,
    *,
    config: Callable[[dict[str, Any]], Any] | None = None,
    metadata: Callable[[dict[str, str]], dict[str, str]] | None = None,
    tensors: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    model: torch.nn.Module | None = None,
    **kwargs: Any,
) -> Path:
    """A good checkpoint, its config (JSON data, or a str written verbatim), metadata or tensors
    edited, saved to NAME."""
    meta, weights = parts(good(tmp_path, model, **kwargs))
    if config is not None:
        edited = config(json.loads(meta["nag_engine"]))
        meta["nag_engine"] = edited if isinstance(edited, str) else json.dumps(edited)
    if metadata is not None:
        meta = metadata(meta)
    if tensors is not None:
        weights = tensors(weights)
    out = tmp_path / NAME
    save_file(weights, str(out), metadata=meta)
    return out


def raw(tmp_path: Path, data: bytes, name: str = NAME) -> Path:
    out = tmp_path / name
    out.write_bytes(data)
    return out


def raw_header(tmp_path: Path, header: Any, data: bytes = b"") -> Path:
    """A file with a hand-written safetensors header (JSON data, or bytes written verbatim)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return raw(tmp_path, len(text).to_bytes(8, "little") + text + data)


def with_model(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda c: {**c, "model": {**c["model"], **changes}}


def without(*keys: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda c: {k: v for k, v in c.items() if k not in keys}


def edit_config(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], Path]:
    return lambda p: rewritten(p, config=edit)


def set_config(**changes: Any) -> Callable[[Path], Path]:
    """A builder: a good file whose config has `changes`."""
    return lambda p: rewritten(p, config=lambda c: {**c, **changes})


def set_model(model: Callable[[], torch.nn.Module] | None = None, **changes: Any):
    """A builder: a good file (of `model`) whose model config has `changes`."""
    return lambda p: rewritten(p, model=model and model(), config=with_model(**changes))


def set_tensors(edit: Callable[[dict[str, torch.Tensor]], dict]) -> Callable[[Path], Path]:
    return lambda p: rewritten(p, tensors=edit)


def edit_metadata(edit: Callable[[dict[str, str]], dict[str, str]]) -> Callable[[Path], Path]:
    return lambda p: rewritten(p, metadata=edit)


def set_metadata(**changes: str) -> Callable[[Path], Path]:
    return lambda p: rewritten(p, metadata=lambda m: {**m, **changes})


def verbatim_config(text: str) -> Callable[[Path], Path]:
    return lambda p: rewritten(p, config=lambda c: text)


def one_tensor(metadata: Any = None, **entry: Any) -> Callable[[Path], Path]:
    """A builder: a hand-written header of one tensor "w" (float32 [2] unless `entry` says
    otherwise) over 8 bytes of data."""
    header = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], **entry}}
    if metadata is not None:
        header["__metadata__"] = metadata
    return lambda p: raw_header(p, header, bytes(8))


def nag_meta(config: Any) -> dict[str, str]:
    return {"format": "nag_engine.checkpoint", "version": "1", "nag_engine": json.dumps(config)}


def pickle_file(tmp_path: Path, zipped: bool) -> Path:
    out = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, out, _use_new_zipfile_serialization=zipped)
    return out


def a_directory(tmp_path: Path) -> Path:
    (tmp_path / "dir.safetensors").mkdir()
    return tmp_path / "dir.safetensors"


def foreign(tmp_path: Path) -> Path:
    save_file({"w": torch.zeros(2)}, str(tmp_path / NAME))
    return tmp_path / NAME


def scaled(name: str, value: float) -> Callable[[dict[str, torch.Tensor]], dict]:
    """A tensor edit: the first element of tensor `name` set to `value`."""

    def edit(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t = dict(t)
        t[name] = t[name].clone()
        t[name].view(-1)[0] = value
        return t

    return edit


W = "model.input_proj.weight"  # [16, 2] in the tiny MLP
MISSING, ISDIR, BAD = FileNotFoundError, IsADirectoryError, CheckpointError
FIX, GET, CONVERT, UPGRADE = "re-save", "download or copy it again", "nag-engine convert", "upgrade"
HEADER, LOADING = True, False  # refused by read_header too, or only when loaded

# (id, hostile file builder, error class, a fragment of the advice the message must give,
#  whether read_header refuses it too (the problem is in the header) or only loading does)
CASES: list[tuple[str, Callable[[Path], Path], type, str, bool]] = [
    # ---- the path
    ("missing-path", lambda p: p / "nope.safetensors", MISSING, "check the path", HEADER),
    ("directory", a_directory, ISDIR, CONVERT, HEADER),
    # ---- the bytes
    ("empty-file", lambda p: raw(p, b""), BAD, GET, HEADER),
    ("shorter-than-length", lambda p: raw(p, b"\x05\x00"), BAD, GET, HEADER),
    ("random-bytes", lambda p: raw(p, bytes(range(7, 250)) * 3), BAD, GET, HEADER),
    ("header-longer-than-file", lambda p: raw(p, (10**4).to_bytes(8, "little")), BAD, GET, HEADER),
    ("zero-header-length", lambda p: raw(p, bytes(8) + b"{}"), BAD, GET, HEADER),
    ("truncated", lambda p: raw(p, good(p).read_bytes()[:-100]), BAD, GET, HEADER),
    ("header-cut-short", lambda p: raw(p, good(p).read_bytes()[:60]), BAD, GET, HEADER),
    ("header-not-json", lambda p: raw_header(p, b"{this is not json}"), BAD, GET, HEADER),
    ("header-not-utf8", lambda p: raw_header(p, b'{"\xff\xfe": 1}'), BAD, GET, HEADER),
    ("header-a-list", lambda p: raw_header(p, [1, 2, 3]), BAD, GET, HEADER),
    ("tensor-shape-a-word", one_tensor(nag_meta({}), shape="big"), BAD, GET, HEADER),
    ("tensor-negative-shape", one_tensor(shape=[-2]), BAD, GET, HEADER),
    ("tensor-beyond-file", one_tensor(shape=[2000], data_offsets=[0, 8000]), BAD, GET, HEADER),
    ("tensor-size-mismatch", one_tensor(shape=[3]), BAD, GET, HEADER),
    ("tensor-unknown-dtype", one_tensor(dtype="Q3"), BAD, GET, HEADER),
    ("metadata-a-list", one_tensor([1]), BAD, GET, HEADER),
    ("metadata-not-strings", one_tensor({"format": 1}), BAD, GET, HEADER),
    ("pickle-zip", lambda p: pickle_file(p, zipped=True), BAD, CONVERT, HEADER),
    ("pickle-legacy", lambda p: pickle_file(p, zipped=False), BAD, CONVERT, HEADER),
    # ---- the metadata and the config
    ("foreign-safetensors", foreign, BAD, CONVERT, HEADER),
    ("no-config-key", edit_metadata(without("nag_engine")), BAD, CONVERT, HEADER),
    ("future-version", set_metadata(version="99"), BAD, UPGRADE, HEADER),
    ("version-not-a-number", set_metadata(version="one"), BAD, FIX, HEADER),
    ("config-not-json", verbatim_config('{"architecture": "MLP'), BAD, FIX, HEADER),
    ("config-a-list", verbatim_config("[1, 2]"), BAD, FIX, HEADER),
    ("config-a-string", verbatim_config('"MLPDenoiser"'), BAD, FIX, HEADER),
    ("config-a-number", verbatim_config("42"), BAD, FIX, HEADER),
    ("config-null", verbatim_config("null"), BAD, FIX, HEADER),
    ("no-architecture", edit_config(without("architecture")), BAD, FIX, HEADER),
    ("unknown-architecture", set_config(architecture="UNet"), BAD, UPGRADE, HEADER),
    ("architecture-a-list", set_config(architecture=["DiT"]), BAD, FIX, HEADER),
    ("no-model-config", edit_config(without("model")), BAD, FIX, HEADER),
    ("model-config-a-list", set_config(model=[2, 16]), BAD, FIX, HEADER),
    ("train-not-a-dict", set_config(train=5), BAD, FIX, HEADER),
    ("train-null", set_config(train=None), BAD, FIX, HEADER),
    ("p_t-a-word", set_config(p_t="lots"), BAD, FIX, HEADER),
    ("p_t-nan", set_config(p_t=math.nan), BAD, FIX, HEADER),
    ("p_t-above-one", set_config(p_t=2.0), BAD, FIX, HEADER),
    ("has_ema-a-word", set_config(has_ema="no"), BAD, FIX, HEADER),
    ("step-a-word", set_config(step="seven"), BAD, FIX, HEADER),
    # ---- a model config that does not build, or builds a model other than the tensors'
    ("unknown-model-key", set_model(hiddne=16), BAD, FIX, LOADING),
    ("size-a-string", set_model(hidden="16"), BAD, FIX, LOADING),
    ("size-negative", set_model(hidden=-16), BAD, FIX, LOADING),
    ("size-nan", set_model(hidden=math.nan), BAD, FIX, LOADING),
    ("size-fractional", set_model(hidden=16.5), BAD, FIX, LOADING),
    ("zero-classes", set_model(num_classes=0), BAD, FIX, LOADING),
    ("unknown-prediction", set_model(prediction="banana"), BAD, FIX, LOADING),
    ("unknown-schedule", set_model(schedule="zigzag"), BAD, FIX, LOADING),
    ("bigger-hidden", set_model(hidden=4096), BAD, FIX, LOADING),
    ("deeper", set_model(depth=3), BAD, FIX, LOADING),
    ("dit-hidden-4096", set_model(tiny_dit, hidden_size=4096), BAD, FIX, LOADING),
    ("dit-heads-do-not-divide", set_model(tiny_dit, num_heads=5), BAD, FIX, LOADING),
    # ---- the tensors
    ("tensor-missing", set_tensors(without(W)), BAD, FIX, LOADING),
    ("tensor-extra", set_tensors(lambda t: {**t, "model.spare": torch.ones(3)}), BAD, FIX, LOADING),
    ("tensor-transposed", set_tensors(lambda t: {**t, W: t[W].T.contiguous()}), BAD, FIX, LOADING),
    ("tensor-int-for-float", set_tensors(lambda t: {**t, W: t[W].int()}), BAD, FIX, LOADING),
    ("ema-promised-but-absent", set_config(has_ema=True), BAD, FIX, LOADING),
    ("nan-weight", set_tensors(scaled(W, math.nan)), BAD, "earlier", LOADING),
    ("inf-weight", set_tensors(scaled(W, -math.inf)), BAD, "earlier", LOADING),
]


@pytest.mark.parametrize(
    "make, kind, advice, in_header",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_a_hostile_file_is_refused_naming_the_file_and_the_fix(
    tmp_path, make, kind, advice, in_header
):
    path = make(tmp_path)
    with pytest.raises(kind) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert type(error.value) is kind, message  # not a bare ValueError / KeyError / ...
    assert str(path) in message, message
    assert advice in message, message
    assert issubclass(kind, (ValueError, OSError))
    readers = [read_header] if in_header else []
    if advice != "earlier":  # non-finite weights are refused on loading only
        readers.append(read_checkpoint)
    for reader in readers:
        with pytest.raises(kind) as again:
            reader(path)
        assert str(path) in str(again.value), str(again.value)


def test_there_are_many_cases():
    assert len(CASES) >= 30


def guarded(cls: type) -> type:
    """`cls`, refusing to be built anywhere but on the meta device."""

    class Guarded(cls):
        built_on: list[str] = []

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            device = torch.empty(0).device.type  # the default device where it is built
            Guarded.built_on.append(device)
            if device != "meta":
                raise AssertionError(f"{cls.__name__} built on {device} before the size check")
            super().__init__(*args, **kwargs)

    return Guarded


@pytest.mark.parametrize(
    "architecture, model, huge",
    [
        ("MLPDenoiser", tiny_mlp, {"hidden": 50_000, "depth": 2}),
        ("DiT", tiny_dit, {"hidden_size": 32_768, "depth": 4, "num_heads": 2}),
    ],
)
def test_sizes_are_checked_on_the_meta_device_before_building(
    tmp_path, monkeypatch, architecture, model, huge
):
    path = rewritten(tmp_path, model=model(), config=with_model(**huge))
    config, shapes = read_header(path)
    with torch.device("meta"):  # what the claimed config would take to build for real
        claimed = ARCHITECTURES[architecture](**config["model"])
    assert sum(p.numel() * 4 for p in claimed.parameters()) > 10e9
    cls = guarded(ARCHITECTURES[architecture])
    monkeypatch.setitem(ARCHITECTURES, architecture, cls)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="do not match") as error:
        load_checkpoint(path)
    assert time.perf_counter() - start < 5
    assert cls.built_on == ["meta"]
    assert str(path) in str(error.value) and "re-save" in str(error.value)
    # the message shows the disagreeing tensors: the config's shape and the file's
    assert f"{max(huge.values())}] in the config" in str(error.value)


def test_a_good_file_is_built_once_for_real_after_the_meta_check(tmp_path, monkeypatch):
    path = good(tmp_path)
    seen: list[str] = []

    class Counting(MLPDenoiser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append(torch.empty(0).device.type)
            super().__init__(*args, **kwargs)

    monkeypatch.setitem(ARCHITECTURES, "MLPDenoiser", Counting)
    assert isinstance(load_checkpoint(path), Counting)
    assert seen == ["meta", "cpu"]


def test_non_finite_weights_of_the_other_set_do_not_matter(tmp_path):
    """NaN in the raw weights of a file whose EMA weights are fine: the EMA loads, the raw are
    refused, naming the tensor."""
    model = tiny_mlp()
    path = save_checkpoint(tmp_path / "m.safetensors", model, {}, ema=tiny_mlp())
    meta, weights = parts(path)
    weights = scaled(W, math.nan)(weights)
    save_file(weights, str(path), metadata=meta)
    assert isinstance(load_checkpoint(path), MLPDenoiser)
    with pytest.raises(CheckpointError, match=r"model\.input_proj\.weight"):
        load_checkpoint(path, weights="raw")


def test_every_architecture_builds_on_the_meta_device(tmp_path):
    """The size check builds each registered architecture on the meta device: it must work for
    them all (DiffusersDenoiser files are loaded, through it, in test_diffusers_models.py)."""
    head = NoiseLevelHead.from_denoiser(tiny_mlp())
    for model in (tiny_mlp(), tiny_dit(), head):
        path = save_checkpoint(tmp_path / "m.safetensors", model, {})
        config, _ = read_header(path)
        meta = build_model(config, device="meta")
        assert {p.device.type for p in meta.parameters()} == {"meta"}
        assert type(load_checkpoint(path)) is type(model)


def test_a_raw_file_that_is_only_a_header_fails_with_the_path(tmp_path):
    """A valid nag_engine header over no data at all: refused before anything is built."""
    meta, weights = parts(good(tmp_path))
    data = save(weights, metadata=meta)
    path = raw(tmp_path, data[: 8 + int.from_bytes(data[:8], "little")])
    with pytest.raises(CheckpointError, match="download") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_shipped_checkpoints_pass_the_checks(name):
    path = shipped_checkpoint(name)
    config, tensors = read_checkpoint(path)
    assert load_checkpoint(path).checkpoint_config == config and tensors


# ------------------------------------------------------------------ resuming a damaged run
@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """A two-step toy2d run's resumable checkpoint, its metadata and tensors, and its data."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from nag_engine.presets import PRESETS
    from nag_engine.training import TrainConfig, Trainer
    from nag_engine.training.data import load_dataset

    out = tmp_path_factory.mktemp("run")
    data = load_dataset("ring", n=2000, seed=0)
    config = TrainConfig(steps=2, batch_size=16, p_t=0.2)
    Trainer(PRESETS["toy2d"].build_model(0), data, config, out=out).run(progress=False)
    path = out / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    return metadata, load_file(str(path)), data


def _first(tensors, prefix, suffix=""):
    return next(n for n in sorted(tensors) if n.startswith(prefix) and n.endswith(suffix))


RESUME_CASES = {
    "no train config": (lambda c: c.pop("train"), None, "KeyError: 'train'"),
    "lr as text": (lambda c: c["train"].__setitem__("lr", "fast"), None, "lr must be a number"),
    "step null": (lambda c: c.__setitem__("step", None), None, "damaged or incomplete"),
    "optimizer groups an int": (
        lambda c: c.__setitem__("optimizer_groups", 5),
        None,
        "damaged or incomplete",
    ),
    "no noise generator": (None, lambda t: t.pop("rng.noise"), "KeyError: 'rng.noise'"),
    "generator state of floats": (
        None,
        lambda t: t.__setitem__("rng.noise", torch.zeros(3)),
        "RNG state",
    ),
    "optimizer index not a number": (
        None,
        lambda t: t.__setitem__("optim.x.exp_avg", torch.zeros(3)),
        "damaged or incomplete",
    ),
    "optimizer state of the wrong shape": (
        None,
        lambda t: t.__setitem__(_first(t, "optim.", "exp_avg"), torch.zeros(3)),
        "has shape (3,)",
    ),
    "NaN weights": (
        None,
        lambda t: t.__setitem__(
            _first(t, "model.", "bias"), torch.full_like(t[_first(t, "model.", "bias")], math.nan)
        ),
        "NaN or infinite values",
    ),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resuming_a_damaged_training_state_names_the_file(tmp_path, resumable, case):
    from nag_engine.training import Trainer

    metadata, tensors, data = resumable
    edit_config, edit_tensors, text = RESUME_CASES[case]
    config = json.loads(metadata["nag_engine"])
    tensors = dict(tensors)
    if edit_config:
        edit_config(config)
    if edit_tensors:
        edit_tensors(tensors)
    path = tmp_path / "checkpoint.safetensors"
    save_file(tensors, str(path), metadata={**metadata, "nag_engine": json.dumps(config)})
    with pytest.raises(CheckpointError) as caught:
        Trainer.resume(path, data)
    assert str(path) in str(caught.value) and text in str(caught.value)
