"""How well the shipped noise-level heads read t from forward-process samples x_t.

* toy2d-level: the head's posterior mean of t against the exact posterior's (the ring mixture
  the data was drawn from), per sample, averaged over 2,000 samples at each t;
* digits-level: the head's posterior mean of t against the true t, on all 1,797 digits.

Run: `python benchmarks/head_accuracy.py [--toy2d-level PATH] [--digits-level PATH]` (default:
the shipped files). Prints one row per t and the summary the README quotes.
"""

from __future__ import annotations

import argparse

import torch

from nag_engine.analysis.noise_level import ExactPosterior
from nag_engine.checkpoints import load_checkpoint
from nag_engine.presets import shipped_checkpoint
from nag_engine.training.data import load_dataset, mixture_for

TIMES = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]


def forward_process(x0: torch.Tensor, t: float, seed: int) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps on the linear schedule both presets use."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return (1 - t) * x0 + t * eps


@torch.no_grad()
def toy2d_errors(path: str) -> list[float]:
    head = load_checkpoint(path).eval()
    data = load_dataset("ring", n=20000, seed=0)
    exact = ExactPosterior(mixture_for(data, time_points=512))
    x0, y = data.x[:2000], data.y[:2000]
    errors = []
    for i, t in enumerate(TIMES):
        x = forward_process(x0, t, seed=i)
        got, want = head.estimate(x, y).mean, exact.estimate(x.double(), y).mean
        errors.append(float((got.double() - want).abs().mean()))
    return errors


@torch.no_grad()
def digits_errors(path: str) -> list[float]:
    head = load_checkpoint(path).eval()
    data = load_dataset("digits")
    errors = []
    for i, t in enumerate(TIMES):
        x = forward_process(data.x, t, seed=i)
        errors.append(float((head.estimate(x, data.y).mean - t).abs().mean()))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy2d-level", default=str(shipped_checkpoint("toy2d-level")))
    parser.add_argument("--digits-level", default=str(shipped_checkpoint("digits-level")))
    args = parser.parse_args()
    toy, digits = toy2d_errors(args.toy2d_level), digits_errors(args.digits_level)
    print("| t | toy2d-level: mean abs. error to the exact posterior mean | digits-level: to t |")
    print("|---|---|---|")
    for t, a, b in zip(TIMES, toy, digits):
        print(f"| {t:.2f} | {a:.4f} | {b:.4f} |")
    print(f"toy2d-level: {sum(toy) / len(toy):.4f} on average, at most {max(toy):.4f}")
    print(f"digits-level: {digits[0]:.3f} (t = {TIMES[0]}) to {digits[-1]:.3f} (t = {TIMES[-1]})")


if __name__ == "__main__":
    main()
