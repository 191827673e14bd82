"""Latent diffusion's other half: a diffusers `AutoencoderKL` from a local folder, images in and
out, and the `nag-engine encode` job that turns an image folder into training latents.

    vae = VAE.load("sd-vae-ft-mse", device="cuda", dtype=torch.bfloat16)
    images = vae.decode(latents)          # [-1, 1], float32
    latents = vae.encode(images)          # scaled by the VAE's scaling_factor (0.18215 for SD)

The latent scale (and shift, for VAEs that have one) comes from the folder's config.json: a
model sees `(z - shift) * scale` for the VAE's raw latent z, as DiT and SiT were trained
(`vae.encode(x).latent_dist.sample() * 0.18215`). Nothing is downloaded: the folder must hold
a saved AutoencoderKL (config.json + weights), e.g. `stabilityai/sd-vae-ft-mse` fetched once
with `huggingface-cli download stabilityai/sd-vae-ft-mse --local-dir sd-vae-ft-mse`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .images import image_grid, to_uint8  # noqa: F401 (image_grid: re-exported)

Tensor = torch.Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LATENT_MODES = ("sample", "mean")


def _cuda_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class VAE:
    """A diffusers AutoencoderKL with its latent scale: `encode` images in [-1, 1] to model
    latents, `decode` model latents to images in [-1, 1]. `decode_seconds` / `encode_seconds`
    accumulate the time spent in each (synchronised on CUDA)."""

    def __init__(
        self, autoencoder: torch.nn.Module, source: str = "", batch_size: int = 16
    ) -> None:
        config = autoencoder.config
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.source = source
        self.scaling_factor = float(getattr(config, "scaling_factor", None) or 0.18215)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.latent_channels = int(config.latent_channels)
        self.image_channels = int(config.in_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        param = next(autoencoder.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.batch_size = batch_size  # latents per decode call
        self.decode_seconds = 0.0
        self.encode_seconds = 0.0

    @classmethod
    def load(
        cls,
        folder: Union[str, Path],
        *,
        device: Union[None, str, torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> VAE:
        """The AutoencoderKL saved in `folder` (config.json + weights), on `device` in `dtype`."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"no VAE folder at {folder}: pass a local diffusers AutoencoderKL folder "
                "(config.json + weights), e.g. one fetched with `huggingface-cli download "
                "stabilityai/sd-vae-ft-mse --local-dir sd-vae-ft-mse`"
            )
        config_path = folder / "config.json"
        if not config_path.is_file() and (folder / "vae" / "config.json").is_file():
            folder, config_path = folder / "vae", folder / "vae" / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{folder} has no config.json: not a diffusers AutoencoderKL folder (save one "
                "with AutoencoderKL.save_pretrained(DIR), or point at a pipeline's vae/ folder)"
            )
        kind = json.loads(config_path.read_text()).get("_class_name")
        if kind != "AutoencoderKL":
            raise ValueError(f"{folder} holds a {kind}, not an AutoencoderKL")
        from .models.diffusers_models import import_diffusers

        diffusers = import_diffusers()
        try:
            autoencoder = diffusers.AutoencoderKL.from_pretrained(
                str(folder), torch_dtype=dtype or torch.float32, low_cpu_mem_usage=False
            )
        except (OSError, ValueError) as err:
            raise ValueError(f"could not load the AutoencoderKL in {folder} ({err})") from None
        autoencoder = autoencoder.to(device=device or "cpu")
        return cls(autoencoder, source=str(folder))

    def describe(self) -> dict[str, Any]:
        """What identifies this decoder in a run's manifest."""
        return {
            "vae": self.source,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "latent_channels": self.latent_channels,
        }

    def check_latents(self, shape: Sequence[int]) -> None:
        """Refuse model samples of `shape` ([C, H, W]) that this VAE cannot decode."""
        if len(shape) != 3 or shape[0] != self.latent_channels:
            raise ValueError(
                f"the model's samples have shape {list(shape)} but this VAE decodes latents with "
                f"{self.latent_channels} channels ([{self.latent_channels}, H, W]); use the VAE "
                "the model was trained with"
            )

    def _decoded(self, latents: Tensor, batch_size: Optional[int]) -> Iterator[Tensor]:
        """Images in [-1, 1] (float32, on the VAE's device), `batch_size` latents at a time."""
        self.check_latents(tuple(latents.shape[1:]))
        size = batch_size or self.batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"the decode batch size must be a positive int, got {size!r}")
        for chunk in latents.split(size):
            z = chunk.to(self.device, self.dtype) / self.scaling_factor + self.shift_factor
            with torch.no_grad():
                yield self.autoencoder.decode(z).sample.float().clamp(-1, 1)

    def decode(self, latents: Tensor, batch_size: Optional[int] = None) -> Tensor:
        """Images [B, C, H * f, W * f] in [-1, 1] (float32, on the VAE's device) of model
        latents, decoded `batch_size` (default `self.batch_size`) at a time."""
        start = time.perf_counter()
        images = torch.cat(list(self._decoded(latents, batch_size)))
        _cuda_sync(self.device)
        self.decode_seconds += time.perf_counter() - start
        return images

    def decode_uint8(self, latents: Tensor, batch_size: Optional[int] = None) -> np.ndarray:
        """uint8 images [B, H, W, C] of model latents, each decoded chunk moved to the host
        at once (so a large batch never holds its float images on the device together)."""
        start = time.perf_counter()
        images = np.concatenate([to_uint8(chunk) for chunk in self._decoded(latents, batch_size)])
        self.decode_seconds += time.perf_counter() - start
        return images

    @torch.no_grad()
    def encode(
        self, images: Tensor, *, mode: str = "sample", generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Model latents (float32) of images [B, C, H, W] in [-1, 1]: a draw from the posterior
        ("sample", as DiT trained; from `generator`) or its mean ("mean")."""
        if mode not in LATENT_MODES:
            raise ValueError(f"mode must be one of {LATENT_MODES}, got {mode!r}")
        if images.ndim != 4 or images.shape[1] != self.image_channels:
            raise ValueError(
                f"images must be [B, {self.image_channels}, H, W], got {tuple(images.shape)}"
            )
        start = time.perf_counter()
        posterior = self.autoencoder.encode(images.to(self.device, self.dtype)).latent_dist
        z = posterior.mean if mode == "mean" else posterior.sample(generator=generator)
        latents = ((z.float() - self.shift_factor) * self.scaling_factor).cpu()
        self.encode_seconds += time.perf_counter() - start
        return latents


# ----------------------------------------------------------------------------- image sources
def center_crop(image: Any, size: int) -> np.ndarray:
    """ADM's / DiT's training crop: halve with a box filter while the short side is at least
    twice `size`, resize the short side to `size` (bicubic), take the centre square. Returns
    uint8 [size, size, 3]."""
    from PIL import Image

    image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    pixels = np.asarray(image)
    top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
    return pixels[top : top + size, left : left + size]


class ImageSource:
    """Images with labels from an image folder (class subfolders, ImageNet-style: class ids in
    sorted folder order, or in the order of `classes`; or a flat folder: unlabelled) or an
    ADM-style .npz (`arr_0` uint8 [N, H, W, 3], labels in `arr_1` or `labels` if present).
    Hidden files and folders (".ipynb_checkpoints", "__MACOSX", ...) are skipped."""

    def __init__(self, path: Union[str, Path], classes: Optional[Sequence[str]] = None) -> None:
        self.path = Path(path)
        self.files: list[Path] = []
        self.array: Optional[np.ndarray] = None
        self.labels: Optional[np.ndarray] = None
        self.class_names: list[str] = []
        if self.path.is_file() and self.path.suffix == ".npz":
            self._from_npz()
        elif self.path.is_dir():
            self._from_folder(classes)
        else:
            raise FileNotFoundError(
                f"no images at {self.path}: pass a folder of images (one subfolder per class) "
                "or an .npz with arr_0 = uint8 [N, H, W, 3]"
            )
        if len(self) == 0:
            raise ValueError(f"{self.path} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def _from_npz(self) -> None:
        with np.load(self.path, allow_pickle=False) as data:
            if "arr_0" not in data:
                raise ValueError(f"{self.path} has no arr_0 (uint8 images [N, H, W, 3])")
            self.array = data["arr_0"]
            for key in ("labels", "arr_1"):
                if key in data:
                    self.labels = data[key].astype(np.int64)
                    break
        if self.array.dtype != np.uint8 or self.array.ndim != 4 or self.array.shape[-1] != 3:
            raise ValueError(
                f"{self.path}: arr_0 must be uint8 [N, H, W, 3], got {self.array.dtype} "
                f"{self.array.shape}"
            )

    def _from_folder(self, classes: Optional[Sequence[str]]) -> None:
        def visible(p: Path) -> bool:
            return not p.name.startswith((".", "__"))

        def images_in(folder: Path) -> list[Path]:
            return sorted(
                p
                for p in folder.iterdir()
                if p.is_file() and visible(p) and p.suffix.lower() in IMAGE_SUFFIXES
            )

        folders = sorted(p for p in self.path.iterdir() if p.is_dir() and visible(p))
        if not folders:
            self.files = images_in(self.path)
            return
        self.class_names = list(classes) if classes is not None else [p.name for p in folders]
        ids = {name: index for index, name in enumerate(self.class_names)}
        unknown = [p.name for p in folders if p.name not in ids]
        if unknown:
            raise ValueError(
                f"{self.path} has class folders that the class list does not name: "
                f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
            )
        labels = []
        for folder in folders:
            found = images_in(folder)
            self.files += found
            labels += [ids[folder.name]] * len(found)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.files)

    def batches(self, size: int, batch_size: int, start: int = 0, stop: Optional[int] = None):
        """uint8 [B, size, size, 3] batches of images start .. stop - 1 in order, cropped as
        `center_crop` does."""
        from PIL import Image

        stop = len(self) if stop is None else stop
        for first in range(start, stop, batch_size):
            last = min(stop, first + batch_size)
            if self.array is not None:
                images = [Image.fromarray(a) for a in self.array[first:last]]
            else:
                images = []
                for path in self.files[first:last]:
                    try:
                        with Image.open(path) as image:
                            image.load()
                    except OSError as err:
                        raise ValueError(f"cannot read the image {path} ({err})") from None
                    images.append(image)
            yield np.stack([center_crop(image, size) for image in images])


def read_class_list(path: Union[str, Path]) -> list[str]:
    """Class folder names in id order, one per line (blank lines and "#" comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no class list at {path}: a text file, one folder name a line")
    names = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        raise ValueError(f"{path} names a class twice")
    return names


def part_generator(seed: int, part: int, device: Union[str, torch.device]) -> torch.Generator:
    """The generator of part `part` of an encode run: seeded from (seed, part) alone, so a
    resumed run draws what an uninterrupted one would."""
    digest = hashlib.sha256(f"nag_engine.encode:{seed}:{part}".encode()).digest()
    return torch.Generator(device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


ENCODE_MANIFEST = "encode.json"


def encode_images(
    source: Union[str, Path],
    out: Union[str, Path],
    vae_folder: Union[str, Path],
    *,
    size: int = 256,
    batch_size: int = 32,
    mode: str = "sample",
    seed: int = 0,
    classes: Optional[Sequence[str]] = None,
    part_size: int = 10_000,
    device: Union[None, str, torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode the images of `source` (see `ImageSource`) with the VAE in `vae_folder` into
    training latents for `load_dataset("latents", path=out)`: arrays `latents` float32
    [N, C, size / f, size / f] (already times the scaling factor), `labels` int64 and
    `class_names` (when the source has classes), and the VAE's scale.

    `out` is an `.npz` (written atomically once every image is encoded) or a folder: parts of
    `part_size` images written atomically as each completes, and a rerun of the same call
    skips the parts on disk. The latents are the same either way (part k draws from its own
    seeded generator). Returns a summary (images, latent shape, classes, parts written)."""
    from .images import atomic_write_npz, claim_run_folder

    out = Path(out)
    if mode not in LATENT_MODES:
        raise ValueError(f"mode must be one of {LATENT_MODES}, got {mode!r}")
    if out.suffix not in (".npz", "") or (out.suffix == "" and out.is_file()):
        raise ValueError(f"the output must be an .npz file or a folder, got {out}")
    if isinstance(part_size, bool) or not isinstance(part_size, int) or part_size < 1:
        raise ValueError(f"part_size must be a positive int, got {part_size!r}")
    images = ImageSource(source, classes)
    vae = VAE.load(vae_folder, device=device, dtype=dtype)
    if size % vae.downsample:
        raise ValueError(f"size {size} is not a multiple of the VAE's factor {vae.downsample}")
    extra = {
        "scaling_factor": np.float64(vae.scaling_factor),
        "image_size": np.int64(size),
        "vae": np.str_(str(vae_folder)),
    }
    if images.labels is not None:
        extra["class_names"] = np.asarray(images.class_names, dtype=np.str_)
    count = -(-len(images) // part_size)
    folder = out.suffix == ""
    if folder:  # the run's identity: a rerun resumes it, another run is refused
        identity = {
            "source": str(Path(source).resolve()),
            "images": len(images),
            "size": size,
            "vae": str(Path(vae_folder).resolve()),
            "mode": mode,
            "seed": seed,
            "part_size": part_size,
            "class_names": images.class_names,
        }
        claim_run_folder(out / ENCODE_MANIFEST, identity, "encode run")
    kept, written, shape = [], 0, None
    with tqdm(total=len(images), desc="encoding", unit="image", disable=not progress) as bar:
        for part in range(count):
            lo, hi = part * part_size, min(len(images), (part + 1) * part_size)
            path = out / f"part_{part:05d}.npz" if folder else None
            if path is not None and path.is_file():
                bar.update(hi - lo)
                continue
            generator = part_generator(seed, part, vae.device)
            latents = []
            for batch in images.batches(size, batch_size, lo, hi):
                pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1.0
                latents.append(vae.encode(pixels, mode=mode, generator=generator).numpy())
                bar.update(len(batch))
            arrays = {"latents": np.concatenate(latents), **extra}
            if images.labels is not None:
                arrays["labels"] = images.labels[lo:hi]
            shape = list(arrays["latents"].shape[1:])
            if path is not None:
                atomic_write_npz(path, **arrays)
                written += 1
            else:
                kept.append(arrays)
    if not folder:
        whole = {"latents": np.concatenate([a["latents"] for a in kept]), **extra}
        if images.labels is not None:
            whole["labels"] = images.labels
        atomic_write_npz(out, **whole)
    return {
        "images": len(images),
        "latent_shape": shape,
        "classes": len(images.class_names) if images.labels is not None else 0,
        "parts_written": written if folder else None,
        "parts_on_disk": count - written if folder else None,
    }
