"""ChEES trajectory-length adaptation of ``hmc`` chains (plugins/mcmc/chees.py).

Seeded; tolerances from the Monte Carlo error or from the exact optimum, stated at each check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sampler
from sampler.errors import ConfigurationError
from sampler_plugins.mcmc.chees import ChEES, chees_gradient, halton

DTYPE = torch.float64


def test_halton_is_the_base_2_van_der_corput_sequence():
    assert [halton(k) for k in range(1, 8)] == [0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]
    with pytest.raises(ValueError):
        halton(0)


def test_chees_gradient_is_the_derivative_of_the_criterion_for_exact_gaussian_flow():
    """For N(0, I) the exact flow is z_t = z0 cos t + p0 sin t, p_t = -z0 sin t + p0 cos t.

    Per chain the estimate is d/d(log t) of (|z_t - c|^2 - |z0 - c|^2)^2 / 4 about a fixed centre
    c; here it is checked against a central finite difference of that expression (step 1e-6 in
    log t: a relative error of order 1e-12, so 1e-6 leaves room for rounding).
    """
    gen = torch.Generator().manual_seed(0)
    c, d, t = 16, 5, 0.9
    z0, p0 = torch.randn(c, d, generator=gen, dtype=DTYPE), torch.randn(c, d, generator=gen, dtype=DTYPE)
    center = torch.full((d,), 0.3, dtype=DTYPE)
    zero = torch.zeros(c, dtype=DTYPE)

    def criterion(s: float) -> float:
        z = z0 * math.cos(s) + p0 * math.sin(s)
        diff = ((z - center) ** 2).sum(-1) - ((z0 - center) ** 2).sum(-1)
        return float((diff**2 / 4).mean())

    z1, p1 = z0 * math.cos(t) + p0 * math.sin(t), -z0 * math.sin(t) + p0 * math.cos(t)
    h = 1e-6
    numeric = (criterion(t * math.exp(h)) - criterion(t * math.exp(-h))) / (2 * h)
    assert float(chees_gradient(z0, z1, p1, zero, t, center)) == pytest.approx(numeric, rel=1e-6)


def test_chees_gradient_ignores_rejected_and_nonfinite_proposals():
    gen = torch.Generator().manual_seed(1)
    z0, z1, p1, center = (torch.randn(4, 3, generator=gen, dtype=DTYPE) for _ in range(4))
    center = center[0]
    log_alpha = torch.tensor([0.0, 0.0, -math.inf, 0.0], dtype=DTYPE)
    z1_bad = z1.clone()
    z1_bad[3] = math.nan
    bad = chees_gradient(z0, z1_bad, p1, log_alpha, 1.0, center)
    keep = torch.tensor([0, 1])
    assert torch.isfinite(bad)
    # the same as the two good chains alone
    c1, c0 = z1[keep] - center, z0[keep] - center
    expected = (((c1**2).sum(-1) - (c0**2).sum(-1)) * (c1 * p1[keep]).sum(-1)).mean()
    assert float(bad) == pytest.approx(float(expected))
    assert float(chees_gradient(z0, z1, p1, torch.full((4,), -math.inf, dtype=DTYPE), 1.0, center)) == 0.0


def test_chees_update_is_a_clipped_decaying_ascent():
    state = ChEES.start(1.0)
    up = state.update(5.0)
    assert up.length > 1.0 and up.m == 1
    assert up.update(-5.0).log_length < up.log_length
    assert state.update(math.nan) is state
    big = state.update(1e30)
    assert big.log_length <= 0.35 + 1e-12
    assert state.n_leapfrog(0, 0.1, 100) == (5, 0.5)  # ceil(0.5 * 1.0 / 0.1)
    assert state.n_leapfrog(0, 1e-6, 100)[0] == 100
    with pytest.raises(ValueError):
        ChEES.start(0.0)


def optimal_jittered_length(delta: float) -> float:
    """argmax over T of E_h sin^2(h T + delta), h uniform on (0, 1), on a 1e-4 grid."""
    h = (np.arange(4000) + 0.5) / 4000
    lengths = np.linspace(1.0, 3.0, 20001)
    values = (np.sin(np.outer(lengths, h) + delta) ** 2).mean(1)
    return float(lengths[np.argmax(values)])


def test_chees_finds_the_optimal_jittered_length_of_a_standard_gaussian():
    """On N(0, I) with the identity metric the exact flow gives ChEES(t) proportional to sin^2 t.

    The iteration's time is ``eps ceil(h T / eps) = h T + delta`` with delta in [0, eps), and
    the estimator ascends E_h sin^2(h T + delta) in log T: its stationary point lies between
    the optimum for delta = eps and for delta = 0 (T* = 2.247, where tan 2T = 2T). A small step
    (target acceptance 0.99) keeps the leapfrog error small; 5% margin for the adaptation's noise
    (64 chains).
    """
    target = sampler.targets.Gaussian(mean=np.zeros(10), cov=np.eye(10))
    res = sampler.sample(
        target,
        method="hmc",
        metric="identity",
        target_acceptance=0.99,
        n_particles=10,
        n_replicas=64,
        n_warmup=1000,
        seed=2,
        dtype=DTYPE,
    )
    length, eps = float(res.stats["trajectory_length"][-1, 0]), float(res.stats["step_size"][-1, 0])
    assert 0.95 * optimal_jittered_length(eps) < length < 1.05 * optimal_jittered_length(0.0), (length, eps)


def test_chees_chains_share_one_step_size_and_count_every_leapfrog_step():
    """The gradient count is the sum of the iterations' leapfrog steps over the chains, plus the
    start. (The moments of a correlated Gaussian under the default ChEES chains are checked by
    tests/test_adaptation.py::test_chains_warmup_on_correlated_gaussian.)"""
    res = sampler.sample("gaussian", method="hmc", n_particles=100, n_replicas=4, n_warmup=200, seed=4, dtype=DTYPE)
    assert res.options["trajectory"] == "chees" and res.options["target_acceptance"] == 0.9
    steps = res.stats["step_size"]
    assert torch.all(steps == steps[:, :1])
    n_leapfrog = res.stats["n_leapfrog"][:, 0]
    assert res.n_grad_evals == 4 * (int(n_leapfrog.sum()) + 1)
    summary = sampler.summary(res)
    assert summary.values["leapfrog_per_iteration"] == pytest.approx(float(n_leapfrog[200:].mean()))
    assert summary.values["trajectory_length"] == pytest.approx(float(res.stats["trajectory_length"][-1, 0]))
    assert "trajectory length" in str(summary)


def test_fixed_trajectories_stay_available():
    res = sampler.sample(
        "gaussian", method="hmc", trajectory="fixed", n_particles=5, n_replicas=2, n_warmup=30, seed=0, progress=False
    )
    assert res.options["trajectory"] == "fixed" and res.options["jitter"] == 0.5
    assert "n_leapfrog" not in res.stats


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(method="mala", trajectory="chees"), "has none"),
        (dict(method="hmc", jitter=0.5), "trajectory='fixed'"),
        (dict(method="hmc", trajectory="nuts"), "trajectory must be one of"),
        (dict(method="hmc", max_leapfrog=0), "max_leapfrog"),
    ],
)
def test_bad_trajectory_options_are_refused(options, message):
    with pytest.raises(ConfigurationError, match=message):
        sampler.sample("gaussian", n_particles=5, n_replicas=2, n_warmup=30, seed=0, progress=False, **options)
