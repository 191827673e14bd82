"""Hostile input to the Python API: every bad argument fails before any work with an error that
names it, and nothing gives a wrong result silently.

Each case is (call, error type, text the message must contain). The model is the exact Gaussian
mixture (2-D, or 2-D with 4 classes), so a case that wrongly starts sampling still ends fast."""

from __future__ import annotations

import math

import pytest
import torch

import nag_engine as ne
from nag_engine.arguments import free_memory
from nag_engine.models import FunctionDenoiser, ring_mixture
from nag_engine.requests import check_request

MODEL = ring_mixture()  # unconditional, supports NAG
CLASSES = ring_mixture(4, num_classes=4)


def sample(**kwargs):
    """ne.sample on the unconditional mixture: 4 samples, 2 steps, unless overridden."""
    args = {"n": 4, "steps": 2, "progress": False, **kwargs}
    model = args.pop("model", MODEL)
    return ne.sample(model, args.pop("n"), args.pop("steps"), **args)


NAN, INF = float("nan"), float("inf")

# (case id, keyword arguments of sample(), error type, the message must contain)
CASES = [
    # counts
    ("n str", dict(n="4"), TypeError, "n must be an int"),
    ("n float", dict(n=4.0), TypeError, "n must be an int"),
    ("n bool", dict(n=True), TypeError, "n must be an int"),
    ("n zero", dict(n=0), ValueError, "n must be > 0"),
    ("n negative", dict(n=-3), ValueError, "n must be > 0"),
    ("n too large", dict(n=10**13), ValueError, "fit at once"),
    ("steps str", dict(steps="10"), TypeError, "steps must be an int"),
    ("steps float", dict(steps=2.5), TypeError, "steps must be an int"),
    ("steps zero", dict(steps=0), ValueError, "steps must be > 0"),
    ("steps too many", dict(steps=10**10), ValueError, "100,000 a plan holds"),
    ("batch_size zero", dict(batch_size=0), ValueError, "batch_size must be > 0"),
    ("batch_size str", dict(batch_size="2"), TypeError, "batch_size must be an int"),
    # guidance scales and intervals
    ("cfg_scale str", dict(cfg_scale="2"), TypeError, "cfg_scale must be a number"),
    ("cfg_scale nan", dict(cfg_scale=NAN), ValueError, "cfg_scale must be finite"),
    ("nag_scale inf", dict(nag_scale=INF), ValueError, "nag_scale must be finite"),
    ("nag_scale nan", dict(nag_scale=NAN), ValueError, "nag_scale must be finite"),
    ("nag_scale list", dict(nag_scale=[0.5]), TypeError, "nag_scale must be a number"),
    ("cfg_interval str", dict(cfg_interval="0.2,0.8"), TypeError, "cfg_interval must be a pair"),
    ("nag_interval triple", dict(nag_interval=(0, 0.5, 1)), TypeError, "nag_interval"),
    ("nag_interval reversed", dict(nag_interval=(0.8, 0.2)), ValueError, "t_low <= t_high"),
    ("nag_interval beyond 1", dict(nag_interval=(0.2, 1.5)), ValueError, "nag_interval"),
    ("nag_interval nan", dict(nag_interval=(NAN, 0.5)), ValueError, "nag_interval"),
    ("classifier_nag_scale str", dict(classifier_nag_scale="1"), TypeError, "classifier_nag"),
    ("classifier_nag_scale nan", dict(classifier_nag_scale=NAN), ValueError, "classifier_nag"),
    ("classifier_nag w/o estimator", dict(classifier_nag_scale=1.0), ValueError, "noise_estimator"),
    ("classifier_nag_interval str", dict(classifier_nag_interval="a"), TypeError, "interval"),
    # the grid
    ("time_shift str", dict(time_shift="3"), ValueError, "time shift"),
    ("time_shift nan", dict(time_shift=NAN), ValueError, "time shift"),
    ("time_shift negative", dict(time_shift=-1.0), ValueError, "time shift"),
    ("time_shift zero", dict(time_shift=0.0), ValueError, "time shift"),
    ("t_max str", dict(t_max="1"), TypeError, "t_max must be a number"),
    ("t_max nan", dict(t_max=NAN), ValueError, "t_max must be finite"),
    ("t_max above 1", dict(t_max=2.0), ValueError, "t_max must lie in (0, 1]"),
    ("t_max zero", dict(t_max=0.0), ValueError, "t_max must lie in (0, 1]"),
    ("spacing unknown", dict(spacing="lin"), ValueError, "unknown spacing"),
    ("spacing int", dict(spacing=1), ValueError, "unknown spacing"),
    ("spacing on continuous", dict(spacing="trailing"), ValueError, "discrete-time schedule"),
    ("schedule unknown", dict(schedule="cosine"), ValueError, "unknown schedule"),
    ("schedule int", dict(schedule=3), ValueError, "unknown schedule"),
    ("schedule bad spec", dict(schedule="vp-discrete:x:y"), ValueError, "vp-discrete"),
    # solvers and their options
    ("solver unknown", dict(solver="rk4"), ValueError, "unknown solver"),
    ("solver int", dict(solver=3), ValueError, "unknown solver"),
    ("option misspelt", dict(cfg=2.0), TypeError, "unknown option 'cfg'"),
    ("option of another solver", dict(eta=0.5), TypeError, "solver 'euler' takes no options"),
    ("eta nan", dict(solver="ddim", eta=NAN), ValueError, "eta must be finite"),
    ("eta str", dict(solver="ddim", eta="1"), TypeError, "eta must be a number"),
    ("eta negative", dict(solver="ddim", eta=-1.0), ValueError, "eta must be >= 0"),
    ("ddpm variance", dict(solver="ddpm", variance="huge"), ValueError, "DDPM variance"),
    ("diffusion_scale inf", dict(solver="euler-maruyama", diffusion_scale=INF), ValueError, "fini"),
    ("diffusion unknown", dict(solver="euler-maruyama", diffusion="x"), ValueError, "diffusion"),
    # corrections
    ("eps_scaling str", dict(eps_scaling="1.0"), ValueError, "eps_scaling must be a dict"),
    ("eps_scaling inf", dict(eps_scaling={"k": INF, "b": 1.0}), ValueError, "eps_scaling['k']"),
    ("eps_scaling str k", dict(eps_scaling={"k": "1", "b": 1.0}), TypeError, "eps_scaling['k']"),
    ("eps_scaling b<=0", dict(eps_scaling={"k": 0.0, "b": -1.0}), ValueError, "k t + b > 0"),
    ("time_shift_sampler str", dict(time_shift_sampler="x"), ValueError, "time_shift_sampler"),
    (
        "time_shift_sampler nan variance",
        dict(time_shift_sampler={"window": 0.1, "data_variance": NAN}),
        ValueError,
        "data_variance",
    ),
    (
        "time_shift_sampler inf window",
        dict(time_shift_sampler={"window": INF}),
        ValueError,
        "window",
    ),
    # where and how it runs
    ("device unknown", dict(device="gpu"), ValueError, "device must be a torch.device"),
    ("device float", dict(device=3.5), ValueError, "device must be a torch.device"),
    ("device not the model's", dict(device="meta"), ValueError, "move the model first"),
    ("dtype unknown", dict(dtype="fp4"), ValueError, "unknown dtype"),
    ("dtype int", dict(dtype=torch.int32), ValueError, "dtype must be"),
    ("backend unknown", dict(backend="tpu"), ValueError, "unknown backend"),
    ("cuda_graphs str", dict(cuda_graphs="yes"), ValueError, "cuda_graphs must be"),
    ("compile str", dict(compile="yes"), TypeError, "compile must be"),
    ("progress str", dict(progress="no"), TypeError, "progress must be True or False"),
    ("parallel str", dict(parallel="yes"), TypeError, "parallel must be a dict"),
    ("parallel with callback", dict(parallel={}, callback=print), ValueError, "callback"),
    ("return_trajectory", dict(return_trajectory=True), TypeError, "sample_trajectory"),
    # seeds
    ("seed float", dict(seed=1.5), TypeError, "seed must be an int"),
    ("seed str", dict(seed="0"), TypeError, "seed must be an int"),
    ("seed negative", dict(seed=-1), ValueError, "seed must lie in [0, 2**64 - 1]"),
    ("seed 2**64", dict(seed=2**64), ValueError, "seed must lie in [0, 2**64 - 1]"),
    # shapes and initial states
    ("sample_shape str", dict(sample_shape="2"), TypeError, "sample_shape must be a tuple"),
    ("sample_shape negative", dict(sample_shape=(-2,)), ValueError, "sample_shape must hold"),
    ("sample_shape empty", dict(sample_shape=()), ValueError, "at least one dimension"),
    ("sample_shape wrong", dict(sample_shape=(3,)), ValueError, "sample_shape: samples of shape"),
    ("latents list", dict(latents=[[0.0, 0.0]] * 4), ValueError, "latents must be a tensor"),
    ("latents wrong n", dict(latents=torch.zeros(3, 2)), ValueError, "latents must be a tensor"),
    ("latents 1-D", dict(latents=torch.zeros(4)), ValueError, "latents must be a tensor"),
    ("latents wrong shape", dict(latents=torch.zeros(4, 3)), ValueError, "latents: samples of"),
    ("latents int", dict(latents=torch.zeros(4, 2, dtype=torch.long)), TypeError, "floating"),
    ("latents nan", dict(latents=torch.full((4, 2), NAN)), ValueError, "latents hold NaN"),
    ("latents inf", dict(latents=torch.full((4, 2), INF)), ValueError, "latents hold NaN"),
    # labels and guidance the model cannot do
    ("y on unconditional", dict(y=1), ValueError, "the model is unconditional"),
    ("cfg on unconditional", dict(cfg_scale=2.0), ValueError, "class-conditional"),
    ("y float", dict(model=CLASSES, y=torch.ones(4)), TypeError, "integer class ids"),
    ("y out of range", dict(model=CLASSES, y=7), ValueError, "y must lie in [0, 4)"),
    ("y negative", dict(model=CLASSES, y=-1), ValueError, "y must lie in [0, 4)"),
    ("y wrong length", dict(model=CLASSES, y=torch.arange(3)), ValueError, "shape (4,)"),
    ("cfg without y", dict(model=CLASSES, cfg_scale=2.0), ValueError, "needs class labels"),
    ("model not a module", dict(model=lambda x, t: x), TypeError, "nn.Module"),
    (
        "model without a shape",
        dict(model=FunctionDenoiser(lambda x, *rest: -x)),
        ValueError,
        "cannot tell the sample shape",
    ),
    (
        "model output of the wrong shape",
        dict(model=FunctionDenoiser(lambda x, *rest: x[:, :1], sample_shape=(2,))),
        ValueError,
        "model output has shape",
    ),
    (
        "nag on a model without noise dropout",
        dict(model=FunctionDenoiser(lambda x, *rest: -x, sample_shape=(2,)), nag_scale=0.5),
        ValueError,
        "noise-condition dropout",
    ),
]


