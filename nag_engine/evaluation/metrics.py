"""FID, Inception Score and precision/recall of a set of samples against a reference set.

One pass of the feature network over each set gives the pool features (and, for the samples,
the class logits); the metrics are computed from those:

* ``fid``: torchmetrics' `FrechetInceptionDistance`, the features handed in through its custom
  `feature` module (`Precomputed`), sums and covariance in float64, covariance with n - 1 as
  ``np.cov`` (ADM's evaluator) has it. A reference that carries ``mu`` / ``sigma`` (an ADM
  reference batch) gives those as the metric's reference statistics, in place of its images,
  as the ADM evaluator uses them.
* ``is``: torchmetrics' `InceptionScore` on the logits without the output bias (ADM's and
  StyleGAN's convention), in `IS_SPLITS` splits; torchmetrics shuffles the samples before it
  splits them, with a fixed seed here so that a rerun gives the same number. (ADM's evaluator
  takes consecutive splits of 5,000, which is also 10 splits at 50,000 samples.)
* ``pr``: improved precision and recall (Kynkaanniemi et al. 2019) with k = `PR_NEIGHBOURS` = 3
  nearest neighbours, as ADM's ManifoldEstimator defines them: precision is the share of samples
  inside some reference feature's k-NN ball, recall the share of references inside some
  sample's. torchmetrics has none; `nag_engine.analysis.metrics.knn_precision_recall` computes
  it (float64, distances in blocks, so 50,000 x 50,000 fits in memory).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from tqdm.auto import tqdm

from ..analysis.metrics import knn_precision_recall
from .inception import FeatureNetwork
from .inputs import ImageSet

METRICS = ("fid", "is", "pr")
PR_NEIGHBOURS = 3
IS_SPLITS = 10
IS_SEED = 0  # the permutation torchmetrics draws before it splits the samples


def parse_metrics(text: str) -> tuple[str, ...]:
    """The metrics a comma-separated list names ("fid,is,pr"), in `METRICS` order."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise ValueError(
            f"--metrics {text!r}: choose from {', '.join(METRICS)}, comma-separated, e.g. "
            "--metrics fid,is"
        )
    return tuple(name for name in METRICS if name in names)


def check_inputs(
    samples: ImageSet,
    reference: Optional[ImageSet],
    metrics: Sequence[str],
    num_features: Optional[int] = None,
) -> None:
    """What the metrics need of the two sets, checked before any feature is computed: images to
    evaluate, a reference for FID and precision/recall (images for the latter), enough images
    for each, reference statistics as wide as the network's features (`num_features`)."""
    if not samples.has_images:
        raise ValueError(
            f"SAMPLES {samples.path} holds only mu/sigma: give the sample images (a run folder, "
            "an image folder or an ADM .npz with arr_0)"
        )
    if samples.count < 2:
        raise ValueError(f"SAMPLES {samples.path} holds 1 image: give 2 or more (50,000 is usual)")
    if reference is None:
        if "fid" in metrics or "pr" in metrics:
            raise ValueError("FID and precision/recall need a reference: pass --ref REF")
        return
    if "pr" in metrics:
        if not reference.has_images:
            raise ValueError(
                f"--ref {reference.path} holds only mu/sigma, and precision/recall needs "
                "reference images (arr_0): drop pr from --metrics, or give a reference with images"
            )
        smallest = min(samples.count, reference.count)
        if smallest <= PR_NEIGHBOURS:
            raise ValueError(
                f"precision/recall with k = {PR_NEIGHBOURS} neighbours needs {PR_NEIGHBOURS + 1} "
                f"or more images in each set, one has {smallest}: give more, or drop pr from "
                "--metrics"
            )
    if "fid" in metrics and reference.mu is None and reference.count < 2:
        raise ValueError(f"--ref {reference.path} holds 1 image: give 2 or more for FID")
    if "fid" in metrics and reference.mu is not None and num_features is not None:
        if len(reference.mu) != num_features:
            raise ValueError(
                f"--ref {reference.path}: mu/sigma have {len(reference.mu)} features, the "
                f"feature network gives {num_features}: give statistics of the same network"
            )


