"""Metrics against exact formulas: energy distance (exact and sliced), MMD, ESS, log Z and mode errors."""

from __future__ import annotations

import math

import pytest
import torch

from sampler.metrics import (
    energy_distance,
    exact_floor,
    kish_ess,
    log_Z_error,
    mean_pairwise_distance,
    median_heuristic,
    mmd_gaussian,
    mode_fractions,
    mode_weight_error,
    modes_covered,
    nearest_mode,
    pareto_k,
    projected_energy_distances,
    random_directions,
    sliced_energy_distance,
    slicing_constant,
)


def test_mean_pairwise_distance_small_exact():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[3.0]])
    assert float(mean_pairwise_distance(x, y)) == pytest.approx(2.5)
    assert float(mean_pairwise_distance(x, x)) == pytest.approx(0.5)  # V-statistic: (0 + 1 + 1 + 0) / 4


def test_energy_distance_closed_form_for_point_masses():
    # Two point masses at distance a: E|X-Y| = a, E|X-X'| = E|Y-Y'| = 0.
    x = torch.zeros(5, 3)
    y = torch.full((7, 3), 2.0)
    assert energy_distance(x, y) == pytest.approx(2.0 * math.sqrt(3))
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_energy_distance_of_shifted_gaussians_matches_theory():
    # 1D: for X ~ N(0,1), Y ~ N(mu,1): E|X-Y| = E|N(mu, 2)|, E|X-X'| = 2/sqrt(pi).
    # The half-statistic is E|X-Y| - E|X-X'| (the two within terms are equal).
    mu = 1.5
    s = math.sqrt(2)
    folded = s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s**2)) + mu * math.erf(mu / (s * math.sqrt(2)))
    exact = folded - 2 / math.sqrt(math.pi)
    g = torch.Generator().manual_seed(0)
    n = 4000
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = mu + torch.randn(n, 1, generator=g, dtype=torch.float64)
    # The V-statistic's bias is O(1/n) (negligible here); its sd at n = m = 4000 is 0.014
    # (measured over 20 seeds), so 0.045 is a 3-sd band.
    assert energy_distance(x, y) == pytest.approx(exact, abs=0.045)


def test_mode_helpers():
    modes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.tensor([[0.1, 0.2], [9.0, 1.0], [8.0, -1.0], [0.5, 0.1]])
    assert nearest_mode(x, modes).tolist() == [0, 1, 1, 0]
    torch.testing.assert_close(mode_fractions(x, modes), torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert modes_covered(x, modes) == 2


# ---------------------------------------------------------------------------------------------
# Sliced energy distance against the exact V-statistic


def _randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _gaussian_energy_distance(mu_norm: float, d: int) -> float:
    """Population half energy distance between N(0, I_d) and N(mu, I_d) (|mu| = mu_norm).

    X - Y ~ N(mu, 2 I) and X - X' ~ N(0, 2 I); E|N(m, I_d)| is the mean of a noncentral chi,
    sqrt(2) Γ((d+1)/2)/Γ(d/2) 1F1(-1/2; d/2; -|m|^2/2). So E|X-Y| - E|X-X'| =
    (2 c_d / sqrt(pi)) (1F1(-1/2; d/2; -|mu|^2/4) - 1).
    """
    from scipy.special import hyp1f1

    return 2 * slicing_constant(d) / math.sqrt(math.pi) * (hyp1f1(-0.5, d / 2, -(mu_norm**2) / 4) - 1)


def test_gaussian_closed_form_helper_matches_folded_normal_in_1d():
    mu, s = 1.5, math.sqrt(2)
    folded = s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s**2)) + mu * math.erf(mu / (s * math.sqrt(2)))
    assert _gaussian_energy_distance(mu, 1) == pytest.approx(folded - 2 / math.sqrt(math.pi), rel=1e-12)


@pytest.mark.parametrize(
    ("d", "expected", "tol"),
    [
        (1, 1.0, 1e-12),
        (2, math.pi / 2, 1e-12),
        (3, 2.0, 1e-12),
        (10, 3.866, 5e-4),  # the table's rounding
        (50, 8.818, 5e-4),
        (100, 12.50, 5e-3),
        (1600, 50.12, 5e-3),
    ],
)
def test_slicing_constant_matches_methods_table(d, expected, tol):
    assert slicing_constant(d) == pytest.approx(expected, abs=tol)


