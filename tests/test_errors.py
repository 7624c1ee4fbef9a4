"""Bad input gives clear errors that name what was wrong, raised before any work is done."""

from __future__ import annotations

import math
import re

import pytest
import torch
from scipy.stats import norm

import sampler
from sampler.errors import (
    ConfigurationError,
    NonFiniteError,
    RunError,
    SamplerError,
    TargetError,
    UnknownNameError,
)
from sampler.schedules import Adaptive, Fixed

from conftest import t_bound

SMALL = dict(n_particles=50, n_replicas=2, seed=0)
METHOD_BUDGET = {"smc": dict(n_steps=2), "ais": dict(n_temps=5), "mala": dict(n_warmup=5), "hmc": dict(n_warmup=5)}


class Counting(sampler.Target):
    """Standard normal in 2D that counts its calls."""

    dim = 2

    def __init__(self):
        self.calls = 0

    @property
    def name(self) -> str:
        return "counting"

    def log_prob(self, x):
        self.calls += 1
        return -0.5 * (x**2).sum(-1)


class Returns(sampler.Target):
    """A target whose log_prob returns ``fn(x)`` (something malformed)."""

    dim = 2

    def __init__(self, fn, name="malformed"):
        self.fn = fn
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def log_prob(self, x):
        return self.fn(x)


# ------------------------------------------------------------------------------------------------
# Malformed targets
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["smc", "ais", "mala", "hmc"])
def test_wrong_shape_names_target_and_shapes(method):
    tgt = Returns(lambda x: x**2, name="square-shaped")  # (..., d) instead of (...)
    # reference="prior" for smc: the shapes are the run's (R, N, d), not those of the Laplace fit's
    # starts, which "auto" would evaluate first (its message names the target just the same)
    prior = {"reference": "prior"} if method == "smc" else {}
    with pytest.raises(TargetError) as err:
        sampler.sample(tgt, method=method, n_particles=50, n_replicas=3, seed=0, **METHOD_BUDGET[method], **prior)
    msg = str(err.value)
    assert "square-shaped" in msg
    n = 1 if method in ("mala", "hmc") else 50  # MCMC chains evaluate one point per chain
    assert f"(3, {n}, 2)" in msg  # what came back
    assert f"(3, {n})" in msg.replace(f"(3, {n}, 2)", "")  # what was expected


def test_scalar_return_is_wrong_shape():
    tgt = Returns(lambda x: (x**2).sum(), name="scalar")
    with pytest.raises(TargetError, match=r"scalar.*shape \(\)"):
        sampler.sample(tgt, method="smc", **SMALL, kernel="rwmh")


@pytest.mark.parametrize("kernel", ["mala", "rwmh"])  # with and without gradients
def test_integer_dtype_is_target_error(kernel):
    tgt = Returns(lambda x: (x**2).sum(-1).round().to(torch.int64), name="integer")
    with pytest.raises(TargetError, match=r"integer.*int64"):
        sampler.sample(tgt, method="smc", **SMALL, kernel=kernel)


@pytest.mark.parametrize("kernel", ["mala", "rwmh"])
def test_numpy_return_is_target_error(kernel):
    tgt = Returns(lambda x: (x**2).sum(-1).detach().cpu().numpy(), name="numpy-valued")
    with pytest.raises(TargetError, match=r"numpy-valued.*torch.Tensor.*ndarray"):
        sampler.sample(tgt, method="smc", **SMALL, kernel=kernel)


def test_float_return_is_target_error():
    with pytest.raises(TargetError, match="float"):
        sampler.sample(Returns(lambda x: 1.0), method="smc", **SMALL, kernel="rwmh")


def test_wrong_device_is_target_error():
    tgt = Returns(lambda x: torch.zeros(x.shape[:-1], device="meta"), name="elsewhere")
    with pytest.raises(TargetError, match=r"elsewhere.*meta"):
        sampler.sample(tgt, method="smc", **SMALL, kernel="rwmh")


def test_wrong_gradient_shape_is_target_error():
    class BadGrad(sampler.Target):
        dim = 2

        def log_prob(self, x):
            return -0.5 * (x**2).sum(-1)

        def grad_log_prob(self, x):
            return -x.sum(-1)

    with pytest.raises(TargetError, match=r"BadGrad.*grad_log_prob.*\(2, 50\)"):
        sampler.sample(BadGrad(), method="smc", **SMALL, reference="prior")
    with pytest.raises(TargetError, match=r"BadGrad.*grad_log_prob.*\(8, 2\)"):  # "auto": the fit's 8 starts
        sampler.sample(BadGrad(), method="smc", **SMALL)


