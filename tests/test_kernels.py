"""Statistical tests of the MCMC kernels (ULA, MALA, HMC, RWMH), alone and inside SMC / chains.

Every test is seeded. Tolerances come from the Monte Carlo error of the quantity checked (the
derivation is stated next to each check); none was adjusted to make a test pass.

Conventions used below: for N iid draws of a Gaussian with covariance ``S``,

* the sample mean of coordinate i has standard deviation ``sqrt(S_ii / N)``;
* the sample covariance entry (i, j) has standard deviation ``sqrt((S_ii S_jj + S_ij^2) / N)``
  (Isserlis: ``Var((x_i x_j)) = S_ii S_jj + S_ij^2`` for centred Gaussian ``x``).

A kernel that leaves the target invariant and is started from iid exact draws keeps every
particle an exact draw, and the particles stay independent (each particle moves with its own
noise; the step size is fixed with ``adapt=False``), so these iid standard errors apply to
the particles after any number of sweeps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sampler
from sampler.diagnostics import rhat_and_ess
from sampler_plugins.mcmc.kernels import MALA, Proposal, _langevin_mean

DTYPE = torch.float64

# A fixed correlated Gaussian in d=3 with a non-zero mean; eigenvalues ~ 0.27, 0.93, 2.30.
MEAN3 = np.array([1.0, -2.0, 0.5])
COV3 = np.array(
    [
        [2.0, 0.6, -0.3],
        [0.6, 1.0, 0.2],
        [-0.3, 0.2, 0.5],
    ]
)

#: Threshold on the largest |z| among the 3 mean and 6 covariance z-scores. Under the null each
#: z is ~N(0, 1) (CLT, N = 40,000), so P(max_9 |z| > 4) <= 9 * 6.3e-5 ~ 6e-4.
Z_MAX = 4.0


def gaussian3() -> sampler.targets.Gaussian:
    return sampler.targets.Gaussian(mean=MEAN3, cov=COV3)


def gaussian10() -> sampler.targets.Gaussian:
    """A correlated d=10 Gaussian (random rotation, eigenvalues evenly spread over [0.5, 2])."""
    d = 10
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cov = q @ np.diag(np.linspace(0.5, 2.0, d)) @ q.T
    return sampler.targets.Gaussian(mean=np.linspace(-1.0, 1.0, d), cov=0.5 * (cov + cov.T))


def particles_at_t1(target, x: torch.Tensor, seed: int):
    """Equally weighted particles ``x`` (R, N, d) on the path at t = 1, and a context driving a corrector there."""
    r, n, d = x.shape
    path = sampler.GeometricPath(sampler.GaussianReference(d), target)
    particles = sampler.Particles(
        x=x,
        log_weights=torch.full((r, n), -math.log(n), dtype=torch.float64),
        log_Z=torch.zeros(r, dtype=torch.float64),
        evaluation=path.evaluate(x, grad=True),
    )
    ctx = sampler.StepContext(
        path=path, t=1.0, t_from=1.0, step=1, generator=torch.Generator().manual_seed(seed), needs_grad=True
    )
    return particles, ctx


def exact_particles(target, r: int, n: int, seed: int):
    x = target.sample(r * n, torch.Generator().manual_seed(seed), dtype=DTYPE).reshape(r, n, target.dim)
    return particles_at_t1(target, x, seed + 1)


def gaussian_z_scores(y: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-scores of the sample mean and the upper-triangle sample covariance of iid rows ``y`` against N(mean, cov)."""
    n = y.shape[0]
    var = np.diag(cov)
    z_mean = (y.mean(0) - mean) / np.sqrt(var / n)
    sd_cov = np.sqrt((np.outer(var, var) + cov**2) / n)
    z_cov = (np.cov(y.T) - cov) / sd_cov
    iu = np.triu_indices(len(mean))
    return z_mean, z_cov[iu]


