"""Built-in targets (Gaussian, DoubleWell, GMM40), the Target base classes and target()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

import sampler
from sampler.errors import ConfigurationError, UnknownNameError
from sampler.targets import GMM40, BoltzmannTarget, DoubleWell, Gaussian, GaussianMixture, Target

#: 4.5 standard errors: a two-sided normal level of ~7e-6 per statistic, so a correct
#: implementation fails a test with a few dozen such statistics with probability < 1e-3.
Z = 4.5


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def autograd_grad(fn, x: torch.Tensor) -> torch.Tensor:
    xg = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(xg).sum(), xg)
    return g


# --------------------------------------------------------------------------------------------
# Gaussian
# --------------------------------------------------------------------------------------------


def _spd(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T + 0.5 * np.eye(d)


GAUSSIANS = {
    "1d-scalar": dict(dim=1, mean=2.0, scale=0.3),
    "default-2d": dict(),
    "5d-scalar-scale": dict(dim=5, scale=2.5),
    "3d-vector-mean-scale": dict(mean=[1.0, -2.0, 0.5], scale=[0.5, 1.0, 3.0]),
    "4d-full-cov": dict(mean=[0.0, 1.0, 2.0, 3.0], cov=_spd(4, 0)),
    "3d-torch-cov": dict(mean=torch.tensor([1.0, 1.0, -1.0]), cov=torch.as_tensor(_spd(3, 1))),
}


def gaussian_params(kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance, computed independently of the library from the arguments."""
    if "cov" in kwargs:
        cov = np.asarray(kwargs["cov"], dtype=np.float64)
        d = cov.shape[0]
    else:
        mean = np.asarray(kwargs.get("mean", 0.0), dtype=np.float64)
        d = mean.shape[0] if mean.ndim == 1 else kwargs.get("dim", 2)
        cov = np.diag(np.broadcast_to(np.asarray(kwargs.get("scale", 1.0), dtype=np.float64) ** 2, (d,)))
    mean = np.broadcast_to(np.asarray(kwargs.get("mean", 0.0), dtype=np.float64), (d,))
    return mean.copy(), cov