class NoLogProb:
    dim = 2


class ZeroDim(sampler.Target):
    dim = 0

    def log_prob(self, x):
        return x.sum(-1)


class FloatDim(ZeroDim):
    dim = 2.0


class NegativeDim(ZeroDim):
    dim = -3


@pytest.mark.parametrize("method", ["smc", "ais", "mala", "hmc"])
@pytest.mark.parametrize(
    "obj, words",
    [
        (NoLogProb(), "log_prob"),
        (object(), "log_prob"),
        (42, "log_prob"),
        (ZeroDim(), "dim"),
        (NegativeDim(), "dim"),
        (FloatDim(), "dim"),
    ],
    ids=["no-log_prob", "object", "int", "dim-0", "dim-negative", "dim-float"],
)
def test_not_a_target(method, obj, words):
    with pytest.raises(TargetError, match=words):
        sampler.sample(obj, method=method, **SMALL, **METHOD_BUDGET[method])


def test_function_target_with_bad_dim():
    with pytest.raises(ConfigurationError, match="dim"):
        sampler.target(log_prob=lambda x: x.sum(-1), dim=0)


# ------------------------------------------------------------------------------------------------
# Non-finite log densities
# ------------------------------------------------------------------------------------------------


class TruncatedNormal(sampler.Target):
    """``exp(-|x|^2 / 2)`` on ``{x_0 <= a}``, ``bad`` (NaN or +inf) outside.

    ``Z = (2 pi)^(d/2) Phi(a)``. The default reference is wider than the target, so a good share
    of the initial particles (~31% for a = 1, scale 2) land where the density is not finite.
    """

    dim = 2
    reference_scale = 2.0

    def __init__(self, a=1.0, bad=math.nan):
        self.a = a
        self.bad = bad
        self.log_Z = 0.5 * self.dim * math.log(2 * math.pi) + float(norm.logcdf(a))

    @property
    def name(self) -> str:
        return "truncated-normal"

    def log_prob(self, x):
        lp = -0.5 * (x**2).sum(-1)
        return torch.where(x[..., 0] > self.a, torch.full_like(lp, self.bad), lp)


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "+inf"])
@pytest.mark.parametrize("kernel", ["mala", "rwmh"])
def test_some_nonfinite_particles_smc_completes_with_right_log_Z(bad, kernel):
    tgt = TruncatedNormal(a=1.0, bad=bad)
    res = sampler.sample(tgt, method="smc", n_particles=1000, n_replicas=8, seed=1, kernel=kernel, n_steps=5)

    assert res.n_nonfinite > 0
    nonfinite = res.stats["nonfinite"]
    assert nonfinite.shape == (len(res.steps),)
    assert int(nonfinite.sum()) > 0
    assert int(nonfinite.sum()) <= res.n_nonfinite
    # at least the ~31% of the initial draws outside the support
    assert res.n_nonfinite >= 0.2 * 8 * 1000

    # No sample outside the support, everything finite.
    assert bool((res.samples[..., 0] <= tgt.a).all())
    assert torch.isfinite(res.samples).all()
    assert torch.isfinite(res.log_Z_per_replica).all()

    assert math.isfinite(res.log_Z)
    se = res.log_Z_stderr
    assert 0 < se < 0.1
    assert abs(res.log_Z - tgt.log_Z) < t_bound(8) * se + 1e-3, (res.log_Z, tgt.log_Z, se)  # 8 replicas

    summ = sampler.summary(res)
    assert summ.as_dict()["n_nonfinite"] == res.n_nonfinite
    rows = dict(summ.rows)
    assert rows["non-finite log densities"] == str(res.n_nonfinite)
    assert re.search(rf"non-finite log densities\s+{res.n_nonfinite}\b", str(summ))


def test_some_nonfinite_particles_mcmc_chains_count_them():
    res = sampler.sample(TruncatedNormal(), method="mala", n_particles=200, n_replicas=4, seed=0, n_warmup=50)
    assert res.n_nonfinite > 0
    assert int(res.stats["nonfinite"].sum()) <= res.n_nonfinite
    assert bool((res.samples[..., 0] <= 1.0).all())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "+inf", "-inf"])
