"""The Laplace approximation of a target: ``N(MAP, H^{-1})`` as a path's reference.

The MAP is found by L-BFGS (``torch.optim.LBFGS`` with a strong-Wolfe line search) from several
starts at once -- the reference's centre and draws from it -- optimized as one batch (the sum of
their negative log densities is separable, so each start follows its own descent; the shared
line search only couples their step lengths). The best end point is polished by one Newton
step, and ``H = -grad^2 log p`` there comes from autograd (one Hessian-vector product per
dimension), or from central differences of the gradient if the target cannot be differentiated
twice. A positive definite ``H`` gives a dense Gaussian with Cholesky factor ``chol(H^{-1})``;
otherwise a diagonal one (``1 / H_ii`` where positive, the starting reference's variance
elsewhere) with a warning; a fit that finds no finite MAP keeps the starting reference, with a
warning.

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

__all__ = ["LaplaceFit", "fit_laplace"]


@attrs.frozen
class LaplaceFit:
    """The outcome of :func:`fit_laplace`.

    Attributes:
        reference: the fitted Gaussian (or the starting one if the fit failed).
        kind: ``"dense"`` (positive definite Hessian), ``"diagonal"`` (fallback) or ``"failed"``.
        mode: ``(d,)`` float64, the MAP found (``None`` if the fit failed).
        log_prob: the target's log density at the mode (NaN if failed).
    """

    reference: GaussianReference
    kind: str
    mode: Tensor | None = None
    log_prob: float = math.nan


def fit_laplace(
    target,
    start: GaussianReference,
    counter: EvaluationCounter,
    generator: torch.Generator,
    n_starts: int = 4,
    max_iter: int = 500,
) -> LaplaceFit:
    """Fit ``N(MAP, H^{-1})`` to ``target``, counting evaluations in ``counter``.

    Args:
        target: the :class:`~sampler.targets.base.Target`.
        start: the reference the starts come from (its centre, then ``n_starts - 1`` draws).
        counter: where target and gradient evaluations are counted.
        generator: draws the starts (on the device the fit runs on).
        n_starts: starting points optimized together.
        max_iter: L-BFGS iterations (the line search may evaluate up to 1.25 x as often).

    Computations are in float64 on ``generator``'s device.
    """
    path = GeometricPath(start, target, counter)
    d = target.dim
    x0 = start.sample((max(n_starts - 1, 0),), generator, torch.float64)
    x0 = torch.cat([torch.as_tensor(start.loc, dtype=torch.float64, device=x0.device)[None], x0])
    lp0 = path.evaluate(x0).log_target
    x0 = x0[torch.isfinite(lp0)]
    if x0.shape[0] == 0:
        return _failed(start, "the target's log density is not finite at any start")
    mode, lp = _lbfgs(path, x0, max_iter)
    if not math.isfinite(lp):
        return _failed(start, "L-BFGS found no finite maximum")
    try:
        hess = _neg_hessian(path, mode)
    except SamplerError:
        raise
    except Exception:  # noqa: BLE001 -- autograd cannot differentiate the target twice
        hess = _neg_hessian_fd(path, mode)
    mode, lp = _newton(path, mode, lp, hess)
    return _gaussian(start, mode, lp, hess, d)


def _failed(start: GaussianReference, why: str) -> LaplaceFit:
    warnings.warn(f"Laplace reference: {why}; keeping the prior reference", stacklevel=3)
    return LaplaceFit(start, "failed")


def _lbfgs(path: GeometricPath, x0: Tensor, max_iter: int) -> tuple[Tensor, float]:
    """Maximize from every start ``x0`` ``(S, d)``; the best end point ``(d,)`` and its log density."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [x],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        ev = path.evaluate(x.detach(), grad=True)
        lp, grad = ev.log_target, ev.grad_target
        assert grad is not None
        # A start that strays where the density vanishes gets a huge loss and no pull (the line
        # search then shortens the step).
        finite = torch.isfinite(lp)
        x.grad = torch.where(finite[:, None], -grad, torch.zeros_like(grad))
        return -torch.where(finite, lp, torch.full_like(lp, -1e300)).sum()

    with torch.enable_grad():
        opt.step(closure)
    x = x.detach()
    lp = path.evaluate(x).log_target
    lp = lp.masked_fill(torch.isnan(lp), -math.inf)
    best = int(lp.argmax())
    return x[best], float(lp[best])


def _neg_hessian(path: GeometricPath, mode: Tensor) -> Tensor:
    """``-grad^2 log p`` at ``mode`` ``(d,)`` by autograd: ``(d, d)`` float64 (counted as d gradients)."""
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
