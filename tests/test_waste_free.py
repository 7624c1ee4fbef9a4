"""The ``waste-free`` corrector and ``smc(waste_free=P)`` (waste-free SMC, Dau & Chopin 2022).

Every test is seeded; tolerances are Monte Carlo errors of the checked quantity. The kept chain
states are correlated, so the errors of the end-to-end checks come from the spread of independent
replicas, not from the particle count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_kernels import particles_at_t1

import sampler
from sampler.errors import ConfigurationError
from sampler.ext import Linear
from sampler_plugins.mcmc.kernels import particle_metric
from sampler_plugins.mcmc.waste_free import WasteFree

from conftest import Interrupting, run_and_resume

DTYPE = torch.float64

#: |z| threshold: each z is ~N(0, 1) (or Student t with R - 1 dof, see t_bound) under the null.
Z_MAX = 4.0

MEAN = np.array([1.0, -1.0, 2.0])
COV = np.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 0.25]])


def gaussian() -> sampler.Target:
    return sampler.targets.Gaussian(mean=MEAN, cov=COV)


def test_one_application_turns_weighted_particles_into_target_draws():
    """Draws of N(0, 4 I) weighted to the target: the output's mean and variance are the target's.

    Each chain starts from a (weighted) target draw and every sweep keeps the target, so every kept
    state has the target's law. 20 replicas give independent output means and variances, whose
    spread is the Monte Carlo error of their average.
    """
    target = gaussian()
    r, n, d = 20, 1000, 3
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(r, n, d, generator=g, dtype=DTYPE)
    particles, ctx = particles_at_t1(target, x, seed=1)
    log_q = -0.5 * (x / 2.0).square().sum(-1)
    log_w = particles.evaluation.log_target - log_q
    particles = particles.__class__(
        x=x, log_weights=torch.log_softmax(log_w, -1), log_Z=particles.log_Z, evaluation=particles.evaluation
    )
    step = WasteFree("mala", chain_length=5)
    out = step.apply(particles, step.init(particles, ctx), ctx)
    assert out.particles.x.shape == (r, n, d)
    assert torch.allclose(out.particles.log_weights, torch.full((r, n), -math.log(n), dtype=DTYPE))
    fresh = ctx.path.evaluate(out.particles.x, grad=True)
    assert torch.equal(fresh.log_target, out.particles.evaluation.log_target)
    assert torch.equal(fresh.grad_target, out.particles.evaluation.grad_target)
    means = out.particles.x.mean(1)  # (R, d)
    variances = out.particles.x.var(1)
    for values, exact in ((means, MEAN), (variances, np.diag(COV))):
        z = (values.mean(0).numpy() - exact) / (values.std(0).numpy() / math.sqrt(r))
        assert np.abs(z).max() < t_bound(r - 1), z
    assert float(out.info["ancestors"][0]) == n / 5


def t_bound(dof: int) -> float:
    """Two-sided 0.9999 quantile of Student's t with ``dof`` degrees of freedom (the Z_MAX of a t statistic)."""
    from scipy import stats

    return float(stats.t.ppf(1 - 0.5e-4, dof))


def test_waste_free_smc_gets_log_Z_and_moments_of_a_correlated_gaussian():
    """End to end: log Z and the mean within 4 Monte Carlo sigma (the spread of 8 replicas)."""
    target = gaussian()
    r, n = 8, 1000
    res = sampler.sample(
        target, method="smc", waste_free=10, n_particles=n, n_replicas=r, seed=3, dtype=DTYPE, progress=False
    )
    per_replica = res.log_Z_per_replica
    z_log_Z = (float(per_replica.mean()) - target.log_Z) / (float(per_replica.std()) / math.sqrt(r))
    assert abs(z_log_Z) < t_bound(r - 1), per_replica
    means = res.samples.mean(1)  # (R, d) per replica
    z_mean = (means.mean(0).numpy() - MEAN) / (means.std(0).numpy() / math.sqrt(r))
    assert np.abs(z_mean).max() < t_bound(r - 1), z_mean
    assert res.options["waste_free"] == 10 and "n_steps" not in res.options