def max_abs_z(y: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    z_mean, z_cov = gaussian_z_scores(y, mean, cov)
    return float(np.abs(np.concatenate([z_mean, z_cov])).max())


def sweep(kernel, particles, ctx) -> tuple[np.ndarray, dict]:
    """Apply ``kernel`` once (its own ``n_steps`` sweeps) and return all particles as (R*N, d)."""
    out = kernel.apply(particles, kernel.init(particles, ctx), ctx)
    return out.particles.x.reshape(-1, particles.dim).numpy(), out.info


def ula_stationary_cov(cov: np.ndarray, eps: float) -> np.ndarray:
    """Exact stationary covariance of ``x' = x + (eps^2/2) grad log N(m, cov)(x) + eps xi``.

    In the eigenbasis of ``cov`` (eigenvalue lam) the chain is the AR(1)
    ``y' = (1 - h/lam) y + sqrt(2h) xi`` with ``h = eps^2/2``; its stationary variance s solves
    ``s = (1 - h/lam)^2 s + 2h``, i.e. ``s = 2h / (2h/lam - h^2/lam^2) = lam / (1 - eps^2/(4 lam))``
    (stable for ``eps^2 < 4 lam``). The mean stays m.
    """
    lam, vec = np.linalg.eigh(cov)
    assert (eps**2 < 4 * lam).all(), "ULA is unstable at this step size"
    s = lam / (1.0 - eps**2 / (4.0 * lam))
    return (vec * s) @ vec.T


class MALAWithoutHastings(MALA):
    """A deliberately wrong kernel: the MALA proposal with the plain Metropolis ratio (no q(x|y)/q(y|x))."""

    def propose(self, x, ev, eps, ctx):
        path, t = ctx.path, ctx.t
        y = _langevin_mean(x, path.grad_log_prob(ev, t), eps) + eps * self._noise(x, ctx)
        ev_y = self._evaluate(y, ctx)
        return Proposal(y, ev_y, path.log_prob(ev_y, t) - path.log_prob(ev, t))


# ---------------------------------------------------------------------------------------------
# 1. Invariance of the Metropolis-adjusted kernels, and power of the check.
# ---------------------------------------------------------------------------------------------

# Step sizes picked for moderate acceptance on COV3 (about 0.62 for MALA, 0.81 for HMC, 0.30 for
# RWMH); sweeps enough to move every particle many times its own scale.
INVARIANCE_CASES = {
    "mala": dict(step_size=0.9, n_steps=40),
    "hmc": dict(step_size=0.8, n_steps=15, n_leapfrog=5),
    "rwmh": dict(step_size=1.2, n_steps=60),
}


@pytest.mark.parametrize("name", sorted(INVARIANCE_CASES))
def test_metropolis_kernels_leave_correlated_gaussian_invariant(name):
    target = gaussian3()
    particles, ctx = exact_particles(target, r=2, n=20_000, seed=11)
    kernel = sampler.corrector(name, adapt=False, **INVARIANCE_CASES[name])
    y, info = sweep(kernel, particles, ctx)
    acc = info["acceptance"]
    # The step sizes really were held fixed and the kernel really moved (not a vacuous pass).
    assert torch.all(info["step_size"] == INVARIANCE_CASES[name]["step_size"])
    assert torch.all((acc > 0.15) & (acc < 0.95)), acc
    moved = np.abs(y - particles.x.reshape(-1, 3).numpy()).max(1) > 0
    assert moved.mean() > 0.95
    # Particles remain iid N(MEAN3, COV3): all 9 z-scores (iid standard errors) below Z_MAX.
    stat = max_abs_z(y, MEAN3, COV3)
    assert stat < Z_MAX, f"{name}: max |z| = {stat:.2f}"


@pytest.mark.parametrize(
    "kernel",
    [
        pytest.param(lambda: sampler.corrector("ula", step_size=0.5, n_steps=40, adapt=False), id="ula-big-step"),
        pytest.param(lambda: MALAWithoutHastings(step_size=0.9, n_steps=40, adapt=False), id="mala-no-hastings"),
    ],
)
def test_invariance_check_detects_wrong_kernels(kernel):
    """The same check, same sample size, rejects kernels that are not invariant.

    ULA at eps = 0.5 converges to the covariance of ``ula_stationary_cov`` (Var(x3) 0.50 -> 0.58),
    whose predicted z-score at N = 40,000 is ~22 (after 40 sweeps ~99% of the way there): far
    beyond Z_MAX. MALA without the proposal-density ratio targets the wrong density as well.
    """
    target = gaussian3()
    particles, ctx = exact_particles(target, r=2, n=20_000, seed=11)
    y, _ = sweep(kernel(), particles, ctx)
    stat = max_abs_z(y, MEAN3, COV3)
    assert stat > 3 * Z_MAX, f"wrong kernel not detected: max |z| = {stat:.2f}"


# ---------------------------------------------------------------------------------------------
# 2. ULA's bias: its exact stationary covariance.
# ---------------------------------------------------------------------------------------------


def test_ula_keeps_its_exact_stationary_covariance():
    target = gaussian3()
    eps = 0.5
    cov_ula = ula_stationary_cov(COV3, eps)
    # Start from iid draws of ULA's own stationary law N(MEAN3, cov_ula) (exact: ULA is a linear
    # Gaussian AR(1) on a Gaussian target), so the particles stay iid N(MEAN3, cov_ula).
    gen = torch.Generator().manual_seed(21)
    chol = torch.as_tensor(np.linalg.cholesky(cov_ula))
    z = torch.randn(2 * 20_000, 3, generator=gen, dtype=DTYPE)
    x = (torch.as_tensor(MEAN3) + z @ chol.T).reshape(2, 20_000, 3)
    particles, ctx = particles_at_t1(target, x, seed=22)
    kernel = sampler.corrector("ula", step_size=eps, n_steps=60, adapt=False)
    y, info = sweep(kernel, particles, ctx)
    # Stays at the ULA law: 9 z-scores (iid standard errors under cov_ula) below Z_MAX.
    assert max_abs_z(y, MEAN3, cov_ula) < Z_MAX
    # ... which is detectably not the target: the same statistic against COV3 is huge.
    assert max_abs_z(y, MEAN3, COV3) > 3 * Z_MAX


def test_ula_converges_to_its_stationary_covariance_from_the_target():
    """Started at the exact target, ULA drifts to ``cov_ula`` (the closed form is the limit, not just a fixed point).

    After k sweeps the eigen-variance is ``s + (lam - s) (1 - h/lam)^(2k)``; with h = 0.125 and
    k = 150 the slowest factor is (1 - 0.125/2.30)^300 ~ 6e-8, so the particles are iid
    N(MEAN3, cov_ula) up to a negligible bias and the iid standard errors apply.
    """
    target = gaussian3()
    eps = 0.5
    cov_ula = ula_stationary_cov(COV3, eps)
    particles, ctx = exact_particles(target, r=2, n=20_000, seed=31)
    y, _ = sweep(sampler.corrector("ula", step_size=eps, n_steps=150, adapt=False), particles, ctx)
    assert max_abs_z(y, MEAN3, cov_ula) < Z_MAX


# ---------------------------------------------------------------------------------------------
# 3. Step-size adaptation reaches the target acceptance.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, start",
    # Starting step sizes far from the tuned ones (acceptance ~0.99 for MALA/HMC, ~0.9 for RWMH).
    [("mala", 0.2), ("hmc", 0.2), ("rwmh", 0.1)],
)
def test_adaptation_reaches_target_acceptance(name, start):
    """eps <- eps * exp(rate - target) after each sweep; the acceptance settles at the target.

    Setting: the d=10 Gaussian (acceptance decreases smoothly in eps there), R=2 replicas of
    N=10,000 exact draws, 150 single-sweep applications.

    * Noise of one sweep's acceptance: the mean over N iid particles of alpha in [0, 1] with
      mean a has sd <= sigma = sqrt(a (1 - a) / N) (the binomial bound). A stable adaptation
      with gain c = -d rate / d log eps <= 1.5 makes log eps an AR(1) whose acceptance
      fluctuates with sd <= sigma sqrt(2 / (2 - c)) <= 2 sigma; we allow 3 sigma for the sd
      estimated from the last 50 (autocorrelated) sweeps. An oscillating adaptation fails this.
    * The final step size, frozen, is then applied once to a fresh set of N_f = 20,000 exact
      draws per replica: its acceptance is the expected acceptance at the final eps (sd <=
      sigma_f = sqrt(a(1-a)/N_f)) and that expected acceptance lies within the adaptation's own
      fluctuation s (the sd of the last 50 sweeps) of the target. Tolerance 4 sqrt(sigma_f^2 + s^2).
    """
    target = gaussian10()
    n, r = 10_000, 2
    particles, ctx = exact_particles(target, r=r, n=n, seed=41)
    kernel = sampler.corrector(name, n_steps=1, step_size=start, adapt=True)
    a = kernel.target_acceptance
    state = kernel.init(particles, ctx)
    rates = []
    for _ in range(150):
        out = kernel.apply(particles, state, ctx)
        particles, state = out.particles, out.state
        rates.append(out.info["acceptance"])
    rates = torch.stack(rates).numpy()  # (sweeps, R)
    late = rates[-50:]
    sigma = math.sqrt(a * (1 - a) / n)
    s = late.std(0, ddof=1)
    assert np.all(s < 3 * sigma), f"acceptance still fluctuates: sd {s} vs sigma {sigma:.4f}"
    assert np.all(np.abs(late.mean(0) - a) < 4 * s / math.sqrt(len(late)) + 4 * sigma)

    fresh, ctx_f = exact_particles(target, r=r, n=20_000, seed=42)
    frozen = sampler.corrector(name, n_steps=1, adapt=False)
    acc = frozen.apply(fresh, state, ctx_f).info["acceptance"].numpy()
    sigma_f = math.sqrt(a * (1 - a) / 20_000)
    tol = 4 * np.sqrt(sigma_f**2 + s**2)
    assert np.all(np.abs(acc - a) < tol), f"frozen acceptance {acc} vs target {a} (tol {tol})"


