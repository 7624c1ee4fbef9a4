"""Tests of the ``tt_continuity`` plugin: the TT potential, its ALS fit to the continuity equation,
the flow step's weights, and ``tt-smc`` against exact answers.

Deterministic checks (derivatives against autograd, exact recovery of a velocity that lies in the
model class, the change-of-variables formula) use tolerances from float64 rounding. Statistical
checks are seeded, with tolerances from the Monte Carlo error stated next to each.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sampler
from sampler.errors import ConfigurationError
from sampler_plugins.tt_continuity import FunctionalTT, TensorBasis, TTFlow, fit_potential
from sampler_plugins.tt_continuity.als import fit_additive, weighted_residual
from sampler_plugins.tt_continuity.basis import _reference_grams
from sampler_plugins.tt_continuity.transport import euler_map

DTYPE = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _basis(kind: str, n: int, center: torch.Tensor, half: torch.Tensor, window: float = 0.25) -> TensorBasis:
    return TensorBasis.around(kind, n, center, half, window)


# ---------------------------------------------------------------------------------------------
# 1. The basis and the TT potential's derivatives.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, n", [("legendre", 6), ("fourier", 7)])
def test_basis_is_h2_orthonormal_on_its_box(kind, n):
    """Gram matrix of the basis in H²([a, b]) (composite Gauss-Legendre on the window's pieces) = I."""
    lo, hi = -3.0, 5.0
    basis = _basis(kind, n, torch.tensor([[(lo + hi) / 2]], dtype=DTYPE), torch.tensor([[(hi - lo) / 2]], dtype=DTYPE))
    a, b, m = float(basis.lower[0, 0]), float(basis.upper[0, 0]), basis.margin
    nodes, weights = np.polynomial.legendre.leggauss(80)
    xs, ws = [], []
    for u0, u1 in [(0, m), (m, 1 - m), (1 - m, 1)]:
        x0, x1 = a + u0 * (b - a), a + u1 * (b - a)
        xs.append(x0 + (x1 - x0) * (nodes + 1) / 2)
        ws.append(weights * (x1 - x0) / 2)
    x = torch.as_tensor(np.concatenate(xs), dtype=DTYPE)[None, :, None]
    w = torch.as_tensor(np.concatenate(ws), dtype=DTYPE)
    bv = basis.evaluate(x)
    gram = sum((f[0, :, 0] * w[:, None]).T @ f[0, :, 0] for f in (bv.values, bv.d1, bv.d2))
    assert torch.allclose(gram, torch.eye(n, dtype=DTYPE), atol=1e-9)
    # and it vanishes (with two derivatives) outside the box
    out = basis.evaluate(torch.tensor([[[a - 0.1], [b + 2.0]]], dtype=DTYPE))
    assert float(out.values.abs().max() + out.d1.abs().max() + out.d2.abs().max()) == 0.0
    assert not bool(out.in_box.any())
    _reference_grams.cache_clear()


@pytest.mark.parametrize("kind, n", [("legendre", 5), ("fourier", 7)])
def test_tt_value_gradient_hessian_and_divergence_match_autograd(kind, n):
    """Value, gradient, Hessian, Laplacian (= divergence of the field) and generator of a random
    rank-3 TT in d = 4 against autograd of the same function, at points inside the box, in the
    window margin and outside it."""
    r, npts, d = 2, 40, 4
    basis = _basis(kind, n, torch.zeros(r, d, dtype=DTYPE), torch.full((r, d), 2.0, dtype=DTYPE))
    ftt = FunctionalTT.random(r, d, n, 3, _gen(0))
    x = (torch.rand(r, npts, d, generator=_gen(1), dtype=DTYPE) * 2 - 1) * 3.5  # box: |x| <= 2 (+ margin 1)
    bv = basis.evaluate(x)
    value, grad, hess = ftt.derivatives(bv)

    xg = x.clone().requires_grad_(True)
    val = ftt.value_and_grad(basis.evaluate(xg))[0]
    (g_ad,) = torch.autograd.grad(val.sum(), xg, create_graph=True)
    h_ad = torch.stack([torch.autograd.grad(g_ad[..., i].sum(), xg, retain_graph=True)[0] for i in range(d)], -2)
    div_ad = sum(torch.autograd.grad(g_ad[..., i].sum(), xg, retain_graph=True)[0][..., i] for i in range(d))

    scale = float(hess.abs().max())
    assert scale > 0
    assert torch.allclose(value, val.detach(), rtol=0, atol=1e-12 * scale)
    assert torch.allclose(grad, g_ad.detach(), rtol=0, atol=1e-12 * scale)
    assert torch.allclose(ftt.value_and_grad(bv)[1], grad, rtol=0, atol=1e-12 * scale)
    assert torch.allclose(hess, h_ad.detach(), rtol=0, atol=1e-12 * scale)
    assert torch.allclose(ftt.laplacian(bv), div_ad.detach(), rtol=0, atol=1e-12 * scale)
    drift = torch.randn(r, npts, d, generator=_gen(2), dtype=DTYPE)
    assert torch.allclose(
        ftt.generator(bv, drift), div_ad.detach() + (drift * g_ad.detach()).sum(-1), atol=1e-11 * scale
    )
    # points outside the box see a zero field
    outside = (x.abs() > 3.0).any(-1)
    assert bool(outside.any()) and float(grad[outside].abs().max()) == 0.0


def test_rounding_and_padding_keep_the_function():
    """TT-SVD rounding of a train that is secretly rank 2 (padded to 4) is exact; padding/where keep values."""
    r, d, n = 2, 4, 5
    small = FunctionalTT.random(r, d, n, 2, _gen(3))
    big = small.padded([4, 4, 4])
    basis = _basis("legendre", n, torch.zeros(r, d, dtype=DTYPE), torch.ones(r, d, dtype=DTYPE))
    bv = basis.evaluate(torch.randn(r, 30, d, generator=_gen(4), dtype=DTYPE))
    ref = small.value_and_grad(bv)[0]
    assert torch.allclose(big.value_and_grad(bv)[0], ref, atol=1e-13)
    big.round(1e-10, 10)
    assert big.ranks == [2, 2, 2]
    assert torch.allclose(big.value_and_grad(bv)[0], ref, atol=1e-12)
    other = FunctionalTT.random(r, d, n, 3, _gen(5))
    mixed = small.where(torch.tensor([True, False]), other)
    assert torch.allclose(
        mixed.value_and_grad(bv)[0], torch.stack([ref[0], other.value_and_grad(bv)[0][1]]), atol=1e-13
    )


# ---------------------------------------------------------------------------------------------
# 2. The continuity-equation fit: exact velocities of Gaussian paths.
# ---------------------------------------------------------------------------------------------


def gaussian_path(d: int, t: float, n: int, seed: int, corr: float = 0.0):
    """Reference N(0, I) -> target N(m, S) along the geometric path, at time t.

    pi_t = N(mu_t, P_t^{-1}) with precision P_t = (1 - t) I + t S^{-1} and P_t mu_t = t S^{-1} m.
    The minimal (gradient) velocity of a Gaussian path is affine: with d/dt P = S^{-1} - I,
    v(x) = mu_t' + A (x - mu_t) where A solves the Lyapunov equation A P^{-1} + P^{-1} A = -P^{-1} P' P^{-1}
    (A symmetric), i.e. A = -(1/2) P^{-1} P' in the commuting (diagonal) case; and
    mu_t' = P^{-1}(S^{-1} m - P' mu_t).
    Returns samples x (1, n, d), drift grad log pi_t, g = log target - log ref, the exact velocity.
    """
    gen = _gen(seed)
    m = torch.linspace(1.0, 3.0, d, dtype=DTYPE)
    sd = torch.linspace(0.5, 1.5, d, dtype=DTYPE)
    corr_mat = torch.full((d, d), corr, dtype=DTYPE) + (1 - corr) * torch.eye(d, dtype=DTYPE)
    cov = sd[:, None] * corr_mat * sd[None, :]
    s_inv = torch.linalg.inv(cov)
    eye = torch.eye(d, dtype=DTYPE)
    prec = (1 - t) * eye + t * s_inv
    dprec = s_inv - eye
    cov_t = torch.linalg.inv(prec)
    mu = cov_t @ (t * s_inv @ m)
    dmu = cov_t @ (s_inv @ m - dprec @ mu)
    # Lyapunov: A C + C A = -C P' C with C = cov_t, solved in C's eigenbasis
    evals, evecs = torch.linalg.eigh(cov_t)
    rhs = -evecs.T @ cov_t @ dprec @ cov_t @ evecs
    a_mat = evecs @ (rhs / (evals[:, None] + evals[None, :])) @ evecs.T
    x = mu + torch.randn(1, n, d, generator=gen, dtype=DTYPE) @ torch.linalg.cholesky(cov_t).T
    drift = -(x - mu) @ prec
    log_target = -0.5 * ((x - m) @ s_inv * (x - m)).sum(-1)
    g = log_target + 0.5 * (x**2).sum(-1)
    v = dmu + (x - mu) @ a_mat
    return x, drift, g, v


def _rhs(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (w * g).sum(-1, keepdim=True) - g


def test_exact_velocity_is_a_solution_of_the_fitted_equation():
    """Sanity of the PDE as coded: the exact affine velocity (grad of a quadratic) zeroes the residual."""
    x, drift, g, v = gaussian_path(3, 0.4, 4000, 0, corr=0.5)
    # For v = dmu + A (x - mu) the divergence is tr A; the residual tr A + <drift, v> + g - C is constant in x.
    a_trace = torch.linalg.lstsq(torch.cat([x[0], torch.ones(4000, 1, dtype=DTYPE)], 1), v[0]).solution[:3].trace()
    lphi = a_trace + (drift * v).sum(-1)
    res = lphi + g
    assert float(res.std()) < 1e-10 * float(g.std())


@pytest.mark.parametrize("d", [1, 3, 10])
def test_additive_fit_recovers_the_exact_gaussian_velocity(d):
    """Diagonal Gaussian path: the exact potential is a sum of quadratics (TT rank 2, in the Legendre
    span inside the box), so the least squares recovers it: residual and velocity error ~ 0 on
    held-out particles (limited by the 1e-10 ridge and rounding)."""
    x, drift, g, v = gaussian_path(d, 0.3, 500, 1)
    x2, drift2, g2, v2 = gaussian_path(d, 0.3, 500, 2)
    w = torch.full((1, 500), 1 / 500, dtype=DTYPE)
    basis = _basis("legendre", 4, x.mean(1), 5 * x.std(1))
    ftt = fit_additive(basis.evaluate(x), drift, _rhs(g, w), w, ridge=1e-10)
    bv2 = basis.evaluate(x2)
    grad = ftt.value_and_grad(bv2)[1]
    assert float((grad - v2).norm() / v2.norm()) < 1e-6
    lphi = ftt.generator(bv2, drift2)
    assert float(weighted_residual(lphi - lphi.mean(), _rhs(g2, w), w)) < 1e-6
    assert all(r <= 2 for r in ftt.ranks)


def test_als_from_random_start_recovers_the_exact_velocity_at_low_rank():
    """ALS over all cores (random rank-3 start, d = 3) reaches the exact additive potential; TT-SVD
    rounding (relative tolerance 1e-4) then finds its rank, 2."""
    x, drift, g, v = gaussian_path(3, 0.6, 1000, 3)
    w = torch.full((1, 1000), 1e-3, dtype=DTYPE)
    basis = _basis("legendre", 4, x.mean(1), 5 * x.std(1))
    ftt = FunctionalTT.random(1, 3, 4, 3, _gen(4))
    out = fit_potential(ftt, basis.evaluate(x), drift, _rhs(g, w), w, n_sweeps=6, ridge=1e-12)
    assert float(out.initial_residual) > 0.5
    assert float(out.residual) < 1e-5
    ftt.round(1e-4, 10)
    assert ftt.ranks == [2, 2]
    grad = ftt.value_and_grad(basis.evaluate(x))[1]
    assert float((grad - v).norm() / v.norm()) < 1e-4


def test_residual_decreases_with_rank():
    """Correlated Gaussian in d = 4: the exact potential is a quadratic with cross terms, of TT ranks
    (3, 4, 3). The fitted residual falls with the rank cap and vanishes at rank 4."""
    x, drift, g, v = gaussian_path(4, 0.5, 600, 5, corr=0.6)
    w = torch.full((1, 600), 1 / 600, dtype=DTYPE)
    basis = _basis("legendre", 3, x.mean(1), 5 * x.std(1))
    bv = basis.evaluate(x)
    residuals = []
    for rank in (1, 2, 3, 4):
        ftt = FunctionalTT.random(1, 4, 3, rank, _gen(6))
        residuals.append(float(fit_potential(ftt, bv, drift, _rhs(g, w), w, n_sweeps=6, ridge=1e-12).residual))
    assert residuals[0] > residuals[1] > residuals[2] > residuals[3]
    assert residuals[0] > 0.1 and residuals[3] < 1e-4


# ---------------------------------------------------------------------------------------------
# 3. The flow step: weights by the change-of-variables formula.
# ---------------------------------------------------------------------------------------------


def _reference_particles(target, n: int, r: int, seed: int):
    reference = sampler.make_reference(target)
    path = sampler.GeometricPath(reference, target)
    gen = _gen(seed)
    x = reference.sample((r, n), gen, DTYPE)
    particles = sampler.Particles(
        x=x,
        log_weights=torch.full((r, n), -math.log(n), dtype=DTYPE),
        log_Z=torch.zeros(r, dtype=DTYPE),
        evaluation=path.evaluate(x, grad=True),
    )
    return path, particles, gen


def _stage(path, particles, gen, t0: float, t1: float, **options):
    r = particles.n_replicas
    flow = TTFlow(**options)
    ctx = sampler.StepContext(
        path=path,
        t=torch.full((r,), t1, dtype=DTYPE),
        t_from=torch.full((r,), t0, dtype=DTYPE),
        step=1,
        generator=gen,
        needs_grad=True,
    )
    return flow, ctx, flow.apply(particles, flow.init(particles, ctx), ctx)


def test_flow_log_weight_increment_is_the_change_of_variables_log_det():
    """The transport's increment equals log|det dT/dx| of its map, computed by autograd (full Jacobian
    and slogdet), and the moved points are T(x); the map is a non-trivial deformation."""
    target = sampler.get_target("double-well")
    path, particles, gen = _reference_particles(target, 300, 2, 0)
    flow, ctx, out = _stage(path, particles, gen, 0.0, 0.05, cross_fit=False)
    st = out.state
    x = particles.x
    y, _, _ = euler_map(st.potential, st.basis, x, st.eps)
    assert torch.allclose(out.particles.x, y, atol=1e-12)
    # per replica: the Jacobian of replica r's map at (the first 40 of) its own particles, by autograd
    logdets = []
    for rep in range(2):

        def f(z, rep=rep):
            return euler_map(st.potential, st.basis, z.reshape(1, 1, 2).expand(2, 1, 2), st.eps)[0][rep, 0]

        jacs = torch.func.vmap(torch.func.jacrev(f))(x[rep, :40])
        logdets.append(torch.linalg.slogdet(jacs)[1])
    logdet = torch.stack(logdets)
    assert torch.allclose(out.log_weight_increment[:, :40], logdet, atol=1e-10)
    assert float(logdet.abs().max()) > 1e-2  # the check is not vacuous
    assert float((out.particles.x - x).norm(dim=-1).max()) > 0.1


def test_flow_weights_are_exact_importance_weights_by_quadrature():
    """E_{pi_t}[pi_t'(T x) |det dT(x)|] / Z_t = Z_t' / Z_t for a bijective T: check the first stage of
    the double well (t: 0 -> 0.02, where the fitted velocity is large and cubic) by quadrature on a
    fine grid. The map is a local diffeomorphism at the particles; where it folds (far outside the
    particles), pi_t carries negligible mass."""
    target = sampler.get_target("double-well")
    path, particles, gen = _reference_particles(target, 2000, 1, 0)
    flow, ctx, out = _stage(path, particles, gen, 0.0, 0.02, cross_fit=False)
    st = out.state
    assert float(out.info["flow_scale"]) > 0.01
    g1 = torch.linspace(-16, 16, 1601, dtype=DTYPE)
    g2 = torch.linspace(-12, 12, 241, dtype=DTYPE)
    grid = torch.stack(torch.meshgrid(g1, g2, indexing="ij"), -1).reshape(1, -1, 2)
    y, log_det, _ = euler_map(st.potential, st.basis, grid, st.eps)
    ev0, ev1 = path.evaluate(grid), path.evaluate(y)
    t0, t1 = torch.zeros(1, dtype=DTYPE), torch.full((1,), 0.02, dtype=DTYPE)
    cell = math.log(float((g1[1] - g1[0]) * (g2[1] - g2[0])))
    folds = ~torch.isfinite(log_det)
    p0 = path.log_prob(ev0, t0)
    assert float(torch.logsumexp(p0.masked_fill(~folds, -math.inf), -1) - torch.logsumexp(p0, -1)) < math.log(1e-6)
    log_zt = torch.logsumexp(p0, -1) + cell
    log_zt1 = torch.logsumexp(path.log_prob(ev0, t1), -1) + cell
    log_ew = torch.logsumexp((path.log_prob(ev1, t1) + log_det).masked_fill(folds, -math.inf), -1) + cell - log_zt
    assert abs(float(log_ew - (log_zt1 - log_zt))) < 1e-6


def test_flow_moves_particles_toward_the_next_density_on_a_gaussian():
    """On a Gaussian path the fitted flow is (nearly) exact: the stage's conditional ESS with the flow
    is ~1 (the Euler step's O(h^2) error remains) where plain reweighting gives < 0.8; the increment's
    variance falls by > 95%. The reported statistics are present and sane."""
    target = sampler.targets.Gaussian(mean=np.full(4, 2.0), scale=np.linspace(0.6, 1.4, 4))
    reference = sampler.GaussianReference(4, 0.0, 1.0)
    path = sampler.GeometricPath(reference, target)
    gen = _gen(0)
    x = reference.sample((2, 1000), gen, DTYPE)
    particles = sampler.Particles(
        x=x,
        log_weights=torch.full((2, 1000), -math.log(1000), dtype=DTYPE),
        log_Z=torch.zeros(2, dtype=DTYPE),
        evaluation=path.evaluate(x, grad=True),
    )
    flow, ctx, out = _stage(path, particles, gen, 0.0, 0.1)
    info = out.info
    assert torch.all(info["cess_no_flow"] < 0.8)
    assert torch.all(info["cess_flow"] > 0.98)
    assert torch.all(info["flow_share"] > 0.95)
    assert torch.all(info["tt_residual"] < 0.05)
    assert torch.all(info["flow_scale"] == 1.0)
    assert torch.all(info["not_moved"] == 0.0)


# ---------------------------------------------------------------------------------------------
# 4. tt-smc: log Z and samples against exact answers.
# ---------------------------------------------------------------------------------------------


def far_gaussian() -> sampler.targets.Gaussian:
    """d = 10, mean 3 in every coordinate (3 sd of the N(0, I) reference away), scales 0.5 .. 1.5."""
    return sampler.targets.Gaussian(mean=np.full(10, 3.0), scale=np.linspace(0.5, 1.5, 10))


@pytest.mark.slow
@pytest.mark.parametrize(
    "target, options",
    [
        pytest.param(
            far_gaussian, dict(reference_scale=1.0, reference_loc=0.0, target_ess=0.5), id="gaussian-d10-mean3"
        ),
        pytest.param(lambda: sampler.get_target("double-well"), dict(), id="double-well"),
    ],
)
def test_tt_smc_log_z_within_three_standard_errors(target, options):
    """Pooled log Z within 3 standard errors of the exact value, R = 16 replicas of N = 400.

    The between-replica standard error has 15 degrees of freedom (P(|t_15| > 3) ~ 0.009). With
    cross-fitting no particle's map depends on itself, so the remaining adaptivity bias (boxes,
    step lengths and schedule chosen from the particles) is O(1/N), small against the error bar.
    """
    tgt = target()
    res = sampler.sample(
        tgt, method="tt-smc", n_particles=400, n_replicas=16, seed=2024, dtype=DTYPE, n_steps=2, **options
    )
    se = res.log_Z_stderr
    assert 0 < se < 0.2
    assert abs(res.log_Z - tgt.log_Z) < 3 * se, f"log Z {res.log_Z:.4f} +- {se:.4f} vs exact {tgt.log_Z:.4f}"


def _mean_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.cdist(a, b).mean())


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact O(N^2) energy distance (V-statistic): E|X-Y| - E|X-X'|/2 - E|Y-Y'|/2."""
    return _mean_distance(x, y) - 0.5 * _mean_distance(x, x) - 0.5 * _mean_distance(y, y)


MIX_R, MIX_N = 8, 600


def two_mode_mixture() -> sampler.targets.GaussianMixture:
    """2D mixture of two equal-weight Gaussians (std 0.5) at (-1.5, 0) and (1.5, 0.5)."""
    return sampler.targets.GaussianMixture(np.array([[-1.5, 0.0], [1.5, 0.5]]), std=0.5)


@pytest.mark.slow
def test_tt_smc_samples_match_exact_2d_mixture():
    """Energy distance of the samples to exact draws, averaged over R = 8 replicas, against the null
    distribution of the same statistic for two exact sets (as in test_kernels.py).

    Null: 2 seeds x 8 pairs of exact sets give its mean mu0 and per-pair sd; the replica average has
    sd sd1 / sqrt(8). SMC samples are not iid: after resampling at ESS e_k a set behaves like
    ~ N e_k distinct draws, and the between-mode split carries the noise of every stage, so the
    statistic's mean and spread grow by at most f = 1 + sum_k (1 / e_k - 1) (e_k: smallest ESS over
    replicas at stage k). Bound: f (mu0 + 4 sd0). The mode weight (P(x1 > 0) = 1/2) is checked
    against the replicas' spread too.
    """
    target = two_mode_mixture()
    null = []
    for seed in (500, 501):
        gen = _gen(seed)
        a = target.sample(MIX_R * MIX_N, gen, dtype=DTYPE).reshape(MIX_R, MIX_N, 2)
        b = target.sample(MIX_R * MIX_N, gen, dtype=DTYPE).reshape(MIX_R, MIX_N, 2)
        null += [energy_distance(a[r], b[r]) for r in range(MIX_R)]
    mu0, sd0 = float(np.mean(null)), float(np.std(null, ddof=1) / math.sqrt(MIX_R))

    res = sampler.sample(target, method="tt-smc", n_particles=MIX_N, n_replicas=MIX_R, seed=3, dtype=DTYPE, n_steps=2)
    exact = target.sample(MIX_R * MIX_N, _gen(600), dtype=DTYPE).reshape(MIX_R, MIX_N, 2)
    stat = float(np.mean([energy_distance(res.samples[r], exact[r]) for r in range(MIX_R)]))
    e = res.stats["ess"].min(dim=1).values
    f = float(1 + (1 / e - 1).sum())
    bound = f * (mu0 + 4 * sd0)
    assert stat < bound, f"energy distance {stat:.5f} vs bound {bound:.5f} (null {mu0:.5f} +- {sd0:.5f}, f {f:.2f})"
    p = (res.samples[..., 0] > 0).double().mean(-1).numpy()
    assert abs(p.mean() - 0.5) < 4 * max(p.std(ddof=1), 0.5 / math.sqrt(MIX_N)) / math.sqrt(MIX_R)
    # the flow did part of the work
    assert float(np.nanmedian(res.stats["flow_share"].numpy())) > 0.2


# ---------------------------------------------------------------------------------------------
# 5. Integration: registration, options, statistics, dtypes.
# ---------------------------------------------------------------------------------------------


def test_registered_and_built_from_the_engine_pieces():
    assert "tt-smc" in sampler.list_methods()
    assert "tt-flow" in sampler.list_transports()
    pipe = sampler.method("tt-smc", n_steps=3, basis="fourier", n_basis=9)
    kinds = [type(s).__name__ for s in pipe.steps]
    assert kinds == ["TTFlow", "Resample", "MALA"]
    assert [type(s).__name__ for s in sampler.method("tt-smc", n_steps=0).steps] == ["TTFlow", "Resample"]
    assert isinstance(sampler.transport("tt-flow", rank=2), TTFlow)


@pytest.mark.parametrize(
    "options",
    [
        dict(basis="chebyshev"),
        dict(n_basis=1),
        dict(rank=0),
        dict(min_jacobian=1.0),
        dict(flow_until=1.5),
        dict(window=-0.1),
        dict(n_steps=-1),
        dict(kernel="nuts"),
        dict(ridge=-1.0),
    ],
)
def test_bad_options_raise_configuration_errors(options):
    with pytest.raises(ConfigurationError):
        sampler.method("tt-smc", **options)


def test_run_reports_tt_statistics_and_respects_dtype():
    """float32 run: samples come back in float32, weights in float64; per-stage TT statistics exist;
    every target/gradient evaluation is counted (the flow's one per particle and stage, plus MALA's)."""
    target = sampler.get_target("double-well")
    res = sampler.sample(
        target, method="tt-smc", n_particles=200, n_replicas=2, seed=0, dtype=torch.float32, n_steps=1, progress=False
    )
    assert res.samples.dtype == torch.float32 and res.log_weights.dtype == torch.float64
    st = res.stats
    for key in (
        "tt_rank",
        "tt_residual",
        "tt_residual_fit",
        "flow_scale",
        "flow_share",
        "cess_flow",
        "cess_no_flow",
        "outside_box",
        "not_moved",
    ):
        assert key in st and st[key].shape == st["t"].shape, key
    k = len(res.steps)
    per_stage = 2 * 200  # R x N particles
    # initial evaluation + per stage: flow (1) + MALA sweep (1)
    assert res.n_grad_evals == per_stage * (1 + 2 * k)
    assert res.n_target_evals == res.n_grad_evals
    assert math.isfinite(res.log_Z)


def test_flow_until_turns_the_flow_off():
    target = sampler.get_target("double-well")
    res = sampler.sample(
        target, method="tt-smc", n_particles=100, n_replicas=1, seed=0, n_steps=1, flow_until=0.0, progress=False
    )
    assert torch.all(res.stats["flow_scale"] == 0)
    assert res.n_grad_evals == 100 * (1 + len(res.steps))