@pytest.mark.parametrize("kwargs", GAUSSIANS.values(), ids=GAUSSIANS.keys())
def test_gaussian_log_prob_is_scipy_logpdf_plus_log_z(kwargs):
    tgt = Gaussian(**kwargs)
    mean, cov = gaussian_params(kwargs)
    d = len(mean)
    assert tgt.dim == d
    sign, logdet = np.linalg.slogdet(2 * np.pi * cov)
    assert sign > 0
    np.testing.assert_allclose(tgt.log_Z, 0.5 * logdet, rtol=1e-13)
    x = torch.randn(4, 25, d, generator=gen(0), dtype=torch.float64) * 2 + torch.as_tensor(mean)
    lp = tgt.log_prob(x)
    assert lp.shape == (4, 25) and lp.dtype == torch.float64
    want = stats.multivariate_normal(mean, cov).logpdf(x.numpy().reshape(-1, d)).reshape(4, 25) + tgt.log_Z
    np.testing.assert_allclose(lp.numpy(), want, rtol=1e-12, atol=1e-12)
    # float32 input gives float32 output, close to the float64 value
    lp32 = tgt.log_prob(x.float())
    assert lp32.dtype == torch.float32
    np.testing.assert_allclose(lp32.double().numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs", GAUSSIANS.values(), ids=GAUSSIANS.keys())
def test_gaussian_grad_matches_autograd(kwargs):
    tgt = Gaussian(**kwargs)
    x = torch.randn(30, tgt.dim, generator=gen(1), dtype=torch.float64) * 3
    torch.testing.assert_close(tgt.grad_log_prob(x), autograd_grad(tgt.log_prob, x), rtol=1e-12, atol=1e-12)
    lp, g = tgt.log_prob_and_grad(x)
    torch.testing.assert_close(lp, tgt.log_prob(x), rtol=0, atol=0)
    torch.testing.assert_close(g, tgt.grad_log_prob(x), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", GAUSSIANS.values(), ids=GAUSSIANS.keys())
def test_gaussian_exact_sampler_moments(kwargs):
    # n iid draws. Sample mean: standard error sqrt(S_ii / n). Sample covariance entry (i, j):
    # for Gaussian data Var(x_i x_j) - S_ij^2 = S_ii S_jj + S_ij^2, so its standard error is
    # sqrt((S_ii S_jj + S_ij^2) / n). Up to 5 + 15 statistics per case, each within Z = 4.5 se.
    n = 200_000
    tgt = Gaussian(**kwargs)
    mean, cov = gaussian_params(kwargs)
    x = tgt.sample(n, generator=gen(2), dtype=torch.float64)
    assert x.shape == (n, tgt.dim) and x.dtype == torch.float64
    xs = x.numpy()
    z_mean = (xs.mean(0) - mean) / np.sqrt(np.diag(cov) / n)
    assert np.abs(z_mean).max() < Z, z_mean
    s = np.cov(xs.T, ddof=1).reshape(tgt.dim, tgt.dim)
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    z_cov = (s - cov) / se
    assert np.abs(z_cov).max() < Z, z_cov


def test_gaussian_sample_dtype_and_seed():
    tgt = Gaussian(dim=3)
    a = tgt.sample(10, generator=gen(3), dtype=torch.float32)
    b = tgt.sample(10, generator=gen(3), dtype=torch.float32)
    assert a.shape == (10, 3) and a.dtype == torch.float32
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dim=0),
        dict(dim=-2),
        dict(cov=[[1.0, 2.0], [2.0, 1.0]]),  # not positive definite
        dict(cov=[[1.0, 0.5], [0.4, 1.0]]),  # not symmetric
        dict(cov=np.ones((2, 3))),  # not square
        dict(scale=0.0),
    ],
)
def test_gaussian_rejects_bad_parameters(kwargs):
    with pytest.raises(ConfigurationError):
        Gaussian(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mean=[0.0, 0.0], cov=np.eye(3)),  # mean and cov disagree on the dimension
        dict(dim=2, scale=[1.0, 2.0, 3.0]),  # scale of the wrong length
        dict(mean=np.zeros((2, 2))),  # mean of the wrong rank
    ],
)
def test_gaussian_rejects_inconsistent_parameters_with_configuration_error(kwargs):
    # Invalid arguments are ConfigurationErrors (a SamplerError), not stray numpy errors.
    with pytest.raises(ConfigurationError):
        Gaussian(**kwargs)


@pytest.mark.parametrize("scale", [-1.0, [1.0, -2.0]])
def test_gaussian_rejects_negative_scale(scale):
    # ``scale`` is documented as a standard deviation; GaussianReference rejects scale <= 0 and
    # Gaussian rejects scale = 0, so a negative one should not be silently squared away.
    with pytest.raises(ConfigurationError):
        Gaussian(dim=2, scale=scale)


# --------------------------------------------------------------------------------------------
# DoubleWell
# --------------------------------------------------------------------------------------------


def dw_energy(a, b):
    return a**4 - 6 * a**2 - 0.5 * a + 0.5 * b**2


#: The exponent -U has its maximum ~9.3 near x1 = 1.75; subtracting 9 keeps the integrand O(1).
_DW_SHIFT = 9.0
_QUAD = dict(epsabs=0, epsrel=1e-12, limit=200)


def dw_quad2d(a_lo: float, a_hi: float) -> float:
    """int_{a_lo}^{a_hi} int_R exp(-U(a, b) - shift) db da, by 2D adaptive quadrature."""
    points = [p for p in (-1.71, 0.0, 1.75) if a_lo < p < a_hi]
    val, err = integrate.nquad(
        lambda b, a: math.exp(-dw_energy(a, b) - _DW_SHIFT),
        [(-np.inf, np.inf), (a_lo, a_hi)],
        opts=[_QUAD, dict(_QUAD, points=points)],
    )
    assert err < 1e-10 * val
    return val