# ---------------------------------------------------------------------------------------------
# 4. MALA and HMC within SMC against exact samples of the double well.
# ---------------------------------------------------------------------------------------------


def _mean_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> float:
    total = 0.0
    for i in range(0, a.shape[0], chunk):
        total += float(torch.cdist(a[i : i + chunk], b).sum())
    return total / (a.shape[0] * b.shape[0])


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact O(N^2) energy distance (V-statistic): E|X-Y| - E|X-X'|/2 - E|Y-Y'|/2."""
    return _mean_distance(x, y) - 0.5 * _mean_distance(x, x) - 0.5 * _mean_distance(y, y)


def replica_energy_distance(samples: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean over replicas of the energy distance between ``samples[r]`` and ``exact[r]``."""
    return float(np.mean([energy_distance(samples[r], exact[r]) for r in range(samples.shape[0])]))


DW_R, DW_N = 16, 1000


@pytest.fixture(scope="module")
def double_well_null():
    """Null distribution of the replica-averaged energy distance (two exact sets of the same sizes).

    The per-replica statistics of independent pairs are iid, so 2 seeds x 16 pairs = 32 null
    values give its mean mu0 and sd sd1; the average over R = 16 replicas has sd sd1 / 4.
    (Check: the V-statistic's null mean is E|X-X'| (1/(2N) + 1/(2N)) ~ 1.83 / 1000 here.)
    """
    target = sampler.get_target("double-well")
    values = []
    for seed in (500, 501):
        gen = torch.Generator().manual_seed(seed)
        a = target.sample(DW_R * DW_N, gen, dtype=DTYPE).reshape(DW_R, DW_N, 2)
        b = target.sample(DW_R * DW_N, gen, dtype=DTYPE).reshape(DW_R, DW_N, 2)
        values += [energy_distance(a[r], b[r]) for r in range(DW_R)]
    values = np.array(values)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(DW_R))


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_smc_matches_exact_double_well(kernel, double_well_null):
    target = sampler.get_target("double-well")
    res = sampler.sample(target, method="smc", kernel=kernel, n_particles=DW_N, n_replicas=DW_R, seed=3, dtype=DTYPE)
    exact = target.sample(DW_R * DW_N, torch.Generator().manual_seed(600), dtype=DTYPE).reshape(DW_R, DW_N, 2)
    stat = replica_energy_distance(res.samples, exact)
    mu0, sd0 = double_well_null
    # Tolerance. For iid samples the statistic is mu0 +- sd0. SMC samples are not iid: a set
    # resampled from weights of (normalized Kish) ESS e behaves like ~e N distinct draws
    # ("N / ESS"). The moves after each resampling restore diversity within a mode but cannot
    # undo the noise resampling adds to the split between the modes, which accumulates over the
    # stages: N / N_eff <= f = 1 + sum_k (1 / e_k - 1), with e_k the smallest ESS (over
    # replicas) at stage k. The V-statistic's expectation mu0 = E|X-X'| / N becomes
    # E|X-X'| (1/N_eff + 1/N) / 2 <= f mu0, and its spread grows likewise: bound f (mu0 + 4 sd0).
    e = res.stats["ess"].min(dim=1).values
    f = float(1 + (1 / e - 1).sum())
    bound = f * (mu0 + 4 * sd0)
    assert stat < bound, f"energy distance {stat:.5f} vs bound {bound:.5f} (null {mu0:.5f} +- {sd0:.5f}, f {f:.2f})"

    # Positive-mode weight P(x1 > 0): self-normalized estimate per replica from the returned
    # weights; replicas are independent, so the standard error is their sd / sqrt(R)
    # (t distribution with 15 dof: P(|t| > 4) ~ 1e-3).
    w = torch.softmax(res.log_weights, dim=-1)
    p = (w * (res.weighted_samples[..., 0] > 0)).sum(-1).numpy()
    se = p.std(ddof=1) / math.sqrt(DW_R)
    exact_p = target.positive_mode_weight()
    assert abs(p.mean() - exact_p) < 4 * se, f"P(x1 > 0) = {p.mean():.4f} +- {se:.4f} vs {exact_p:.4f}"
    # The equally weighted samples agree too (resampling noise only adds to the replica spread).
    ps = (res.samples[..., 0] > 0).double().mean(-1).numpy()
    assert abs(ps.mean() - exact_p) < 4 * ps.std(ddof=1) / math.sqrt(DW_R)


