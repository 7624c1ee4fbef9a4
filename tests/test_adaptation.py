"""Adapted metrics, warm-up windows, and the Laplace / pilot references.

Seeded; tolerances from the Monte Carlo error (stated next to each check), not tuned. The
ill-conditioned Gaussian: d = 4, a random rotation, standard deviations 1e-3 .. 1 (condition
number 1e6 of the covariance), mean (1, 2, 3, 4).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sampler
from sampler.core.laplace import fit_laplace
from sampler.core.paths import EvaluationCounter
from sampler.schedules import Linear
from sampler_plugins.mcmc.chains import warmup_windows
from sampler_plugins.mcmc.kernels import HMC, MALA, particle_metric

from conftest import run_and_resume

DTYPE = torch.float64
D = 4
_Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((D, D)))
SD = 1e-3 * np.logspace(0, 3, D)
COV = _Q @ np.diag(SD**2) @ _Q.T
COV = 0.5 * (COV + COV.T)
MEAN = np.arange(1.0, D + 1)


def ill_gaussian() -> sampler.targets.Gaussian:
    return sampler.targets.Gaussian(mean=MEAN, cov=COV)


def max_abs_z(y: np.ndarray) -> float:
    """Largest |z| of the sample mean and covariance entries of iid rows ``y`` against N(MEAN, COV)."""
    n = y.shape[0]
    var = np.diag(COV)
    z_mean = (y.mean(0) - MEAN) / np.sqrt(var / n)
    z_cov = (np.cov(y.T) - COV) / np.sqrt((np.outer(var, var) + COV**2) / n)
    return float(np.abs(np.concatenate([z_mean, z_cov[np.triu_indices(D)]])).max())


def exact_at_t1(target, r: int, n: int, seed: int):
    x = target.sample(r * n, torch.Generator().manual_seed(seed), dtype=DTYPE).reshape(r, n, D)
    path = sampler.GeometricPath(sampler.GaussianReference(D), target)
    particles = sampler.Particles(
        x=x,
        log_weights=torch.full((r, n), -math.log(n), dtype=DTYPE),
        log_Z=torch.zeros(r, dtype=DTYPE),
        evaluation=path.evaluate(x, grad=True),
    )
    ctx = sampler.StepContext(
        path=path, t=1.0, t_from=1.0, step=1, generator=torch.Generator().manual_seed(seed + 1), needs_grad=True
    )
    return particles, ctx


#: 14 z-scores (4 means, 10 covariances), each ~N(0, 1) for iid exact draws: P(max > 4) < 1e-3.
Z_MAX = 4.0


@pytest.mark.parametrize(
    "kernel",
    [
        MALA(n_steps=30, metric="diag", step_size=0.3),
        MALA(n_steps=30, metric="dense", step_size=0.8),
        HMC(n_steps=10, n_leapfrog=5, metric="dense", step_size=0.3, jitter=0.5),
        MALA(n_steps=30, metric="dense", step_size=0.8, step_jitter=1.0),
    ],
    ids=["mala-diag", "mala-dense", "hmc-dense-jitter", "mala-dense-stepjitter"],
)
def test_metric_kernels_leave_ill_conditioned_gaussian_invariant(kernel):
    """Started from exact iid draws, sweeps with a metric fixed per apply keep exact iid draws.

    ``adapt=True`` so the metric is the particles' own (weighted) covariance, estimated before
    the sweeps; the step size is adapted too (per sweep, before each sweep). Particles move with
    independent noise, so the iid standard errors of N = 4 x 5000 draws apply.
    """
    particles, ctx = exact_at_t1(ill_gaussian(), 4, 5000, 0)
    out = kernel.apply(particles, kernel.init(particles, ctx), ctx)
    moved = (out.particles.x != particles.x).any(-1).double().mean()
    assert moved > 0.3, moved  # the kernel does move (acceptance well above zero)
    assert max_abs_z(out.particles.x.reshape(-1, D).numpy()) < Z_MAX


def test_particle_metric_recovers_the_covariance():
    """Dense factor of exact draws: L L^T is the sample covariance (shrinkage 5 / (n + 5) off-diagonal)."""
    particles, _ = exact_at_t1(ill_gaussian(), 2, 20000, 3)
    tril = particle_metric(particles.x, particles.log_weights, "dense")
    for r in range(2):
        cov = (tril[r] @ tril[r].T).numpy()
        sample = np.cov(particles.x[r].numpy().T)
        keep = 20000 / 20005
        expected = keep * sample + (1 - keep) * np.diag(np.diag(sample))
        np.testing.assert_allclose(cov, expected, rtol=1e-8, atol=1e-14)
    sd = particle_metric(particles.x, particles.log_weights, "diag")
    np.testing.assert_allclose(sd[0].numpy() ** 2, np.var(particles.x[0].numpy(), axis=0, ddof=1), rtol=1e-8)


def test_dense_reference_matches_torch_distribution():
    """log_prob, grad and sampling of the dense GaussianReference against MultivariateNormal."""
    tril = torch.linalg.cholesky(torch.as_tensor(COV))
    ref = sampler.GaussianReference(D, loc=torch.as_tensor(MEAN), scale_tril=tril)
    mvn = torch.distributions.MultivariateNormal(torch.as_tensor(MEAN), scale_tril=tril)
    x = mvn.sample((7,))
    np.testing.assert_allclose(ref.log_prob(x).numpy(), mvn.log_prob(x).numpy(), rtol=1e-10)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mvn.log_prob(xg).sum(), xg)
    np.testing.assert_allclose(ref.grad_log_prob(x).numpy(), g.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ref.scale, np.sqrt(np.diag(COV)), rtol=1e-12)


def test_diagonal_reference_unchanged():
    """Without scale_tril the reference computes exactly as before (the same expressions)."""
    ref = sampler.GaussianReference(3, loc=[1.0, 2.0, 3.0], scale=[0.5, 2.0, 1.0])
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    loc, scale = torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE), torch.tensor([0.5, 2.0, 1.0], dtype=DTYPE)
    z = (x - loc) / scale
    expected = -0.5 * (z**2).sum(-1) + float(-1.5 * math.log(2 * math.pi) - np.log([0.5, 2.0, 1.0]).sum())
    assert torch.equal(ref.log_prob(x), expected)
    torch.testing.assert_close(ref.grad_log_prob(x), -(x - loc) / scale**2, rtol=1e-15, atol=0.0)


def test_laplace_fit_of_a_gaussian_is_exact():
    """On a Gaussian target the Laplace fit is the target: mean and covariance to float error."""
    counter = EvaluationCounter()
    fit = fit_laplace(ill_gaussian(), sampler.GaussianReference(D), counter, torch.Generator().manual_seed(0))
    assert fit.kind == "dense"
    np.testing.assert_allclose(fit.reference.loc, MEAN, rtol=0, atol=1e-9 * SD.min())
    np.testing.assert_allclose(fit.reference.covariance, COV, rtol=1e-7, atol=1e-7 * SD.min() ** 2)
    assert counter.target_evals > 0 and counter.grad_evals >= D


def test_smc_with_laplace_reference_is_exact_on_a_gaussian():
    """Reference = target up to Z: one stage to t = 1, log Z to float error, counts include the fit."""
    target = ill_gaussian()
    res = sampler.sample(target, method="smc", n_particles=500, n_replicas=2, seed=1, dtype=DTYPE, reference="laplace")
    assert len(res.steps) == 1
    assert abs(res.log_Z - target.log_Z) < 1e-8
    assert res.options["reference"] == "laplace"
    # the run alone: R N initial + R N x 10 MALA sweeps; the fit adds its own
    assert res.n_grad_evals > 2 * 500 * 11


def test_laplace_falls_back_to_diagonal_when_hessian_is_not_positive_definite():
    """A saddle-free but flat-in-one-direction target: the diagonal fallback with a warning."""

    class Ridge(sampler.Target):
        dim = 2

        def log_prob(self, x):
            return -0.5 * (x[..., 0] - 1.0) ** 2 - 0.25 * x[..., 1] ** 4

    with pytest.warns(UserWarning, match="diagonal"):
        fit = fit_laplace(Ridge(), sampler.GaussianReference(2), EvaluationCounter(), torch.Generator())
    assert fit.kind == "diagonal" and not fit.reference.dense
    assert abs(fit.reference.loc[0] - 1.0) < 1e-6 and abs(fit.reference.scale[0] - 1.0) < 1e-4


def test_smc_dense_metric_on_ill_conditioned_gaussian():
    """Default-prior smc with the dense metric: moments and log Z right (identity fails here, z ~ 10)."""
    target = ill_gaussian()
    res = sampler.sample(target, method="smc", n_particles=2000, n_replicas=4, seed=2, dtype=DTYPE, metric="dense")
    y = res.samples.reshape(-1, D).numpy()
    # SMC draws are not iid (resampling duplicates, correlated moves): allow the 4-sigma iid bound
    # times 2 for an ESS of a quarter of the draws.
    assert max_abs_z(y) < 2 * Z_MAX
    assert abs(res.log_Z - target.log_Z) < 5 * max(res.log_Z_stderr, 0.01)


def test_pilot_reference_records_and_counts():
    target = ill_gaussian()
    res = sampler.sample(
        target, method="smc", n_particles=400, n_replicas=2, seed=3, dtype=DTYPE, reference="pilot", metric="dense"
    )
    assert res.options["reference"] == "pilot"
    y = res.samples.reshape(-1, D).numpy()
    assert np.all(np.abs(y.mean(0) - MEAN) < 8 * SD.max() / math.sqrt(len(y)) + 1e-12)


def test_warmup_windows_are_stans():
    assert warmup_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    assert warmup_windows(100) == [(15, 90)]
    assert warmup_windows(10) == []


@pytest.mark.parametrize(
    "options, jitter", [({}, 0.5), ({"metric": "identity"}, None), ({"jitter": 0.0}, 0.0), ({"jitter": 0.2}, 0.2)]
)
def test_hmc_chains_jitter_their_trajectories_with_an_adapted_metric(options, jitter):
    """A fixed trajectory length resonates with a whitened Gaussian: the chains' default jitters it."""
    res = sampler.sample(
        "gaussian", method="hmc", trajectory="fixed", n_particles=5, n_replicas=2, n_warmup=30, seed=0, **options
    )
    assert res.options.get("jitter") == jitter