def test_double_well_log_z_matches_2d_quadrature():
    tgt = sampler.get_target("double-well")
    assert isinstance(tgt, DoubleWell) and tgt.dim == 2 and tgt.name == "double-well"
    # exp(-U) < e^-500 for |x1| > 10: the range (-10, 10) loses nothing at this precision.
    log_z = math.log(dw_quad2d(-10.0, 10.0)) + _DW_SHIFT
    assert abs(tgt.log_Z - log_z) < 1e-6
    assert abs(tgt.log_Z - 10.2935) < 1e-4


def test_double_well_positive_mode_weight_matches_2d_quadrature():
    tgt = sampler.get_target("double-well")
    want = dw_quad2d(0.0, 10.0) / dw_quad2d(-10.0, 10.0)
    assert abs(tgt.positive_mode_weight() - want) < 1e-8
    assert abs(want - 0.844) < 1e-3


def test_double_well_log_prob_and_grad():
    tgt = sampler.get_target("double-well")
    x = torch.randn(7, 11, 2, generator=gen(4), dtype=torch.float64) * 2
    lp = tgt.log_prob(x)
    assert lp.shape == (7, 11)
    torch.testing.assert_close(lp, -dw_energy(x[..., 0], x[..., 1]), rtol=1e-14, atol=1e-12)
    torch.testing.assert_close(tgt.grad_log_prob(x), autograd_grad(tgt.log_prob, x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tgt.energy(x), dw_energy(x[..., 0], x[..., 1]), rtol=1e-14, atol=1e-12)


def merge_small_bins(expected: np.ndarray, observed: np.ndarray, minimum: float):
    """Merge adjacent bins (left to right) until every expected count is >= minimum."""
    e_out, o_out, e_acc, o_acc = [], [], 0.0, 0.0
    for e, o in zip(expected, observed):
        e_acc += e
        o_acc += o
        if e_acc >= minimum:
            e_out.append(e_acc)
            o_out.append(o_acc)
            e_acc = o_acc = 0.0
    e_out[-1] += e_acc
    o_out[-1] += o_acc
    return np.array(e_out), np.array(o_out)


def test_double_well_exact_sampler():
    n = 400_000
    tgt = sampler.get_target("double-well")
    x = tgt.sample(n, generator=gen(5), dtype=torch.float64)
    assert x.shape == (n, 2) and x.dtype == torch.float64
    a, b = x[:, 0].numpy(), x[:, 1].numpy()

    # x1: Pearson chi-square of a histogram against the exact marginal exp(-(a^4 - 6a^2 -
    # 0.5a)) / Z1, bin probabilities by quadrature; bins are merged until every expected count
    # is >= 20, so the statistic has (asymptotically) the chi2(n_bins - 1) law.
    def marginal(s):
        return math.exp(-(s**4 - 6 * s**2 - 0.5 * s) - _DW_SHIFT)

    z1 = integrate.quad(marginal, -10, 10, points=[-1.71, 0.0, 1.75], **_QUAD)[0]
    edges = np.concatenate([[-10.0], np.linspace(-3.0, 3.0, 121), [10.0]])
    probs = np.array([integrate.quad(marginal, lo, hi, **_QUAD)[0] for lo, hi in zip(edges[:-1], edges[1:])]) / z1
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-10)
    observed = np.histogram(a, edges)[0]
    assert observed.sum() == n  # nothing beyond |x1| = 10
    expected, observed = merge_small_bins(n * probs, observed, 20.0)
    assert len(expected) > 50
    chi2, p = stats.chisquare(observed, expected)
    assert p > 1e-3, (chi2, len(expected))

    # the weight of the positive mode: a binomial proportion, standard error sqrt(w (1 - w) / n)
    w = tgt.positive_mode_weight()
    assert abs((a > 0).mean() - w) < Z * math.sqrt(w * (1 - w) / n)

    # x2 ~ N(0, 1), independent of x1
    assert stats.kstest(b, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(a, b)[0, 1]) < Z / math.sqrt(n)


def test_double_well_sample_dtype_and_seed():
    tgt = DoubleWell()
    s = tgt.sample(100, generator=gen(6), dtype=torch.float32)
    assert s.shape == (100, 2) and s.dtype == torch.float32
    assert torch.equal(s, tgt.sample(100, generator=gen(6), dtype=torch.float32))