@pytest.mark.parametrize("kwargs,error,text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_argument_is_refused_by_name(kwargs, error, text):
    with pytest.raises(error) as caught:
        sample(**kwargs)
    assert text in str(caught.value)


def test_a_model_that_rejects_the_shape_is_reported_before_sampling():
    """The shape check runs one forward of one sample, not the run: the model sees one call."""
    calls = []

    def strict(x, *rest):
        calls.append(len(x))
        if x.shape[1:] != (2,):
            raise RuntimeError("expects 2 features")
        return -x

    model = FunctionDenoiser(strict, prediction="velocity")  # declares no sample_shape
    with pytest.raises(ValueError, match=r"latents: samples of shape \(5,\) do not fit"):
        ne.sample(model, 4, 3, latents=torch.zeros(4, 5), progress=False)
    assert calls == [1]


def test_the_result_size_check_says_what_fits():
    with pytest.raises(ValueError) as caught:
        sample(n=10**13)
    message = str(caught.value)
    fits = int(message.split("at most ")[1].split(" fit")[0].replace(",", ""))
    assert 0 < fits < 10**13
    assert "sample_to_disk" in message


def test_trajectory_size_counts_every_step():
    with pytest.raises(ValueError, match="fit at once"):
        ne.sample_trajectory(MODEL, 10**11, 10, progress=False)


def test_every_seed_in_range_draws_its_own_noise():
    """The ends of the range and their neighbours differ: no aliasing."""
    seeds = [0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 2, 2**64 - 1]
    draws = [sample(seed=s, n=2) for s in seeds]
    for i in range(len(seeds)):
        for j in range(i + 1, len(seeds)):
            assert not torch.equal(draws[i], draws[j]), (seeds[i], seeds[j])


def test_parallel_sampler_refuses_a_batch_it_cannot_hold():
    """A result that fits (16 bytes a sample) but a Picard batch that does not (4 kB a sample:
    every step's state and the window's passes)."""
    n = free_memory(torch.device("cpu")) // 1000
    runner = ne.ParallelSampler(MODEL, 100, window=100)
    with pytest.raises(ValueError, match="pass batch_size="):
        runner.run(n, progress=False)


def test_check_request_returns_the_checked_request():
    plan = ne.make_plan(CLASSES, 2)
    request = check_request(
        plan, 6, y=2, seed=0, latents=None, batch_size=None, progress=False, default_batch=4
    )
    assert request.n == 6 and request.batch_size == 4 and request.shape == (2,)
    assert request.labels.tolist() == [2] * 6


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf])
def test_non_finite_model_output_is_an_error_in_both_executors(scale):
    model = FunctionDenoiser(lambda x, *rest: x * scale, sample_shape=(2,))
    with pytest.raises(ne.NonFiniteStateError, match="step"):
        ne.sample(model, 3, 4, progress=False)
    with pytest.raises(ne.NonFiniteStateError, match="step"):
        ne.sample(model, 3, 4, progress=False, parallel=dict(window=2))