def test_hmc_chains_default_to_a_dense_metric_up_to_d_100():
    """``metric="auto"`` (the hmc default) is the dense run bit for bit at d <= 100, diagonal above;
    mala chains keep the diagonal default."""
    common = dict(n_particles=20, n_replicas=2, n_warmup=40, seed=3, progress=False)
    auto = sampler.sample("gaussian", method="hmc", **common)
    dense = sampler.sample("gaussian", method="hmc", metric="dense", **common)
    assert auto.options["metric"] == "auto" and auto.options["metric_used"] == "dense"
    assert torch.equal(auto.samples, dense.samples)
    wide = sampler.sample(sampler.get_target("gaussian", dim=101), method="hmc", **common)
    assert wide.options["metric_used"] == "diag"
    assert sampler.sample("gaussian", method="mala", **common).options["metric_used"] == "diag"


@pytest.mark.parametrize("dim, kind", [(3, "dense"), (101, "diag")])
def test_smc_auto_metric_is_dense_up_to_d_100(dim, kind):
    """``smc`` with ``metric="auto"`` is the dense run bit for bit at d <= 100, the diagonal one
    above (as the ``hmc`` chains' default); the default stays the identity."""
    target = sampler.get_target("gaussian", dim=dim)
    common = dict(method="smc", n_particles=16, n_replicas=2, seed=5, progress=False, schedule=Linear(3))
    auto = sampler.sample(target, metric="auto", **common)
    assert torch.equal(auto.samples, sampler.sample(target, metric=kind, **common).samples)
    default = sampler.sample(target, **common)
    assert torch.equal(default.samples, sampler.sample(target, metric="identity", **common).samples)