def test_slicing_constant_is_the_mean_absolute_projection():
    # E_ξ |<ξ, v>| = |v| / c_d, checked by Monte Carlo over 200k directions within 4 standard
    # errors of the mean (se from the sample's own spread).
    g = torch.Generator().manual_seed(1)
    n = 200_000
    for d in (2, 3, 7):
        xi = random_directions(n, d, g)
        torch.testing.assert_close(xi.norm(dim=-1), torch.ones(n, dtype=torch.float64))
        proj = xi[:, 0].abs() * slicing_constant(d)
        assert abs(float(proj.mean()) - 1.0) < 4 * float(proj.std()) / math.sqrt(n)


def test_cramer_integral_identity_by_hand():
    # x = {0, 2}, y = {1}: F_X - F_Y = 1/2 on [0, 1), -1/2 on [1, 2) -> ∫ = 1/4 + 1/4 = 1/2;
    # E|X-Y| = 1, E|X-X'| = (0 + 2 + 2 + 0)/4 = 1, E|Y-Y'| = 0 -> 1 - 1/2 - 0 = 1/2.
    x = torch.tensor([[0.0], [2.0]])
    y = torch.tensor([[1.0]])
    per_dir = projected_energy_distances(x, y, torch.tensor([[1.0], [-1.0]]))
    torch.testing.assert_close(per_dir, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert energy_distance(x, y) == pytest.approx(0.5)


@pytest.mark.parametrize(("n", "m"), [(1, 1), (7, 7), (50, 13), (200, 311)])
def test_sliced_equals_exact_in_1d(n, m):
    # In d = 1 the only directions are ±1 and c_1 = 1: the 1D identity
    # E|X-Y| - E|X-X'|/2 - E|Y-Y'|/2 = ∫ (F_X - F_Y)^2 makes the sliced value exact.
    g = torch.Generator().manual_seed(n + m)
    x = _randn(g, n, 1)
    y = 0.3 + 2 * _randn(g, m, 1)
    exact = energy_distance(x, y)
    for p in (1, 5):
        value, se = sliced_energy_distance(x, y, n_directions=p, generator=g, return_stderr=True)
        assert value == pytest.approx(exact, abs=1e-10)
    assert se == pytest.approx(0.0, abs=1e-12)


def test_sliced_equals_exact_in_1d_with_ties_and_weights():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 5, (40, 1), generator=g).to(torch.float64)  # many ties, within and across
    y = torch.randint(0, 7, (25, 1), generator=g).to(torch.float64)
    assert sliced_energy_distance(x, y, 2, generator=g) == pytest.approx(energy_distance(x, y), abs=1e-10)
    w = torch.rand(40, generator=g, dtype=torch.float64)
    exact = energy_distance(x, y, weights=w)
    assert sliced_energy_distance(x, y, 2, generator=g, weights=w) == pytest.approx(exact, abs=1e-10)
    # Weights that are the multiplicities of a repeated sample give the repeated sample's value.
    xr = torch.repeat_interleave(x, torch.arange(1, 41), dim=0)
    counts = torch.arange(1, 41, dtype=torch.float64)
    assert energy_distance(x, y, weights=counts) == pytest.approx(energy_distance(xr, y), abs=1e-12)


@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("weighted", [False, True])
def test_sliced_agrees_with_exact_within_slicing_error(d, weighted):
    # The direction average is unbiased for the exact V-statistic; its standard error is
    # c_d sd_ξ / sqrt(P), estimated from the P = 1000 per-direction values. 4 se.
    g = torch.Generator().manual_seed(10 * d + weighted)
    x = _randn(g, 400, d)
    y = 0.4 + 1.3 * _randn(g, 300, d)
    w = torch.rand(400, generator=g, dtype=torch.float64) if weighted else None
    exact = energy_distance(x, y, weights=w)
    value, se = sliced_energy_distance(x, y, 1000, generator=g, weights=w, return_stderr=True)
    assert se > 0
    assert abs(value - exact) < 4 * se
    assert se < 0.1 * exact  # the comparison is informative


