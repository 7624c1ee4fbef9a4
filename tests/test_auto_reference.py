"""``reference="auto"`` (smc's default): the Laplace fit where it describes an ill-scaled unimodal
target, the prior elsewhere; each decision, its recorded reason and its cost."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sampler
from sampler.core.laplace import fit_laplace
from sampler.core.paths import EvaluationCounter
from sampler.engine.auto_reference import AUTO_CHECK_DRAWS, AUTO_WIDEN, _mismatch, auto_reference
from sampler.engine.pipeline import make_reference

DTYPE = torch.float64
S = 1e-3  # the tight target's scale, a thousandth of the N(0, I) prior's
CENTRE = np.array([2.0, -1.0, 0.5])
SHIFT = 0.6  # half the separation of the two components, in units of S: one mode (< 1)


def tight_mixture() -> sampler.targets.GaussianMixture:
    """Two equal N(CENTRE +- SHIFT S e_0, S^2 I): unimodal, not Gaussian, normalized (log Z = 0).

    Mean CENTRE; variance S^2 (1 + SHIFT^2) along e_0, S^2 along the others.
    """
    offset = np.zeros(3)
    offset[0] = SHIFT * S
    return sampler.targets.GaussianMixture(np.stack([CENTRE - offset, CENTRE + offset]), std=S, name="tight")


def informative_mixture() -> sampler.targets.GaussianMixture:
    """Like :func:`tight_mixture` at sd 0.1 in d = 10, centred: within 100x of the N(0, I) prior's
    scale in every direction, yet KL(Laplace, prior) = 10 ln 10 - 4.95 = 18 nats > 10."""
    offset = np.zeros(10)
    offset[0] = SHIFT * 0.1
    return sampler.targets.GaussianMixture(np.stack([-offset, offset]), std=0.1, name="informative")


LG_SHAPE, LG_SCALE, LG_CENTRE = 0.5, 1e-2, 2.0  # the log-gamma target's shape, scale and centre


def log_gamma() -> sampler.Target:
    """``x_j = 2 + 0.01 log g_j``, ``g_j ~ Gamma(1/2, 1)`` iid, d = 3: unimodal, skewed (a long left
    tail), normalized (log Z = 0), a hundred times tighter than the N(0, I) prior."""

    def log_prob(x):
        u = (x - LG_CENTRE) / LG_SCALE
        return (LG_SHAPE * u - torch.exp(u) - math.lgamma(LG_SHAPE) - math.log(LG_SCALE)).sum(-1)

    return sampler.target(log_prob=log_prob, dim=3, name="log-gamma", log_Z=0.0)


def decide(target, **prior) -> str:
    counter = EvaluationCounter()
    _, used = auto_reference(
        target, make_reference(target, prior.get("loc"), prior.get("scale")), counter, torch.Generator().manual_seed(0)
    )
    return used


def test_laplace_fit_counts_other_maxima():
    """Starts that end at other modes are counted; on a Gaussian there are none."""
    bimodal = sampler.targets.GaussianMixture([[-4.0, 0.0], [4.0, 0.0]], std=1.0)
    start = sampler.GaussianReference(2, scale=4.0)
    fit = fit_laplace(bimodal, start, EvaluationCounter(), torch.Generator().manual_seed(0))
    assert fit.kind == "dense" and fit.other_maxima >= 1
    gauss = sampler.targets.Gaussian(mean=[1.0, 2.0], cov=[[1.0, 0.3], [0.3, 0.5]])
    fit = fit_laplace(gauss, sampler.GaussianReference(2, scale=3.0), EvaluationCounter(), torch.Generator())
    assert fit.kind == "dense" and fit.other_maxima == 0


@pytest.mark.parametrize(
    "target, prior, reason",
    [
        (lambda: sampler.get_target("gmm40"), {}, "multimodal"),
        (lambda: sampler.get_target("double-well"), {}, "multimodal"),
        (lambda: sampler.get_target("funnel"), {}, "misses target mass"),
        (lambda: sampler.get_target("gaussian", dim=3), {}, "on the target's scale"),
        (lambda: sampler.get_target("gaussian", dim=101), {}, "d = 101 > 100"),
        (tight_mixture, {}, "on the target's scale"),  # its own reference hints are on its scale
        (tight_mixture, {"loc": 0.0, "scale": 1.0}, "laplace (auto: one maximum"),
        (informative_mixture, {"loc": 0.0, "scale": 1.0}, "laplace (auto: one maximum"),
        (lambda: sampler.get_target("mustache"), {}, "on the target's scale"),  # KL 2.4 nats
    ],
    ids=[
        "gmm40",
        "double-well",
        "funnel",
        "gaussian",
        "high-dim",
        "tight-own-hints",
        "tight-vs-N(0,I)",
        "informative-vs-N(0,I)",
        "mustache",
    ],
)
def test_auto_decides_and_says_why(target, prior, reason):
    used = decide(target(), **prior)
    assert reason in used
    assert used.startswith("laplace") == reason.startswith("laplace")


def test_where_the_fit_misses_mass_its_widened_gaussian_is_checked_and_taken():
    """On the skewed log-gamma target the fit's Pareto k exceeds 0.7 for this seed's check draws,
    and the fit widened 2x passes: the path starts at ``N(MAP, 4 H^{-1})``, and the reason says so."""
    target = log_gamma()
    prior = make_reference(target, 0.0, 1.0)
    counter = EvaluationCounter()
    ref, used = auto_reference(target, prior, counter, torch.Generator().manual_seed(2))
    fit = fit_laplace(target, prior, EvaluationCounter(), torch.Generator().manual_seed(2))
    assert used.startswith("laplace (auto: one maximum") and f"widened {AUTO_WIDEN:g}x: k" in used, used
    np.testing.assert_array_equal(ref.loc, fit.reference.loc)
    np.testing.assert_allclose(ref.scale_tril, AUTO_WIDEN * fit.reference.scale_tril, rtol=1e-15)
    assert counter.target_evals >= 2 * AUTO_CHECK_DRAWS  # both checks' draws are counted


def test_the_mismatch_measures_are_exact():
    """The sd ratios are the whitened fit's singular values; the KL is torch.distributions'."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(4, 4, generator=gen, dtype=DTYPE)
    tril = torch.linalg.cholesky(a @ a.T + 0.1 * torch.eye(4, dtype=DTYPE))
    loc, prior_loc, prior_scale = torch.randn(4, generator=gen, dtype=DTYPE), 0.5, torch.tensor([1.0, 2.0, 0.5, 3.0])
    fit = sampler.GaussianReference(4, loc=loc, scale_tril=tril)
    prior = sampler.GaussianReference(4, loc=prior_loc, scale=prior_scale)
    (low, high), distance, kl = _mismatch(prior, fit, torch.device("cpu"))
    mvn = torch.distributions.MultivariateNormal
    prior_mvn = mvn(torch.full((4,), prior_loc, dtype=DTYPE), scale_tril=torch.diag(prior_scale).to(DTYPE))
    exact = torch.distributions.kl_divergence(mvn(loc, scale_tril=tril), prior_mvn)
    assert kl == pytest.approx(float(exact), rel=1e-10)
    sv = torch.linalg.svdvals(tril / prior_scale.to(DTYPE)[:, None])
    assert (low, high) == pytest.approx((float(sv.min()), float(sv.max())), rel=1e-12)
    assert distance == pytest.approx(float(((loc - prior_loc) / prior_scale).norm()), rel=1e-12)


