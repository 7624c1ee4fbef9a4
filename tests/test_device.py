"""Device and dtype handling.

"No tensor created on a hard-coded device": runs ask for ``device="cpu"`` while torch's default
device is ``meta``. A tensor the library creates without an explicit device (or ``like=``)
lands on ``meta``; mixing it with the run's CPU tensors fails (and a meta tensor has no data to
read back), so a run that completes with every output on the CPU is the check. The targets are
built before the default device changes, and the default is restored in a ``finally``.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import sampler
from sampler.schedules import Linear

from conftest import t_bound

METHOD_BUDGET = {
    "smc": dict(n_steps=2),
    "ais": dict(n_temps=8),
    "mala": dict(n_warmup=10),
    "hmc": dict(n_warmup=10, n_leapfrog=3),
}
ANNEALING = ("smc", "ais")


class Recording(sampler.Target):
    """A correlated Gaussian that records the device and dtype of every input (autograd gradient)."""

    dim = 3

    def __init__(self):
        self.seen: set[tuple[str, torch.dtype]] = set()
        self.prec = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]], dtype=torch.float64)

    def log_prob(self, x):
        self.seen.add((x.device.type, x.dtype))
        p = self.constant("prec", x)
        return -0.5 * ((x @ p) * x).sum(-1)


@contextlib.contextmanager
def default_device(device: str):
    previous = torch.get_default_device()
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(previous)


def _check_on(res: sampler.Result, device_type: str) -> None:
    tensors = {"samples": res.samples, "log_weights": res.log_weights, "weighted_samples": res.weighted_samples}
    if res.log_Z_per_replica is not None:
        tensors["log_Z_per_replica"] = res.log_Z_per_replica
    for s in res.steps:
        tensors[f"ess[{s.step}]"] = s.ess
        tensors[f"log_Z_increment[{s.step}]"] = s.log_Z_increment
        for key, value in s.info.items():
            tensors[f"{key}[{s.step}]"] = value
    wrong = {k: v.device for k, v in tensors.items() if v.device.type != device_type}
    assert not wrong, wrong


def test_meta_default_device_really_catches_device_less_tensors():
    """Control: under the meta default, device-less factories go to meta and cannot mix with CPU."""
    with default_device("meta"):
        stray = torch.zeros(3)
        assert stray.device.type == "meta"
        with pytest.raises((RuntimeError, NotImplementedError)):
            torch.ones(3, device="cpu") + stray
        with pytest.raises((RuntimeError, NotImplementedError)):
            stray.tolist()
    assert torch.get_default_device().type == "cpu"


@pytest.mark.parametrize("method", ["smc", "ais", "mala", "hmc"])
def test_methods_create_no_tensor_on_default_device(method):
    tgt = Recording()
    gauss = sampler.get_target("gaussian", dim=2)
    with default_device("meta"):
        res = sampler.sample(
            tgt, method=method, device="cpu", n_particles=64, n_replicas=2, seed=0, **METHOD_BUDGET[method]
        )
        res2 = sampler.sample(
            gauss, method=method, device="cpu", n_particles=32, n_replicas=2, seed=1, **METHOD_BUDGET[method]
        )
    assert tgt.seen == {("cpu", torch.get_default_dtype())}
    for r in (res, res2):
        _check_on(r, "cpu")
        assert r.device == "cpu"
        assert torch.isfinite(r.samples).all()
        if method in ANNEALING:
            assert math.isfinite(r.log_Z)


@pytest.mark.parametrize("kernel", ["ula", "rwmh"])
def test_pipeline_correctors_create_no_tensor_on_default_device(kernel):
    tgt = Recording()
    with default_device("meta"):
        pipe = sampler.Pipeline(
            schedule=Linear(4),
            steps=[sampler.corrector("resample", threshold=0.7), sampler.corrector(kernel, n_steps=2)],
            name=f"{kernel}-pipeline",
        )
        res = pipe.run(tgt, n_particles=64, n_replicas=2, seed=0, device="cpu")
    _check_on(res, "cpu")
    assert {"acceptance", "step_size", "resampled"} <= set(res.steps[-1].info)
    assert math.isfinite(res.log_Z)


def test_adaptive_smc_with_every_resampling_scheme_on_meta_default():
    tgt = Recording()
    with default_device("meta"):
        for scheme in ("systematic", "stratified", "residual", "multinomial"):
            res = sampler.sample(
                tgt,
                method="smc",
                device="cpu",
                n_particles=64,
                n_replicas=2,
                seed=0,
                n_steps=1,
                kernel="rwmh",
                scheme=scheme,
            )
            _check_on(res, "cpu")


def test_result_stats_and_summary_on_meta_default():
    """Post-processing a CPU result must not depend on torch's default device either."""
    tgt = Recording()
    res = sampler.sample(tgt, method="smc", device="cpu", n_particles=64, n_replicas=2, seed=0, n_steps=2)
    with default_device("meta"):
        stats = res.stats
        summ = sampler.summary(res)
    wrong = {k: v.device for k, v in stats.items() if v.device.type != "cpu"}
    assert not wrong, wrong
    assert summ.as_dict()["log_Z"] == res.log_Z


