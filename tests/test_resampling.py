"""Resampling schemes: validity of the indices, unbiased offspring counts, variance ordering.

Statistical conventions used below. Every test is seeded (a fixed ``torch.Generator``), so the
outcome is deterministic; the thresholds are still chosen from the sampling law of the
statistic, so that a correct implementation would fail for fewer than ~1 in 1000 seeds:

* Z_CRIT is the two-sided normal quantile for a family-wise level of 1e-3 over the N particles
  of one check (Bonferroni): ``Phi^-1(1 - 1e-3 / (2 N))`` ~ 3.9 for N = 10.
* The Pearson chi-square test is applied only where the pooled counts really are multinomial.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import sampler
from sampler import resampling
from sampler.errors import UnknownNameError

SCHEME_NAMES = ["multinomial", "systematic", "stratified", "residual"]
SCHEMES = {name: getattr(resampling, name) for name in SCHEME_NAMES}

N = 10
R = 20_000
# Fixed unequal weights with N * w_i = [0.13, 0.37, ...] (sum 10): no N * w_i is an integer (so
# every scheme has a non-zero count variance) and no fractional part is near 1/2 (where the
# sample variance of a Bernoulli count has a degenerate normal approximation).
N_W = np.array([0.13, 0.37, 0.71, 0.94, 1.18, 1.84, 1.27, 1.61, 0.83, 1.12])
W = N_W / N
Z_CRIT = stats.norm.isf(1e-3 / (2 * N))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def counts_of(idx: torch.Tensor, n: int) -> np.ndarray:
    """Offspring counts ``(R, n)`` from ancestor indices ``(R, M)``."""
    counts = torch.zeros(idx.shape[0], n, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts.numpy()


def fixed_log_weights(r: int = R, shift: float = 0.0) -> torch.Tensor:
    return torch.log(torch.as_tensor(W, dtype=torch.float64)).expand(r, N).clone() + shift


def exact_count_variance(name: str, w: np.ndarray) -> np.ndarray:
    """Exact variance of each particle's offspring count under scheme ``name``."""
    n = len(w)
    nw = n * w
    if name == "multinomial":
        return n * w * (1 - w)
    if name == "systematic":  # count = floor(N w) + Bernoulli(frac(N w))
        f = nw - np.floor(nw)
        return f * (1 - f)
    if name == "stratified":
        # Stratum j puts its point in particle i with probability p_ij = N |[j/N, (j+1)/N) ∩
        # [c_{i-1}, c_i)|; strata are independent, so var_i = sum_j p_ij (1 - p_ij).
        cdf = np.concatenate([[0.0], np.cumsum(w)])
        lo = np.maximum(cdf[:-1, None], np.arange(n)[None, :] / n)
        hi = np.minimum(cdf[1:, None], (np.arange(n)[None, :] + 1) / n)
        p = n * np.clip(hi - lo, 0, None)
        return (p * (1 - p)).sum(1)
    if name == "residual":  # floor(N w) + Multinomial(n_left, residuals / sum(residuals))
        fl = np.floor(nw)
        n_left = n - fl.sum()
        r = (nw - fl) / (nw - fl).sum()
        return n_left * r * (1 - r)
    raise AssertionError(name)


def assert_mean_counts(counts: np.ndarray, w: np.ndarray, label: str) -> None:
    """z-test of each particle's mean offspring count against N w_i, with the empirical variance.

    Replicas are independent, so the mean over R replicas has standard error s_i / sqrt(R).
    Particles with zero weight must get exactly zero offspring.
    """
    r, n = counts.shape
    mean = counts.mean(0)
    zero = w == 0
    assert (counts[:, zero] == 0).all(), f"{label}: zero-weight particle resampled"
    se = counts[:, ~zero].std(0, ddof=1) / math.sqrt(r)
    expected = n * w[~zero]
    degenerate = se == 0  # a deterministic count must be exactly N w_i
    np.testing.assert_allclose(mean[~zero][degenerate], expected[degenerate], rtol=0, atol=1e-12)
    z = (mean[~zero][~degenerate] - expected[~degenerate]) / se[~degenerate]
    crit = stats.norm.isf(1e-3 / (2 * n))
    assert np.abs(z).max() < crit, f"{label}: mean offspring counts {mean} vs N w = {n * w} (z = {z})"


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_get_scheme_returns_every_scheme():
    assert set(resampling.SCHEMES) == set(SCHEME_NAMES)
    for name in SCHEME_NAMES:
        assert resampling.get_scheme(name) is SCHEMES[name]


def test_get_scheme_unknown_name_suggests_close_names():
    with pytest.raises(UnknownNameError) as info:
        resampling.get_scheme("systemtic")
    msg = str(info.value)
    assert "'systemtic'" in msg
    assert "Did you mean 'systematic'" in msg
    for name in SCHEME_NAMES:  # the registered names are listed
        assert name in msg
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, sampler.SamplerError)


