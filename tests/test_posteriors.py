"""The posteriordb suite (benchmarks/posteriors): each transcription verified, and the suite and its CLI run.

How each posterior's ``log_prob`` is checked:

- **Stein identities on the reference draws.** For a smooth density p on R^d with light enough
  tails, E_p[∂_i log p] = 0 and E_p[(x_i - c) ∂_i log p] = -1 for every coordinate i and constant
  c. The shipped reference draws (mapped to the unconstrained space) are treated as independent
  draws from p: posteriordb's draws are already thinned by 10 from NUTS (lag-1 autocorrelation
  below 0.05 by its checks) and we keep every 10th, so the standard error of a mean over the n
  draws is sd / √n. Each identity must hold within q · sd / √n, q the normal quantile Bonferroni-
  corrected over every check in this file (family-wise false-alarm rate 1%). With n = 1000 this
  catches a transcription error that moves the posterior by about 0.13 sd or more (Gaussian
  approximation) — the resolution of the suite's own z <= 0.1 figure.
- **An independent transcription**: ``log_prob(x) = log q(constrain(x)) + log |det ∂constrain/∂x|``
  where q is the Stan model's density over the reported parameters written here with
  ``scipy.stats`` (loops where Stan loops), and the Jacobian comes from autograd.
- **Exact log Z** (regressions, eight schools) against importance sampling with 200,000 draws
  from a multivariate t fitted to the reference draws, and, for the flat-prior regressions,
  against the closed form.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, linalg, special, stats

import sampler
from sampler.cli import main
from sampler.errors import ConfigurationError
from sampler_benchmarks.posteriors import get_posterior, list_posteriors, run_posterior_suite
from sampler_benchmarks.posteriors.base import DATA_DIR
from sampler_benchmarks.posteriors.garch import linear_scan
from sampler_benchmarks.posteriors.suite import score

NAMES = list_posteriors()
EXACT = [n for n in NAMES if get_posterior(n).log_Z is not None]
REGRESSIONS = [
    "sblrc-blr",
    "sblri-blr",
    "kidiq-kidscore_momiq",
    "earnings-earn_height",
    "mesquite-logmesquite",
    "arK-arK",
]

# Bonferroni: two identities per coordinate of every posterior, 1% family-wise.
N_STEIN_CHECKS = 2 * sum(get_posterior(n).dim for n in NAMES)
Q_STEIN = float(stats.norm.ppf(1 - 0.01 / (2 * N_STEIN_CHECKS)))


def test_catalog():
    assert len(NAMES) >= 8
    assert {"sblrc-blr", "eight_schools-eight_schools_centered", "gp_pois_regr-gp_pois_regr", "garch-garch11"} <= set(
        NAMES
    )
    assert set(EXACT) == {
        *REGRESSIONS,
        "eight_schools-eight_schools_centered",
        "eight_schools-eight_schools_noncentered",
    }
    size = sum(f.stat().st_size for f in DATA_DIR.iterdir())
    assert size < 2 * 2**20
    for name in NAMES:
        p = get_posterior(name)
        assert isinstance(p, sampler.Target) and p.name == name
        assert len(p.dim_names) == p.dim
        assert p.reference_draws.shape == (1000, len(p.param_names))
        assert set(p.reference_mean) == set(p.reference_sd) == set(p.param_names)
        assert p.n_reference_draws == 10_000
        # the thinned draws are a subset of the draws the summaries are from: close, not equal
        z = np.abs(p.reference_draws.mean(0) - [p.reference_mean[n] for n in p.param_names])
        assert np.all(z <= 5 * np.array([p.reference_sd[n] for n in p.param_names]) / math.sqrt(1000))


def test_unknown_posterior():
    with pytest.raises(ConfigurationError, match="unknown posterior"):
        get_posterior("eight_schools")


@pytest.mark.parametrize("name", NAMES)
def test_stein_identities(name):
    p = get_posterior(name)
    x = p.reference_unconstrained()
    lp, grad = p.log_prob_and_grad(x)
    assert torch.isfinite(lp).all() and torch.isfinite(grad).all()
    n = x.shape[0]
    first = grad
    second = (x - x.mean(0)) * grad + 1.0  # mean 0 when E[(x - c) d log p] = -1
    for stat in (first, second):
        t = stat.mean(0) / (stat.std(0) / math.sqrt(n))
        assert (t.abs() <= Q_STEIN).all(), f"{name}: t = {t.tolist()} (bound {Q_STEIN:.2f})"


@pytest.mark.parametrize("name", NAMES)
def test_constrain_unconstrain_round_trip(name):
    p = get_posterior(name)
    y = torch.as_tensor(p.reference_draws)
    x = p.reference_unconstrained()
    assert x.shape == (1000, p.dim)
    torch.testing.assert_close(p.constrained(x), y, rtol=1e-10, atol=1e-10)
    params = p.constrain(x)
    assert list(params) == list(p.param_names)
    # the GP's f~ = L^-1 f goes through the Cholesky factor of a covariance of condition number up
    # to ~1e12 (jitter 1e-10), rebuilt from rho and alpha after their exp/log round trip: an ulp
    # in rho moves L by up to ~1e-4 relative (6e-8 absolute seen on one machine's LAPACK)
    tol = 1e-5 if name.startswith("gp_pois_regr") else 1e-9
    torch.testing.assert_close(p.unconstrain(params), x, rtol=tol, atol=tol)


# --- an independent transcription of each Stan model, with scipy, on the reported parameters -------


def _regression_density(p, v):
    d = {k: np.asarray(a, dtype=np.float64) for k, a in p.data.items() if k != "source"}
    name = p.name
    if name in ("sblrc-blr", "sblri-blr"):
        beta = np.array([v[f"beta[{j}]"] for j in range(1, 6)])
        lp = stats.norm.logpdf(beta, 0, 10).sum() + stats.norm.logpdf(v["sigma"], 0, 10)
        return lp + stats.norm.logpdf(d["y"], d["X"] @ beta, v["sigma"]).sum()
    if name == "kidiq-kidscore_momiq":
        lp = stats.cauchy.logpdf(v["sigma"], 0, 2.5)
        return lp + stats.norm.logpdf(d["kid_score"], v["beta[1]"] + v["beta[2]"] * d["mom_iq"], v["sigma"]).sum()
    if name == "earnings-earn_height":
        return stats.norm.logpdf(d["earn"], v["beta[1]"] + v["beta[2]"] * d["height"], v["sigma"]).sum()
    if name == "mesquite-logmesquite":
        b = [v[f"beta[{j}]"] for j in range(1, 8)]
        mean = (
            b[0]
            + b[1] * np.log(d["diam1"])
            + b[2] * np.log(d["diam2"])
            + b[3] * np.log(d["canopy_height"])
            + b[4] * np.log(d["total_height"])
            + b[5] * np.log(d["density"])
            + b[6] * d["group"]
        )
        return stats.norm.logpdf(np.log(d["weight"]), mean, v["sigma"]).sum()
    if name == "arK-arK":
        K, T, y = int(d["K"]), int(d["T"]), d["y"]
        beta = [v[f"beta[{k}]"] for k in range(1, K + 1)]
        lp = stats.norm.logpdf(v["alpha"], 0, 10) + stats.norm.logpdf(beta, 0, 10).sum()
        lp += stats.cauchy.logpdf(v["sigma"], 0, 2.5)
        for t in range(K, T):  # 0-based t: Stan's t + 1
            mu = v["alpha"] + sum(beta[k - 1] * y[t - k] for k in range(1, K + 1))
            lp += stats.norm.logpdf(y[t], mu, v["sigma"])
        return lp
    raise KeyError(name)


def _eight_schools_density(p, v):
    theta = np.array([v[f"theta[{j}]"] for j in range(1, 9)])
    lp = stats.cauchy.logpdf(v["tau"], 0, 5) + stats.norm.logpdf(v["mu"], 0, 5)
    lp += stats.norm.logpdf(theta, v["mu"], v["tau"]).sum()
    return lp + stats.norm.logpdf(p.data["y"], theta, p.data["sigma"]).sum()


def _gp_density(p, v):
    x, k = p.data["x"].astype(float), p.data["k"]
    f = np.array([v[f"f[{i}]"] for i in range(1, len(x) + 1)])
    cov = v["alpha"] ** 2 * np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * v["rho"] ** 2)) + 1e-10 * np.eye(len(x))
    # f = L f_tilde, f_tilde ~ N(0, I): the density of f is N(0, L L^T) = N(0, cov)
    lp = stats.gamma.logpdf(v["rho"], 25, scale=1 / 4) + stats.norm.logpdf(v["alpha"], 0, 2)
    chol = linalg.cholesky(cov, lower=True)  # scipy's multivariate_normal calls this cov singular
    lp += -0.5 * np.sum(linalg.solve_triangular(chol, f, lower=True) ** 2) - np.log(np.diag(chol)).sum()
    lp -= 0.5 * len(x) * math.log(2 * math.pi)
    return lp + stats.poisson.logpmf(k, np.exp(f)).sum()


def _garch_density(p, v):
    y, sigma = p.data["y"], [float(p.data["sigma1"])]
    for t in range(1, len(y)):
        sigma.append(math.sqrt(v["alpha0"] + v["alpha1"] * (y[t - 1] - v["mu"]) ** 2 + v["beta1"] * sigma[-1] ** 2))
    return stats.norm.logpdf(y, v["mu"], sigma).sum()


def _scipy_density(p, v):
    if p.name.startswith("eight_schools"):
        # the noncentered model's density over (theta, mu, tau) is the centered one (tau^8 cancels)
        return _eight_schools_density(p, v)
    if p.name.startswith("gp_pois_regr"):
        return _gp_density(p, v)
    if p.name.startswith("garch"):
        return _garch_density(p, v)
    return _regression_density(p, v)


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_is_the_stan_model_plus_jacobian(name):
    p = get_posterior(name)
    x = p.reference_unconstrained()[::100]  # 10 draws
    lp = p.log_prob(x)
    # the GP's covariance (jitter 1e-10) has condition number ~1e9: its log density keeps ~7 digits
    tol = 1e-5 if name.startswith("gp_pois_regr") else 1e-7
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(p.constrained, x[i])
        log_det = float(torch.linalg.slogdet(jac)[1])
        v = {n: float(t) for n, t in p.constrain(x[i]).items()}
        expected = _scipy_density(p, v) + log_det
        assert float(lp[i]) == pytest.approx(expected, rel=1e-9, abs=tol), (name, i)


# --- exact log Z -----------------------------------------------------------------------------------


def _importance_log_Z(p, n_draws=200_000, df=5.0, seed=0):
    """log Z by importance sampling from a multivariate t fitted to the reference draws: (estimate, stderr)."""
    x = p.reference_unconstrained()
    d = p.dim
    L = torch.linalg.cholesky(1.5 * torch.cov(x.T))
    rng = np.random.default_rng(seed)
    z = torch.as_tensor(rng.standard_normal((n_draws, d)))
    w = torch.as_tensor(np.sqrt(df / rng.chisquare(df, n_draws)))
    y = x.mean(0) + (z * w[:, None]) @ L.T
    u = torch.linalg.solve_triangular(L, (y - x.mean(0)).T, upper=False).T
    log_q = (
        math.lgamma((df + d) / 2)
        - math.lgamma(df / 2)
        - d / 2 * math.log(df * math.pi)
        - torch.log(torch.diagonal(L)).sum()
        - (df + d) / 2 * torch.log1p((u**2).sum(-1) / df)
    )
    with torch.no_grad():
        lw = p.log_prob(y) - log_q
    wts = torch.exp(lw - lw.max())
    return float(lw.max() + torch.log(wts.mean())), float(wts.std() / wts.mean() / math.sqrt(n_draws))


@pytest.mark.parametrize("name", [n for n in EXACT if n != "eight_schools-eight_schools_centered"])
def test_exact_log_Z_against_importance_sampling(name):
    p = get_posterior(name)
    est, se = _importance_log_Z(p)
    assert se < 0.01
    assert abs(est - p.log_Z) <= 5 * se, (est, se, p.log_Z)


def test_eight_schools_centered_and_noncentered_are_one_density():
    """log p_c(theta, mu, log tau) + 8 log tau = log p_nc(theta_trans, mu, log tau): the same Z."""
    c, nc = (
        get_posterior("eight_schools-eight_schools_centered"),
        get_posterior("eight_schools-eight_schools_noncentered"),
    )
    x_nc = nc.reference_unconstrained()
    x_c = c.unconstrain(nc.constrain(x_nc))
    torch.testing.assert_close(c.log_prob(x_c) + 8 * x_c[:, 9], nc.log_prob(x_nc), rtol=1e-12, atol=1e-9)
    assert c.log_Z == pytest.approx(nc.log_Z, abs=1e-12)


@pytest.mark.parametrize("name", ["earnings-earn_height", "mesquite-logmesquite"])
def test_flat_prior_log_Z_closed_form(name):
    """Flat priors on β and σ: Z = (2π)^(-(n-p)/2) |X'X|^(-1/2) · ½ (RSS/2)^(-(n-p-1)/2) Γ((n-p-1)/2)."""
    p = get_posterior(name)
    n, k = p.n_obs, p.n_coef
    closed = (
        -0.5 * (n - k) * math.log(2 * math.pi)
        - 0.5 * np.linalg.slogdet(p.X.T @ p.X)[1]
        + math.log(0.5)
        - 0.5 * (n - k - 1) * math.log(p.rss_hat / 2)
        + special.gammaln(0.5 * (n - k - 1))
    )
    assert p.log_Z == pytest.approx(closed, abs=1e-8)


