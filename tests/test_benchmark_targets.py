"""Benchmark targets: mustache, 8modes, 8peaky, funnel, gmm10-{d}, manywell, lgcp.

Statistical checks are seeded; every tolerance is a number of Monte Carlo standard errors
(``Z``) or a p-value threshold of 1e-3, and every quadrature check states its error bound.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

import sampler
from sampler.errors import ConfigurationError
from sampler.targets import GMM10, LGCP, DoubleWell, EightModes, EightPeaky, Funnel, ManyWell, Mustache, Target
from sampler.targets import lgcp as lgcp_module

#: 4.5 standard errors: two-sided normal level ~7e-6 per statistic.
Z = 4.5

NEW_TARGETS = {
    "mustache": (Mustache, 2),
    "8modes": (EightModes, 2),
    "8peaky": (EightPeaky, 2),
    "funnel": (Funnel, 10),
    "gmm10-10": (GMM10, 10),
    "gmm10-20": (GMM10, 20),
    "gmm10-50": (GMM10, 50),
    "gmm10-100": (GMM10, 100),
    "gmm10-200": (GMM10, 200),
    "manywell": (ManyWell, 32),
    "lgcp": (LGCP, 1600),
}
EXACT_SAMPLERS = [n for n in NEW_TARGETS if n != "lgcp"]


#: Pinned fingerprint of the default lgcp data (seed 0): sum over bins of index * count.
PINNED_INDEX_SUM = 92540


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def autograd_grad(fn, x: torch.Tensor) -> torch.Tensor:
    xg = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(xg).sum(), xg)
    return g


def typical_points(tgt: Target, shape: tuple[int, ...], seed: int, dtype=torch.float64) -> torch.Tensor:
    """Points where the target has mass: exact samples, or the reference for lgcp."""
    n = int(np.prod(shape))
    if isinstance(tgt, LGCP):
        x = tgt.mu0 + math.sqrt(1.91) * torch.randn(n, tgt.dim, generator=gen(seed), dtype=torch.float64)
    else:
        x = tgt.sample(n, generator=gen(seed), dtype=torch.float64)
    return x.reshape(*shape, tgt.dim).to(dtype)


def chisquare_merged(observed: np.ndarray, expected: np.ndarray, minimum: float = 20.0):
    """Pearson chi-square after pooling every bin with expected count < minimum into one bin."""
    small = expected < minimum
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] < minimum:  # pool the remainder into the smallest kept bin
        i = np.argmin(exp[:-1])
        obs[i] += obs[-1]
        exp[i] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()), len(exp)


# --------------------------------------------------------------------------------------------
# All new targets: registry, dtypes, gradients, reference hints
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_TARGETS)
def test_get_target_by_registered_name(name):
    cls, dim = NEW_TARGETS[name]
    tgt = sampler.get_target(name)
    assert isinstance(tgt, cls) and isinstance(tgt, Target)
    assert tgt.name == name and tgt.dim == dim
    assert name in sampler.list_targets()
    loc = np.broadcast_to(np.asarray(tgt.reference_loc, dtype=np.float64), (dim,))
    scale = np.broadcast_to(np.asarray(tgt.reference_scale, dtype=np.float64), (dim,))
    assert np.isfinite(loc).all() and (scale > 0).all() and np.isfinite(scale).all()
    if name == "lgcp":
        assert tgt.log_Z is None
    elif name == "manywell":
        assert abs(tgt.log_Z - 164.696) < 1e-3
    else:
        assert tgt.log_Z == 0.0
    if name != "lgcp":
        assert "Provenance" in type(tgt).__doc__


@pytest.mark.parametrize("name", NEW_TARGETS)
def test_analytic_gradient_equals_autograd(name):
    tgt = sampler.get_target(name)
    x = typical_points(tgt, (2, 3) if name != "lgcp" else (3,), seed=1)
    if name not in ("lgcp", "manywell"):
        x = x + 0.3 * torch.randn(x.shape, generator=gen(2), dtype=torch.float64)  # off the typical set too
    want = autograd_grad(tgt.log_prob, x)
    torch.testing.assert_close(tgt.grad_log_prob(x), want, rtol=1e-10, atol=1e-10)
    lp, g = tgt.log_prob_and_grad(x)
    assert lp.shape == x.shape[:-1] and g.shape == x.shape
    torch.testing.assert_close(lp, tgt.log_prob(x), rtol=1e-13, atol=1e-10)
    torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NEW_TARGETS)
def test_outputs_follow_input_dtype(name):
    tgt = sampler.get_target(name)
    x64 = typical_points(tgt, (4,), seed=3)
    for dtype in (torch.float32, torch.float64):
        x = x64.to(dtype)
        lp, g = tgt.log_prob_and_grad(x)
        assert tgt.log_prob(x).dtype == dtype and tgt.grad_log_prob(x).dtype == dtype
        assert lp.dtype == dtype and g.dtype == dtype
        tol = 1e-4 if name != "lgcp" else 1e-3
        np.testing.assert_allclose(lp.double().numpy(), tgt.log_prob(x64).numpy(), rtol=tol, atol=tol)
        if name != "lgcp":
            s = tgt.sample(5, generator=gen(4), dtype=dtype)
            assert s.shape == (5, tgt.dim) and s.dtype == dtype
            assert torch.equal(s, tgt.sample(5, generator=gen(4), dtype=dtype))  # seeded
    # a single point (no batch dimension) gives a scalar
    assert tgt.log_prob(x64[0]).shape == ()


@pytest.mark.parametrize("name", NEW_TARGETS)
def test_no_tensor_is_created_on_a_fixed_device(name):
    # On torch's "meta" device every operation must follow the input (or the device argument):
    # a constant created on the CPU would raise a device mismatch here.
    tgt = sampler.get_target(name)
    x = torch.empty(3, tgt.dim, device="meta", dtype=torch.float32)
    lp, g = tgt.log_prob_and_grad(x)
    assert lp.device.type == "meta" and g.device.type == "meta" and lp.shape == (3,)
    assert tgt.log_prob(x).device.type == "meta" and tgt.grad_log_prob(x).device.type == "meta"
    if name != "lgcp":
        s = tgt.sample(4, device="meta", dtype=torch.float32)
        assert s.device.type == "meta" and s.shape == (4, tgt.dim)


@pytest.mark.parametrize("name", EXACT_SAMPLERS)
def test_reference_hint_covers_exact_samples(name):
    # The hints are documented as (at least) the moment-matched Gaussian: per coordinate, the
    # exact samples' spread is at most ~the reference scale and their centre is within a few
    # scales of the reference loc. (Loose; guards against a reference that misses the mass.)
    # Spread: the sample standard deviation, except for the heavy-tailed mustache and funnel,
    # whose sample variance is too noisy: half the 16%-84% quantile range there.
    tgt = sampler.get_target(name)
    x = tgt.sample(20_000, generator=gen(5), dtype=torch.float64).numpy()
    loc = np.broadcast_to(np.asarray(tgt.reference_loc, dtype=np.float64), (tgt.dim,))
    scale = np.broadcast_to(np.asarray(tgt.reference_scale, dtype=np.float64), (tgt.dim,))
    if name in ("mustache", "funnel"):
        spread = (np.quantile(x, 0.8413, axis=0) - np.quantile(x, 0.1587, axis=0)) / 2
    else:
        spread = x.std(axis=0)
    assert (spread < 1.1 * scale).all(), spread / scale
    assert (np.abs(np.median(x, axis=0) - loc) < 2 * scale).all()


# --------------------------------------------------------------------------------------------
# mustache
# --------------------------------------------------------------------------------------------

SIGMA = np.array([[1.0, 0.9], [0.9, 1.0]])


def test_mustache_log_prob_is_pulled_back_gaussian():
    tgt = Mustache()
    x = torch.randn(300, 2, generator=gen(10), dtype=torch.float64) * torch.tensor([1.5, 3.0]) + torch.tensor(
        [0.0, 2.0]
    )
    xs = x.numpy()
    t = np.stack([xs[:, 0], xs[:, 1] - (xs[:, 0] ** 2 - 1) ** 2], -1)
    want = stats.multivariate_normal(np.zeros(2), SIGMA).logpdf(t)
    np.testing.assert_allclose(tgt.log_prob(x).numpy(), want, rtol=1e-12, atol=1e-12)


def test_mustache_is_normalized():
    # Riemann sum on a grid that follows the bend: x1 on a uniform grid of spacing h1 = 0.05 over
    # [-8, 8], and for each x1, x2 = (x1^2 - 1)^2 + t with t on a uniform grid of spacing
    # h2 = 0.02 over [-12, 12] (a shifted uniform grid in x2, so sum * h2 approximates the x2
    # integral at that x1). Given x1, the density in x2 is a Gaussian of std s = sqrt(0.19) =
    # 0.436 centred at (x1^2 - 1)^2 + 0.9 x1, |0.9 x1| <= 7.2: the t range covers >= 10 s either
    # side, and the uniform-grid sum of a Gaussian is exact up to a relative 2 exp(-2 pi^2 s^2 /
    # h^2) ~ e^-9000 (Poisson summation). The x1 integrand is then N(x1; 0, 1): grid error
    # 2 exp(-2 pi^2 / h1^2) ~ e^-7900, truncation 2 Phi(-8) ~ 1e-15. So |total - 1| is round-off.
    tgt = Mustache()
    h1, h2 = 0.05, 0.02
    x1 = torch.arange(-8.0, 8.0 + h1 / 2, h1, dtype=torch.float64)
    t = torch.arange(-12.0, 12.0 + h2 / 2, h2, dtype=torch.float64)
    x2 = (x1[:, None] ** 2 - 1) ** 2 + t[None, :]
    pts = torch.stack([x1[:, None].expand_as(x2), x2], -1)
    total = float(torch.exp(tgt.log_prob(pts)).sum()) * h1 * h2
    assert abs(total - 1.0) < 1e-10
    assert tgt.log_Z == 0.0


def test_mustache_exact_sampler_histogram():
    # 2D histogram on rectangles in x. Bin probabilities from the definition (independently of
    # the library): x1 ~ N(0, 1) and x2 | x1 ~ N((x1^2 - 1)^2 + 0.9 x1, 0.19), so
    # P(bin) = int_{x1 bin} phi(x1) [Phi((hi - m(x1)) / s) - Phi((lo - m(x1)) / s)] dx1 by adaptive
    # quadrature (error < 1e-10 per bin, << the Monte Carlo error). Pearson chi-square with bins
    # of expected count < 20 pooled.
    n = 100_000
    x = Mustache().sample(n, generator=gen(11), dtype=torch.float64).numpy()
    e1 = np.array([-12.0, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 12.0])
    e2 = np.array([-np.inf, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 5, 10, np.inf])
    s = math.sqrt(0.19)

    def prob(a, b, lo, hi):
        def f(u):
            m = (u * u - 1) ** 2 + 0.9 * u
            return stats.norm.pdf(u) * (special.ndtr((hi - m) / s) - special.ndtr((lo - m) / s))

        return integrate.quad(f, a, b, epsabs=1e-12, epsrel=1e-10, limit=200)[0]

    expected = n * np.array([[prob(a, b, lo, hi) for lo, hi in zip(e2[:-1], e2[1:])] for a, b in zip(e1[:-1], e1[1:])])
    np.testing.assert_allclose(expected.sum(), n, rtol=1e-8)
    observed = np.histogram2d(x[:, 0], x[:, 1], [e1, e2])[0]
    assert observed.sum() == n
    (chi2, p), k = chisquare_merged(observed.ravel(), expected.ravel())
    assert k > 40
    assert p > 1e-3, (chi2, k)


# --------------------------------------------------------------------------------------------
# 8modes, 8peaky
# --------------------------------------------------------------------------------------------

EIGHT = {"8modes": 0.01, "8peaky": 0.005}


def eight_means() -> np.ndarray:
    k = np.arange(8)
    return np.stack([np.cos(2 * np.pi * k / 8) - 1, np.sin(2 * np.pi * k / 8)], -1)


def mixture_logpdf(x: np.ndarray, means: np.ndarray, var: float) -> np.ndarray:
    d = means.shape[1]
    comp = np.stack([stats.multivariate_normal(m, var * np.eye(d)).logpdf(x) for m in means], -1)
    return special.logsumexp(comp, -1) - math.log(len(means))


@pytest.mark.parametrize("name", EIGHT)
def test_eight_modes_definition(name):
    tgt = sampler.get_target(name)
    np.testing.assert_allclose(tgt.modes, eight_means(), rtol=0, atol=1e-15)
    np.testing.assert_allclose(tgt.std**2, EIGHT[name], rtol=1e-14)
    x = torch.rand(400, 2, generator=gen(20), dtype=torch.float64) * 3 - torch.tensor([2.5, 1.5])
    x[:8] = torch.as_tensor(eight_means()) + 0.05
    want = mixture_logpdf(x.numpy(), eight_means(), EIGHT[name])
    np.testing.assert_allclose(tgt.log_prob(x).numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tgt.reference_loc, [-1.0, 0.0], atol=1e-15)
    assert 0.7 < tgt.reference_scale < 0.72


@pytest.mark.parametrize("name", EIGHT)
def test_eight_modes_is_normalized(name):
    # Riemann sum on a uniform grid of spacing h = 0.01 over [-3, 1] x [-2, 2]. For a Gaussian of
    # std s the uniform-grid sum is exact up to ~2 exp(-2 pi^2 s^2 / h^2) <= e^-980 (s >= 0.0707);
    # every mean is >= 1 = 14 s from the box's edge, so the truncated mass is < e^-98.
    tgt = sampler.get_target(name)
    h = 0.01
    g1 = torch.arange(-3.0, 1.0 + h / 2, h, dtype=torch.float64)
    g2 = torch.arange(-2.0, 2.0 + h / 2, h, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(g1, g2, indexing="ij"), -1)
    total = float(torch.exp(tgt.log_prob(pts)).sum()) * h * h
    assert abs(total - 1.0) < 1e-10


@pytest.mark.parametrize("name", EIGHT)
def test_eight_modes_exact_sampler(name):
    # (a) 2D histogram on a 0.1 x 0.1 grid over [-2.5, 0.5] x [-1.5, 1.5] plus the outside, with
    # exact bin probabilities (mixture of products of normal CDF differences); Pearson chi-square
    # with bins of expected count < 20 pooled. (b) Nearest-mean fractions vs 1/8: adjacent means
    # are >= 7.6 std apart, and by the rotation symmetry every cell has probability exactly 1/8.
    n = 200_000
    tgt = sampler.get_target(name)
    x = tgt.sample(n, generator=gen(21), dtype=torch.float64).numpy()
    means, s = eight_means(), math.sqrt(EIGHT[name])
    e1, e2 = np.linspace(-2.5, 0.5, 31), np.linspace(-1.5, 1.5, 31)
    c1 = special.ndtr((e1[None, :] - means[:, :1]) / s)  # (8, 31)
    c2 = special.ndtr((e2[None, :] - means[:, 1:]) / s)
    probs = np.einsum("ki,kj->ij", np.diff(c1, axis=1), np.diff(c2, axis=1)) / 8
    observed = np.histogram2d(x[:, 0], x[:, 1], [e1, e2])[0]
    obs = np.append(observed.ravel(), n - observed.sum())
    exp = n * np.append(probs.ravel(), 1 - probs.sum())
    (chi2, p), k = chisquare_merged(obs, exp)
    assert k > 100
    assert p > 1e-3, (chi2, k)

    nearest = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=8)
    assert stats.chisquare(counts).pvalue > 1e-3, counts


# --------------------------------------------------------------------------------------------
# funnel
# --------------------------------------------------------------------------------------------


def test_funnel_log_prob_matches_scipy():
    tgt = Funnel()
    x = typical_points(tgt, (500,), seed=30) + 0.5 * torch.randn(500, 10, generator=gen(31), dtype=torch.float64)
    xs = x.numpy()
    want = stats.norm.logpdf(xs[:, 0], 0, 3) + stats.norm.logpdf(xs[:, 1:], 0, np.exp(xs[:, :1] / 2)).sum(-1)
    np.testing.assert_allclose(tgt.log_prob(x).numpy(), want, rtol=1e-12, atol=1e-10)
    assert Funnel(dim=3).log_prob(x[:, :3]).shape == (500,)


def test_funnel_is_normalized():
    # log_prob is quadratic in x2..x10 at fixed v = x1 (checked against scipy above), so the inner
    # integral is exp(log_prob(v, 0)) (2 pi e^v)^(9/2) exactly; the outer 1D integral over v is
    # done by adaptive quadrature (relative error < 1e-12 requested; truncation at |v| = 40
    # leaves 2 Phi(-40/3) ~ 1e-40).
    tgt = Funnel()

    def inner(v: float) -> float:
        x = torch.zeros(10, dtype=torch.float64)
        x[0] = v
        return math.exp(float(tgt.log_prob(x)) + 4.5 * (math.log(2 * math.pi) + v))

    total, err = integrate.quad(inner, -40, 40, points=[0.0], epsabs=0, epsrel=1e-12, limit=200)
    assert abs(total - 1.0) < 1e-9


def test_funnel_exact_sampler():
    # x1 / 3 ~ N(0, 1) and x_i e^(-x1/2) ~ N(0, 1) (i >= 2), all independent: KS tests on x1 / 3
    # and on the 9 standardized coordinates pooled (iid N(0, 1) under the model), and the
    # correlation of every pair of the 10 standardized coordinates within Z / sqrt(n). (Raw
    # moments are useless: E x_i^2 = e^4.5 with a heavy tail.)
    n = 100_000
    x = Funnel().sample(n, generator=gen(32), dtype=torch.float64).numpy()
    v = x[:, 0]
    z = np.concatenate([v[:, None] / 3, x[:, 1:] * np.exp(-v[:, None] / 2)], axis=1)
    assert stats.kstest(z[:, 0], "norm").pvalue > 1e-3
    assert stats.kstest(z[:, 1:].ravel(), "norm").pvalue > 1e-3
    corr = np.corrcoef(z.T)
    assert np.abs(corr[np.triu_indices(10, 1)]).max() < Z / math.sqrt(n)
    # squared standardized coordinates are independent of v too (the scale really is e^(v/2))
    assert abs(np.corrcoef(v, (z[:, 1:] ** 2).mean(1))[0, 1]) < Z / math.sqrt(n)


# --------------------------------------------------------------------------------------------
# gmm10-{d}
# --------------------------------------------------------------------------------------------


def documented_gmm10_means(d: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (2 * torch.rand(10, d, generator=g, dtype=torch.float64) - 1).numpy()


@pytest.mark.parametrize("d", [10, 20, 50, 100, 200])
def test_gmm10_means_are_documented_and_reproducible(d):
    before = torch.get_rng_state()
    tgt = sampler.get_target(f"gmm10-{d}")
    assert torch.equal(torch.get_rng_state(), before)  # building it leaves the global RNG alone
    assert tgt.modes.shape == (10, d)
    assert (np.abs(tgt.modes) <= 1).all()
    np.testing.assert_array_equal(tgt.modes, documented_gmm10_means(d))
    np.testing.assert_array_equal(sampler.get_target(f"gmm10-{d}").modes, tgt.modes)
    assert tgt.std == 0.1
    other = sampler.get_target(f"gmm10-{d}", seed=1)
    assert other.name == f"gmm10-{d}-seed1" and not np.array_equal(other.modes, tgt.modes)


def test_gmm10_log_prob_matches_scipy_mixture():
    tgt = sampler.get_target("gmm10-10")
    means = documented_gmm10_means(10)
    x = typical_points(tgt, (300,), seed=40)
    x[:100] += 0.5 * torch.randn(100, 10, generator=gen(41), dtype=torch.float64)
    x[100:150] = 2 * torch.rand(50, 10, generator=gen(42), dtype=torch.float64) - 1  # between modes
    want = mixture_logpdf(x.numpy(), means, 0.01)
    np.testing.assert_allclose(tgt.log_prob(x).numpy(), want, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("d", [10, 200])
def test_gmm10_exact_sampler_modes(d):
    # Nearest-mean fractions vs 1/10 (Pearson chi-square, 9 dof). The probability that a draw of
    # component k is nearer another mean j is Phi(-|mu_k - mu_j| / (2 std)) <= 9 Phi(-min_dist /
    # 0.2) in all; the expected number of misassigned draws is asserted < 0.1, negligible next to
    # the counts' standard deviation ~70. Within a mode, (x - mu_k) / 0.1 pooled over coordinates
    # is N(0, 1): KS test.
    n = 50_000
    tgt = sampler.get_target(f"gmm10-{d}")
    means = tgt.modes
    pair = np.sqrt(((means[:, None] - means[None]) ** 2).sum(-1))
    np.fill_diagonal(pair, np.inf)
    assert n * 9 * stats.norm.sf(pair.min() / 0.2) < 0.1
    x = tgt.sample(n, generator=gen(43), dtype=torch.float64)
    dist = torch.cdist(x, torch.as_tensor(means))
    nearest = dist.argmin(1).numpy()
    counts = np.bincount(nearest, minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3, counts
    z = ((x.numpy() - means[nearest]) / 0.1)[:2000].ravel()
    assert stats.kstest(z, "norm").pvalue > 1e-3


# --------------------------------------------------------------------------------------------
# manywell
# --------------------------------------------------------------------------------------------

_DW_SHIFT = 9.0  # the exponent -(a^4 - 6a^2 - 0.5a) peaks at ~9.3


def quartic_density(a):
    return np.exp(-(a**4 - 6 * a**2 - 0.5 * a) - _DW_SHIFT)


def test_manywell_log_z():
    tgt = sampler.get_target("manywell")
    assert tgt.dim == 32 and tgt.n_wells == 16
    assert tgt.log_Z == pytest.approx(16 * DoubleWell().log_Z, rel=1e-14)
    # Independent quadrature: int exp(-(a^4 - 6a^2 - 0.5a)) da over [-10, 10] (the integrand is
    # < e^-9000 beyond), relative error < 1e-12; the b-integral is sqrt(2 pi).
    za = integrate.quad(quartic_density, -10, 10, points=[-1.71, 0.0, 1.75], epsabs=0, epsrel=1e-12, limit=200)[0]
    want = 16 * (math.log(za) + _DW_SHIFT + 0.5 * math.log(2 * math.pi))
    assert abs(tgt.log_Z - want) < 1e-6
    assert abs(tgt.log_Z - 164.696) < 1e-3


def test_manywell_log_prob_is_sum_of_double_wells():
    tgt = sampler.get_target("manywell")
    dw = DoubleWell()
    x = 2 * torch.randn(5, 7, 32, generator=gen(50), dtype=torch.float64)
    want = dw.log_prob(x.reshape(5, 7, 16, 2)).sum(-1)
    torch.testing.assert_close(tgt.log_prob(x), want, rtol=1e-13, atol=1e-11)
    torch.testing.assert_close(tgt.energy(x), -want, rtol=1e-13, atol=1e-11)
    signs = tgt.mode_signs(x)
    assert signs.shape == (5, 7, 16) and torch.equal(signs, x[..., 0::2] > 0)


def test_manywell_exact_sampler():
    # (a) The a-coordinates of wells 0, 7 and 15: KS against the exact marginal CDF, tabulated
    # independently by the cumulative trapezoid rule on 400,001 points over [-5, 5] (error
    # O(h^2) ~ 1e-9, << the KS resolution 1/sqrt(n); the mass outside < e^-300). (b) The
    # b-coordinates, pooled: KS against N(0, 1). (c)
    # Independence: every pairwise correlation of the 32 coordinates within 5 / sqrt(n) (496
    # pairs), and the number of wells with a > 0 per draw ~ Binomial(16, w) (chi-square).
    n = 50_000
    tgt = sampler.get_target("manywell")
    x = tgt.sample(n, generator=gen(51), dtype=torch.float64).numpy()
    assert x.shape == (n, 32)
    grid = np.linspace(-5.0, 5.0, 400_001)
    cdf = integrate.cumulative_trapezoid(quartic_density(grid), x=grid, initial=0.0)
    cdf /= cdf[-1]
    for k in (0, 7, 15):
        assert stats.kstest(x[:, 2 * k], lambda a: np.interp(a, grid, cdf)).pvalue > 1e-3, k
    assert stats.kstest(x[:, 1::2].ravel(), "norm").pvalue > 1e-3
    corr = np.corrcoef(x.T)
    assert np.abs(corr[np.triu_indices(32, 1)]).max() < 5 / math.sqrt(n)
    w = tgt.positive_mode_weight()
    assert abs(w - 0.844) < 1e-3
    positive = (x[:, 0::2] > 0).sum(1)
    expected = n * stats.binom.pmf(np.arange(17), 16, w)
    (chi2, p), _ = chisquare_merged(np.bincount(positive, minlength=17).astype(float), expected)
    assert p > 1e-3, chi2


# --------------------------------------------------------------------------------------------
# lgcp
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lgcp() -> LGCP:
    return sampler.get_target("lgcp")


def test_lgcp_construction_reuses_the_cached_gram_factorization():
    """The 1600 x 1600 Gram matrix and its Cholesky factor are computed once per process."""
    lgcp_module._gram_and_cholesky.cache_clear()
    first = LGCP()
    misses = lgcp_module._gram_and_cholesky.cache_info().misses
    again = LGCP()
    info = lgcp_module._gram_and_cholesky.cache_info()
    assert misses == 1 and info.misses == 1 and info.hits >= 1
    assert again.chol is first.chol


def test_lgcp_gram_matrix(lgcp):
    k, chol = lgcp.gram, lgcp.chol
    assert k.shape == (1600, 1600)
    assert np.array_equal(k, k.T)
    # entries from the definition: bin i = (i // 40, i % 40), K = 1.91 exp(-dist / (40 / 33))
    rng = np.random.default_rng(60)
    i, j = rng.integers(0, 1600, 50), rng.integers(0, 1600, 50)
    dist = np.hypot(i // 40 - j // 40, i % 40 - j % 40)
    np.testing.assert_allclose(k[i, j], 1.91 * np.exp(-dist * 33 / 40), rtol=1e-14)
    np.testing.assert_allclose(k[0, 41], 1.91 * math.exp(-math.sqrt(2) * 33 / 40), rtol=1e-14)
    # positive definite: a Cholesky factor exists (lower, positive diagonal) and reproduces K
    assert np.array_equal(chol, np.tril(chol)) and (np.diag(chol) > 0).all()
    np.testing.assert_allclose(chol @ chol.T, k, atol=1e-12)
    assert lgcp.mu0 == pytest.approx(math.log(126) - 0.5 * 1.91, rel=1e-15)
    assert lgcp.reference_loc == lgcp.mu0 and lgcp.reference_scale == pytest.approx(math.sqrt(1.91))


def test_lgcp_log_prob_matches_dense_formula(lgcp):
    # log N(f; mu0, K) by a dense solve and slogdet (independent of the triangular solves), plus
    # the Poisson terms, at the true field and at two prior draws.
    prior = lgcp.mu0 + (lgcp.chol @ np.random.default_rng(61).standard_normal((1600, 2))).T
    f = np.concatenate([lgcp.true_field[None], prior])
    diff = f - lgcp.mu0
    _, logdet = np.linalg.slogdet(lgcp.gram)
    quad = (diff * np.linalg.solve(lgcp.gram, diff.T).T).sum(-1)
    want = -0.5 * quad - 0.5 * logdet - 800 * math.log(2 * math.pi) + (f * lgcp.counts - np.exp(f) / 1600).sum(-1)
    got = lgcp.log_prob(torch.as_tensor(f))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-11)
    assert torch.isfinite(got).all()
    # the shapes of batches
    x = torch.as_tensor(f).expand(2, 3, 3, 1600)
    lp, g = lgcp.log_prob_and_grad(x)
    assert lp.shape == (2, 3, 3) and g.shape == (2, 3, 3, 1600)
    torch.testing.assert_close(lp[1, 2], got)
    assert lgcp.log_prob(torch.as_tensor(f[0])).shape == ()


def test_lgcp_default_data_is_deterministic(lgcp):
    again = LGCP()
    assert np.array_equal(again.counts, lgcp.counts) and np.array_equal(again.true_field, lgcp.true_field)
    assert lgcp.seed == 0 and lgcp.counts.shape == (1600,)
    assert (lgcp.counts == np.round(lgcp.counts)).all() and (lgcp.counts >= 0).all()
    # pinned: numpy.random.default_rng(0) -> standard_normal, poisson (as documented). A change
    # here means the benchmark's data changed (e.g. a numpy stream change): update the docs.
    assert lgcp.counts.sum() == 113
    assert int((np.arange(1600) * lgcp.counts).sum()) == PINNED_INDEX_SUM
    # the counts are Poisson given the true field: total within 5 sd of the mean
    rate = np.exp(lgcp.true_field).sum() / 1600
    assert abs(lgcp.counts.sum() - rate) < 5 * math.sqrt(rate)
    other = LGCP(seed=1)
    assert not np.array_equal(other.counts, lgcp.counts)


def test_lgcp_user_points_are_binned(tmp_path):
    # bins are [k/40, (k+1)/40) per coordinate, the last one closed: x picks the row, y the column
    pts = np.array([[0.0, 0.0], [1.0, 1.0], [0.0251, 0.99], [0.5, 0.0249], [0.5, 0.025], [0.01, 0.01]])
    want = np.zeros(1600)
    for idx in (0, 1599, 1 * 40 + 39, 20 * 40 + 0, 20 * 40 + 1, 0):
        want[idx] += 1
    # two columns with a header
    two = tmp_path / "points.csv"
    two.write_text("x,y\n" + "\n".join(f"{a!r},{b!r}" for a, b in pts.tolist()) + "\n")
    # annealed_flow_transport's pines.csv layout: header, index column, x, y
    three = tmp_path / "pines.csv"
    three.write_text(
        '"","X","Y"\n' + "\n".join(f'"{i + 1}",{a!r},{b!r}' for i, (a, b) in enumerate(pts.tolist())) + "\n"
    )
    for source in (pts, torch.as_tensor(pts), str(two), three):
        tgt = LGCP(points=source)
        np.testing.assert_array_equal(tgt.counts, want)
        assert tgt.true_field is None and tgt.seed is None and tgt.dim == 1600
    via_registry = sampler.get_target("lgcp", points=str(two))
    np.testing.assert_array_equal(via_registry.counts, want)
    np.testing.assert_array_equal(LGCP(counts=want.reshape(40, 40)).counts, want)
    # the Poisson term uses the user's counts
    f = torch.full((1600,), 0.5, dtype=torch.float64)
    delta = LGCP(points=pts).log_prob(f) - LGCP(counts=np.zeros(1600)).log_prob(f)
    assert float(delta) == pytest.approx(0.5 * len(pts), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(points=np.array([[0.5, 1.2]])),
        dict(points=np.array([[-0.1, 0.5]])),
        dict(points=np.zeros((3, 3))),
        dict(counts=np.zeros(10)),
        dict(counts=-np.ones(1600)),
        dict(points=np.zeros((1, 2)), counts=np.zeros(1600)),
    ],
)
def test_lgcp_rejects_bad_data(kwargs):
    with pytest.raises(ConfigurationError):
        LGCP(**kwargs)


def test_lgcp_rejects_unreadable_point_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n0.1,0.2\n0.3,oops\n")
    with pytest.raises(ConfigurationError, match="non-numeric"):
        LGCP(points=bad)
    one_column = tmp_path / "one.csv"
    one_column.write_text("0.1\n0.2\n")
    with pytest.raises(ConfigurationError):
        LGCP(points=one_column)
    with pytest.raises(ConfigurationError, match=r"\[0, 1\]"):
        LGCP(points=np.array([[10.0, 3.0]]))


def test_lgcp_has_no_exact_sampler(lgcp):
    with pytest.raises(NotImplementedError, match="no exact sampler"):
        lgcp.sample(3)
    assert lgcp.true_field.shape == (1600,)