def test_prior_fallback_leaves_the_run_unchanged_but_counts_the_fit():
    """Where "auto" keeps the prior, the run is bit for bit the prior's; the totals add the fit's cost."""
    common = dict(method="smc", n_particles=300, n_replicas=2, seed=7, n_steps=3, progress=False)
    auto = sampler.sample("double-well", **common)
    prior = sampler.sample("double-well", reference="prior", **common)
    assert "multimodal" in auto.options["reference"] and prior.options["reference"] == "prior"
    assert torch.equal(auto.samples, prior.samples) and auto.log_Z == prior.log_Z
    fit_target, fit_grad = auto.options["reference_evals"]
    assert fit_grad > 0 and prior.options["reference_evals"] == [0, 0]
    assert auto.n_target_evals == prior.n_target_evals + fit_target
    assert auto.n_grad_evals == prior.n_grad_evals + fit_grad
    assert "multimodal" in str(sampler.summary(auto))  # the summary says which reference, and why


def test_gradient_free_pipelines_keep_the_prior_without_a_fit():
    res = sampler.sample("double-well", method="smc", kernel="rwmh", n_particles=100, n_replicas=2, seed=0)
    assert "no gradients" in res.options["reference"]
    assert res.options["reference_evals"] == [0, 0] and res.n_grad_evals == 0