@pytest.mark.parametrize("name", REGRESSIONS)
def test_regression_sufficient_statistics_equal_residual_sum(name):
    p = get_posterior(name)
    x = p.reference_unconstrained()
    torch.testing.assert_close(p.log_prob(x), p.log_prob_direct(x), rtol=1e-10, atol=1e-8)


def test_garch_scan_matches_the_recursion():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 4, 199, generator=gen, dtype=torch.float64)
    b = torch.rand(3, 4, generator=gen, dtype=torch.float64)
    s, prev = [], torch.zeros(3, 4, dtype=torch.float64)
    for t in range(199):
        prev = a[..., t] + b * prev
        s.append(prev)
    torch.testing.assert_close(linear_scan(a, b), torch.stack(s, -1))


# --- batching, dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_batched_shapes_and_dtypes(name, dtype):
    p = get_posterior(name)
    x64 = p.reference_unconstrained()[:12].reshape(3, 4, p.dim)
    x = x64.to(dtype)
    lp, grad = p.log_prob_and_grad(x)
    assert lp.shape == (3, 4) and lp.dtype == dtype
    assert grad.shape == (3, 4, p.dim) and grad.dtype == dtype
    assert torch.isfinite(lp).all() and torch.isfinite(grad).all()
    flat = p.log_prob(x64.reshape(12, p.dim)).reshape(3, 4)
    # float32: the log density is accurate to ~1e-6 of its terms' size
    tol = 1e-10 if dtype == torch.float64 else 1e-5 * (1 + flat.abs().max())
    assert (lp.double() - flat).abs().max() <= tol
    params = p.constrain(x)
    assert all(v.shape == (3, 4) and v.dtype == dtype for v in params.values())
    assert p.constrained(x).shape == (3, 4, len(p.param_names))