# --------------------------------------------------------------------------------------------
# GMM40
# --------------------------------------------------------------------------------------------


def fab_means() -> np.ndarray:
    """FAB's convention with the global RNG (state restored afterwards)."""
    state = torch.get_rng_state()
    try:
        torch.manual_seed(0)
        means = (torch.rand(40, 2) - 0.5) * 2 * 40
    finally:
        torch.set_rng_state(state)
    return means.double().numpy()


FAB_STD = float(torch.nn.functional.softplus(torch.tensor(1.0, dtype=torch.float64)))


def test_gmm40_means_and_std_follow_fab():
    before = torch.get_rng_state()
    tgt = sampler.get_target("gmm40")
    assert torch.equal(torch.get_rng_state(), before)  # building it does not touch the global RNG
    assert isinstance(tgt, GMM40) and tgt.dim == 2 and tgt.name == "gmm40"
    means = fab_means()
    assert tgt.means.shape == (40, 2)
    np.testing.assert_array_equal(tgt.means, means)
    np.testing.assert_array_equal(tgt.modes, means)
    assert np.abs(means).max() <= 40
    np.testing.assert_allclose(tgt.std, FAB_STD, rtol=1e-15)
    np.testing.assert_allclose(tgt.std, math.log1p(math.e), rtol=1e-15)
    assert tgt.log_Z == 0.0


def gmm_log_prob_numpy(x: np.ndarray, means: np.ndarray, std: float) -> np.ndarray:
    comp = np.stack([stats.multivariate_normal(m, std**2 * np.eye(2)).logpdf(x) for m in means], -1)
    return special.logsumexp(comp, -1) - math.log(len(means))


def test_gmm40_log_prob_matches_scipy_mixture():
    tgt = sampler.get_target("gmm40")
    x = (torch.rand(500, 2, generator=gen(7), dtype=torch.float64) - 0.5) * 100
    x[:40] = torch.as_tensor(tgt.means) + 0.1
    want = gmm_log_prob_numpy(x.numpy(), fab_means(), FAB_STD)
    np.testing.assert_allclose(tgt.log_prob(x).numpy(), want, rtol=1e-12, atol=1e-12)
    # batched shapes and autograd gradient (no analytic one)
    xb = x[:60].reshape(3, 20, 2)
    assert tgt.log_prob(xb).shape == (3, 20)
    lp, g = tgt.log_prob_and_grad(xb)
    torch.testing.assert_close(g, autograd_grad(tgt.log_prob, xb), rtol=1e-12, atol=1e-12)


def test_gmm40_is_normalized():
    # Riemann sum on a uniform grid of spacing h over [-50, 50]^2. For a Gaussian of std s the
    # uniform-grid sum is exact up to ~exp(-2 pi^2 s^2 / h^2) (Poisson summation; < e^-500 for
    # h = 0.25, s = 1.31); the box leaves out mass < 40 * exp(-(10 / s)^2 / 2) / 40 ~ e^-29
    # (every mean is >= 10 from the boundary). What remains is float64 round-off, << 1e-10.
    tgt = sampler.get_target("gmm40")
    h = 0.25
    g = torch.arange(-50.0, 50.0 + h / 2, h, dtype=torch.float64)
    total = 0.0
    for chunk in torch.split(g, 100):
        pts = torch.stack(torch.meshgrid(chunk, g, indexing="ij"), -1)
        total += float(torch.exp(tgt.log_prob(pts)).sum()) * h * h
    assert abs(total - 1.0) < 1e-10


def _disk_probability(means: np.ndarray, std: float, centre: np.ndarray, radius: float) -> float:
    """P(|X - centre| < radius) for X ~ the equal-weight mixture (exact: noncentral chi2(2))."""
    nc = ((means - centre) ** 2).sum(-1) / std**2
    c = (radius / std) ** 2
    return float(np.mean([stats.chi2.cdf(c, 2) if l == 0 else stats.ncx2.cdf(c, 2, l) for l in nc]))