def test_sliced_is_deterministic_given_generator_and_chunk_free():
    g = torch.Generator().manual_seed(5)
    x, y = _randn(g, 300, 3), _randn(g, 200, 3)
    a = sliced_energy_distance(x, y, 100, generator=torch.Generator().manual_seed(7), chunk=1)
    b = sliced_energy_distance(x, y, 100, generator=torch.Generator().manual_seed(7), chunk=33)
    c = sliced_energy_distance(x, y, 100, generator=torch.Generator().manual_seed(7))
    assert a == pytest.approx(b, rel=1e-12) and a == pytest.approx(c, rel=1e-12)
    # float32 inputs are promoted to float64 and give the same value up to float32 rounding of x.
    d32 = sliced_energy_distance(x.float(), y.float(), 100, generator=torch.Generator().manual_seed(7))
    assert d32 == pytest.approx(a, rel=1e-5)


def test_energy_distance_of_a_sample_with_itself_is_zero():
    g = torch.Generator().manual_seed(6)
    for d in (1, 2, 5):
        x = _randn(g, 500, d)
        assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
        assert sliced_energy_distance(x, x, 50, generator=g) == pytest.approx(0.0, abs=1e-14)
        ones = torch.ones(500)
        assert sliced_energy_distance(x, x.clone(), 50, generator=g, weights=ones) == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_sliced_energy_distance_grows_with_shift_as_gaussian_closed_form(d):
    # For X ~ N(0, I), Y ~ N(mu, I), independent samples of size n = m: the V-statistic has mean
    # ED(mu) + E|X-X'| / n (diagonal terms), E|X-X'| = 2 c_d / sqrt(pi). Replicate R = 16 times
    # (fresh samples and directions) and compare the mean within 4 standard errors, estimated
    # from the replicates' spread (t with 15 dof: P(|t| > 4) ~ 1e-3 per case).
    n, reps = 500, 16
    g = torch.Generator().manual_seed(100 + d)
    floor_bias = 2 * slicing_constant(d) / math.sqrt(math.pi) / n
    means = []
    for mu in (0.0, 0.5, 1.0, 2.0):
        shift = torch.zeros(d, dtype=torch.float64)
        shift[0] = mu
        vals = torch.tensor(
            [sliced_energy_distance(_randn(g, n, d), shift + _randn(g, n, d), 200, generator=g) for _ in range(reps)]
        )
        expected = _gaussian_energy_distance(mu, d) + floor_bias
        se = float(vals.std()) / math.sqrt(reps)
        assert abs(float(vals.mean()) - expected) < 4 * se, (mu, float(vals.mean()), expected, se)
        means.append(float(vals.mean()))
    assert means == sorted(means)


def test_exact_floor_matches_the_v_statistic_bias():
    # Two independent exact samples of size n from the same law: E[V] = E|X-X'| / n.
    class StdNormal2D:
        dim = 2

        def sample(self, n, generator=None, device=None, dtype=None):
            return torch.randn(n, 2, generator=generator, dtype=torch.float64)

    n, reps = 400, 24
    g = torch.Generator().manual_seed(8)
    vals = torch.tensor([exact_floor(StdNormal2D(), n, g, n_directions=100) for _ in range(reps)])
    expected = math.sqrt(math.pi) / n  # E|X-X'| = sqrt(2) E|N(0, I_2)| = sqrt(pi)
    assert (vals > 0).all()
    assert abs(float(vals.mean()) - expected) < 4 * float(vals.std()) / math.sqrt(reps)


def test_sliced_energy_distance_runs_at_moderate_size():
    # Smoke test only (no timing assertion; the 50k x 50k timing lives in the benchmarks).
    g = torch.Generator().manual_seed(9)
    x = torch.randn(20_000, 2, generator=g)
    y = torch.randn(20_000, 2, generator=g)
    value, se = sliced_energy_distance(x, y, 200, generator=g, return_stderr=True)
    assert 0 < value < 1e-3 and math.isfinite(se)


def test_sliced_energy_distance_validates_input():
    with pytest.raises(ValueError):
        sliced_energy_distance(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError):
        sliced_energy_distance(torch.zeros(3, 2), torch.zeros(3, 2), n_directions=0)
    with pytest.raises(ValueError):
        sliced_energy_distance(torch.zeros(3, 2), torch.zeros(3, 2), weights=torch.tensor([1.0, -1.0, 1.0]))


# ---------------------------------------------------------------------------------------------
# MMD


