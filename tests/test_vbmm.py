"""Tests of the ``vbmm`` plugin: Dirichlet MLE by VBMM, BPG, Minka's fixed point and Newton.

Exact answers used: the optimum of the exact likelihood found independently by
``scipy.optimize.minimize`` (with ``scipy.special.gammaln``); the majorization inequality itself,
checked numerically at every iterate; and the asymptotic normality of the MLE,
``sqrt(N) (alpha_hat - alpha) -> N(0, I(alpha)^{-1})`` with the Fisher information
``I = diag(psi'(alpha)) - psi'(alpha_0) 1 1^T``, for the recovery test (tolerance: the 0.999
quantile of the chi-square law of the Mahalanobis distance, not tuned).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
import torch

import sampler
from sampler.errors import ConfigurationError, UnknownNameError
from sampler_plugins.vbmm import (
    SOLVERS,
    DirichletStats,
    FixedFamily,
    LogGammaBregman,
    VariableSplitFamily,
    dirichlet_grad,
    dirichlet_nll,
    fit_dirichlet,
    majorization_gap,
    mode_weight_dirichlet,
    vbmm,
)
from sampler_plugins.vbmm.dirichlet import (
    EntropyBurgBregman,
    lambertw_exp,
    moments_init,
    separable_speedup_possible,
    solve_stats,
)

F64 = torch.float64


def _data(alpha, n, seed):
    return np.random.default_rng(seed).dirichlet(np.asarray(alpha, dtype=float), n)


def _scipy_optimum(s: np.ndarray, lower: float | None = None) -> tuple[np.ndarray, float]:
    """MLE of the exact likelihood by L-BFGS-B on log alpha (independent of the plugin's code)."""

    def fun(z):
        a = np.exp(z)
        f = scipy.special.gammaln(a).sum() - scipy.special.gammaln(a.sum()) - ((a - 1) * s).sum()
        g = (scipy.special.digamma(a) - scipy.special.digamma(a.sum()) - s) * a
        return f, g

    bounds = None if lower is None else [(math.log(lower), None)] * len(s)
    z0 = np.zeros(len(s)) if lower is None else np.full(len(s), math.log(lower) + 0.1)
    out = scipy.optimize.minimize(
        fun, z0, jac=True, method="L-BFGS-B", bounds=bounds, options=dict(ftol=1e-15, gtol=1e-12, maxiter=20000)
    )
    return np.exp(out.x), float(out.fun)


CASES = {
    "small-alpha": ([0.3, 0.5, 0.8, 0.2, 0.6], 300),
    "moderate": ([1.0, 4.0, 2.5, 7.0], 500),
    "large-alpha": ([15.0, 30.0, 8.0], 400),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_solvers_reach_scipy_optimum(case, solver):
    alpha, n = CASES[case]
    p = _data(alpha, n, seed=1)
    s = np.log(p).mean(0)
    ref_alpha, ref_f = _scipy_optimum(s)
    fit = fit_dirichlet(p, solver)
    assert bool(fit.converged)
    f = float(fit.objective)
    # the exact-likelihood value at our optimum, computed with scipy
    a = fit.alpha.numpy()
    f_scipy_at_ours = scipy.special.gammaln(a).sum() - scipy.special.gammaln(a.sum()) - ((a - 1) * s).sum()
    assert f == pytest.approx(f_scipy_at_ours, rel=1e-12, abs=1e-12)
    assert f <= ref_f + 1e-10 * abs(ref_f)  # at least as good as scipy's optimum
    # L-BFGS-B stops at gtol 1e-12 on the log scale; the optimum is unique (F strictly convex)
    np.testing.assert_allclose(a, ref_alpha, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_all_solvers_agree_tightly(case):
    alpha, n = CASES[case]
    p = _data(alpha, n, seed=2)
    fits = {solver: fit_dirichlet(p, solver) for solver in SOLVERS}
    ref = fits["newton"].alpha
    for solver, fit in fits.items():
        torch.testing.assert_close(fit.alpha, ref, rtol=2e-6, atol=0, msg=solver)


@pytest.mark.parametrize("solver", ["vbmm", "minka", "bpg"])
@pytest.mark.parametrize("case", CASES)
def test_objective_decreases_monotonically(solver, case):
    alpha, n = CASES[case]
    p = _data(alpha, n, seed=3)
    fit = fit_dirichlet(p, solver, init="ones", record=True, max_iter=3000)
    h = fit.history
    assert h.shape[0] >= 3
    # every step decreases F, up to rounding of F itself (~1e-15 relative)
    assert bool((h[1:] <= h[:-1] + 1e-13 * h.abs().max()).all())


def _check_majorization(y_hist, s, family, rng, n_points=64):
    f = lambda a: dirichlet_nll(a, s)  # noqa: E731
    g = lambda a: dirichlet_grad(a, s)  # noqa: E731
    worst = math.inf
    n_split = 0
    for y in y_hist:
        y = y[None]
        h = family.at(y, g(y))
        n_split += int(getattr(h, "rho", torch.zeros(1)).gt(0).sum())
        for scale in (1e-3, 0.1, 1.0, 3.0):
            z = torch.as_tensor(rng.normal(size=(n_points, 1, y.shape[-1])) * scale, dtype=F64)
            x = y * z.exp()
            gap = majorization_gap(f, g, h, y, x)
            # rounding: F is a difference of lgamma sums of size ~|lgamma(alpha_0)|
            tol = 1e-12 * (1 + torch.lgamma(x.sum(-1)).abs() + torch.lgamma(y.sum(-1)).abs())
            worst = min(worst, float((gap + tol).min()))
    return worst, n_split


@pytest.mark.parametrize("case", CASES)
def test_majorization_holds_at_every_iterate(case):
    alpha, n = CASES[case]
    p = _data(alpha, n, seed=4)
    stats = DirichletStats.from_observations(p)
    out = solve_stats(stats.log_mean, torch.ones_like(stats.log_mean), "vbmm", max_iter=60, record_iterates=True)
    rng = np.random.default_rng(0)
    worst, n_split = _check_majorization(out.iterates[:-1, 0], stats.log_mean, VariableSplitFamily(), rng)
    assert worst >= 0
    if case == "large-alpha":
        assert n_split > 0  # the variable (split) majorants are really used, not only Minka's


def test_majorization_of_every_split_and_fixed_kernel():
    """Every member of the split family (not only the chosen one), and both fixed kernels."""
    from sampler_plugins.vbmm.dirichlet import DEFAULT_SPLITS, SplitBregman

    rng = np.random.default_rng(1)
    s = DirichletStats.from_observations(_data([30.0, 5.0, 60.0, 2.0], 200, seed=5)).log_mean
    f = lambda a: dirichlet_nll(a, s)  # noqa: E731
    g = lambda a: dirichlet_grad(a, s)  # noqa: E731
    y = torch.tensor([[20.0, 3.0, 70.0, 1.0]], dtype=F64)
    a = torch.special.polygamma(1, y.sum(-1, keepdim=True))
    kernels = [LogGammaBregman(), EntropyBurgBregman()]
    for t in DEFAULT_SPLITS:
        t_ = torch.tensor([[t]], dtype=F64)
        rho = torch.where(t_ < 0.5, 2 * t_, torch.ones_like(t_))
        theta = torch.where(t_ < 0.5, 0.5 / a, (1 - t_) / a)
        for j in range(4):
            kernels.append(SplitBregman(y=y, j=torch.tensor([[j]]), rho=rho, theta=theta))
    for h in kernels:
        for scale in (1e-3, 0.1, 1.0, 4.0):
            x = y * torch.as_tensor(rng.normal(size=(256, 1, 4)) * scale, dtype=F64).exp()
            gap = majorization_gap(f, g, h, y, x)
            assert float(gap.min()) >= -1e-11, (h, scale)


def _min_rate_eig(m: np.ndarray, hess: np.ndarray) -> float:
    """``lambda_min(M^{-1} H)`` for a diagonal metric ``m`` ``(K,)``: 1 minus the asymptotic contraction."""
    return float(np.linalg.eigvals(hess / m[:, None]).real.min())


def test_no_separable_metric_beats_minka_without_a_dominant_coordinate():
    """The rate bound behind the benchmark's ties (proof in ``separable_speedup_possible``).

    Random diagonal metrics ``M >= H`` (the local form of every separable majorant: one
    coordinate may lose at most ``1 / (1/a + sum 1/delta_k)`` of curvature, the others gain
    ``delta_k > 0``) never give a larger ``lambda_min(M^{-1} H)`` than Minka's ``diag(psi')``
    when no coordinate dominates.
    """
    rng = np.random.default_rng(20)
    n_dominant = n_plain = 0
    for _ in range(60):
        k = int(rng.integers(2, 7))
        alpha = np.exp(rng.uniform(-2.0, 5.0, k))
        q = scipy.special.polygamma(1, alpha)
        a = float(scipy.special.polygamma(1, alpha.sum()))
        hess = np.diag(q) - a
        minka = _min_rate_eig(q, hess)
        dominant = bool(separable_speedup_possible(torch.as_tensor(alpha)[None])[0])
        best = minka
        for _ in range(100):
            j = int(rng.integers(k))
            delta = np.exp(rng.uniform(-8.0, 4.0, k)) * a
            others = np.arange(k) != j
            delta[j] = -rng.uniform() / (1 / a + (1 / delta[others]).sum())
            m = q + delta
            assert np.linalg.eigvalsh(np.diag(m) - hess).min() >= -1e-12 * np.abs(hess).max()  # M >= H
            best = max(best, _min_rate_eig(m, hess))
        if dominant:
            n_dominant += 1  # improvement possible there (see the next test for VBMM's own gain)
        else:
            n_plain += 1
            assert best <= minka * (1 + 1e-9)
    assert n_dominant > 0 and n_plain > 0


def test_vbmm_beats_minka_where_one_coordinate_dominates():
    """Where the bound allows it (alpha_1 = 2/3 of alpha_0), VBMM needs far fewer iterations than Minka."""
    alpha = [100.0, 20.0, 10.0]
    p = _data(alpha, 2000, seed=21)
    stats = DirichletStats.from_observations(p)
    assert bool(separable_speedup_possible(fit_dirichlet(p, "newton").alpha[None])[0])
    n = {}
    for solver in ("vbmm", "minka", "bpg"):
        fit = fit_dirichlet(stats, solver, max_iter=20_000)
        assert bool(fit.converged.all())
        n[solver] = int(fit.n_iter[0])
    assert n["vbmm"] < n["minka"] < n["bpg"]


def test_recovers_true_alpha_within_asymptotic_error():
    alpha = np.array([0.5, 2.0, 5.0, 1.5])
    n = 20_000
    fit = fit_dirichlet(_data(alpha, n, seed=6), "vbmm")
    diff = fit.alpha.numpy() - alpha
    a = torch.as_tensor(alpha, dtype=F64)
    fisher = torch.diag(torch.special.polygamma(1, a)) - torch.special.polygamma(1, a.sum())
    maha = float(n * diff @ fisher.numpy() @ diff)
    assert maha <= scipy.stats.chi2.ppf(0.999, df=len(alpha))
    # the reported standard errors are those of the same asymptotic law, evaluated at alpha_hat
    ah = fit.alpha
    fisher_hat = torch.diag(torch.special.polygamma(1, ah)) - torch.special.polygamma(1, ah.sum())
    cov = np.linalg.inv(fisher_hat.numpy()) / n
    np.testing.assert_allclose(fit.stderr.numpy(), np.sqrt(np.diag(cov)), rtol=1e-8)
    assert float(fit.concentration_stderr) == pytest.approx(math.sqrt(cov.sum()), rel=1e-8)


def test_batched_matches_single_problems():
    alphas = [[0.4, 0.9, 0.3], [8.0, 3.0, 12.0], [2.0, 2.0, 2.0]]
    data = np.stack([_data(a, 300, seed=7 + i) for i, a in enumerate(alphas)])
    batch = fit_dirichlet(data, "vbmm")
    assert batch.alpha.shape == (3, 3) and batch.concentration.shape == (3,)
    for i in range(3):
        single = fit_dirichlet(data[i], "vbmm")
        torch.testing.assert_close(batch.alpha[i], single.alpha, rtol=1e-9, atol=0)
        assert int(batch.n_iter[i]) == int(single.n_iter)


def test_large_k():
    k = 10_000
    alpha = np.random.default_rng(8).uniform(0.2, 0.8, k)
    p = _data(alpha, 50, seed=9)
    fits = {solver: fit_dirichlet(p, solver) for solver in ("vbmm", "newton")}
    assert all(bool(f.converged) for f in fits.values())
    torch.testing.assert_close(fits["vbmm"].alpha, fits["newton"].alpha, rtol=1e-6, atol=0)


def test_lambertw_matches_scipy():
    z = torch.tensor([-700.0, -30.0, -1.0, 0.0, 0.5, 1.0, 3.0, 50.0, 800.0], dtype=F64)
    w = lambertw_exp(z)
    # W(e^z) via scipy where e^z is representable; the defining identity elsewhere
    finite = z.abs() < 700
    ref = scipy.special.lambertw(np.exp(z[finite].numpy())).real
    np.testing.assert_allclose(w[finite].numpy(), ref, rtol=1e-13)
    torch.testing.assert_close(w + w.log(), z, rtol=1e-14, atol=1e-12)


def test_box_constraint_matches_scipy_bounds():
    p = _data([0.2, 0.5, 3.0], 400, seed=10)
    s = DirichletStats.from_observations(p).log_mean
    lower = 0.4  # active for the first coordinate (its MLE is ~0.2)
    f = lambda a: dirichlet_nll(a, s)  # noqa: E731
    g = lambda a: dirichlet_grad(a, s)  # noqa: E731
    for family in (VariableSplitFamily(), FixedFamily(LogGammaBregman())):
        out = vbmm(f, g, family, torch.ones_like(s), lower=lower, max_iter=5000)
        ref, _ = _scipy_optimum(s[0].numpy(), lower=lower)
        assert bool(out.converged.all())
        np.testing.assert_allclose(out.x[0].numpy(), ref, rtol=1e-5)
        assert float(out.x[0, 0]) == pytest.approx(lower)


def test_moments_init_is_consistent():
    alpha = np.array([3.0, 6.0, 1.0])
    stats = DirichletStats.from_observations(_data(alpha, 50_000, seed=11))
    # moment matching is consistent: relative error O(1/sqrt(N)) ~ 1e-2 here
    np.testing.assert_allclose(moments_init(stats)[0].numpy(), alpha, rtol=0.05)


def test_bad_data_errors():
    p = _data([1.0, 2.0, 3.0], 20, seed=12)
    p0 = p.copy()
    p0[0] = [0.0, 0.5, 0.5]
    with pytest.raises(ConfigurationError, match="clip"):
        fit_dirichlet(p0)
    fit = fit_dirichlet(p0, clip=1e-8)
    assert bool(torch.isfinite(fit.alpha).all())
    with pytest.raises(ConfigurationError, match="sum to 1"):
        fit_dirichlet(p * 2)
    with pytest.raises(ConfigurationError, match="shape"):
        fit_dirichlet(p[:, :1])
    bad = p.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ConfigurationError, match="NaN"):
        fit_dirichlet(bad)
    with pytest.raises(ConfigurationError, match="solver"):
        fit_dirichlet(p, "lbfgs")
    with pytest.raises(ConfigurationError, match="init"):
        fit_dirichlet(p, init="random")


def test_registered_estimator():
    assert "dirichlet-vbmm" in sampler.list_estimators()
    p = _data([1.0, 2.0, 3.0], 200, seed=13)
    fit = sampler.estimate("dirichlet-vbmm", p)
    torch.testing.assert_close(fit.alpha, fit_dirichlet(p).alpha)
    assert sampler.estimate("dirichlet-vbmm", p, solver="newton").solver == "newton"
    assert isinstance(sampler.estimator("dirichlet-vbmm"), sampler.Estimator)
    with pytest.raises(UnknownNameError, match="dirichlet-vbmm"):
        sampler.estimate("dirichlet-vbm", p)
    with pytest.raises(ConfigurationError, match="solver"):
        sampler.estimate("dirichlet-vbmm", p, solver="nope")
    with pytest.raises(ConfigurationError, match="options are"):
        sampler.estimate("dirichlet-vbmm", p, tolerance=1e-3)


def test_mode_weight_dirichlet_of_independent_draws():
    """Replicas of N independent draws with weights w: Dirichlet moments give alpha_0 + 1 = N.

    Fractions of N iid draws have ``var = w (1 - w) / N``, the Dirichlet variance with
    ``alpha_0 = N - 1``. The Dirichlet is only a moment match of the multinomial, so the check
    allows the fit's own 4-sigma standard error plus 5% for the model mismatch and the
    Jeffreys pseudocount.
    """
    rng = np.random.default_rng(14)
    modes = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    w = np.array([0.1, 0.2, 0.3, 0.4])
    r, n = 200, 1000
    comp = np.stack([rng.choice(4, size=n, p=w) for _ in range(r)])
    samples = torch.as_tensor(modes[comp] + rng.normal(scale=0.5, size=(r, n, 2)))
    fit = mode_weight_dirichlet(samples, modes)
    # 4 sigma of the pooled fraction, plus the pseudocount's shift |0.5 - 2 w| / (n + 2)
    tol = 4 * np.sqrt(w * (1 - w) / (n * r)) + np.abs(0.5 - 4 * 0.5 * w) / (n + 2)
    assert np.all(np.abs(fit.mean.numpy() - w) <= tol)
    a0, se = float(fit.concentration), float(fit.concentration_stderr)
    assert abs(a0 - (n - 1)) <= 4 * se + 0.05 * n
    with pytest.raises(ConfigurationError, match="2 replicas"):
        mode_weight_dirichlet(samples[:1], modes)


def test_summary_shows_mode_weight_row():
    target = sampler.get_target("8modes")
    res = sampler.sample(target, n_particles=200, n_replicas=3, seed=0, progress=False)
    table = sampler.summary(res, target=target)
    assert "mode weights" in str(table)
    assert table.as_dict()["mode_weight_concentration"] > 0
    assert "mode weights" not in str(sampler.summary(res))  # no target given: no row