def test_gmm40_exact_sampler_modes_and_spread():
    n = 400_000
    tgt = sampler.get_target("gmm40")
    means, std = fab_means(), FAB_STD
    x = tgt.sample(n, generator=gen(8), dtype=torch.float64)
    assert x.shape == (n, 2) and x.dtype == torch.float64
    xs = x.numpy()
    dist = np.sqrt(((xs[:, None, :] - means[None]) ** 2).sum(-1))  # (n, 40)
    pair = np.sqrt(((means[:, None] - means[None]) ** 2).sum(-1))
    np.fill_diagonal(pair, np.inf)

    # Fractions per mode. Several FAB means lie < 1 std apart, so "nearest mean" cells do not
    # have probability 1/40. Use instead disks of radius rho = 0.499 x the smallest distance
    # between means around every mean: they are disjoint, so the counts in the 40 disks and
    # outside are Multinomial(n, p) with p_k exactly the mixture's mass in disk k (a sum of
    # noncentral chi2(2) CDFs; the component mass 1/40 enters each term). Pearson's statistic
    # is then chi2(40); every expected count is ~1e3.
    rho = 0.499 * pair.min()
    p = np.array([_disk_probability(means, std, m, rho) for m in means])
    in_disk = dist < rho
    assert in_disk.sum(1).max() <= 1
    counts = np.append(in_disk.sum(0), n - in_disk.sum())
    expected = n * np.append(p, 1 - p.sum())
    assert expected.min() > 500
    chi2, pval = stats.chisquare(counts, expected)
    assert pval > 1e-3, (chi2, counts, expected)

    # Within-mode spread. Around each mean whose nearest other mean is >= 8 std away, take the
    # points within c = 3.5 std: the contamination from other components is computed exactly
    # below (< 1 point expected), so r^2 / std^2 follows chi2(2) truncated at c^2, i.e.
    # F(s) = (1 - exp(-s/2)) / (1 - exp(-c^2/2)); KS test at level 1e-3.
    c = 3.5
    isolated = np.flatnonzero(pair.min(1) >= 8 * std)
    assert len(isolated) >= 3
    own = stats.chi2.cdf(c**2, 2) / 40
    contamination = sum(_disk_probability(means, std, means[k], c * std) - own for k in isolated)
    assert n * contamination < 1.0
    r2 = np.concatenate([dist[dist[:, k] < c * std, k] ** 2 for k in isolated]) / std**2
    assert len(r2) > 20_000
    trunc = -math.expm1(-(c**2) / 2)
    ks = stats.kstest(r2, lambda s: -np.expm1(-s / 2) / trunc)
    assert ks.pvalue > 1e-3, ks
    # isotropy: per coordinate, the truncated deviations have mean 0 (n_k ~ 1e4 each, se = std
    # / sqrt(n_k) bounds it since truncation only shrinks the variance)
    for k in isolated:
        dev = xs[dist[:, k] < c * std] - means[k]
        assert np.abs(dev.mean(0)).max() < Z * std / math.sqrt(len(dev))


def test_gaussian_mixture_rejects_bad_parameters():
    with pytest.raises(ConfigurationError):
        GaussianMixture(np.zeros(3), 1.0)
    with pytest.raises(ConfigurationError):
        GaussianMixture(np.zeros((0, 2)), 1.0)
    with pytest.raises(ConfigurationError):
        GaussianMixture(np.zeros((3, 2)), 0.0)


# --------------------------------------------------------------------------------------------
# target(), BoltzmannTarget, Target
# --------------------------------------------------------------------------------------------


def energy_fn(x):
    return 0.5 * (x**2).sum(-1) + x[..., 0] ** 3 / 3


def energy_grad(x):
    g = x.clone()
    g[..., 0] += x[..., 0] ** 2
    return g


def test_target_from_energy_sign_convention():
    tgt = sampler.target(energy=energy_fn, dim=3)
    assert isinstance(tgt, Target) and tgt.dim == 3 and tgt.name == "energy_fn"
    assert tgt.log_Z is None
    x = torch.randn(4, 5, 3, generator=gen(9), dtype=torch.float64)
    torch.testing.assert_close(tgt.log_prob(x), -energy_fn(x), rtol=0, atol=0)
    torch.testing.assert_close(tgt.grad_log_prob(x), -energy_grad(x), rtol=1e-12, atol=1e-12)  # autograd
    lp, g = tgt.log_prob_and_grad(x)
    torch.testing.assert_close(lp, -energy_fn(x), rtol=0, atol=0)
    torch.testing.assert_close(g, -energy_grad(x), rtol=1e-12, atol=1e-12)