def test_energy_distance_has_power(double_well_null):
    """The energy-distance check rejects a double well with the wrong mode weights.

    Moving 8% of the draws of the positive mode to the negative one (x1 -> -x1) changes
    P(x1 > 0) from 0.844 to ~0.78. For two point masses D ~ 3.46 apart the statistic grows by
    D dp^2 ~ 3.46 * 0.068^2 ~ 0.016, about 9x the null mean: beyond the bound of the test above
    with an inflation f = 2 (its value for ~9 stages at ESS 0.9, the smc defaults here).
    """
    target = sampler.get_target("double-well")
    gen = torch.Generator().manual_seed(700)
    x = target.sample(DW_R * DW_N, gen, dtype=DTYPE).reshape(DW_R, DW_N, 2)
    flip = (torch.rand(DW_R, DW_N, generator=gen) < 0.08) & (x[..., 0] > 0)
    x[..., 0] = torch.where(flip, -x[..., 0], x[..., 0])
    exact = target.sample(DW_R * DW_N, gen, dtype=DTYPE).reshape(DW_R, DW_N, 2)
    mu0, sd0 = double_well_null
    assert replica_energy_distance(x, exact) > 2 * (mu0 + 4 * sd0)


# ---------------------------------------------------------------------------------------------
# 5. Plain MCMC chains.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["mala", "hmc"])
def test_mcmc_chains_on_correlated_gaussian(method):
    target = gaussian3()
    res = sampler.sample(target, method=method, n_particles=2000, n_replicas=4, seed=5, dtype=DTYPE, n_warmup=500)
    assert res.samples.shape == (4, 2000, 3)
    assert res.log_Z_per_replica is None
    rhat, ess = rhat_and_ess(res.samples)
    assert np.all(rhat < 1.05), rhat
    # The chains must have mixed at all for the standard error below to mean anything.
    assert np.all(ess > 100), ess
    # Mean of each coordinate over all chains and draws: standard error sd_i / sqrt(ESS_i) with
    # the exact marginal sd and ArviZ's bulk ESS; 4 standard errors (3 coordinates).
    mean = res.samples.reshape(-1, 3).mean(0).numpy()
    se = np.sqrt(np.diag(COV3) / ess)
    assert np.all(np.abs(mean - MEAN3) < 4 * se), (mean, se)
    # Marginal variances too: Var((x_i - m_i)^2) = 2 S_ii^2 for a Gaussian, with the ESS of the
    # centred squares (their own autocorrelation) from ArviZ; 4 standard errors.
    sq = (res.samples - torch.as_tensor(MEAN3)) ** 2
    _, ess_sq = rhat_and_ess(sq)
    var = sq.reshape(-1, 3).mean(0).numpy()
    se_var = np.sqrt(2 * np.diag(COV3) ** 2 / ess_sq)
    assert np.all(np.abs(var - np.diag(COV3)) < 4 * se_var), (var, se_var)