# --------------------------------------------------------------------------------------------
# Validity of the output
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEME_NAMES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (1, 5), (64, 37)])
def test_shape_dtype_range(name, shape):
    lw = torch.randn(*shape, generator=gen(1), dtype=torch.float64) * 3
    idx = SCHEMES[name](lw, gen(2))
    assert idx.shape == shape
    assert idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < shape[1]


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_single_particle(name):
    lw = torch.randn(100, 1, generator=gen(3), dtype=torch.float64) * 50
    idx = SCHEMES[name](lw, gen(4))
    assert idx.shape == (100, 1)
    assert (idx == 0).all()


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_seeded_and_reproducible(name):
    lw = torch.randn(50, 20, generator=gen(5), dtype=torch.float64)
    a = SCHEMES[name](lw, gen(6))
    b = SCHEMES[name](lw, gen(6))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_exact_zero_weights_never_picked(name):
    # Zeros at the first and last positions and in the middle (edges of the CDF buckets).
    w = torch.tensor([0.0, 0.3, 0.0, 0.0, 0.25, 0.0, 0.45, 0.0], dtype=torch.float64)
    lw = torch.log(w).expand(5000, -1).clone()
    assert torch.isinf(lw).any()
    idx = SCHEMES[name](lw, gen(7))
    assert torch.isin(idx, torch.tensor([1, 4, 6])).all()
    assert_mean_counts(counts_of(idx, 8), w.numpy(), name)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_minus_inf_log_weights_never_picked(name):
    # Random rows with a random half of the log weights set to -inf (at least one finite).
    g = gen(8)
    lw = torch.randn(2000, 16, generator=g, dtype=torch.float64)
    dead = torch.rand(2000, 16, generator=g) < 0.5
    dead[:, 3] = False
    lw = lw.masked_fill(dead, -math.inf)
    idx = SCHEMES[name](lw, gen(9))
    assert not torch.gather(dead, 1, idx).any()
    assert int(idx.min()) >= 0 and int(idx.max()) < 16


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_one_dominant_particle(name):
    # The other weights are e^-100 ~ 4e-44: the chance of picking any of them in 2e5 draws is
    # below 1e-37, so every offspring must be the dominant particle.
    r, n = 2000, 100
    dominant = torch.arange(r) % n
    lw = torch.full((r, n), -100.0, dtype=torch.float64)
    lw[torch.arange(r), dominant] = 0.0
    idx = SCHEMES[name](lw, gen(10))
    assert (idx == dominant[:, None]).all()


@pytest.mark.parametrize("name", SCHEME_NAMES)
@pytest.mark.parametrize("shift", [1000.0, -1000.0])
def test_unnormalized_log_weights(name, shift):
    # exp(+-1000) over/underflows: the scheme must normalize in log space.
    idx = SCHEMES[name](fixed_log_weights(shift=shift), gen(11))
    assert_mean_counts(counts_of(idx, N), W, f"{name} shift {shift}")


# --------------------------------------------------------------------------------------------
# Unbiasedness: expected offspring counts equal N w_i
# --------------------------------------------------------------------------------------------


def test_multinomial_pooled_counts_chi_square():
    # The N R offspring of all replicas are iid Categorical(w) draws, so the pooled counts are
    # Multinomial(N R, w) and Pearson's statistic has (asymptotically) the chi2(N - 1) law.
    idx = resampling.multinomial(fixed_log_weights(), gen(12))
    pooled = counts_of(idx, N).sum(0)
    assert pooled.sum() == N * R
    chi2, p = stats.chisquare(pooled, N * R * W)
    assert p > 1e-3, (pooled, N * R * W, chi2)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_mean_offspring_counts(name):
    idx = SCHEMES[name](fixed_log_weights(), gen(13))
    counts = counts_of(idx, N)
    assert (counts.sum(1) == N).all()
    assert_mean_counts(counts, W, name)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_offspring_count_variance_matches_scheme(name):
    # The sample variance s^2 over R iid replicas is asymptotically normal with standard error
    # sqrt((m4 - s^4) / R) (m4: the empirical fourth central moment).
    idx = SCHEMES[name](fixed_log_weights(), gen(14))
    counts = counts_of(idx, N)
    var = counts.var(0, ddof=1)
    m4 = ((counts - counts.mean(0)) ** 4).mean(0)
    se = np.sqrt((m4 - var**2) / R)
    exact = exact_count_variance(name, W)
    z = (var - exact) / se
    assert np.abs(z).max() < Z_CRIT, f"{name}: count variances {var} vs exact {exact} (z = {z})"


