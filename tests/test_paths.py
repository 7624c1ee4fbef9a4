"""Gaussian reference, geometric path evaluation and bookkeeping, path evaluations and particles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import sampler
from sampler.core.particles import ess
from sampler.errors import ConfigurationError, TargetError
from sampler.paths import EvaluationCounter, GaussianReference, GeometricPath, PathEvaluation
from sampler.targets import Gaussian


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# GaussianReference
# --------------------------------------------------------------------------------------------

REFERENCES = [
    (3, 0.0, 1.0),
    (3, 0.5, 2.0),
    (4, [1.0, -2.0, 0.0, 3.5], [0.5, 1.0, 2.0, 0.1]),
    (2, torch.tensor([1.0, -1.0]), torch.tensor([3.0, 0.25])),
    (1, -7.0, 0.3),
]


def np_params(dim, loc, scale):
    loc = np.broadcast_to(np.asarray(loc, dtype=np.float64), (dim,))
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (dim,))
    return loc, scale


@pytest.mark.parametrize("dim, loc, scale", REFERENCES)
def test_reference_log_prob_matches_scipy(dim, loc, scale):
    ref = GaussianReference(dim, loc, scale)
    mu, sd = np_params(dim, loc, scale)
    x = torch.randn(5, 7, dim, generator=gen(0), dtype=torch.float64) * 3
    got = ref.log_prob(x)
    assert got.shape == (5, 7)
    assert got.dtype == torch.float64
    want = stats.multivariate_normal(mean=mu, cov=np.diag(sd**2)).logpdf(x.numpy().reshape(-1, dim)).reshape(5, 7)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_reference_log_prob_float32_input_is_float64_output():
    ref = GaussianReference(2, 0.0, 2.0)
    x = torch.randn(10, 2, generator=gen(1))
    got = ref.log_prob(x)
    assert got.dtype == torch.float64
    want = stats.multivariate_normal(mean=np.zeros(2), cov=4 * np.eye(2)).logpdf(x.double().numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("dim, loc, scale", REFERENCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_grad_matches_autograd(dim, loc, scale, dtype):
    ref = GaussianReference(dim, loc, scale)
    x = (torch.randn(6, dim, generator=gen(2), dtype=torch.float64) * 2).to(dtype).requires_grad_(True)
    (auto,) = torch.autograd.grad(ref.log_prob(x).sum(), x)
    got = ref.grad_log_prob(x.detach())
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got, auto, rtol=tol, atol=tol)


@pytest.mark.parametrize("dim, loc, scale", REFERENCES)
def test_reference_sample_moments(dim, loc, scale):
    # n iid draws: the sample mean of coordinate k has standard error sd_k / sqrt(n); the sample
    # variance has standard error sd_k^2 sqrt(2 / (n - 1)) (Gaussian). 4.5 standard errors is a
    # two-sided level of ~7e-6 per statistic, ~1e-4 over all statistics of this file.
    n = 200_000
    ref = GaussianReference(dim, loc, scale)
    mu, sd = np_params(dim, loc, scale)
    x = ref.sample((n,), gen(3), torch.float64)
    assert x.shape == (n, dim) and x.dtype == torch.float64
    xs = x.numpy()
    z_mean = (xs.mean(0) - mu) / (sd / math.sqrt(n))
    z_var = (xs.var(0, ddof=1) - sd**2) / (sd**2 * math.sqrt(2 / (n - 1)))
    assert np.abs(z_mean).max() < 4.5, z_mean
    assert np.abs(z_var).max() < 4.5, z_var
    # independent coordinates: off-diagonal correlations ~ N(0, 1/n)
    if dim > 1:
        corr = np.corrcoef(xs.T)[np.triu_indices(dim, 1)]
        assert np.abs(corr).max() < 4.5 / math.sqrt(n), corr


def test_reference_sample_shape_dtype_and_seed():
    ref = GaussianReference(3, 1.0, 2.0)
    a = ref.sample((4, 5), gen(4), torch.float32)
    b = ref.sample((4, 5), gen(4), torch.float32)
    assert a.shape == (4, 5, 3) and a.dtype == torch.float32
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(loc=[0.0, 0.0]),  # wrong length
        dict(loc=[0.0, 0.0, 0.0, 0.0]),
        dict(loc=np.zeros((3, 1))),  # wrong rank
        dict(loc=np.zeros((1, 3))),
        dict(scale=[1.0, 1.0]),
        dict(scale=torch.ones(3, 3)),
        dict(scale=0.0),  # not positive
        dict(scale=-1.0),
        dict(scale=[1.0, 0.0, 2.0]),
        dict(scale=[1.0, -0.5, 2.0]),
        dict(scale=math.nan),  # not finite
        dict(scale=math.inf),
        dict(loc=math.nan),
        dict(loc=[0.0, math.inf, 0.0]),
    ],
)
def test_reference_rejects_bad_parameters(kwargs):
    with pytest.raises(ConfigurationError):
        GaussianReference(3, **kwargs)


# --------------------------------------------------------------------------------------------
# GeometricPath.evaluate: counting, non-finite values, checks of what the target returns
# --------------------------------------------------------------------------------------------


def quadratic(x):
    return -0.5 * (x**2).sum(-1)


def make_path(log_prob=quadratic, dim=2, **kwargs):
    tgt = sampler.target(log_prob=log_prob, dim=dim, name="my-target", **kwargs)
    return GeometricPath(GaussianReference(dim, 0.5, 2.0), tgt)


def test_evaluate_counts_target_and_grad_evaluations():
    path = make_path()
    assert path.counter == EvaluationCounter(0, 0, 0)
    x = torch.randn(3, 4, 2, generator=gen(5), dtype=torch.float64)
    ev = path.evaluate(x)
    assert (path.counter.target_evals, path.counter.grad_evals) == (12, 0)
    assert not ev.has_grad and ev.grad_ref is None and ev.grad_target is None
    ev = path.evaluate(x, grad=True)
    assert (path.counter.target_evals, path.counter.grad_evals) == (24, 12)
    assert ev.has_grad
    path.evaluate(x[0, 0])  # a single point
    assert path.counter.target_evals == 25
    path.evaluate(torch.randn(7, 2, generator=gen(6)), grad=True)
    assert (path.counter.target_evals, path.counter.grad_evals, path.counter.nonfinite) == (32, 19, 0)


def test_evaluate_uses_a_shared_counter():
    counter = EvaluationCounter()
    tgt = sampler.target(log_prob=quadratic, dim=2)
    p1 = GeometricPath(GaussianReference(2), tgt, counter)
    p2 = GeometricPath(GaussianReference(2), tgt, counter)
    p1.evaluate(torch.zeros(5, 2))
    p2.evaluate(torch.zeros(3, 2), grad=True)
    assert (counter.target_evals, counter.grad_evals) == (8, 3)


def test_evaluate_values_and_gradients():
    path = make_path()
    x = torch.randn(3, 4, 2, generator=gen(7), dtype=torch.float64)
    ev = path.evaluate(x, grad=True)
    assert ev.log_target.dtype == torch.float64 and ev.log_ref.dtype == torch.float64
    torch.testing.assert_close(ev.log_target, quadratic(x), rtol=0, atol=0)
    torch.testing.assert_close(ev.log_ref, path.reference.log_prob(x), rtol=0, atol=0)
    torch.testing.assert_close(ev.grad_target, -x, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(ev.grad_ref, path.reference.grad_log_prob(x), rtol=0, atol=0)
    # float32 particles: float64 log densities, float32 gradients
    ev32 = path.evaluate(x.float(), grad=True)
    assert ev32.log_target.dtype == torch.float64 and ev32.log_ref.dtype == torch.float64
    assert ev32.grad_target.dtype == torch.float32 and ev32.grad_ref.dtype == torch.float32


def nasty_log_prob(x):
    """-|x|^2/2, with NaN where x1 < -1, +inf where x1 > 1, and -inf where x2 > 1."""
    lp = quadratic(x)
    lp = torch.where(x[..., 0] < -1, torch.full_like(lp, math.nan), lp)
    lp = torch.where(x[..., 0] > 1, torch.full_like(lp, math.inf), lp)
    return torch.where(x[..., 1] > 1, torch.full_like(lp, -math.inf), lp)


@pytest.mark.parametrize("grad", [False, True])
def test_evaluate_replaces_nan_and_plus_inf(grad):
    # An explicit gradient of ones everywhere, so that the zeroing is visible.
    path = make_path(nasty_log_prob, grad=lambda x: torch.ones_like(x))
    x = torch.randn(4, 50, 2, generator=gen(8), dtype=torch.float64) * 1.5
    raw = nasty_log_prob(x)
    n_bad = int((torch.isnan(raw) | (raw == math.inf)).sum())
    assert n_bad > 0 and int((raw == -math.inf).sum()) > 0
    ev = path.evaluate(x, grad=grad)
    assert path.counter.nonfinite == n_bad
    assert not torch.isnan(ev.log_target).any()
    assert not (ev.log_target == math.inf).any()
    dead = ~torch.isfinite(raw)
    assert (ev.log_target[dead] == -math.inf).all()
    torch.testing.assert_close(ev.log_target[~dead], raw[~dead], rtol=0, atol=0)
    if grad:
        assert (ev.grad_target[dead] == 0).all()
        assert (ev.grad_target[~dead] == 1).all()
    path.evaluate(x, grad=grad)
    assert path.counter.nonfinite == 2 * n_bad


def test_evaluate_zeroes_autograd_gradients_where_density_is_not_finite():
    # NaN values at x1 > 0 whose autograd gradient is still finite (-x): the path must zero it
    # because the density there is treated as zero.
    def log_prob(x):
        poison = torch.where(x[..., 0] > 0, math.nan, 0.0).to(x.dtype)  # constant, no gradient
        return quadratic(x) + poison

    path = make_path(log_prob)
    x = torch.randn(100, 2, generator=gen(9), dtype=torch.float64)
    ev = path.evaluate(x, grad=True)
    bad = x[:, 0] > 0
    assert path.counter.nonfinite == int(bad.sum())
    assert (ev.grad_target[bad] == 0).all()
    torch.testing.assert_close(ev.grad_target[~bad], -x[~bad], rtol=1e-15, atol=1e-15)


def _wrong_shape(x):
    return quadratic(x)[..., None]


def _flat(x):
    return quadratic(x).reshape(-1)


def _numpy(x):
    return quadratic(x).detach().numpy()


def _float(x):
    return 1.0


def _integer(x):
    return torch.zeros(x.shape[:-1], dtype=torch.int64)


def _boolean(x):
    return torch.ones(x.shape[:-1], dtype=torch.bool)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize(
    "fn, received",
    [
        (_wrong_shape, "(3, 4, 1)"),
        (_flat, "(12,)"),
        (_numpy, "ndarray"),
        (_float, "float"),
        (_integer, "int64"),
        (_boolean, "bool"),
    ],
)
def test_evaluate_rejects_bad_log_prob_output(fn, received, grad):
    path = make_path(fn)
    x = torch.randn(3, 4, 2, generator=gen(10), dtype=torch.float64)
    with pytest.raises(TargetError) as info:
        path.evaluate(x, grad=grad)
    msg = str(info.value)
    assert "my-target" in msg  # names the target
    assert received in msg  # says what came back
    if fn not in (_integer, _boolean):
        assert "(3, 4)" in msg  # and what was expected


def test_evaluate_rejects_bad_gradient_shape():
    path = make_path(quadratic, grad=lambda x: torch.zeros(x.shape[:-1], dtype=x.dtype))
    x = torch.randn(3, 4, 2, generator=gen(11), dtype=torch.float64)
    with pytest.raises(TargetError) as info:
        path.evaluate(x, grad=True)
    msg = str(info.value)
    assert "my-target" in msg and "(3, 4)" in msg and "(3, 4, 2)" in msg


# --------------------------------------------------------------------------------------------
# The path at time t
# --------------------------------------------------------------------------------------------


def dead_evaluation():
    """A PathEvaluation with -inf target values at some particles, and gradients."""
    g = gen(12)
    log_ref = torch.randn(2, 6, generator=g, dtype=torch.float64) - 3
    log_target = torch.randn(2, 6, generator=g, dtype=torch.float64) * 5
    log_target[0, 1] = log_target[1, 4] = log_target[1, 5] = -math.inf
    grad_ref = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    grad_target = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    return PathEvaluation(log_ref, log_target, grad_ref, grad_target)


def test_log_prob_at_endpoints_is_exact():
    ev = dead_evaluation()
    assert torch.equal(GeometricPath.log_prob(ev, 0.0), ev.log_ref)
    assert torch.equal(GeometricPath.log_prob(ev, 1.0), ev.log_target)
    assert torch.equal(GeometricPath.grad_log_prob(ev, 0.0), ev.grad_ref)
    assert torch.equal(GeometricPath.grad_log_prob(ev, 1.0), ev.grad_target)
    for t in (0, 1, np.float64(0.0), np.float64(1.0)):  # ints and numpy scalars too
        assert not torch.isnan(GeometricPath.log_prob(ev, t)).any()


@pytest.mark.parametrize("t", [1e-12, 0.3, 0.5, 1 - 1e-12])
def test_log_prob_in_between(t):
    ev = dead_evaluation()
    got = GeometricPath.log_prob(ev, t)
    assert not torch.isnan(got).any()
    dead = ev.log_target == -math.inf
    assert (got[dead] == -math.inf).all()
    want = (1 - t) * ev.log_ref + t * ev.log_target
    torch.testing.assert_close(got[~dead], want[~dead], rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(
        GeometricPath.grad_log_prob(ev, t), (1 - t) * ev.grad_ref + t * ev.grad_target, rtol=1e-15, atol=1e-15
    )


def test_grad_log_prob_without_gradients_raises():
    ev = PathEvaluation(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        GeometricPath.grad_log_prob(ev, 0.5)


@pytest.mark.parametrize("t_from, t_to", [(0.0, 0.5), (0.0, 1.0), (0.2, 0.7), (0.5, 1.0), (0.5, 0.5), (1.0, 1.0)])
def test_log_weight_increment_same_points(t_from, t_to):
    ev = dead_evaluation()
    path = make_path(dim=3)
    inc = path.log_weight_increment(ev, t_from, ev, t_to)
    assert inc.dtype == torch.float64 and inc.shape == (2, 6)
    assert not torch.isnan(inc).any()
    dead = ev.log_target == -math.inf
    if t_to > 0:  # zero density at the end (and, for t_from > 0, at the start too)
        assert (inc[dead] == -math.inf).all()
    want = (t_to - t_from) * (ev.log_target - ev.log_ref)
    torch.testing.assert_close(inc[~dead], want[~dead], rtol=1e-12, atol=1e-12)


def test_log_weight_increment_between_points():
    path = make_path(dim=3)
    a, b = dead_evaluation(), dead_evaluation()
    b = PathEvaluation(b.log_ref.flip(1), b.log_target.flip(1))  # other points, other dead ones
    inc = path.log_weight_increment(a, 0.3, b, 0.6)
    assert not torch.isnan(inc).any()
    dead = (a.log_target == -math.inf) | (b.log_target == -math.inf)
    assert (inc[dead] == -math.inf).all()
    want = path.log_prob(b, 0.6) - path.log_prob(a, 0.3)
    torch.testing.assert_close(inc[~dead], want[~dead], rtol=0, atol=0)
    # A point dead at its start cannot gain weight, even if its end point is alive.
    alive = PathEvaluation(b.log_ref, torch.zeros_like(b.log_target))
    inc = path.log_weight_increment(a, 0.3, alive, 0.6)
    assert not torch.isnan(inc).any()
    assert (inc[a.log_target == -math.inf] == -math.inf).all()
    assert torch.isfinite(inc[a.log_target > -math.inf]).all()


# --------------------------------------------------------------------------------------------
# PathEvaluation.where / gather, Particles.gather, ess
# --------------------------------------------------------------------------------------------


def test_path_evaluation_where():
    a, b = dead_evaluation(), dead_evaluation()
    b = PathEvaluation(b.log_ref + 100, b.log_target + 100, b.grad_ref + 100, b.grad_target + 100)
    mask = torch.tensor([[True, False, True, False, False, True], [False] * 6])
    ev = a.where(mask, b)
    for name in ("log_ref", "log_target", "grad_ref", "grad_target"):
        got, va, vb = getattr(ev, name), getattr(a, name), getattr(b, name)
        m = mask if got.dim() == 2 else mask[..., None].expand_as(got)
        assert torch.equal(got[m], va[m]) and torch.equal(got[~m], vb[~m]), name
    # without gradients on one side, the result has none
    nograd = PathEvaluation(b.log_ref, b.log_target)
    ev = a.where(mask, nograd)
    assert not ev.has_grad
    assert torch.equal(ev.log_ref, torch.where(mask, a.log_ref, b.log_ref))


def test_path_evaluation_gather():
    ev = dead_evaluation()
    idx = torch.tensor([[5, 5, 0, 1, 2, 3], [4, 0, 0, 0, 1, 4]])
    got = ev.gather(idx)
    rows = torch.arange(2)[:, None]
    assert torch.equal(got.log_ref, ev.log_ref[rows, idx])
    assert torch.equal(got.log_target, ev.log_target[rows, idx])
    assert torch.equal(got.grad_ref, ev.grad_ref[rows, idx])
    assert torch.equal(got.grad_target, ev.grad_target[rows, idx])
    nograd = PathEvaluation(ev.log_ref, ev.log_target).gather(idx)
    assert nograd.grad_ref is None and nograd.grad_target is None


def test_particles_gather_reorders_everything():
    r, n, d = 2, 5, 3
    g = gen(13)
    x = torch.randn(r, n, d, generator=g, dtype=torch.float64)
    path = make_path(dim=d)
    lw = torch.log_softmax(torch.randn(r, n, generator=g, dtype=torch.float64), -1)
    parts = sampler.Particles(
        x=x,
        log_weights=lw,
        log_Z=torch.tensor([1.5, -2.0], dtype=torch.float64),
        evaluation=path.evaluate(x, grad=True),
        extras={"tag": torch.arange(r * n).reshape(r, n), "vec": torch.randn(r, n, 4, generator=g)},
    )
    assert (parts.n_replicas, parts.n_particles, parts.dim) == (r, n, d)
    idx = torch.tensor([[4, 4, 0, 2, 1], [0, 0, 0, 0, 3]])
    out = parts.gather(idx)
    rows = torch.arange(r)[:, None]
    assert torch.equal(out.x, x[rows, idx])
    assert torch.equal(out.extras["tag"], parts.extras["tag"][rows, idx])
    assert torch.equal(out.extras["vec"], parts.extras["vec"][rows, idx])
    assert torch.equal(out.evaluation.log_target, parts.evaluation.log_target[rows, idx])
    assert torch.equal(out.evaluation.grad_target, parts.evaluation.grad_target[rows, idx])
    torch.testing.assert_close(out.log_weights, torch.full((r, n), -math.log(n), dtype=torch.float64))
    assert torch.equal(out.log_Z, parts.log_Z)
    # the original is unchanged (immutable state)
    assert torch.equal(parts.log_weights, lw)


def test_ess():
    n = 37
    np.testing.assert_allclose(ess(torch.zeros(4, n, dtype=torch.float64)).numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(ess(torch.full((n,), 123.0, dtype=torch.float64)).numpy(), 1.0, rtol=1e-12)
    one = torch.full((3, n), -math.inf, dtype=torch.float64)
    one[torch.arange(3), torch.tensor([0, 17, n - 1])] = torch.tensor([-5.0, 0.0, 800.0], dtype=torch.float64)
    np.testing.assert_allclose(ess(one).numpy(), 1 / n, rtol=1e-12)
    dead = torch.full((2, n), -math.inf, dtype=torch.float64)
    assert (ess(dead) == 0).all()
    # Kish's formula (sum w)^2 / (N sum w^2) on random weights
    lw = torch.randn(5, n, generator=gen(14), dtype=torch.float64) * 2
    w = np.exp(lw.numpy())
    np.testing.assert_allclose(ess(lw).numpy(), w.sum(-1) ** 2 / (n * (w**2).sum(-1)), rtol=1e-12)


def test_particles_ess_method():
    x = torch.zeros(2, 4, 1, dtype=torch.float64)
    lw = torch.log(torch.tensor([[0.25] * 4, [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64))
    ev = PathEvaluation(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64))
    parts = sampler.Particles(x=x, log_weights=lw, log_Z=torch.zeros(2, dtype=torch.float64), evaluation=ev)
    np.testing.assert_allclose(parts.ess().numpy(), [1.0, 0.25], rtol=1e-12)
    assert parts.extras == {}


def test_path_with_library_gaussian_target():
    # evaluate() works with the built-in targets and their analytic gradients
    tgt = Gaussian(mean=[1.0, 2.0], scale=[0.5, 3.0])
    path = GeometricPath(GaussianReference(2), tgt)
    x = torch.randn(3, 10, 2, generator=gen(15), dtype=torch.float64)
    ev = path.evaluate(x, grad=True)
    torch.testing.assert_close(ev.log_target, tgt.log_prob(x), rtol=0, atol=0)
    torch.testing.assert_close(ev.grad_target, tgt.grad_log_prob(x), rtol=0, atol=0)
    assert path.counter.grad_evals == 30 and path.counter.target_evals == 30