def test_the_metric_comes_from_all_n_weighted_particles_and_stays_fixed():
    """The chains' dense metric is the weighted covariance of the N input particles, not of the M chains."""
    target = gaussian()
    x = 2.0 * torch.randn(2, 400, 3, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    particles, ctx = particles_at_t1(target, x, seed=5)
    log_w = torch.log_softmax(torch.randn(2, 400, generator=torch.Generator().manual_seed(6), dtype=DTYPE), -1)
    particles = particles.__class__(x=x, log_weights=log_w, log_Z=particles.log_Z, evaluation=particles.evaluation)
    step = WasteFree("mala", chain_length=8, metric="dense")
    out = step.apply(particles, step.init(particles, ctx), ctx)
    assert torch.equal(out.state.metric, particle_metric(x, log_w, "dense"))


def test_dense_metric_log_Z_is_unbiased_far_from_the_reference():
    """An 8-d Gaussian about 47 temperatures from N(0, I): log Z within 4 sigma of exact over 16 replicas.

    With the metric re-estimated from the M = 100 chains' own states at every sweep, this was
    +0.33 +- 0.034 (10 sigma): each chain's kernel depended on its own state.
    """
    d = 8
    a = np.random.default_rng(0).normal(size=(d, d))
    target = sampler.targets.Gaussian(mean=np.full(d, 2.0), cov=0.01 * (a @ a.T / d + 0.1 * np.eye(d)))
    r = 16
    res = sampler.sample(
        target,
        method="smc",
        waste_free=10,
        metric="dense",
        reference="prior",
        n_particles=1000,
        n_replicas=r,
        seed=1,
        dtype=DTYPE,
        progress=False,
    )
    per_replica = res.log_Z_per_replica
    z = (float(per_replica.mean()) - target.log_Z) / (float(per_replica.std()) / math.sqrt(r))
    assert abs(z) < t_bound(r - 1), per_replica


def test_cost_per_temperature_is_about_n_kernel_sweeps():
    """P - 1 sweeps of ceil(N / P) chains per temperature: N = 105, P = 10 -> 11 chains x 9 sweeps."""
    r, n, stages = 2, 105, 4
    res = sampler.sample(
        "gaussian",
        method="smc",
        waste_free=10,
        schedule=Linear(stages),
        reference="prior",
        n_particles=n,
        n_replicas=r,
        seed=0,
        dtype=DTYPE,
        progress=False,
    )
    assert res.samples.shape == (r, n, 2)
    # the initial evaluation of the N particles with gradients, then 11 * 9 MALA proposals per stage
    assert res.n_grad_evals == r * n + stages * r * 11 * 9


def test_seeded_runs_repeat_and_resume_bit_for_bit(tmp_path):
    common = dict(n_particles=60, n_replicas=2, seed=9, dtype=DTYPE, progress=False)
    options = dict(waste_free=4, kernel="hmc", n_leapfrog=3, jitter=0.5, schedule=Linear(5), reference="prior")
    full, resumed = run_and_resume(tmp_path, 30, "smc", options, **common)
    again = sampler.sample(Interrupting(None), method="smc", **common, **options)
    assert torch.equal(again.samples, full.samples)
    assert torch.equal(resumed.samples, full.samples)
    assert torch.equal(resumed.log_Z_per_replica, full.log_Z_per_replica)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: sampler.corrector("waste-free", chain_length=1), "at least 2"),
        (lambda: sampler.corrector("waste-free", chain_length=0), "chain_length"),
        (lambda: sampler.corrector("waste-free", n_steps=3), "not n_steps"),
        (lambda: sampler.method("smc", waste_free=10, n_steps=5), "not both"),
        (lambda: sampler.method("smc", waste_free=10, kernel="nuts"), "kernel must be one of"),
    ],
)
def test_bad_options_are_refused(build, message):
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_chains_longer_than_half_the_particles_are_refused():
    with pytest.raises(ConfigurationError, match="fewer than 2 chains"):
        sampler.sample("gaussian", method="smc", waste_free=10, n_particles=12, n_replicas=1, seed=0, progress=False)
