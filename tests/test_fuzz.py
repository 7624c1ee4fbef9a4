"""Property-based fuzzing (hypothesis) of what users pass in: options of ``sampler.sample``, what a
target returns, and files given to ``sampler.load`` / ``sampler.resume``. Whatever the input, the
library either works or raises one of its own errors (``sampler.errors.SamplerError``), never a
raw ``TypeError``/``IndexError``/``RuntimeError``. Derandomized, so every run checks the same
cases (1,150 in all).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sampler
from sampler.errors import SamplerError


def fuzz(max_examples: int) -> settings:
    """Derandomized (the same cases every run), no deadline, no example database."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
)
small_count = st.one_of(st.integers(-3, 12), anything)


def _runs_or_refuses(call) -> None:
    try:
        call()
    except SamplerError:
        pass


@fuzz(400)
@given(
    method=st.sampled_from(["smc", "ais", "mala", "hmc", "nope", ""]),
    n_particles=small_count,
    n_replicas=small_count,
    seed=st.one_of(st.integers(-5, 2**65), anything),
    device=st.one_of(st.none(), st.sampled_from(["cpu", "cuda:7", "meta", "tpu", ""]), st.text(max_size=5)),
    dtype=st.one_of(st.none(), st.sampled_from(["float32", "float64", "int64", "bogus", torch.float16]), anything),
    extra=st.dictionaries(
        st.sampled_from(["n_steps", "target_ess", "kernel", "n_temps", "n_warmup", "step_size", "bogus_option"]),
        anything,
        max_size=2,
    ),
)
def test_sample_options(method, n_particles, n_replicas, seed, device, dtype, extra):
    if "n_temps" in extra and isinstance(extra["n_temps"], int) and extra["n_temps"] > 50:
        extra["n_temps"] = 50  # keep a valid run short
    if "n_warmup" in extra and isinstance(extra["n_warmup"], int) and extra["n_warmup"] > 50:
        extra["n_warmup"] = 50
    if "n_steps" in extra and isinstance(extra["n_steps"], int) and extra["n_steps"] > 5:
        extra["n_steps"] = 5
    _runs_or_refuses(
        lambda: sampler.sample(
            "double-well",
            method,
            n_particles=n_particles,
            n_replicas=n_replicas,
            seed=seed,
            device=device,
            dtype=dtype,
            progress=False,
            **({"n_warmup": 20} if method in ("mala", "hmc") and "n_warmup" not in extra else {}),
            **extra,
        )
    )


def _output(kind: str, value: float, x: torch.Tensor):
    """What a user's log_prob might return for ``x`` ``(..., d)``."""
    batch = x.shape[:-1]
    good = -0.5 * (x**2).sum(-1)
    return {
        "good": good,
        "constant": torch.full(batch, value, dtype=x.dtype),
        "nan_some": torch.where(x[..., 0] > value, torch.nan, good),
        "inf_some": torch.where(x[..., 0] > value, torch.inf, good),
        "neg_inf_some": torch.where(x[..., 0] > value, -torch.inf, good),
        "all_nan": torch.full(batch, math.nan, dtype=x.dtype),
        "wrong_shape": good[..., None],
        "scalar": good.sum(),
        "int": good.to(torch.int64),
        "python_float": value,
        "none": None,
        "numpy": good.detach().numpy(),
        "list": good.tolist(),
        "wrong_device": good.to("meta"),
        "raises_value_error": ValueError("user bug"),
    }[kind]


@fuzz(400)
@given(
    kind=st.sampled_from(
        [
            "good",
            "constant",
            "nan_some",
            "inf_some",
            "neg_inf_some",
            "all_nan",
            "wrong_shape",
            "scalar",
            "int",
            "python_float",
            "none",
            "numpy",
            "list",
            "wrong_device",
            "raises_value_error",
        ]
    ),
    value=st.floats(-3, 3),
    dim=st.integers(1, 3),
    method=st.sampled_from(["smc", "ais", "mala"]),
)
def test_target_outputs(kind, value, dim, method):
    def log_prob(x):
        out = _output(kind, value, x)
        if isinstance(out, Exception):
            raise out
        return out

    target = sampler.target(log_prob=log_prob, dim=dim, name=f"fuzz-{kind}")
    options = {"n_temps": 3, "n_steps": 1} if method == "ais" else {"n_warmup": 5} if method == "mala" else {}
    _runs_or_refuses(
        lambda: sampler.sample(target, method, n_particles=8, n_replicas=2, seed=0, progress=False, **options)
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A valid result file and a valid checkpoint, as bytes, to corrupt."""
    folder = tmp_path_factory.mktemp("fuzz-files")
    res = sampler.sample("gmm40", n_particles=16, n_replicas=2, seed=0, progress=False, n_steps=1)
    nc = res.save(folder / "r.nc")
    ckpt = folder / "c.ckpt"
    sampler.sample("gmm40", n_particles=16, n_replicas=2, seed=0, progress=False, checkpoint=ckpt, checkpoint_every=1)
    return nc.read_bytes(), ckpt.read_bytes()


@fuzz(350)
@given(
    which=st.sampled_from(["nc", "ckpt"]),
    how=st.sampled_from(["truncate", "flip", "random", "empty"]),
    where=st.floats(0, 1),
    noise=st.binary(min_size=1, max_size=64),
)
def test_file_loading(saved, tmp_path_factory, which, how, where, noise):
    data = saved[0] if which == "nc" else saved[1]
    cut = int(where * len(data))
    if how == "truncate":
        data = data[:cut]
    elif how == "flip":
        data = data[:cut] + noise + data[cut + len(noise) :]
    elif how == "random":
        data = noise * (1 + 4096 // len(noise))
    else:
        data = b""
    path = tmp_path_factory.mktemp("fuzz") / ("bad.nc" if which == "nc" else "bad.ckpt")
    path.write_bytes(data)
    load = sampler.load if which == "nc" else (lambda p: sampler.resume(p, progress=False))
    _runs_or_refuses(lambda: load(path))