@pytest.mark.parametrize("name", ["systematic", "stratified", "residual"])
def test_low_variance_schemes_beat_multinomial(name):
    # Exact totals of the count variances for these weights (exact_count_variance): multinomial
    # N (1 - sum w^2) ~ 8.75; residual ~ 4.31; stratified ~ 2.69; systematic ~ 1.57. Each
    # empirical total has a relative standard error of ~1% at R = 20000, so "< 0.6 x
    # multinomial" (a threshold ~ 5.25) is far from every total in both directions.
    lw = fixed_log_weights()
    var_multi = counts_of(resampling.multinomial(lw, gen(15)), N).var(0, ddof=1)
    var = counts_of(SCHEMES[name](lw, gen(16)), N).var(0, ddof=1)
    assert var.sum() < 0.6 * var_multi.sum(), (var.sum(), var_multi.sum())


def random_log_weights(seed: int, r: int = 2000, n: int = 12) -> torch.Tensor:
    g = gen(seed)
    lw = 2.0 * torch.randn(r, n, generator=g, dtype=torch.float64)
    return lw.masked_fill(torch.rand(r, n, generator=g) < 0.2, -math.inf)


def test_residual_keeps_floor_copies():
    lw = random_log_weights(17)
    lw[:, 0] = 0.0  # at least one finite weight per row
    nw = lw.shape[1] * torch.softmax(lw, -1).numpy()
    counts = counts_of(resampling.residual(lw, gen(18)), lw.shape[1])
    # 1e-9 absorbs the round-off of N w_i when it is (almost) an integer.
    assert (counts >= np.floor(nw + 1e-9)).all()
    assert (counts.sum(1) == lw.shape[1]).all()


def test_systematic_counts_are_floor_or_ceil():
    lw = random_log_weights(19)
    lw[:, 0] = 0.0
    nw = lw.shape[1] * torch.softmax(lw, -1).numpy()
    counts = counts_of(resampling.systematic(lw, gen(20)), lw.shape[1])
    assert (counts >= np.floor(nw - 1e-9)).all()
    assert (counts <= np.ceil(nw + 1e-9)).all()
    assert (counts.sum(1) == lw.shape[1]).all()


# --------------------------------------------------------------------------------------------
# The batch dimension
# --------------------------------------------------------------------------------------------


BATCH_WEIGHTS = np.array(
    [
        W,
        np.array([0.0, 0.05, 0.0, 0.6, 0.05, 0.0, 0.1, 0.13, 0.07, 0.0]),
        np.array([0.02] * 9 + [0.82]),
    ]
)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_batch_rows_use_their_own_weights(name):
    # Three weight vectors interleaved over the replicas; each group must have its own mean
    # counts (z-test per group as above).
    k = 6000
    rows = np.tile(np.arange(3), k)
    with np.errstate(divide="ignore"):
        lw = torch.as_tensor(np.log(BATCH_WEIGHTS[rows]))
    lw = lw + torch.linspace(-5, 5, 3 * k, dtype=torch.float64)[:, None]  # per-row normalizers differ
    counts = counts_of(SCHEMES[name](lw, gen(21)), N)
    for g in range(3):
        assert_mean_counts(counts[rows == g], BATCH_WEIGHTS[g], f"{name} group {g}")


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_batch_one_hot_rows(name):
    # Row r puts all its weight on particle (7 r) mod N: every offspring of row r is that one.
    r = 500
    hot = (7 * torch.arange(r)) % N
    lw = torch.full((r, N), -math.inf, dtype=torch.float64)
    lw[torch.arange(r), hot] = 3.0
    idx = SCHEMES[name](lw, gen(22))
    assert (idx == hot[:, None]).all()


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_batch_replicas_are_independent(name):
    # Pairs of replicas (2k, 2k+1) with the same weights. Under independence the sample
    # correlation of a particle's counts over M pairs is ~ N(0, 1/M); a shared uniform (a
    # systematic scheme reusing U across replicas) would give a correlation near 1.
    idx = SCHEMES[name](fixed_log_weights(), gen(23))
    counts = counts_of(idx, N)
    a, b = counts[0::2], counts[1::2]
    m = a.shape[0]
    for i in range(N):
        corr = np.corrcoef(a[:, i], b[:, i])[0, 1]
        assert abs(corr) < Z_CRIT / math.sqrt(m), (i, corr)


@pytest.mark.parametrize("m", [1, 7, 40, 100])
def test_systematic_draws_m_ancestors_within_one_of_their_expected_counts(m):
    """With ``n_out = M`` each particle gets floor or ceil of M * W_i offspring (systematic's guarantee)."""
    g = torch.Generator().manual_seed(0)
    log_w = torch.randn(3, 100, generator=g, dtype=torch.float64)
    idx = resampling.systematic(log_w, g, n_out=m)
    assert idx.shape == (3, m)
    counts = torch.zeros(3, 100, dtype=torch.float64).scatter_add_(1, idx, torch.ones(3, m, dtype=torch.float64))
    expected = m * torch.softmax(log_w, -1)
    assert bool(((counts - expected).abs() < 1.0 + 1e-9).all())
