"""The Laplace approximation of a target: ``N(MAP, H^{-1})`` as a path's reference.

The MAP is found by L-BFGS from several starts at once -- the reference's centre and draws from
it -- batched over the starts, each with its own curvature pairs and line search. The best end
point is polished by one Newton step, and ``H = -grad^2 log p`` there comes from autograd (one
Hessian-vector product per dimension), or from central differences of the gradient if the
target cannot be differentiated twice. A positive definite ``H`` gives a dense Gaussian with
Cholesky factor ``chol(H^{-1})``; otherwise a diagonal one (``1 / H_ii`` where positive, the
starting reference's variance elsewhere) with a warning; a fit that finds no finite MAP keeps
the starting reference, with a warning.

The other end points serve a check of unimodality: one where the gradient vanishes (Newton
decrement ``g^T H^{-1} g`` below :data:`STATIONARY`) and which lies outside the fitted
Gaussian's typical ball (squared Mahalanobis distance above ``d``) is another maximum
(:attr:`LaplaceFit.other_maxima`). :func:`find_maxima` is the same batched search without the
Hessian (gradients only, any dimension): the maxima it reaches, for the ``"spread"`` reference.

Every evaluation goes through a :class:`GeometricPath`'s counter, so it counts in the run's
``n_target_evals`` / ``n_grad_evals`` (the Hessian by autograd as ``d`` gradient evaluations).
"""

from __future__ import annotations

import math
import warnings

import attrs
import torch
from torch import Tensor

from sampler.core.paths import EvaluationCounter, GaussianReference, GeometricPath
from sampler.errors import SamplerError

__all__ = ["LaplaceFit", "fit_laplace", "find_maxima", "MAXIMA_RANGE"]


@attrs.frozen
class LaplaceFit:
    """The outcome of :func:`fit_laplace`.

    Attributes:
        reference: the fitted Gaussian (or the starting one if the fit failed).
        kind: ``"dense"`` (positive definite Hessian), ``"diagonal"`` (fallback) or ``"failed"``.
        mode: ``(d,)``, the MAP found, in the fit's dtype (``None`` if the fit failed).
        log_prob: the target's log density at the mode (NaN if failed).
        other_maxima: how many starts ended at a maximum other than ``mode`` (a dense fit only;
            0 otherwise). More than 0: the target is multimodal and the fit describes one mode.
    """

    reference: GaussianReference
    kind: str
    mode: Tensor | None = None
    log_prob: float = math.nan
    other_maxima: int = 0


#: Default number of L-BFGS starts: the prior's centre and ``N_STARTS - 1`` draws from it.
N_STARTS = 8

#: Squared Newton decrement ``g^T H^{-1} g`` below which an L-BFGS end point counts as a maximum
#: (under the quadratic model it is within ``STATIONARY / 2`` nats of the top).
STATIONARY = 1e-4


def fit_laplace(
    target,
    start: GaussianReference,
    counter: EvaluationCounter,
    generator: torch.Generator,
    n_starts: int = N_STARTS,
    max_iter: int = 500,
    dtype: torch.dtype = torch.float64,
) -> LaplaceFit:
    """Fit ``N(MAP, H^{-1})`` to ``target``, counting evaluations in ``counter``.

    Args:
        target: the :class:`~sampler.targets.base.Target`.
        start: the reference the starts come from (its centre, then ``n_starts - 1`` draws).
        counter: where target and gradient evaluations are counted.
        generator: draws the starts (on the device the fit runs on).
        n_starts: starting points optimized together.
        max_iter: L-BFGS iterations per start (each evaluates at least one gradient).
        dtype: the dtype the target is evaluated in (a run's own: a target may support only one).

    Computations are in ``dtype`` on ``generator``'s device.
    """
    path = GeometricPath(start, target, counter)
    d = target.dim
    searched = _search(path, start, generator, n_starts, max_iter, dtype, centre=True)
    if searched is None:
        return _failed(start, "the target's log density is not finite at any start")
    ends, lps, grads, _ = searched
    best = int(lps.argmax())
    mode, lp = ends[best], float(lps[best])
    if not math.isfinite(lp):
        return _failed(start, "L-BFGS found no finite maximum")
    try:
        hess = _neg_hessian(path, mode)
    except SamplerError:
        raise
    except Exception:  # noqa: BLE001 -- autograd cannot differentiate the target twice
        hess = _neg_hessian_fd(path, mode)
    mode, lp = _newton(path, mode, lp, hess)
    fit = _gaussian(start, mode, lp, hess, d)
    if fit.kind == "dense":
        finite = torch.isfinite(lps)
        fit = attrs.evolve(fit, other_maxima=_other_maxima(ends[finite], grads[finite], fit))
    return fit


