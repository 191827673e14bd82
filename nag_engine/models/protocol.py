"""The model protocol: what nag_engine reads from a denoiser, written as `typing.Protocol` classes.

This is the one statement of the contract (docs/ARCHITECTURE.md §1); the models of this package
and the adapters (`FunctionDenoiser`, `DiffusersDenoiser`) implement it, and the sampler, the
parallel sampler, the trainer, checkpoints and the analysis tools read it.

* `Denoiser`: the call and the attributes that describe the model to a sampler.
* `TrainableDenoiser`: what an architecture adds to be checkpointed and fine-tuned for NAG.
* `DENOISER_DEFAULTS`: the attributes a foreign model may leave out, with the value the readers
  assume then (the readers use ``getattr(model, name, default)``).

`nag_engine.checkpoints.load_checkpoint` also sets ``checkpoint_config`` (the file's config) on the
models it loads; the trainer reads it, with ``{}`` where absent, to keep a model's lineage.

A denoiser must also be an ``nn.Module`` (the sampler refuses anything else; wrap a plain function
with `FunctionDenoiser`): a Protocol cannot say that, so the checks here are structural only.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from ..schedules import Schedule

__all__ = ["DENOISER_DEFAULTS", "Denoiser", "TrainableDenoiser"]

# The optional attributes and what the readers assume where a model has none.
DENOISER_DEFAULTS: dict[str, Any] = {
    "prediction": "velocity",
    "schedule": "linear",
    "num_classes": None,
    "supports_noise_dropout": False,
    "sample_shape": None,
    # the training time distribution, read by analysis.noise_level.ImplicitClassifier only
    # (the exact GaussianMixtureModel declares it; see models.analytic.time_prior)
    "time_distribution": "uniform",
}


@runtime_checkable
class Denoiser(Protocol):
    """A denoiser: called as ``model(x, t, y=None, *, drop_t=None, drop_y=None)``.

    * ``x`` ``[B, ...]`` the noisy state, ``t`` float ``[B]`` in [0, 1] (0 data, 1 noise), ``y``
      int class ids ``[B]`` or None, ``drop_t`` / ``drop_y`` bool ``[B]`` or None.
    * ``drop_t`` rows are told no noise level (the learned null noise embedding: the
      noise-unconditional pass of NAG); ``drop_y`` rows, and every row when ``y`` is None on a
      class-conditional model, get the learned null class (the unconditional pass of CFG).
      "Null" is never encoded as a NaN or a magic time value. An unconditional model ignores
      ``drop_y``.
    * Returns the ``prediction`` target with the shape and dtype of ``x``.

    Attributes (all but the call may be absent on a foreign model: `DENOISER_DEFAULTS`):

    * ``prediction``: "velocity", "eps", "x0", "v" or "score" (`predictions.PREDICTIONS`); None
      marks a module that is not a denoiser (a `NoiseLevelHead`).
    * ``schedule``: the schedule it was trained on, a name (`schedules.SCHEDULES`) or a
      `Schedule`.
    * ``num_classes``: the number of classes of a class-conditional model, else None (no CFG).
    * ``supports_noise_dropout``: True where the null noise embedding was trained (NAG works).
      Declared on the class by architectures that have the embedding; a checkpoint sets it on the
      instance from its training config.
    * ``sample_shape``: the shape of one sample, without the batch dimension, or None.
    """

    prediction: str
    schedule: str | Schedule
    num_classes: int | None
    supports_noise_dropout: bool
    sample_shape: tuple[int, ...] | None

    def __call__(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | None = None,
        *,
        drop_t: Tensor | None = None,
        drop_y: Tensor | None = None,
    ) -> Tensor:
        """The ``prediction`` target for ``x`` at times ``t``."""
        ...


@runtime_checkable
class TrainableDenoiser(Denoiser, Protocol):
    """A `Denoiser` that can be saved to a checkpoint, rebuilt from it and fine-tuned for NAG:
    the architectures of `nag_engine.models.ARCHITECTURES`.

    * ``config``: JSON-ready constructor arguments, stored in the checkpoint; ``cls(**config)``
      (or ``cls.from_config(config)`` where the class has one) builds the same architecture.
    * ``init_null_noise(times)``: starts the null noise embedding (as the mean timestep embedding
      over ``times``, the training times) before fine-tuning a model trained without noise
      dropout (`training.trainer.init_null_noise`).
    """

    config: dict[str, Any]

    def init_null_noise(self, times: Tensor) -> None:
        """Set the null noise embedding from the training times ``times``."""
        ...