def test_all_particles_nonfinite_smc_raises_naming_step_and_t(bad):
    tgt = Returns(lambda x: torch.full(x.shape[:-1], bad, dtype=x.dtype, device=x.device), name="nowhere")
    # A bounded adaptive schedule keeps a regression from spinning through 10,000 tiny steps.
    schedule = Adaptive(max_steps=50)
    with pytest.raises(NonFiniteError) as err:
        sampler.sample(tgt, method="smc", n_particles=100, n_replicas=2, seed=0, schedule=schedule)
    msg = str(err.value)
    assert re.search(r"step 1\b", msg), msg
    assert re.search(r"t=[0-9.e+-]+", msg), msg
    assert isinstance(err.value, SamplerError)


def test_all_particles_nonfinite_ais_names_first_schedule_time():
    tgt = Returns(lambda x: torch.full(x.shape[:-1], math.nan, dtype=x.dtype, device=x.device), name="nowhere")
    with pytest.raises(NonFiniteError, match=re.escape("at step 1 (t=0.0001)")):
        sampler.sample(tgt, method="ais", n_particles=100, n_replicas=2, seed=0, n_temps=10)  # t_1 = (1/10)^4


def test_all_particles_of_one_replica_nonfinite_names_replica():
    def lp(x):
        out = -0.5 * (x**2).sum(-1)
        if x.dim() == 3:
            out = out.clone()
            out[0] = math.nan
        return out

    with pytest.raises(NonFiniteError, match=r"replica\(s\) \[0\].*step 1"):
        sampler.sample(
            Returns(lp),
            method="smc",
            n_particles=100,
            n_replicas=3,
            seed=0,
            kernel="rwmh",
            schedule=Adaptive(max_steps=50),
        )


# ------------------------------------------------------------------------------------------------
# Unknown names
# ------------------------------------------------------------------------------------------------

_GAUSS = sampler.targets.Gaussian(dim=2)


# An unknown name met while a component is built carries where it happened, outermost first.
_IN_SMC_RESAMPLE = "method 'smc' (plugin 'mcmc'): corrector 'resample' (plugin 'mcmc'): "


@pytest.mark.parametrize(
    "call, kind, name, suggestion, where",
    [
        (lambda: sampler.sample(_GAUSS, method="smcc", **SMALL), "method", "smcc", "smc", ""),
        (lambda: sampler.method("hcm"), "method", "hcm", "hmc", ""),
        (lambda: sampler.corrector("mal"), "corrector", "mal", "mala", ""),
        (lambda: sampler.corrector("rwhm"), "corrector", "rwhm", "rwmh", ""),
        (lambda: sampler.get_target("gausian"), "target", "gausian", "gaussian", ""),
        (lambda: sampler.sample("gmm4", method="smc", **SMALL), "target", "gmm4", "gmm40", ""),
        (
            lambda: sampler.sample(_GAUSS, method="smc", scheme="sytematic", **SMALL),
            "resampling scheme",
            "sytematic",
            "systematic",
            _IN_SMC_RESAMPLE,
        ),
        (
            lambda: sampler.corrector("resample", scheme="sytematic"),
            "resampling scheme",
            "sytematic",
            "systematic",
            "corrector 'resample' (plugin 'mcmc'): ",
        ),
        (lambda: sampler.unregister_plugin("mcmx"), "plugin", "mcmx", "mcmc", ""),
    ],
    ids=[
        "method",
        "method-builder",
        "corrector",
        "corrector-2",
        "target",
        "target-by-sample",
        "scheme",
        "scheme-corrector",
        "plugin",
    ],
)
def test_unknown_name_suggests_closest(call, kind, name, suggestion, where):
    with pytest.raises(UnknownNameError) as err:
        call()
    exc = err.value
    assert isinstance(exc, KeyError) and isinstance(exc, SamplerError)
    assert exc.kind == kind and exc.name == name
    msg = str(exc)
    # Exactly the context (if any), then the message; not the quoted repr KeyError would give.
    assert msg.startswith(f"{where}unknown {kind} {name!r}"), msg
    assert msg.count(f"unknown {kind}") == 1  # the context is added once, not per level
    assert f"Did you mean {suggestion!r}" in msg
    assert suggestion in exc.known