def test_gp_failed_cholesky_is_zero_density():
    p = get_posterior("gp_pois_regr-gp_pois_regr")
    x = p.reference_unconstrained()[:2].clone()
    x[1, 0], x[1, 1] = 12.0, 12.0  # rho = e^12, alpha = e^12: K is rank one at float64 precision
    lp, grad = p.log_prob_and_grad(x)
    assert torch.isfinite(lp[0]) and lp[1] == -torch.inf
    assert torch.isfinite(grad[0]).all()


EIGHT_SCHOOLS = ["eight_schools-eight_schools_centered", "eight_schools-eight_schools_noncentered"]


@pytest.mark.parametrize("name", EIGHT_SCHOOLS)
def test_eight_schools_prior(name):
    """The declared prior is ``log_prob`` without the likelihood, normalized, and its draws follow it.

    - ``log_prob - prior_log_prob`` is the likelihood ``sum_j normal_lpdf(y_j | theta_j, sigma_j)``
      (scipy) less ``log 2`` (the prior adds the half-Cauchy's normalizer, Stan's target does not);
    - the log-tau term integrates to one over log tau (quadrature; the other terms are normal densities);
    - 20,000 draws: ``mu / 5`` and the standardized group coordinates (``(theta - mu) / tau`` or
      ``theta_trans``) have mean 0 and variance 1, and ``tau`` falls below 5 tan(pi/8) and 5 (its
      quartile and median) a quarter and half of the time, each within 4.5 standard errors.
    """
    target = get_posterior(name)
    assert target.has_prior
    n = 20_000
    x = target.prior_sample(n, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert x.shape == (n, 10) and torch.isfinite(x).all()
    p = target.constrain(x)
    theta = torch.stack([p[f"theta[{j}]"] for j in range(1, 9)], -1).numpy()
    lik = stats.norm.logpdf(target.y, theta, target.sigma).sum(-1)
    diff = (target.log_prob(x) - target.prior_log_prob(x)).numpy()
    np.testing.assert_allclose(diff, lik - math.log(2.0), rtol=1e-9, atol=1e-8)

    def log_tau_density(s: float) -> float:
        """``prior_log_prob`` at ``theta = mu = 0``, ``log tau = s``, less its normal terms (scipy)."""
        point = torch.zeros(10, dtype=torch.float64)
        point[9] = s
        group = stats.norm.logpdf(0.0, 0.0, math.exp(s) if "_centered" in name else 1.0) * 8
        return math.exp(float(target.prior_log_prob(point)) - group - stats.norm.logpdf(0.0, 0.0, 5.0))

    total = integrate.quad(log_tau_density, -50.0, 50.0, points=[math.log(5.0)], epsabs=0, epsrel=1e-11, limit=200)
    assert total[0] == pytest.approx(1.0, abs=1e-8)
    mu, tau = p["mu"].numpy(), p["tau"].numpy()
    e = (theta - mu[:, None]) / tau[:, None] if "_centered" in name else x[:, :8].numpy()
    for v, m in [(mu / 5.0, n), (e.reshape(-1), 8 * n)]:
        assert abs(v.mean()) < 4.5 / math.sqrt(m)
        assert abs(v.var() - 1.0) < 4.5 * math.sqrt(2.0 / m)
    for q, level in [(0.25, 5.0 * math.tan(math.pi / 8)), (0.5, 5.0)]:
        assert abs((tau < level).mean() - q) < 4.5 * math.sqrt(q * (1 - q) / n)


def test_default_smc_passes_the_centered_eight_schools_from_its_prior():
    """From N(0, I) default ``smc`` failed this funnel: max z 0.94, sd ratios 0.46-0.66
    (docs/posteriors.md). From the model's prior, which ``"auto"`` falls back to (no maximum), the
    draws fill the funnel's neck from the start.

    Tolerances from the run's own Monte Carlo error: with ``ess`` the smallest bulk ESS over the
    coordinates (R-hat's split over the 4 replicas), a parameter's mean is off by ``z <= 4.5 /
    sqrt(ess)`` reference sds and its sd ratio by ``<= 4.5 sqrt((kurtosis - 1) / (4 ess))`` (the
    standard error of a sample sd, with the draws' own kurtosis for tau's heavy tail); log Z within
    4.5 reported standard errors.
    """
    target = get_posterior("eight_schools-eight_schools_centered")
    res = sampler.sample(target, "smc", n_particles=1000, n_replicas=4, seed=0, dtype=torch.float64, progress=False)
    assert res.options["reference"].startswith("target prior (auto:")
    ess = float(sampler.diagnostics.rhat_and_ess(res.samples)[1].min())
    z, ratio = score(target, res.samples)
    params = target.constrain(res.samples.reshape(-1, 10))
    for name in target.param_names:
        kurtosis = float(stats.kurtosis(params[name].numpy(), fisher=False))
        assert z[name] <= 4.5 / math.sqrt(ess), (name, z[name], ess)
        assert abs(ratio[name] - 1.0) <= 4.5 * math.sqrt((kurtosis - 1.0) / (4.0 * ess)), (name, ratio[name])
    assert abs(res.log_Z - target.log_Z) <= 4.5 * res.log_Z_stderr


# --- end to end ------------------------------------------------------------------------------------


def test_smc_runs_on_a_posterior():
    target = get_posterior("eight_schools-eight_schools_noncentered")
    res = sampler.sample(target, method="smc", n_particles=256, n_replicas=2, seed=0, progress=False)
    assert res.samples.shape == (2, 256, 10)
    assert torch.isfinite(res.samples).all() and math.isfinite(res.log_Z)
    z, ratio = score(target, res.samples)
    assert set(z) == set(target.param_names)
    assert all(math.isfinite(v) for v in [*z.values(), *ratio.values()])


def test_posterior_suite_report(tmp_path):
    report = run_posterior_suite(
        ["smc"], ["arK-arK"], seeds=1, n_particles=64, n_replicas=2, options={"n_steps": 2}, command="test"
    )
    (run,) = report.runs
    assert run.error is None and run.grad_evals > 0 and run.target_evals > 0
    assert set(run.z) == set(get_posterior("arK-arK").param_names)
    assert run.log_Z_error is not None and run.log_Z_stderr is not None
    md = report.markdown()
    assert "| arK-arK | 7 | smc |" in md and "arK-arK / smc: alpha" in md
    # the summary's warnings are recorded: two sweeps of 64 particles do not agree across replicas
    assert run.warnings and "disagree" in run.warnings[0] and "; warned 1/1" in md
    out = report.write(tmp_path / "post")
    data = json.loads((out / "results.json").read_text())
    assert data["cells"][0]["posterior"] == "arK-arK" and len(data["runs"]) == 1
    assert (out / "results.md").read_text() == md


def test_posterior_suite_records_failures():
    report = run_posterior_suite(["smc"], ["arK-arK"], seeds=1, n_particles=16, n_replicas=1, options={"n_steps": 0})
    (run,) = report.runs
    assert run.error is not None and not run.passed
    assert "FAIL" in report.markdown()


def test_bench_cli_posteriors(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--suite", "posteriors", "--methods", "smc", "--targets", "garch-garch11", "--seeds", "1"]
    argv += ["--particles", "64", "--replicas", "2", "-o", "n_steps=2", "--out", str(out), "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| garch-garch11 | 4 | smc |" in printed
    assert (out / "results.json").exists() and (out / "results.md").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--suite", "posteriors", "--targets", "garch"], "unknown posterior"),
        (["bench", "--particles", "64"], "apply to --suite posteriors"),
    ],
)
def test_bench_cli_posteriors_bad_input(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