def find_maxima(
    target,
    start: GaussianReference,
    counter: EvaluationCounter,
    generator: torch.Generator,
    n_starts: int = N_STARTS,
    max_iter: int = 500,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The maxima that L-BFGS reaches from ``n_starts`` draws from ``start``: ``(M, d)``, one row per start
    that ended at one (a maximum reached from several starts appears as often).

    The search of :func:`fit_laplace` without the Hessian, so it costs gradients only (no
    ``O(d^2)`` work) and suits any dimension. The starts are random draws only (not the centre,
    which on a symmetric mixture is a saddle point that L-BFGS cannot leave). An end point counts as a
    maximum if its Newton decrement under L-BFGS's own inverse-Hessian estimate is below
    :data:`STATIONARY` and its log density is within :data:`MAXIMA_RANGE` nats of the best end
    point's. ``M`` is 0 if no start has a finite log density. Evaluations count in ``counter``;
    the arguments are as :func:`fit_laplace`'s.
    """
    path = GeometricPath(start, target, counter)
    searched = _search(path, start, generator, n_starts, max_iter, dtype, centre=False)
    if searched is None:
        return torch.zeros(0, target.dim, dtype=dtype, device=generator.device)
    ends, lps, _, decrements = searched
    return _maxima(ends, lps, decrements)


#: The end points whose log density is more than this many nats below the best one's are not
#: counted by :func:`find_maxima` (a mode that low holds under e^-10 of the best's mass if they are
#: alike in width: a run of 20,000 particles puts about one there).
MAXIMA_RANGE = 10.0


def _search(
    path: GeometricPath,
    start: GaussianReference,
    generator: torch.Generator,
    n_starts: int,
    max_iter: int,
    dtype: torch.dtype,
    centre: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """L-BFGS from ``n_starts`` points, ``start``'s centre first if ``centre`` and draws from it:
    :func:`_lbfgs`'s four outputs, from the starts with a finite log density (``None`` if none)."""
    d = path.target.dim
    x0 = start.sample((max(n_starts - centre, 0),), generator, dtype)
    if centre:
        x0 = torch.cat([torch.as_tensor(start.loc, dtype=dtype, device=x0.device).expand(1, d), x0])
    lp0 = path.evaluate(x0).log_target
    x0 = x0[torch.isfinite(lp0)]
    return None if x0.shape[0] == 0 else _lbfgs(path, x0, max_iter)


def _maxima(ends: Tensor, lps: Tensor, decrements: Tensor) -> Tensor:
    """The end points ``(S, d)`` that are maxima (:func:`find_maxima`'s rule)."""
    keep = torch.isfinite(lps) & (decrements < STATIONARY)
    if bool(keep.any()):
        keep &= lps >= lps[keep].max() - MAXIMA_RANGE
    return ends[keep]


def _failed(start: GaussianReference, why: str) -> LaplaceFit:
    warnings.warn(f"Laplace reference: {why}; keeping the prior reference", stacklevel=3)
    return LaplaceFit(start, "failed")


def _lbfgs(path: GeometricPath, x0: Tensor, max_iter: int, history: int = 20) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Maximize from every start ``x0`` ``(S, d)``: the end points ``(S, d)``, their log densities
    ``(S,)``, their gradients ``(S, d)`` and their Newton decrements ``g^T B g`` ``(S,)`` under
    each start's final inverse-Hessian estimate ``B`` (``+inf`` where the density is not finite).

    L-BFGS (Nocedal & Wright 2006, Algorithm 7.4, two-loop recursion) run independently for each
    start but batched over them: each start has its own curvature pairs, backtracking (Armijo)
    line search and stopping test, so every start ends at its own stationary point, which the
    check for other maxima relies on. (``torch.optim.LBFGS`` would treat the S starts as one
    problem, coupling their line searches, and constructing any ``torch.optim`` optimizer imports
    TorchDynamo, a second in a fresh process.) A start stops when its gradient's largest entry is
    below ``1e-9`` or a step gains less than ``1e-13`` of its log density; a log density that is
    NaN or -inf at a trial point fails the line search. NaN at an end point is reported as -inf.
    """
    x = x0.clone()
    f, g = _negative(path, x)  # minimize f = -log p
    active = torch.isfinite(f)
    pairs: list[tuple[Tensor, Tensor, Tensor]] = []  # (s, y, rho); rho = 0 drops a start's pair
    gamma = 1.0 / g.abs().sum(-1).clamp_min(1.0)  # first step: at most a unit step (as torch's LBFGS)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        direction = _two_loop(g, pairs, gamma)
        descent = (g * direction).sum(-1)
        steep = ~(descent < 0)  # not a descent direction: restart from the scaled gradient
        direction = torch.where(steep[:, None], -gamma[:, None] * g, direction)
        descent = torch.where(steep, -gamma * g.square().sum(-1), descent)
        direction = direction * active[:, None]
        step = torch.ones_like(descent)  # in the positions' dtype (f, the log density, may be wider)
        pending, new_f, new_g = active.clone(), f.clone(), g.clone()
        for _ in range(_MAX_HALVINGS):
            idx = pending.nonzero().squeeze(-1)
            if idx.numel() == 0:
                break
            trial_f, trial_g = _negative(path, x[idx] + step[idx, None] * direction[idx])
            ok = torch.isfinite(trial_f) & (trial_f <= f[idx] + _ARMIJO * step[idx] * descent[idx])
            new_f[idx] = torch.where(ok, trial_f, new_f[idx])
            new_g[idx] = torch.where(ok[:, None], trial_g, new_g[idx])
            pending[idx] = ~ok
            step[idx] = torch.where(ok, step[idx], 0.5 * step[idx])
        moved = active & ~pending
        s = (step[:, None] * direction) * moved[:, None]
        y = (new_g - g) * moved[:, None]
        sy = (s * y).sum(-1)
        curved = sy > 1e-12 * s.norm(dim=-1) * y.norm(dim=-1)
        pairs = [*pairs[-(history - 1) :], (s, y, torch.where(curved, 1.0 / sy.clamp_min(1e-300), 0.0))]
        gamma = torch.where(curved, sy / y.square().sum(-1).clamp_min(1e-300), gamma)
        gain = f - new_f
        x = x + s
        f, g = new_f, new_g
        stalled = pending | (gain <= 1e-13 * f.abs().clamp_min(1.0)) | (g.abs().amax(-1) <= 1e-9)
        active = active & ~stalled
    lp = -f
    decrement = -(g * _two_loop(g, pairs, gamma)).sum(-1)
    decrement = torch.where(torch.isfinite(f), decrement, math.inf)
    return x, lp.masked_fill(torch.isnan(lp), -math.inf), -g, decrement


#: Armijo's sufficient-decrease constant and the most step halvings of the line search.
_ARMIJO, _MAX_HALVINGS = 1e-4, 40


def _negative(path: GeometricPath, x: Tensor) -> tuple[Tensor, Tensor]:
    """``-log p`` ``(S,)`` and its gradient ``(S, d)`` at ``x`` (``+inf`` where the density is not finite)."""
    ev = path.evaluate(x, grad=True)
    assert ev.grad_target is not None
    lp = ev.log_target
    return torch.where(torch.isfinite(lp), -lp, math.inf), -ev.grad_target


def _two_loop(g: Tensor, pairs: list[tuple[Tensor, Tensor, Tensor]], gamma: Tensor) -> Tensor:
    """The L-BFGS direction ``-H g`` ``(S, d)`` per start from the curvature pairs (oldest first)."""
    q = g.clone()
    alphas = []
    for s, y, rho in reversed(pairs):
        a = rho * (s * q).sum(-1)
        q = q - a[:, None] * y
        alphas.append(a)
    r = gamma[:, None] * q
    for (s, y, rho), a in zip(pairs, reversed(alphas)):
        b = rho * (y * r).sum(-1)
        r = r + (a - b)[:, None] * s
    return -r


def _other_maxima(ends: Tensor, grads: Tensor, fit: LaplaceFit) -> int:
    """How many of the end points ``(S, d)``, with gradients ``grads``, are maxima outside ``fit``'s typical ball."""
    if ends.shape[0] == 0 or fit.mode is None or fit.reference.scale_tril is None:
        return 0
    tril = torch.as_tensor(fit.reference.scale_tril, dtype=ends.dtype, device=ends.device)  # chol(H^{-1})
    decrement = (grads @ tril).square().sum(-1)  # g^T H^{-1} g
    whitened = torch.linalg.solve_triangular(tril, (ends - fit.mode).T, upper=False).T
    distance2 = whitened.square().sum(-1)
    return int(((decrement < STATIONARY) & (distance2 > ends.shape[-1])).sum())


def _neg_hessian(path: GeometricPath, mode: Tensor) -> Tensor:
    """``-grad^2 log p`` at ``mode`` ``(d,)`` by autograd: ``(d, d)`` (counted as d gradients)."""
    target = path.target

    def log_p(z: Tensor) -> Tensor:
        return target.log_prob(z[None])[0]

    hess = torch.autograd.functional.hessian(log_p, mode.detach(), vectorize=False)
    path.counter.target_evals += 1
    path.counter.grad_evals += mode.shape[0]
    if not isinstance(hess, Tensor) or not bool(torch.isfinite(hess).all()):
        raise ValueError("autograd Hessian not finite")
    return -0.5 * (hess + hess.T)


def _neg_hessian_fd(path: GeometricPath, mode: Tensor) -> Tensor:
    """``-grad^2 log p`` by central differences of the gradient (2d gradient evaluations in one batch)."""
    d = mode.shape[0]
    h = 1e-5 * (1.0 + mode.abs())
    shifts = torch.diag(h)
    ev = path.evaluate(torch.cat([mode + shifts, mode - shifts]), grad=True)
    assert ev.grad_target is not None
    g_plus, g_minus = ev.grad_target[:d], ev.grad_target[d:]
    hess = (g_plus - g_minus) / (2 * h[:, None])
    return -0.5 * (hess + hess.T)


def _newton(path: GeometricPath, mode: Tensor, lp: float, hess: Tensor) -> tuple[Tensor, float]:
    """One Newton step from ``mode`` with ``hess``, kept if it does not lower the log density."""
    chol, info = torch.linalg.cholesky_ex(hess)
    if int(info) != 0:
        return mode, lp
    ev = path.evaluate(mode[None], grad=True)
    assert ev.grad_target is not None
    step = torch.cholesky_solve(ev.grad_target[0][:, None], chol)[:, 0]
    new = mode + step
    lp_new = float(path.evaluate(new[None]).log_target[0])
    return (new, lp_new) if lp_new >= lp else (mode, lp)


def _gaussian(start: GaussianReference, mode: Tensor, lp: float, hess: Tensor, d: int) -> LaplaceFit:
    """The dense Gaussian ``N(mode, hess^{-1})``, or the diagonal fallback if ``hess`` is not positive definite."""
    chol, info = torch.linalg.cholesky_ex(hess)
    if int(info) == 0:
        cov = torch.cholesky_inverse(chol)
        tril, info2 = torch.linalg.cholesky_ex(0.5 * (cov + cov.T))
        if int(info2) == 0 and bool(torch.isfinite(tril).all()):
            ref = GaussianReference(d, loc=mode.cpu(), scale_tril=tril.cpu())
            return LaplaceFit(ref, "dense", mode, lp)
    diag = torch.diagonal(hess)
    prior_var = torch.as_tensor(start.scale, dtype=diag.dtype, device=diag.device) ** 2
    var = torch.where(diag > 0, 1.0 / diag.clamp_min(1e-300), prior_var)
    warnings.warn(
        "Laplace reference: the Hessian at the mode is not positive definite; using a diagonal fit "
        f"({int((diag <= 0).sum())} of {d} coordinates keep the prior's scale)",
        stacklevel=3,
    )
    ref = GaussianReference(d, loc=mode.cpu(), scale=var.sqrt().cpu())
    return LaplaceFit(ref, "diagonal", mode, lp)