def test_unknown_name_lists_registered_names():
    with pytest.raises(UnknownNameError) as err:
        sampler.sample(_GAUSS, method="zzz", **SMALL)
    msg = str(err.value)
    assert "Did you mean" not in msg
    for m in sampler.list_methods():
        assert m in msg


def test_unknown_name_when_nothing_registered():
    from sampler.host.registry import Registry

    with pytest.raises(UnknownNameError, match="No transports are registered"):
        Registry().get("transport", "flow")


def test_unknown_name_caught_as_key_error():
    try:
        sampler.corrector("nope")
    except KeyError as exc:
        assert "nope" in str(exc)
    else:  # pragma: no cover
        pytest.fail("no error")


# ------------------------------------------------------------------------------------------------
# Bad configuration: raised before any target evaluation
# ------------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    ("smc", dict(n_particles=0), "n_particles"),
    ("smc", dict(n_particles=-5), "n_particles"),
    ("smc", dict(n_particles=10.0), "n_particles"),
    ("smc", dict(n_particles="10"), "n_particles"),
    ("smc", dict(n_particles=True), "n_particles"),
    ("smc", dict(n_replicas=0), "n_replicas"),
    ("smc", dict(n_replicas=2.5), "n_replicas"),
    ("ais", dict(n_replicas=0), "n_replicas"),
    ("mala", dict(n_particles=0), "n_particles"),
    ("hmc", dict(n_replicas=0), "n_replicas"),
    ("smc", dict(seed=-1), "seed"),
    ("smc", dict(seed=1.5), "seed"),
    ("mala", dict(seed=-1), "seed"),
    ("smc", dict(dtype="float65"), "float65"),
    ("smc", dict(dtype="int32"), "dtype"),
    ("smc", dict(dtype=torch.int64), "dtype"),
    ("hmc", dict(dtype="bogus"), "bogus"),
    ("smc", dict(device="gpu"), "device"),
    ("smc", dict(resample_threshold=0.0), "threshold"),
    ("smc", dict(resample_threshold=1.5), "threshold"),
    ("smc", dict(resample_threshold=-0.2), "threshold"),
    ("smc", dict(resample_threshold=math.nan), "threshold"),
    ("smc", dict(target_ess=0.0), "target_ess"),
    ("smc", dict(target_ess=1.0), "target_ess"),
    ("smc", dict(target_ess=1.2), "target_ess"),
    ("smc", dict(kernel="bogus"), "kernel"),
    ("smc", dict(n_steps=0), "n_steps"),
    ("smc", dict(step_size=-0.1), "step_size"),
    ("smc", dict(target_acceptance=1.0), "target_acceptance"),
    ("ais", dict(n_temps=0), "n_temps must be a positive integer"),
    ("ais", dict(schedule="cosine"), "schedule"),
    ("ais", dict(schedule=[0.0, 0.5, 1.0]), "schedule"),
    ("mala", dict(n_warmup=-1), "n_warmup"),
    ("hmc", dict(thin=0), "thin"),
    ("hmc", dict(n_leapfrog=0), "n_leapfrog"),
]


@pytest.mark.parametrize(
    "method, kwargs, message",
    [
        (
            "smc",
            dict(step_size=-0.1),
            "method 'smc' (plugin 'mcmc'): corrector 'mala' (plugin 'mcmc'): step_size must be positive",
        ),
        (
            "smc",
            dict(n_steps=0),
            "method 'smc' (plugin 'mcmc'): corrector 'mala' (plugin 'mcmc'): n_steps must be a positive integer",
        ),
        (
            "smc",
            dict(resample_threshold=2.0),
            "method 'smc' (plugin 'mcmc'): corrector 'resample' (plugin 'mcmc'): resampling threshold",
        ),
        ("smc", dict(target_ess=1.0), "method 'smc' (plugin 'mcmc'): target_ess must lie in (0, 1)"),
        (
            "hmc",
            dict(n_leapfrog=0),
            "method 'hmc' (plugin 'mcmc'): corrector 'hmc' (plugin 'mcmc'): n_leapfrog must be a positive integer",
        ),
        ("mala", dict(n_warmup=-1), "method 'mala' (plugin 'mcmc'): n_warmup must be a non-negative integer"),
    ],
    ids=[
        "smc-mala-step_size",
        "smc-mala-n_steps",
        "smc-resample-threshold",
        "smc-target_ess",
        "hmc-n_leapfrog",
        "mala-n_warmup",
    ],
)
def test_configuration_error_names_where_it_happened(method, kwargs, message):
    """A bad option of a nested component names every component it was built in, once."""
    tgt = Counting()
    args = {**SMALL, **METHOD_BUDGET[method], **kwargs}
    with pytest.raises(ConfigurationError) as err:
        sampler.sample(tgt, method=method, **args)
    msg = str(err.value)
    assert msg.startswith(message), msg
    assert msg.count("(plugin ") == message.count("(plugin ")
    assert tgt.calls == 0