@pytest.mark.parametrize(
    "options,error,text",
    [
        (dict(tolerance=math.nan), ValueError, "tolerance must be finite"),
        (dict(tolerance=math.inf), ValueError, "tolerance must be finite"),
        (dict(tolerance="0.1"), TypeError, "tolerance must be a number"),
        (dict(tolerance=-1.0), ValueError, "tolerance must be >= 0"),
        (dict(window=0), ValueError, "window must be > 0"),
        (dict(window=2.0), TypeError, "window must be an int"),
        (dict(solver="heun"), ValueError, "one-stage solver"),
        (dict(time_shift_sampler={"window": 0.1}), ValueError, "not supported"),
    ],
    ids=["nan", "inf", "str", "negative", "window 0", "window float", "heun", "time-shift"],
)
def test_parallel_sampler_options_are_refused_by_name(options, error, text):
    with pytest.raises(error, match=text):
        ne.ParallelSampler(MODEL, 4, **options)


def test_labels_for_more_samples_than_memory_holds_are_refused():
    with pytest.raises(ValueError, match="class labels need"):
        next(ne.Sampler(CLASSES, 2).stream(10**15, y=1, progress=False))


@pytest.mark.parametrize(
    "call,error,text",
    [
        (lambda s: s.sample(2, callback=3, progress=False), TypeError, "callback must be"),
        (lambda s: next(s.stream(4, indices=[0, 1])), TypeError, "indices must be a range"),
        (lambda s: next(s.stream(4, indices=range(2, 9))), ValueError, "contiguous sub-range"),
        (lambda s: next(s.stream(4, indices=range(0, 4, 2))), ValueError, "contiguous"),
        (lambda s: s.sample(2, y=["a", "b"], progress=False), TypeError, "integer class ids"),
        (lambda s: s.sample(2, y=[0.5, 1.5], progress=False), TypeError, "integer class ids"),
    ],
    ids=[
        "callback int",
        "indices list",
        "indices beyond n",
        "indices strided",
        "y text",
        "y floats",
    ],
)
def test_sampler_call_arguments_are_refused_by_name(call, error, text):
    with pytest.raises(error, match=text):
        call(ne.Sampler(CLASSES, 2))