@pytest.mark.slow
def test_default_smc_is_right_on_a_tight_non_gaussian_target():
    """The target sits a thousand times tighter than the N(0, I) prior, 2 sds off centre: default
    smc fits the Laplace reference and gets the exact mean, variances and log Z within their
    Monte Carlo errors (4.5 sigma over 3 means, 3 variances and log Z, seeded). 16 replicas, so
    that the log Z standard error, estimated from the replicas' spread, is itself reliable (a
    Student t with 15 degrees of freedom exceeds 4.5 in 4e-4 of draws)."""
    target = tight_mixture()
    r, n = 16, 500
    res = sampler.sample(
        target, method="smc", n_particles=n, n_replicas=r, seed=11, dtype=DTYPE, reference_loc=0.0, reference_scale=1.0
    )
    assert res.options["reference"].startswith("laplace (auto")
    x = res.samples.reshape(-1, 3).numpy()
    var = np.array([S**2 * (1 + SHIFT**2), S**2, S**2])
    m = r * n  # treated as independent draws; the replicas' spread bounds it from below
    z_mean = np.abs(x.mean(0) - CENTRE) / np.sqrt(var / m)
    # var of the sample variance: (mu_4 - sigma^4) / m; mu_4 of the mixture along e_0, 3 sigma^4 elsewhere
    mu4 = np.array([S**4 * (3 + 6 * SHIFT**2 + SHIFT**4), 3 * S**4, 3 * S**4])
    z_var = np.abs(x.var(0) - var) / np.sqrt((mu4 - var**2) / m)
    assert z_mean.max() < 4.5 and z_var.max() < 4.5, (z_mean, z_var)
    assert abs(res.log_Z - target.log_Z) < 4.5 * res.log_Z_stderr + 1e-12
    assert math.isfinite(res.log_Z_stderr) and res.log_Z_stderr < 0.05


@pytest.mark.slow
def test_default_smc_from_the_widened_fit_is_right_on_a_skewed_target():
    """Default smc on the log-gamma target, with a seed whose check takes the widened fit: the exact
    means, variances and log Z within 4.5 Monte Carlo sigma (as the test above; 16 replicas)."""
    target = log_gamma()
    r, n = 16, 500
    res = sampler.sample(
        target, method="smc", n_particles=n, n_replicas=r, seed=2, dtype=DTYPE, reference_loc=0.0, reference_scale=1.0
    )
    assert "widened" in res.options["reference"] and res.options["reference"].startswith("laplace")
    x = res.samples.reshape(-1, 3).numpy()
    # log g, g ~ Gamma(a): mean digamma(a), variance trigamma(a), 4th central moment psi_3(a) + 3 psi_1(a)^2
    mean = LG_CENTRE + LG_SCALE * float(torch.special.digamma(torch.tensor(LG_SHAPE, dtype=DTYPE)))
    psi1 = float(torch.special.polygamma(1, torch.tensor(LG_SHAPE, dtype=DTYPE)))
    psi3 = float(torch.special.polygamma(3, torch.tensor(LG_SHAPE, dtype=DTYPE)))
    var, mu4 = LG_SCALE**2 * psi1, LG_SCALE**4 * (psi3 + 3 * psi1**2)
    m = r * n
    z_mean = np.abs(x.mean(0) - mean) / math.sqrt(var / m)
    z_var = np.abs(x.var(0) - var) / math.sqrt((mu4 - var**2) / m)
    assert z_mean.max() < 4.5 and z_var.max() < 4.5, (z_mean, z_var)
    assert abs(res.log_Z - 0.0) < 4.5 * res.log_Z_stderr, (res.log_Z, res.log_Z_stderr)