def test_adaptive_schedule_out_of_steps_is_a_run_error():
    """A run whose adaptive schedule needs more than ``max_steps`` stages fails with RunError (a
    run-time failure, after work was done), not a ConfigurationError."""
    far = sampler.targets.Gaussian(mean=[4.0, -4.0], scale=0.3)  # needs many more than 2 stages
    with pytest.raises(RunError, match=r"max_steps=2 .*raise max_steps") as err:
        sampler.sample(far, method="smc", schedule=Adaptive(0.5, max_steps=2), reference="prior", **SMALL)
    assert isinstance(err.value, SamplerError) and not isinstance(err.value, ConfigurationError)
    assert issubclass(NonFiniteError, RunError)


@pytest.mark.parametrize(
    "method, kwargs, word",
    BAD_CONFIGS,
    ids=[f"{m}-{next(iter(k))}={next(iter(k.values()))!r}" for m, k, _ in BAD_CONFIGS],
)
def test_bad_configuration_before_any_evaluation(method, kwargs, word):
    tgt = Counting()
    args = {**SMALL, **METHOD_BUDGET[method], **kwargs}
    with pytest.raises(ConfigurationError, match=re.escape(word)) as err:
        sampler.sample(tgt, method=method, **args)
    assert tgt.calls == 0
    assert isinstance(err.value, ValueError) and isinstance(err.value, SamplerError)


@pytest.mark.parametrize(
    "times",
    [[0.1, 0.5, 1.0], [0.0, 0.5, 0.9], [0.0, 1.2], [0.0], [0.0, 0.6, 0.4, 1.0]],
    ids=["not-from-0", "not-to-1", "past-1", "single", "decreasing"],
)
@pytest.mark.parametrize("method", ["smc", "ais"])
def test_bad_schedule_before_any_evaluation(times, method):
    tgt = Counting()
    with pytest.raises(ConfigurationError, match="schedule"):
        sampler.sample(tgt, method=method, schedule=Fixed(times), **SMALL)
    assert tgt.calls == 0


def test_bad_schedule_object_in_pipeline():
    with pytest.raises(ConfigurationError, match="schedule"):
        sampler.Pipeline(schedule=[0.0, 1.0])
    with pytest.raises(ConfigurationError, match="Transport or Corrector"):
        sampler.Pipeline(steps=["mala"])


def test_pipeline_run_checks_arguments_before_evaluation():
    tgt = Counting()
    pipe = sampler.Pipeline(steps=[sampler.corrector("rwmh")])
    with pytest.raises(ConfigurationError, match="n_particles"):
        pipe.run(tgt, n_particles=0)
    with pytest.raises(TargetError):
        pipe.run(NoLogProb(), n_particles=10)
    assert tgt.calls == 0


def test_good_configuration_does_evaluate():
    """Control for the tests above: the counting target does count."""
    tgt = Counting()
    sampler.sample(tgt, method="smc", **SMALL, **METHOD_BUDGET["smc"])
    assert tgt.calls > 0


@pytest.mark.parametrize("method", ["smc", "ais", "mala", "hmc"])
def test_unknown_method_option_names_the_method(method):
    tgt = Counting()
    with pytest.raises(ConfigurationError) as err:
        sampler.sample(tgt, method=method, bogus=1, **SMALL)
    msg = str(err.value)
    assert tgt.calls == 0
    assert "bogus" in msg
    assert f"method {method!r}" in msg, msg


def test_a_pipeline_passed_as_method_says_how_to_run_it():
    pipe = sampler.Pipeline(steps=[sampler.corrector("mala")])
    with pytest.raises(ConfigurationError, match=r"registered method .* got Pipeline; run a Pipeline .* \.run\(target"):
        sampler.sample("double-well", method=pipe, n_particles=20, n_replicas=1, seed=0, progress=False)