@pytest.mark.parametrize("method", ["mala", "hmc"])
def test_chains_warmup_on_correlated_gaussian(method):
    """Windowed dense adaptation: chains from the prior reach and sample a correlated Gaussian (cond ~ 1e2)."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    cov = q @ np.diag(np.logspace(-2, 0, D)) @ q.T
    cov = 0.5 * (cov + cov.T)
    target = sampler.targets.Gaussian(mean=np.ones(D), cov=cov)
    res = sampler.sample(target, method=method, n_particles=2000, n_replicas=4, seed=4, dtype=DTYPE, metric="dense")
    rhat, ess = sampler.diagnostics.rhat_and_ess(res.samples)
    assert np.all(rhat < 1.05) and np.all(ess > 200), (rhat, ess)
    mean = res.samples.reshape(-1, D).mean(0).numpy()
    # 4 standard errors sd_i / sqrt(ESS_i) per coordinate
    assert np.all(np.abs(mean - 1.0) < 4 * np.sqrt(np.diag(cov) / ess)), mean
    sq = (res.samples - 1.0) ** 2
    _, ess_sq = sampler.diagnostics.rhat_and_ess(sq)
    var = sq.reshape(-1, D).mean(0).numpy()
    assert np.all(np.abs(var - np.diag(cov)) < 4 * np.sqrt(2 * np.diag(cov) ** 2 / ess_sq)), var


@pytest.mark.parametrize(
    "settings, at",
    [
        (dict(method="smc", metric="dense", reference="laplace", n_particles=200, schedule=Linear(4)), 50),
        (dict(method="smc", metric="diag", reference="pilot", n_particles=200), 125),
        (dict(method="hmc", metric="dense", n_warmup=150, n_particles=50, trajectory="fixed", jitter=0.5), 90 * 5),
        (dict(method="hmc", n_warmup=150, n_particles=50), 90 * 5),
    ],
    ids=["smc-laplace-dense", "smc-pilot-diag", "hmc-chains-window", "hmc-chains-auto"],
)
def test_resume_with_metric_state_equals_uninterrupted(tmp_path, settings, at):
    """Checkpoints carry the kernel's metric, the warm-up window and the fitted reference, bit for bit."""
    method_options = {k: v for k, v in settings.items() if k not in ("method", "n_particles")}
    common = dict(n_particles=settings["n_particles"], n_replicas=2, seed=5, dtype=DTYPE, progress=False)
    full, resumed = run_and_resume(tmp_path, at, settings["method"], method_options, **common)
    assert torch.equal(resumed.samples, full.samples)
    assert (resumed.n_target_evals, resumed.n_grad_evals) == (full.n_target_evals, full.n_grad_evals)
    assert resumed.options == full.options
    if settings["method"] == "smc":
        assert torch.equal(resumed.log_Z_per_replica, full.log_Z_per_replica)