def test_target_from_log_prob():
    tgt = sampler.target(log_prob=lambda x: -energy_fn(x), dim=3, name="mine", log_Z=1.25)
    assert tgt.name == "mine" and tgt.log_Z == 1.25
    x = torch.randn(10, 3, generator=gen(10), dtype=torch.float64)
    torch.testing.assert_close(tgt.log_prob(x), -energy_fn(x), rtol=0, atol=0)
    torch.testing.assert_close(tgt.grad_log_prob(x), -energy_grad(x), rtol=1e-12, atol=1e-12)


def test_target_with_explicit_gradient():
    calls = []

    def grad_u(x):
        calls.append(x.shape)
        return energy_grad(x)

    x = torch.randn(6, 3, generator=gen(11), dtype=torch.float64)
    t_energy = sampler.target(energy=energy_fn, dim=3, grad=grad_u)
    lp, g = t_energy.log_prob_and_grad(x)
    assert calls  # the given gradient is used, not autograd
    torch.testing.assert_close(lp, -energy_fn(x), rtol=0, atol=0)
    torch.testing.assert_close(g, -energy_grad(x), rtol=0, atol=0)  # gradient of U, sign flipped
    torch.testing.assert_close(t_energy.grad_log_prob(x), -energy_grad(x), rtol=0, atol=0)

    t_lp = sampler.target(log_prob=lambda x: -energy_fn(x), dim=3, grad=lambda x: -energy_grad(x))
    lp, g = t_lp.log_prob_and_grad(x)
    torch.testing.assert_close(g, -energy_grad(x), rtol=0, atol=0)  # gradient of log_prob, as is


def test_uses_autograd_says_whose_gradient_log_prob_and_grad_returns():
    """``compile=True`` differentiates the targets that use autograd with ``torch.func`` instead."""

    class OnlyLogProb(Target):
        dim = 3

        def log_prob(self, x):
            return -energy_fn(x)

    assert OnlyLogProb().uses_autograd
    assert sampler.target(energy=energy_fn, dim=3).uses_autograd
    assert sampler.target(log_prob=lambda x: -energy_fn(x), dim=3).uses_autograd
    assert not sampler.target(energy=energy_fn, dim=3, grad=energy_grad).uses_autograd
    assert not Gaussian(dim=3).uses_autograd  # an analytic gradient
    assert not DoubleWell().uses_autograd  # grad_log_prob only


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dim=2),  # neither
        dict(dim=2, energy=energy_fn, log_prob=energy_fn),  # both
        dict(dim=2, energy=3.0),  # not callable
        dict(dim=0, energy=energy_fn),
        dict(dim=-1, log_prob=energy_fn),
        dict(dim=2.0, log_prob=energy_fn),
        dict(dim=True, log_prob=energy_fn),
    ],
)
def test_target_rejects_bad_arguments(kwargs):
    with pytest.raises(ConfigurationError):
        sampler.target(**kwargs)


class Quadratic(BoltzmannTarget):
    dim = 2

    def energy(self, x):
        return 0.5 * (x**2).sum(-1) + x[..., 1]