# ------------------------------------------------------------------------------------------------
# dtype
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, "float32", "float64"], ids=["f32", "f64", "str-f32", "str-f64"]
)
@pytest.mark.parametrize("method", ["smc", "ais", "mala", "hmc"])
def test_dtype_is_respected(method, dtype):
    want = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    tgt = Recording()
    res = sampler.sample(tgt, method=method, dtype=dtype, n_particles=64, n_replicas=2, seed=0, **METHOD_BUDGET[method])
    assert tgt.seen == {("cpu", want)}
    assert res.samples.dtype == want
    assert res.weighted_samples.dtype == want
    assert res.log_weights.dtype == torch.float64
    if method in ANNEALING:
        assert res.log_Z_per_replica.dtype == torch.float64
        assert isinstance(res.log_Z, float) and math.isfinite(res.log_Z)
        assert all(s.log_Z_increment.dtype == torch.float64 for s in res.steps)
        assert all(s.ess.dtype == torch.float64 for s in res.steps)
    else:
        assert res.log_Z_per_replica is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", ["ula", "rwmh"])
def test_pipeline_dtype_is_respected(kernel, dtype):
    tgt = Recording()
    pipe = sampler.Pipeline(
        schedule=Linear(4), steps=[sampler.corrector("resample"), sampler.corrector(kernel, n_steps=2)]
    )
    res = pipe.run(tgt, n_particles=64, n_replicas=2, seed=0, dtype=dtype)
    assert tgt.seen == {("cpu", dtype)}
    assert res.samples.dtype == dtype
    assert res.log_weights.dtype == torch.float64
    assert res.log_Z_per_replica.dtype == torch.float64


def test_default_dtype_follows_torch_default():
    previous = torch.get_default_dtype()
    tgt = Recording()
    torch.set_default_dtype(torch.float64)
    try:
        res = sampler.sample(tgt, method="smc", n_particles=32, n_replicas=2, seed=0, n_steps=1)
    finally:
        torch.set_default_dtype(previous)
    assert res.samples.dtype == torch.float64
    assert tgt.seen == {("cpu", torch.float64)}


def test_float32_and_float64_agree_on_log_Z():
    tgt = sampler.get_target("gaussian", dim=2)
    r32 = sampler.sample(tgt, method="smc", dtype=torch.float32, n_particles=500, n_replicas=16, seed=0, n_steps=3)
    r64 = sampler.sample(tgt, method="smc", dtype=torch.float64, n_particles=500, n_replicas=16, seed=0, n_steps=3)
    se = math.hypot(r32.log_Z_stderr, r64.log_Z_stderr)
    assert abs(r32.log_Z - tgt.log_Z) < t_bound(16) * r32.log_Z_stderr + 1e-3
    assert abs(r32.log_Z - r64.log_Z) < t_bound(16) * se + 1e-3


# ------------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")


@needs_cuda
@pytest.mark.parametrize("method", ["smc", "ais", "mala", "hmc"])
def test_cuda_run_returns_cuda_tensors(method):
    tgt = Recording()
    res = sampler.sample(
        tgt, method=method, device="cuda", n_particles=64, n_replicas=2, seed=0, **METHOD_BUDGET[method]
    )
    assert {d for d, _ in tgt.seen} == {"cuda"}
    _check_on(res, "cuda")
    assert res.device.startswith("cuda")
    sampler.summary(res)  # post-processing copies what it needs to the CPU


@needs_cuda
@pytest.mark.parametrize("kernel", ["ula", "rwmh"])
def test_cuda_pipeline_on_meta_default(kernel):
    tgt = Recording()
    with default_device("meta"):
        pipe = sampler.Pipeline(
            schedule=Linear(4), steps=[sampler.corrector("resample"), sampler.corrector(kernel, n_steps=2)]
        )
        res = pipe.run(tgt, n_particles=64, n_replicas=2, seed=0, device="cuda")
    _check_on(res, "cuda")
