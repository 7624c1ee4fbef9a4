"""Reproducibility: a run is a function of its ``seed`` alone.

Every registered method, run twice in one process with the same ``seed``, gives bit-identical
samples, log weights and log Z, however torch's, numpy's and Python's global random states were
set before each run; the trainable methods (``snf``, ``neural-jko``: network initialization,
training batches, sampling) leave torch's global random state as they found it; and two
separate Python processes with the same seed give identical results.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import torch

import sampler

SEED = 11
N_PARTICLES = 48
N_REPLICAS = 2

#: Each registered method with a small target and the options that make it fast (a few seconds).
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "smc": ("gmm40", dict(n_steps=2)),
    "ais": ("gaussian", dict(n_temps=10)),
    "mala": ("gmm40", dict(n_warmup=20)),
    "hmc": ("funnel", dict(n_warmup=20)),
    "tt-smc": ("8modes", dict(n_steps=1)),
    "flow-smc": ("funnel", dict(n_steps=2, plain_steps=1, n_fit=10, n_refit=2)),
    "snf": ("double-well", dict(n_stages=2, hidden=(16,), iterations=6, batch_size=32, warmup=2)),
    "neural-jko": ("8modes", dict(preset="tiny", n_iters=6, n_train=200, batch_size=64, width=16, n_rk4_steps=2)),
    "mmd-flow": ("8modes", dict(n_iter=10, source_options=dict(n_steps=1))),
    "interpolant-langevin": (
        "8modes",
        dict(n_ode_steps=3, n_chains=2, inner_steps=1, init_steps=3, final_mala_steps=2),
    ),
}

#: The methods whose runs draw nothing from torch's global generator (network initialization included).
TRAINABLE = ("snf", "neural-jko")


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one torch thread is faster than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _set_global_states(seed: int) -> None:
    """Put torch's, numpy's and Python's global random generators in a state given by ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.randn(seed)  # and advance torch's by a seed-dependent amount


def _run(method: str) -> sampler.Result:
    target, options = CASES[method]
    return sampler.sample(
        target, method, n_particles=N_PARTICLES, n_replicas=N_REPLICAS, seed=SEED, progress=False, **options
    )


def _assert_identical(a: torch.Tensor | None, b: torch.Tensor | None, what: str) -> None:
    if a is None or b is None:
        assert a is None and b is None, what
        return
    assert a.shape == b.shape and a.dtype == b.dtype, what
    assert torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all()), f"{what} differ"


def test_every_registered_method_is_covered():
    assert set(sampler.list_methods()) == set(CASES)


@pytest.mark.parametrize("method", sorted(CASES))
def test_same_seed_gives_bit_identical_results_whatever_the_global_random_state(method):
    _set_global_states(1)
    a = _run(method)
    _set_global_states(2)
    b = _run(method)
    assert a.seed == b.seed == SEED
    _assert_identical(a.samples, b.samples, "samples")
    _assert_identical(a.weighted_samples, b.weighted_samples, "weighted samples")
    _assert_identical(a.log_weights, b.log_weights, "log weights")
    _assert_identical(a.log_Z_per_replica, b.log_Z_per_replica, "log Z")
    assert (a.n_target_evals, a.n_grad_evals) == (b.n_target_evals, b.n_grad_evals)
    for name, model in a.models.items():  # the trained networks themselves
        other = b.models[name].state_dict()
        for key, value in model.state_dict().items():
            assert torch.equal(value, other[key]), f"{name}: {key} differs"


@pytest.mark.parametrize("method", TRAINABLE)
def test_trainable_methods_leave_the_global_random_state_alone(method):
    """Training and sampling draw from the run's own generators only: torch's global generator is
    in the same state after the run as before it (so the caller's random stream is unaffected)."""
    _set_global_states(3)
    before = torch.get_rng_state()
    _run(method)
    assert torch.equal(torch.get_rng_state(), before)


_CHILD = textwrap.dedent(
    """
    import hashlib, sys, warnings
    import torch
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if sys.argv[1] != "fresh":  # the second process starts from a different global random state
        torch.manual_seed(int(sys.argv[1]))
        torch.randn(int(sys.argv[1]))
    import sampler
    cases = {cases!r}
    for method in ("snf", "neural-jko"):
        target, options = cases[method]
        r = sampler.sample(target, method, n_particles={n}, n_replicas={r}, seed={seed}, progress=False, **options)
        h = hashlib.sha1()
        for t in (r.samples, r.log_weights, r.log_Z_per_replica):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        print(method, h.hexdigest())
    """
)


def _start(global_seed: str) -> subprocess.Popen:
    code = _CHILD.format(cases=CASES, n=N_PARTICLES, r=N_REPLICAS, seed=SEED)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, global_seed], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def test_two_processes_with_the_same_seed_give_identical_results():
    """snf and neural-jko in two fresh Python processes run side by side (one with torch's default
    global state, one reseeded): the same hashes of samples, log weights and log Z."""
    procs = [_start("fresh"), _start("12345")]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first, second = outputs
    assert first.count("\n") == 2 and first == second, (first, second)