def test_boltzmann_target_beta_scales_the_energy():
    x = torch.randn(8, 2, generator=gen(12), dtype=torch.float64)
    u = 0.5 * (x**2).sum(-1) + x[:, 1]
    grad_u = x + torch.tensor([0.0, 1.0], dtype=torch.float64)

    t1 = Quadratic()
    assert t1.beta == 1.0
    torch.testing.assert_close(t1.log_prob(x), -u, rtol=0, atol=0)
    torch.testing.assert_close(t1.grad_log_prob(x), -grad_u, rtol=1e-14, atol=1e-14)

    class Hot(Quadratic):
        beta = 0.25

    torch.testing.assert_close(Hot().log_prob(x), -0.25 * u, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(Hot().grad_log_prob(x), -0.25 * grad_u, rtol=1e-14, atol=1e-14)

    t3 = Quadratic()
    t3.beta = 3.0  # per instance too
    torch.testing.assert_close(t3.log_prob(x), -3.0 * u, rtol=1e-15, atol=1e-15)
    lp, g = t3.log_prob_and_grad(x)
    torch.testing.assert_close(lp, -3.0 * u, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(g, -3.0 * grad_u, rtol=1e-14, atol=1e-14)


def test_abstract_base_classes():
    with pytest.raises(TypeError):
        Target()
    with pytest.raises(TypeError):
        BoltzmannTarget()


class Banana(Target):
    dim = 2

    def log_prob(self, x):
        return -0.5 * x[..., 0] ** 2 - 0.5 * (x[..., 1] - x[..., 0] ** 2) ** 2


def test_default_gradient_is_autograd():
    tgt = Banana()
    x = torch.randn(3, 7, 2, generator=gen(13), dtype=torch.float64)
    a, b = x[..., 0], x[..., 1]
    want = torch.stack([-a + 2 * a * (b - a**2), -(b - a**2)], -1)
    torch.testing.assert_close(tgt.grad_log_prob(x), want, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # works inside no_grad (the engine evaluates there)
        lp, g = tgt.log_prob_and_grad(x)
    torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-12)
    assert not lp.requires_grad and not g.requires_grad
    assert not x.requires_grad and x.grad is None
    assert repr(tgt) == "Banana(dim=2)"
    with pytest.raises(NotImplementedError):
        tgt.sample(3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_target_constant_follows_dtype_and_device(dtype):
    class WithConstants(Banana):
        def __init__(self):
            self.array = np.array([1.0, 2.0, 1 / 3])
            self.tensor = torch.tensor([[1.0, 2.0]], dtype=torch.float64)

    tgt = WithConstants()
    like = torch.zeros(2, dtype=dtype)
    arr = tgt.constant("array", like)
    ten = tgt.constant("tensor", like)
    for value in (arr, ten):
        assert value.dtype == dtype and value.device == like.device
    np.testing.assert_allclose(arr.double().numpy(), [1.0, 2.0, 1 / 3], rtol=1e-7 if dtype == torch.float32 else 0)
    assert ten.shape == (1, 2)
    assert tgt.constant("array", like) is arr  # cached per device and dtype
    other = torch.float64 if dtype == torch.float32 else torch.float32
    assert tgt.constant("array", torch.zeros(1, dtype=other)).dtype == other


@pytest.mark.parametrize("name", ["gaussian", "double-well", "gmm40"])
def test_builtin_targets_follow_input_dtype(name):
    tgt = sampler.get_target(name)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(5, tgt.dim, generator=gen(14), dtype=dtype)
        assert tgt.log_prob(x).dtype == dtype
        assert tgt.grad_log_prob(x).dtype == dtype


def test_get_target_with_options():
    tgt = sampler.get_target("gaussian", dim=7)
    assert isinstance(tgt, Gaussian) and tgt.dim == 7
    assert set(sampler.list_targets()) >= {"gaussian", "double-well", "gmm40"}


@pytest.mark.parametrize(
    "name, suggestion", [("gmm4", "gmm40"), ("double_well", "double-well"), ("gausian", "gaussian")]
)
def test_get_target_unknown_name_suggests_close_names(name, suggestion):
    with pytest.raises(UnknownNameError) as info:
        sampler.get_target(name)
    msg = str(info.value)
    assert repr(name) in msg
    assert f"Did you mean {suggestion!r}" in msg or f"or {suggestion!r}" in msg
    assert info.value.name == name and suggestion in info.value.known


def test_get_target_unknown_name_lists_registered_targets():
    with pytest.raises(UnknownNameError) as info:
        sampler.get_target("nope")
    msg = str(info.value)
    assert "'nope'" in msg and "Did you mean" not in msg
    for known in ("gaussian", "double-well", "gmm40"):
        assert known in msg
    assert isinstance(info.value, KeyError) and isinstance(info.value, sampler.SamplerError)