class Precomputed(nn.Module):
    """The custom `feature` module handed to the torchmetrics metrics: the feature network runs
    once per image (in `evaluate`) and its output is the metric's input, passed through here."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def set_reference_statistics(fid: FrechetInceptionDistance, mu: Any, sigma: Any) -> None:
    """Make `mu` [D] and `sigma` [D, D] the metric's reference statistics. The metric keeps the
    sum, the sum of outer products and the count n of the reference features, and computes
    mean = sum / n and covariance = (outer sum - n mean mean^T) / (n - 1): any n >= 2 gives back
    mu and sigma; n = 2 here."""
    device = fid.real_features_sum.device
    mu = torch.as_tensor(np.asarray(mu), dtype=torch.float64, device=device)
    sigma = torch.as_tensor(np.asarray(sigma), dtype=torch.float64, device=device)
    n = 2
    fid.real_features_sum = n * mu
    fid.real_features_cov_sum = (n - 1) * sigma + n * torch.outer(mu, mu)
    fid.real_features_num_samples = torch.tensor(n, device=device)


def _feature_pass(
    images: ImageSet,
    network: FeatureNetwork,
    batch_size: int,
    progress: bool,
    what: str,
    fid: Optional[FrechetInceptionDistance] = None,
    inception_score: Optional[InceptionScore] = None,
    keep: bool = False,
) -> Optional[torch.Tensor]:
    """Run the network over every image once, feeding each metric given; with `keep`, return
    all the features (float32 [N, D], on the CPU) for precision/recall."""
    kept = []
    real = what == "reference"
    with tqdm(total=images.count, desc=f"{what} features", unit="img", disable=not progress) as bar:
        for batch, _ in images.batches(batch_size):
            features, logits = network.features_and_logits(batch, inception_score is not None)
            if fid is not None:
                fid.update(features.double(), real=real)
            if inception_score is not None:
                inception_score.update(logits)
            if keep:
                kept.append(features.cpu())
            bar.update(len(batch))
    return torch.cat(kept) if keep else None


def _inception_score(metric: InceptionScore) -> tuple[float, Optional[float]]:
    """(mean, standard deviation over the splits) with the split permutation seeded; the
    standard deviation is None for one split."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"std\(\): degrees of freedom")
        torch.manual_seed(IS_SEED)
        mean, std = metric.compute()
    return float(mean), (None if math.isnan(float(std)) else float(std))


def evaluate(
    samples: ImageSet,
    reference: Optional[ImageSet],
    network: FeatureNetwork,
    metrics: Sequence[str] = METRICS,
    *,
    batch_size: int = 64,
    progress: bool = True,
    is_splits: int = IS_SPLITS,
) -> dict[str, Any]:
    """The metrics (`METRICS`: "fid", "is", "pr") of `samples` against `reference` with the
    feature network: {"fid", "fid_reference" ("mu/sigma" or "images"), "inception_score",
    "inception_score_std", "precision", "recall"}, only those asked for."""
    check_inputs(samples, reference, metrics, network.num_features)
    device = network.device
    fid = inception_score = None
    if "fid" in metrics:
        fid = FrechetInceptionDistance(
            feature=Precomputed(network.num_features), sync_on_compute=False
        ).to(device)
    if "is" in metrics:
        with warnings.catch_warnings():  # it warns that it keeps every feature: 8 kB an image
            warnings.filterwarnings("ignore", message="Metric `InceptionScore` will save")
            inception_score = InceptionScore(
                feature=Precomputed(network.num_classes), splits=is_splits, sync_on_compute=False
            ).to(device)
    keep = "pr" in metrics
    fake = _feature_pass(
        samples, network, batch_size, progress, "sample", fid, inception_score, keep
    )
    results: dict[str, Any] = {}
    real = None
    statistics = fid is not None and reference is not None and reference.mu is not None
    if statistics:
        set_reference_statistics(fid, reference.mu, reference.sigma)
    if reference is not None and (keep or (fid is not None and not statistics)):
        real_fid = None if statistics else fid
        real = _feature_pass(
            reference, network, batch_size, progress, "reference", real_fid, None, keep
        )
    if fid is not None:
        results["fid"] = float(fid.compute())
        results["fid_reference"] = "mu/sigma" if statistics else "images"
    if inception_score is not None:
        results["inception_score"], results["inception_score_std"] = _inception_score(
            inception_score
        )
    if keep:
        precision, recall = knn_precision_recall(real.to(device), fake.to(device), PR_NEIGHBOURS)
        results["precision"], results["recall"] = precision, recall
    return results
