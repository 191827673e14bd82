"""The feature network of FID, Inception Score and precision/recall, loaded from a local file.

The file is the TorchScript Inception-v3 that NVIDIA publishes for StyleGAN2-ADA / StyleGAN3
metrics and that clean-fid uses, ``inception-2015-12-05.pt`` (`INCEPTION_URL`): the
TensorFlow graph of the original FID and Inception Score code (``2015-12-05``, 1008 classes),
the one the ADM evaluation suite runs, as a PyTorch module. Nothing is downloaded here: the file
is named by ``--inception PATH`` or the environment variable ``NAG_ENGINE_INCEPTION``.

Its call, as StyleGAN2-ADA's metrics make it: ``net(images, return_features=True)`` on images
[N, 3, H, W] of any size with values in [0, 255] (uint8 or float; the network resizes to 299 x
299 as TensorFlow's bilinear resize does, then scales to [-1, 1]) gives the 2048 pool features
[N, 2048] of FID and precision/recall; ``net(images, no_output_bias=True)`` the class
probabilities [N, 1008] of the Inception Score without the output layer's bias (StyleGAN's IS
call; the ADM evaluator's softmax also takes the weight alone). Those logits are computed from
the features, ``features @ net.output.weight.T``, so that one pass over the images serves every
metric; `load_inception` checks on a test image that this gives the network's own
probabilities, and falls back to the second call where it does not.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
    "inception-2015-12-05.pt"
)
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_ENV = "NAG_ENGINE_INCEPTION"
WHERE_TO_GET = (
    f"download {INCEPTION_FILE} (NVIDIA's TorchScript Inception-v3 for FID) once from "
    f"{INCEPTION_URL} and pass --inception PATH (or set {INCEPTION_ENV}=PATH); nothing is "
    "downloaded at run time"
)


def inception_path(path: Optional[Union[str, Path]] = None) -> Path:
    """The feature network's file: `path` (the --inception option), else the environment
    variable NAG_ENGINE_INCEPTION; an error that says where to get it when neither names a
    file."""
    source = "--inception "
    if path is None:
        path, source = os.environ.get(INCEPTION_ENV) or None, f"{INCEPTION_ENV}="
        if path is None:
            raise FileNotFoundError(f"no Inception network given: {WHERE_TO_GET}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{source}{path}: no such file; {WHERE_TO_GET}")
    if path.is_dir():
        candidate = path / INCEPTION_FILE
        if not candidate.is_file():
            raise FileNotFoundError(
                f"{source}{path} is a folder without {INCEPTION_FILE}: name the file; "
                f"{WHERE_TO_GET}"
            )
        path = candidate
    return path


class FeatureNetwork:
    """A loaded feature network on `device` (see the module docstring): `num_features` is the
    pool feature width (2048 for Inception-v3), `num_classes` the logit width (1008), `weight`
    its output layer's weight [classes, features] in float64 (None where the file has no usable
    `output` layer: the logits then take a second call), `sha256` the file's digest."""

    def __init__(
        self,
        module: torch.nn.Module,
        device: torch.device,
        path: Path,
        sha256: str,
        num_features: int,
        num_classes: int,
        weight: Optional[torch.Tensor],
    ):
        self.module = module
        self.device = device
        self.path = path
        self.sha256 = sha256
        self.num_features = num_features
        self.num_classes = num_classes
        self.weight = weight

    @torch.no_grad()
    def features_and_logits(
        self, images: np.ndarray, logits: bool = False
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """float32 [B, D] pool features of uint8 images [B, H, W, 3] and, with `logits`, the
        float64 [B, classes] class logits of the output layer without its bias (features @ W.T;
        or the log of the network's own no_output_bias=True probabilities), on the device."""
        if not images.flags.writeable:  # (read from a file buffer) torch wants its own copy
            images = images.copy()
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW, still uint8 in [0, 255]
        features = self.module(batch, return_features=True).float().reshape(len(batch), -1)
        if not logits:
            return features, None
        if self.weight is not None:
            return features, features.double() @ self.weight.T
        probs = self.module(batch, no_output_bias=True).double()
        return features, probs.clamp_min(torch.finfo(torch.float64).tiny).log()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_sentence(err: BaseException) -> str:
    return str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else repr(err)


def _not_inception(path: Path, reason: str) -> ValueError:
    return ValueError(
        f"{path} is not the TorchScript Inception network {INCEPTION_FILE} ({reason}): "
        f"{WHERE_TO_GET}"
    )


def load_inception(
    path: Optional[Union[str, Path]] = None, device: Union[str, torch.device] = "cpu"
) -> FeatureNetwork:
    """Load the feature network (`inception_path(path)`) with torch.jit.load onto `device` and
    check, on one test image, that it answers as the Inception file does (pool features [1, D]
    with return_features=True, class probabilities with no_output_bias=True); else an error
    that says what the file should be. The logits come from the features when the `output`
    layer reproduces the network's own probabilities on the test image, else from a second
    call of the network."""
    path = inception_path(path)
    device = torch.device(device)
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the file's format
        warnings.filterwarnings("ignore", message=r".*torch\.jit", category=DeprecationWarning)
        try:
            module = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as err:
            raise _not_inception(path, f"torch.jit.load: {_first_sentence(err)}") from None
    probe = (torch.arange(3 * 16 * 16, device=device) % 251).to(torch.uint8).view(1, 3, 16, 16)
    try:
        with torch.no_grad():
            features = module(probe, return_features=True).double().reshape(1, -1)
            probs = module(probe, no_output_bias=True).double().reshape(1, -1)
    except (RuntimeError, TypeError) as err:
        raise _not_inception(path, f"a test call failed: {_first_sentence(err)}") from None
    if abs(float(probs.sum()) - 1) > 1e-3:
        raise _not_inception(path, "its call without return_features gives no probabilities")
    # the logits from the features, when the output layer is there and gives the network's own
    # probabilities (one pass serves FID and IS); else the network's call gives them
    weight = getattr(getattr(module, "output", None), "weight", None)
    if isinstance(weight, torch.Tensor) and weight.shape == (probs.shape[1], features.shape[1]):
        weight = weight.detach().to(device, torch.float64)
        if not torch.allclose(torch.softmax(features @ weight.T, 1), probs, atol=1e-5):
            weight = None
    else:
        weight = None
    num_features, num_classes = features.shape[1], probs.shape[1]
    return FeatureNetwork(module, device, path, _sha256(path), num_features, num_classes, weight)