def _naive_mmd(x, y, h):
    def k(a, b):
        return math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / (2 * h * h))

    xs, ys = x.tolist(), y.tolist()
    kxx = sum(k(a, b) for a in xs for b in xs) / len(xs) ** 2
    kyy = sum(k(a, b) for a in ys for b in ys) / len(ys) ** 2
    kxy = sum(k(a, b) for a in xs for b in ys) / (len(xs) * len(ys))
    return kxx + kyy - 2 * kxy


def test_mmd_matches_naive_v_statistic():
    g = torch.Generator().manual_seed(11)
    x, y = _randn(g, 17, 3), 0.5 + _randn(g, 11, 3)
    assert mmd_gaussian(x, y, bandwidth=0.7, chunk=4) == pytest.approx(_naive_mmd(x, y, 0.7), rel=1e-12)
    # Median heuristic: median of the pooled pairwise distances (i < j), all points here.
    z = torch.cat([x, y])
    dists = [float((z[i] - z[j]).norm()) for i in range(len(z)) for j in range(i + 1, len(z))]
    h = float(torch.tensor(dists, dtype=torch.float64).median())  # lower median, as torch.median
    assert median_heuristic(x, y) == pytest.approx(h, rel=1e-12)
    assert mmd_gaussian(x, y) == pytest.approx(_naive_mmd(x, y, h), rel=1e-12)


def test_mmd_zero_for_identical_and_increasing_with_shift():
    g = torch.Generator().manual_seed(12)
    x = _randn(g, 600, 2)
    assert mmd_gaussian(x, x.clone()) == pytest.approx(0.0, abs=1e-12)
    y0 = _randn(g, 600, 2)
    for bw in (1.0, None):
        values = []
        for mu in (0.0, 0.5, 1.0, 2.0):
            y = y0 + torch.tensor([mu, 0.0], dtype=torch.float64)
            values.append(mmd_gaussian(x, y, bandwidth=bw, generator=g))
        assert all(v > 0 for v in values)
        assert values == sorted(values)


def test_median_heuristic_subsamples_deterministically():
    g = torch.Generator().manual_seed(13)
    x, y = _randn(g, 3000, 2), _randn(g, 3000, 2)
    a = median_heuristic(x, y, max_points=500, generator=torch.Generator().manual_seed(0))
    b = median_heuristic(x, y, max_points=500, generator=torch.Generator().manual_seed(0))
    assert a == b
    # Median of |X - X'| for N(0, I_2): |X - X'|^2 / 2 ~ chi2_2 = Exp(1/2), median 2 sqrt(log 2).
    assert a == pytest.approx(2 * math.sqrt(math.log(2)), rel=0.05)


# ---------------------------------------------------------------------------------------------
# Weights, log Z, modes


def test_kish_ess_by_hand():
    w = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    lw = torch.log(w)  # ESS = (sum w)^2 / (N sum w^2): 4/8, 36/56, 1
    torch.testing.assert_close(kish_ess(lw + 3.0), torch.tensor([0.5, 36 / (4 * 14), 1.0], dtype=torch.float64))
    assert float(kish_ess(torch.full((4,), -math.inf))) == 0.0


def test_log_Z_error():
    assert log_Z_error(1.25, 1.0) == pytest.approx(0.25)
    assert log_Z_error(torch.tensor(0.5), 1.0) == pytest.approx(0.5)
    expected = torch.tensor([0.1, 0.2], dtype=torch.float64)
    torch.testing.assert_close(log_Z_error(torch.tensor([0.9, 1.2]), 1.0), expected)


def test_mode_weight_error_by_hand():
    modes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.tensor([[0.1, 0.2], [9.0, 1.0], [8.0, -1.0], [0.5, 0.1]])  # fractions 1/2, 1/2, 0
    assert mode_weight_error(x, modes) == pytest.approx(2 * (1 / 6) ** 2 + (1 / 3) ** 2)
    assert mode_weight_error(x, modes, weights=torch.tensor([2.0, 1.0, 1.0])) == pytest.approx(2 * 0.25**2)
    assert mode_weight_error(x, modes, weights=[1, 1, 0]) == pytest.approx(0.0)


def test_pareto_k_is_reexported():
    import sampler.diagnostics

    assert pareto_k is sampler.diagnostics.pareto_k
