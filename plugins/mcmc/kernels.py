"""MCMC correctors: ULA, MALA, HMC and random-walk Metropolis, batched over (R, N, d).

Each targets pi_t at the stage's time ``ctx.t`` and uses one step size per replica. With
``adapt=True`` the step size moves after every sweep toward ``target_acceptance``:
``eps <- eps * exp(adapt_rate * (mean acceptance probability - target_acceptance))``. The
step size of a sweep is fixed before the sweep, so each sweep leaves pi_t invariant (for the
Metropolis-adjusted kernels); ``adapt=False`` keeps it fixed altogether.

**Metric.** ``metric="identity"`` moves in the particles' own coordinates. ``"diag"`` and
``"dense"`` precondition every move with a per-replica factor ``L`` (``(R, d)`` standard
deviations, or an ``(R, d, d)`` lower Cholesky factor of a covariance ``Sigma = L L^T``): the
kernel runs in whitened coordinates ``z = L^{-1} x``, i.e. MALA proposes
``x' = x + (eps^2 / 2) Sigma grad log pi_t(x) + eps L xi`` and HMC uses the mass matrix
``Sigma^{-1}``, so ``eps`` is in whitened units. With ``adapt=True`` the metric is the
(weighted, regularized) particle covariance of each replica, computed once per ``apply`` from
the particles before the sweeps (Buchholz, Chopin & Jacob 2021, "Adaptive tuning of
Hamiltonian Monte Carlo within sequential Monte Carlo"): it is fixed within the sweeps, so each
sweep still leaves pi_t invariant. With ``adapt=False`` the metric stays the one in the state
(the reference's scales from ``init``, or whatever a runner put there: the MCMC chains set it by
windowed warm-up).
"""

from __future__ import annotations

import abc
import math
from typing import Any

import attrs
import torch
from torch import Tensor

from sampler.ext import (
    ConfigurationError,
    Corrector,
    GaussianReference,
    GeometricPath,
    Particles,
    PathEvaluation,
    StepContext,
    StepOutput,
    Target,
    check_positive_int,
    sanitized,
)
from sampler_plugins.mcmc.compiled import CompiledStep

#: Adapted step sizes stay within these bounds (a stuck acceptance cannot drive them to 0 or inf).
STEP_SIZE_BOUNDS = (1e-10, 1e10)


def adapted_step_size(eps: Tensor, rate: Tensor, gain: float | Tensor, target: float | Tensor) -> Tensor:
    """The correctors' step-size rule after a sweep: ``eps exp(gain (rate - target))``, clamped.

    ``eps`` and the acceptance ``rate`` ``(R,)``; the bounds are :data:`STEP_SIZE_BOUNDS`.
    Eager sweeps and the fused ones share it.
    """
    return (eps * torch.exp(gain * (rate - target))).clamp(*STEP_SIZE_BOUNDS)


def dual_averaging_step(
    mu: Tensor,
    h_bar: Tensor,
    log_eps_bar: Tensor,
    acceptance: Tensor,
    m: int | Tensor,
    target: float | Tensor,
    gamma: float | Tensor,
    t0: float | Tensor,
    kappa: float | Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Update number ``m`` (from 1) of dual averaging (Nesterov; Hoffman & Gelman 2014, Alg. 5).

    ``mu``, ``h_bar``, ``log_eps_bar`` and the ``acceptance`` ``(R,)``; ``m`` and the constants
    numbers (eager chains) or tensors (fused segments, in the graph). Returns the new
    ``(h_bar, log_eps, log_eps_bar)``.
    """
    w = 1.0 / (m + t0)
    h_bar = (1 - w) * h_bar + w * (target - acceptance)
    log_eps = mu - m**0.5 / gamma * h_bar
    eta = m ** (-kappa)
    return h_bar, log_eps, eta * log_eps + (1 - eta) * log_eps_bar


#: The metrics a kernel can precondition with (``"auto"``: :func:`auto_metric` of the dimension).
METRICS = ("identity", "diag", "dense", "auto")

#: ``metric="auto"`` adapts a dense metric up to this dimension, a diagonal one above.
AUTO_DENSE_MAX_DIM = 100

#: Shrinkage pseudo-count of the dense metric toward its own diagonal: ``n / (n + 5)`` of the
#: sample covariance plus ``5 / (n + 5)`` of its diagonal, with n the effective sample size
#: (Stan's regularization, toward the diagonal rather than 1e-3 I, which would swamp scales
#: of 1e-3 and below).
SHRINKAGE = 5.0


@attrs.frozen
class KernelState:
    """Adapted state of a kernel.

    Attributes:
        step_size: ``(R,)`` float64, one per replica (in whitened units with a metric).
        metric: ``None`` (identity metric), ``(R, d)`` standard deviations (diagonal metric) or
            an ``(R, d, d)`` lower Cholesky factor ``L`` of the covariance (dense metric), in the
            particles' dtype.
    """

    step_size: Tensor
    metric: Tensor | None = None


def _up(v: Tensor, metric: Tensor | None) -> Tensor:
    """``L v``: whitened ``v`` ``(R, N, d)`` to the particles' coordinates."""
    if metric is None:
        return v
    if metric.ndim == 2:
        return metric[:, None, :] * v
    return v @ metric.transpose(-1, -2)


def _down(g: Tensor, metric: Tensor | None) -> Tensor:
    """``L^T g``: a gradient ``(R, N, d)`` in the particles' coordinates to whitened ones."""
    if metric is None:
        return g
    if metric.ndim == 2:
        return metric[:, None, :] * g
    return g @ metric


def whiten(x: Tensor, metric: Tensor | None) -> Tensor:
    """``L^{-1} x``: positions ``(R, N, d)`` in the metric's whitened coordinates (the inverse of ``_up``)."""
    if metric is None:
        return x
    if metric.ndim == 2:
        return x / metric[:, None, :]
    return torch.linalg.solve_triangular(metric, x.transpose(-1, -2), upper=False).transpose(-1, -2)


def _step_constants(path: GeometricPath, t: float | Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """The compiled steps' ``t`` (``(R,)`` float64) and ``log_norm`` (``()`` float64), on ``x``'s device.

    Tensors, not Python floats: Dynamo would compile a float in as a constant, and compile again
    at every stage's time and every run's reference.
    """
    times = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
    return times, torch.tensor(path.reference.log_norm, dtype=torch.float64, device=x.device)


def _log_prob_and_grad(target: Target, y: Tensor) -> tuple[Tensor, Tensor]:
    """The target's ``log_prob_and_grad``; by ``torch.func`` where it would differentiate with autograd.

    ``Target``'s default runs ``torch.autograd.grad``, which Dynamo cannot trace (the compiled
    step would split around it); ``torch.func.grad_and_value`` computes the same gradient of the
    summed log density (each point's log density depends on that point only) and traces.
    """
    if not target.uses_autograd:
        return target.log_prob_and_grad(y)

    def total(z: Tensor) -> tuple[Tensor, Tensor]:
        lp = target.log_prob(z)
        return lp.sum(), lp

    grad, (_, lp) = torch.func.grad_and_value(total, has_aux=True)(y)
    return lp, grad


def _evaluate_uncounted(
    path: GeometricPath, y: Tensor, log_norm: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``log_ref, log_target, grad_ref, grad_target, nonfinite`` at ``y``, side-effect free.

    :meth:`GeometricPath.evaluate`'s values without its checks and counts (the compiled steps'
    caller counts). ``log_norm`` is the reference's :attr:`~sampler.ext.GaussianReference.log_norm`
    as a ``()`` float64 tensor.
    """
    lp, grad = _log_prob_and_grad(path.target, y)
    lp, g, nonfinite = sanitized(lp.detach(), grad.detach().to(y.dtype))
    assert g is not None
    return path.reference.log_kernel(y) + log_norm, lp, path.reference.grad_log_prob(y), g, nonfinite


def leapfrog_step(
    path: GeometricPath,
    y: Tensor,
    p: Tensor,
    eps: Tensor,
    kick: Tensor,
    metric: Tensor | None,
    t: Tensor,
    log_norm: Tensor,
) -> tuple[Tensor, ...]:
    """HMC's leapfrog step after the first half kick, side-effect free (``compile=True`` compiles it).

    ``y += eps L p``, evaluate, ``p += kick L^T grad log pi_t(y)``.

    Args:
        path: a plain :class:`GeometricPath`.
        y, p: ``(R, N, d)`` position and whitened momentum.
        eps, kick: ``(R, 1, 1)`` (or ``(R, N, 1)``) step sizes of the drift and of the kick (the
            last step of a trajectory kicks by ``eps / 2``).
        metric: the factor ``L`` of :class:`KernelState` or ``None``.
        t: ``(R,)`` float64 path times.
        log_norm: ``()`` float64, the reference's log normalizing constant.

    Returns:
        ``(y, p, log_ref, log_target, grad_ref, grad_target, nonfinite)``: the evaluation's four
        components and its count of non-finite values, for the caller to count.
    """
    y = y + eps * _up(p, metric)
    log_ref, lp, grad_ref, g, nonfinite = _evaluate_uncounted(path, y, log_norm)
    p = p + kick * _down(GeometricPath.mix_grad(grad_ref, g, t), metric)
    return y, p, log_ref, lp, grad_ref, g, nonfinite


def hmc_choice(
    path: GeometricPath,
    x: Tensor,
    ev_x: tuple[Tensor, Tensor, Tensor, Tensor],
    y: Tensor,
    ev_y: tuple[Tensor, Tensor, Tensor, Tensor],
    p0: Tensor,
    p: Tensor,
    u: Tensor,
    t: Tensor,
) -> tuple[Tensor, ...]:
    """HMC's Metropolis choice at the end of a trajectory, side-effect free (``compile=True`` compiles it).

    Args:
        path: a plain :class:`GeometricPath` (unused; every compiled step takes it first).
        x, y: ``(R, N, d)`` the start and the end of the trajectory; ``ev_x``, ``ev_y`` their
            evaluations' ``(log_ref, log_target, grad_ref, grad_target)``.
        p0, p: ``(R, N, d)`` the whitened momenta at the start and the end.
        u: ``(R, N)`` float64 uniforms; ``t`` ``(R,)`` float64 path times.

    Returns:
        ``(x', log_ref', log_target', grad_ref', grad_target', log_alpha)``: the chosen state,
        its evaluation and the cleaned log acceptance probabilities (:func:`clean_log_alpha`).
    """
    log_pi_y, log_pi_x = GeometricPath.mix(ev_y[0], ev_y[1], t), GeometricPath.mix(ev_x[0], ev_x[1], t)
    log_alpha = clean_log_alpha(_hmc_log_ratio(log_pi_x, log_pi_y, p0, p))
    return *_choose(torch.log(u) < log_alpha, (y, *ev_y), (x, *ev_x)), log_alpha


def hmc_transition(
    path: GeometricPath,
    x: Tensor,
    ev_x: tuple[Tensor, Tensor, Tensor, Tensor],
    p0: Tensor,
    u: Tensor,
    eps: Tensor,
    metric: Tensor | None,
    t: Tensor,
    log_norm: Tensor,
    n_leapfrog: int,
) -> tuple[Tensor, ...]:
    """One whole HMC transition of ``n_leapfrog`` steps, side-effect free (``compile=True`` compiles it).

    The first half kick, :func:`leapfrog_step` ``n_leapfrog`` times and :func:`hmc_choice`: one
    compiled graph per trajectory length (the kernels use it when the length is fixed).

    Args:
        path, x, ev_x, p0, u: as in :func:`hmc_choice` (``p0`` the drawn momentum).
        eps, metric, t, log_norm: as in :func:`leapfrog_step`.
        n_leapfrog: the number of leapfrog steps (a Python int: the graph is unrolled).

    Returns:
        ``(x', log_ref', log_target', grad_ref', grad_target', log_alpha, y, log_ref_y,
        log_target_y, grad_ref_y, grad_target_y, p, nonfinite)``: the choice, the trajectory's
        end, its evaluation and momentum, and the non-finite values of all its evaluations.
    """
    p = p0 + 0.5 * eps * _down(GeometricPath.mix_grad(ev_x[2], ev_x[3], t), metric)
    y, half, nonfinite = x, 0.5 * eps, torch.zeros((), dtype=torch.int64, device=x.device)
    ev_y = ev_x
    for i in range(n_leapfrog):
        out = leapfrog_step(path, y, p, eps, eps if i < n_leapfrog - 1 else half, metric, t, log_norm)
        y, p, ev_y, nonfinite = out[0], out[1], (out[2], out[3], out[4], out[5]), nonfinite + out[6]
    chosen = hmc_choice(path, x, ev_x, y, ev_y, p0, p, u, t)
    return *chosen, y, *ev_y, p, nonfinite


def _hmc_log_ratio(log_pi_x: Tensor, log_pi_y: Tensor, p0: Tensor, p: Tensor) -> Tensor:
    """HMC's log acceptance ratio ``(R, N)`` float64: the change of ``log pi_t`` minus that of the kinetic energy."""
    return log_pi_y - _kinetic(p) - log_pi_x + _kinetic(p0)


def _hmc_log_alpha(
    path: GeometricPath, ev: PathEvaluation, ev_y: PathEvaluation, p0: Tensor, p: Tensor, t: float | Tensor
) -> Tensor:
    """:func:`_hmc_log_ratio` from the trajectory's two evaluations at time ``t``."""
    return _hmc_log_ratio(path.log_prob(ev, t), path.log_prob(ev_y, t), p0, p)


def _kinetic(momentum: Tensor) -> Tensor:
    """The kinetic energy ``|p|^2 / 2`` of whitened momenta ``(R, N, d)``, float64 ``(R, N)``."""
    return 0.5 * (momentum * momentum).sum(-1).to(torch.float64)


def _metropolis_choice(
    x: Tensor, ev: PathEvaluation, prop: Proposal, u: Tensor
) -> tuple[Tensor, PathEvaluation, Tensor]:
    """The Metropolis choice between ``x`` and ``prop`` with uniforms ``u`` ``(R, N)``.

    Returns the new state, its evaluation, and the cleaned log acceptance probabilities
    (:func:`clean_log_alpha`).
    """
    log_alpha = clean_log_alpha(prop.log_alpha)
    accept = torch.log(u) < log_alpha
    return torch.where(accept[..., None], prop.x, x), prop.evaluation.where(accept, ev), log_alpha


def _choose(accept: Tensor, new: tuple[Tensor, ...], old: tuple[Tensor, ...]) -> list[Tensor]:
    """``new`` where ``accept`` ``(R, N)`` holds, ``old`` elsewhere, for tensors ``(R, N)`` or ``(R, N, d)``."""
    return [torch.where(accept[..., None] if a.ndim > accept.ndim else accept, a, b) for a, b in zip(new, old)]


def mala_proposal(
    path: GeometricPath,
    x: Tensor,
    grad_x: Tensor,
    log_pi_x: Tensor,
    xi: Tensor,
    eps: Tensor,
    metric: Tensor | None,
    t: Tensor,
    log_norm: Tensor,
) -> tuple[Tensor, ...]:
    """MALA's proposal and log acceptance ratio, side-effect free (``compile=True`` compiles it).

    ``MALA._propose_whitened``'s :func:`_mala_move` and :func:`_mala_log_ratio` (``metric=None``: the identity).

    Args:
        path: a plain :class:`GeometricPath`.
        x: ``(R, N, d)`` positions; ``grad_x`` ``(R, N, d)`` and ``log_pi_x`` ``(R, N)`` (float64)
            the gradient and log density of ``pi_t`` there.
        xi: ``(R, N, d)`` standard normal noise.
        eps: ``(R, 1, 1)`` (or ``(R, N, 1)``) step sizes; ``metric`` the factor ``L`` or ``None``.
        t: ``(R,)`` float64 path times; ``log_norm`` ``()`` float64 the reference's log normalizer.

    Returns:
        ``(y, log_ref, log_target, grad_ref, grad_target, nonfinite, log_alpha)``.
    """
    step, y = _mala_move(x, _down(grad_x, metric), xi, eps, metric)
    log_ref, lp, grad_ref, g, nonfinite = _evaluate_uncounted(path, y, log_norm)
    grad_y = _down(GeometricPath.mix_grad(grad_ref, g, t), metric)
    log_alpha = _mala_log_ratio(log_pi_x, GeometricPath.mix(log_ref, lp, t), step, grad_y, xi, eps)
    return y, log_ref, lp, grad_ref, g, nonfinite, log_alpha


def _mala_move(x: Tensor, grad_x: Tensor, xi: Tensor, eps: Tensor, metric: Tensor | None) -> tuple[Tensor, Tensor]:
    """MALA's whitened step ``eps xi + eps^2/2 grad_x`` and the proposal ``x + L step``.

    ``grad_x`` ``(R, N, d)`` is the whitened gradient ``L^T grad log pi_t(x)``.
    """
    step = eps * xi + 0.5 * eps**2 * grad_x
    return step, x + _up(step, metric)


def _mala_log_ratio(
    log_pi_x: Tensor, log_pi_y: Tensor, step: Tensor, grad_y: Tensor, xi: Tensor, eps: Tensor
) -> Tensor:
    """MALA's log acceptance ratio ``(R, N)`` float64 in whitened units (:meth:`MALA._propose_whitened`).

    ``step`` from :func:`_mala_move`, ``grad_y`` the whitened gradient at the proposal, ``xi``
    the noise; the Jacobian of the whitening cancels.
    """
    back = step + 0.5 * eps**2 * grad_y
    eps64 = eps.to(torch.float64)[..., 0]
    log_q_bwd = -0.5 * (back * back).sum(-1).to(torch.float64) / eps64**2
    log_q_fwd = -0.5 * (xi * xi).sum(-1).to(torch.float64)
    return log_pi_y - log_pi_x + log_q_bwd - log_q_fwd


def mala_transition(
    path: GeometricPath,
    x: Tensor,
    ev_x: tuple[Tensor, Tensor, Tensor, Tensor],
    xi: Tensor,
    u: Tensor,
    eps: Tensor,
    metric: Tensor | None,
    t: Tensor,
    log_norm: Tensor,
) -> tuple[Tensor, ...]:
    """One MALA transition, proposal and Metropolis choice, side-effect free (``compile=True`` compiles it).

    The same arithmetic as :meth:`MetropolisCorrector.transition` with :meth:`MALA.propose`.

    Args:
        path: a plain :class:`GeometricPath`.
        x: ``(R, N, d)`` positions; ``ev_x`` their evaluation's ``(log_ref, log_target,
            grad_ref, grad_target)``.
        xi: ``(R, N, d)`` standard normal noise; ``u`` ``(R, N)`` float64 uniforms.
        eps, metric, t, log_norm: as in :func:`mala_proposal`.

    Returns:
        ``(x', log_ref', log_target', grad_ref', grad_target', log_alpha, y, log_ref_y,
        log_target_y, grad_ref_y, grad_target_y, nonfinite)``: the chosen state and its
        evaluation, the cleaned log acceptance probabilities (:func:`clean_log_alpha`), the
        proposal and its evaluation, and the proposal's count of non-finite values.
    """
    log_ref, log_target, grad_ref, grad_target = ev_x
    grad_x = GeometricPath.mix_grad(grad_ref, grad_target, t)
    log_pi_x = GeometricPath.mix(log_ref, log_target, t)
    y, *ev_y, nonfinite, log_alpha = mala_proposal(path, x, grad_x, log_pi_x, xi, eps, metric, t, log_norm)
    log_alpha = clean_log_alpha(log_alpha)
    chosen = _choose(torch.log(u) < log_alpha, (y, *ev_y), (x, *ev_x))
    return *chosen, log_alpha, y, *ev_y, nonfinite


def clean_log_alpha(log_alpha: Tensor) -> Tensor:
    """Log acceptance probabilities ``(R, N)`` as float64, NaN read as a rejection (``-inf``), capped at 0."""
    log_alpha = log_alpha.to(torch.float64)
    return log_alpha.masked_fill(torch.isnan(log_alpha), -math.inf).clamp(max=0.0)


def weighted_moments(x: Tensor, log_weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted mean ``(R, d)``, centred particles ``(R, N, d)`` and weights ``(R, N)``, all float64.

    ``log_weights`` ``(R, N)`` are normalized (as in :class:`Particles`).
    """
    w = log_weights.to(torch.float64).exp()
    x64 = x.to(torch.float64)
    mean = (w[..., None] * x64).sum(1)
    return mean, x64 - mean[:, None, :], w


def particle_metric(x: Tensor, log_weights: Tensor, kind: str) -> Tensor:
    """The metric of ``kind`` (``"diag"`` or ``"dense"``) from weighted particles, per replica.

    Args:
        x: ``(R, N, d)`` positions.
        log_weights: ``(R, N)`` normalized log weights.
        kind: ``"diag"`` or ``"dense"``.

    Returns:
        ``(R, d)`` standard deviations (diag) or ``(R, d, d)`` lower Cholesky factors of the
        regularized covariance (dense), in ``x``'s dtype. The weighted covariance is
        bias-corrected (``1 / (1 - sum w^2)``) and regularized by :func:`regularized_metric`
        with the effective sample size ``1 / sum w^2``.
    """
    _, c, w = weighted_moments(x, log_weights)
    sum_w2 = (w**2).sum(-1)
    correction = 1.0 / (1.0 - sum_w2).clamp_min(1e-12)
    if kind == "diag":
        second = (w[..., None] * c**2).sum(1) * correction[:, None]
    else:
        second = (w[..., None, None] * (c[..., :, None] * c[..., None, :])).sum(1) * correction[:, None, None]
    return regularized_metric(second, 1.0 / sum_w2, kind).to(x.dtype)


def regularized_metric(second: Tensor, n_eff: Tensor, kind: str) -> Tensor:
    """The metric factor from sample variances ``(..., d)`` (diag) or covariances ``(..., d, d)`` (dense).

    ``n_eff`` ``(...)`` is the effective number of draws behind them. Variances are floored at
    ``1e-12`` of the largest (at 1 if all vanish); a dense covariance is shrunk toward its
    diagonal with pseudo-count :data:`SHRINKAGE` and falls back to the diagonal where its
    Cholesky factorization fails. Returns ``(..., d)`` standard deviations or ``(..., d, d)``
    lower Cholesky factors, float64.
    """
    var = second if kind == "diag" else torch.diagonal(second, dim1=-2, dim2=-1)
    top = var.amax(-1, keepdim=True)
    top = torch.where(top > 0, top, torch.ones_like(top))
    var = torch.maximum(var, 1e-12 * top)
    if kind == "diag":
        return var.sqrt()
    keep = (n_eff / (n_eff + SHRINKAGE))[..., None, None]
    diag = torch.diag_embed(var)
    off = second - torch.diag_embed(torch.diagonal(second, dim1=-2, dim2=-1))
    cov = keep * off + diag  # shrink the off-diagonal part toward 0; the floored variances stay
    tril, info = torch.linalg.cholesky_ex(cov)
    return torch.where((info == 0)[..., None, None], tril, torch.diag_embed(var.sqrt()))


def auto_metric(dim: int) -> str:
    """The metric ``"auto"`` adapts in ``dim`` dimensions: ``"dense"`` up to d = 100, else ``"diag"``.

    A dense metric whitens correlations a diagonal one leaves (the ridge of a regression's
    intercept and slope, the centered eight schools' thetas and mu); above a hundred dimensions
    its ``O(d^2)`` work per gradient and the noise of a ``d x d`` covariance estimated from the
    particles (or a warm-up window's draws) outweigh that.
    """
    return "dense" if dim <= AUTO_DENSE_MAX_DIM else "diag"


def reference_metric(reference: GaussianReference, kind: str, r: int, like: Tensor) -> Tensor | None:
    """The metric of ``kind`` from the reference's covariance, repeated for ``r`` replicas (``None``: identity)."""
    if kind == "identity":
        return None
    scale = torch.as_tensor(reference.scale, dtype=like.dtype, device=like.device)
    if kind == "diag":
        return scale.expand(r, -1).clone()
    tril = reference.scale_tril
    full = torch.diag(scale) if tril is None else torch.as_tensor(tril, dtype=like.dtype, device=like.device)
    return full.expand(r, -1, -1).clone()


@attrs.frozen
class Proposal:
    """A proposed move: positions ``x`` ``(R, N, d)``, their evaluation, and ``log_alpha`` ``(R, N)``.

    ``momentum`` ``(R, N, d)`` is HMC's whitened momentum at the trajectory's end (``None`` for
    kernels without one); trajectory-length adaptation (ChEES) reads it.
    """

    x: Tensor
    evaluation: PathEvaluation
    log_alpha: Tensor
    momentum: Tensor | None = None


class MetropolisCorrector(Corrector):
    """Base of the MCMC correctors: ``n_steps`` sweeps of propose / accept with adaptation.

    Args:
        n_steps: sweeps per application (per annealing stage).
        step_size: initial step size (default: scaled to the reference and the dimension).
        target_acceptance: the acceptance rate the adaptation aims at.
        adapt: adapt the step size between sweeps.
        adapt_rate: gain of the adaptation (default per kernel: 1 for MALA/ULA/RWMH, 0.3 for
            HMC, whose acceptance falls off a cliff as the step grows and would oscillate).
        metric: ``"identity"``, ``"diag"`` or ``"dense"`` preconditioning (module docstring),
            or ``"auto"`` (:func:`auto_metric`: dense up to d = 100, diagonal above); with
            ``adapt`` the metric is re-estimated from the particles at every ``apply``.
        step_jitter: randomize each particle's step size by ``exp(step_jitter (2u - 1))``.
        compile: fuse each step with ``torch.compile`` (HMC and MALA;
            :mod:`sampler_plugins.mcmc.compiled`): seconds to compile at the first step of a
            process, then 1.1-4.3x the gradient rate on the CPU (docs/methods.md); falls back
            to eager with a warning where compilation is unavailable.
    """

    default_acceptance: float = 0.5
    default_adapt_rate: float = 1.0
    #: The side-effect-free step ``compile=True`` compiles (None: the kernel has none).
    compiled_function: Any = None
    shardable = True
    #: Subclasses that always move (ULA) set this to False.
    metropolis: bool = True

    def __init__(
        self,
        n_steps: int = 1,
        step_size: float | None = None,
        target_acceptance: float | None = None,
        adapt: bool = True,
        adapt_rate: float | None = None,
        metric: str = "identity",
        step_jitter: float = 0.0,
        compile: bool = False,
    ):
        check_positive_int("n_steps", n_steps)
        if compile and self.compiled_function is None:
            raise ConfigurationError(f"compile=True: {type(self).__name__} has no compiled step (HMC and MALA do)")
        self.compile = bool(compile)
        #: Compiled at its first call, once per target class in a process (the module
        #: sampler_plugins.mcmc.compiled); used only on a plain GeometricPath.
        self._compiled = CompiledStep(self.compiled_function) if compile and self.compiled_function else None
        #: All of an apply's sweeps in one compiled call (:meth:`_fused_sweeps`), made at first use.
        self._sweeps: CompiledStep | None = None
        if not (0.0 <= step_jitter and math.isfinite(step_jitter)):
            raise ConfigurationError(f"step_jitter must be a non-negative number, got {step_jitter!r}")
        self.step_jitter = float(step_jitter)
        if metric not in METRICS:
            raise ConfigurationError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        self.metric = metric
        if step_size is not None and not step_size > 0:
            raise ConfigurationError(f"step_size must be positive, got {step_size!r}")
        target_acceptance = self.default_acceptance if target_acceptance is None else target_acceptance
        if not 0 < target_acceptance < 1:
            raise ConfigurationError(f"target_acceptance must lie in (0, 1), got {target_acceptance!r}")
        self.n_steps = n_steps
        self.step_size = step_size
        self.target_acceptance = float(target_acceptance)
        self.adapt = adapt
        self.adapt_rate = float(self.default_adapt_rate if adapt_rate is None else adapt_rate)
        if not self.adapt_rate > 0:
            raise ConfigurationError(f"adapt_rate must be positive, got {adapt_rate!r}")

    def default_step_size(self, scale: float, dim: int) -> float:
        """Initial step size for a distribution of per-coordinate scale ``scale`` in ``dim`` dimensions."""
        return scale * dim ** (-1 / 4)

    def init(self, particles: Particles, ctx: StepContext) -> KernelState:
        """One step size per replica and the reference's metric.

        The step size is ``step_size`` or :meth:`default_step_size` of the reference (of a unit
        scale with a metric: the step is then in whitened units).
        """
        if self.step_size is not None:
            eps = self.step_size
        else:
            scale = float(ctx.path.reference.scale.mean()) if self.metric == "identity" else 1.0
            eps = self.default_step_size(scale, particles.dim)
        step_size = torch.full((particles.n_replicas,), eps, dtype=torch.float64, device=particles.x.device)
        kind = self.metric_kind(particles.dim)
        return KernelState(step_size, reference_metric(ctx.path.reference, kind, particles.n_replicas, particles.x))

    def metric_kind(self, dim: int) -> str:
        """The metric this kernel uses in ``dim`` dimensions: ``metric``, with ``"auto"`` resolved."""
        return auto_metric(dim) if self.metric == "auto" else self.metric

    def current_metric(self, particles: Particles, state: KernelState, ctx: StepContext) -> Tensor | None:
        """The metric of this ``apply``: from the particles (all N of them) if adapting, else the state's."""
        if self.metric == "identity":
            return None
        if not self.adapt:
            return state.metric
        x = particles.x if ctx.shard is None else ctx.shard.gather(particles.x, "positions")
        return particle_metric(x, ctx.global_log_weights(particles), self.metric_kind(particles.dim))

    @abc.abstractmethod
    def propose(self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext, **kwargs: Any) -> Proposal:
        """Propose from ``x`` with step sizes ``eps`` ``(R, 1, 1)`` (in ``x``'s dtype).

        Keyword arguments, passed only when they are not the default: ``metric`` (the factor
        ``L`` of :class:`KernelState`, default ``None``), ``sweep`` (the sweep's index in this
        run, for kernels whose proposal varies deterministically between sweeps) and, for HMC,
        ``n_leapfrog`` (this proposal's number of leapfrog steps, overriding the kernel's).
        """

    def particle_steps(self, eps: Tensor, x: Tensor, ctx: StepContext) -> Tensor:
        """The sweep's step sizes: ``(R, 1, 1)``, or ``(R, N, 1)`` randomized per particle with ``step_jitter``.

        With ``step_jitter = s`` particle i uses ``eps * exp(s (2 u_i - 1))``, ``u_i`` uniform,
        drawn independently of the state (a mixture of kernels that each leave pi_t invariant).
        """
        steps = eps.to(x.dtype)[:, None, None]
        if self.step_jitter == 0.0:
            return steps
        u = ctx.rand((x.shape[0], x.shape[1], 1), x.dtype, x.device)
        return steps * torch.exp(self.step_jitter * (2.0 * u - 1.0))

    def _proposal_options(self, metric: Tensor | None, sweep: int) -> dict[str, Any]:
        """The keyword arguments of :meth:`propose` that differ from their defaults."""
        return {} if metric is None else {"metric": metric}

    def apply(self, particles: Particles, state: KernelState, ctx: StepContext) -> StepOutput:
        """``n_steps`` sweeps at pi_t; reports mean ``acceptance`` probability and ``step_size`` per replica."""
        return self.sweeps(particles, state, ctx, self.current_metric(particles, state, ctx))

    def sweeps(self, particles: Particles, state: KernelState, ctx: StepContext, metric: Tensor | None) -> StepOutput:
        """``n_steps`` sweeps at pi_t with a given metric factor (``None``: identity), held fixed throughout.

        :meth:`apply` with the metric of :meth:`current_metric`; a step that estimates the metric
        elsewhere (e.g. from more particles than it moves) calls this directly. With ``compile=True``
        the sweeps run as one compiled call where they can (:meth:`_fused_sweeps`).
        """
        fused = self._fused_sweeps(particles, state, ctx, metric)
        if fused is not None:
            return fused
        x, ev = particles.x, particles.evaluation
        eps = state.step_size
        acceptance = torch.zeros_like(eps)
        for i in range(self.n_steps):
            options = self._proposal_options(metric, ctx.step * self.n_steps + i)
            x, ev, log_alpha, _ = self.transition(x, ev, self.particle_steps(eps, x, ctx), ctx, **options)
            rate = ctx.mean_probability(log_alpha.exp())
            acceptance = acceptance + rate / self.n_steps
            if self.adapt:
                eps = adapted_step_size(eps, rate, self.adapt_rate, self.target_acceptance)
        new = attrs.evolve(particles, x=x, evaluation=ev)
        return StepOutput(new, KernelState(eps, metric), {"acceptance": acceptance, "step_size": eps})

    def fused_kind(self) -> str | None:
        """Its kind of fused loops, a key of :data:`~sampler_plugins.mcmc.fused.SWEEPS` and ``SEGMENTS`` (or None)."""
        return None

    def sweep_lengths(self, first: int, count: int) -> list[int]:
        """Gradient evaluations per particle of sweeps ``first, ..., first + count - 1`` (one each; HMC: its steps)."""
        return [1] * count

    def longest_sweep(self) -> int:
        """The most gradient evaluations per particle any sweep makes."""
        return 1

    def _fused_sweeps(
        self, particles: Particles, state: KernelState, ctx: StepContext, metric: Tensor | None
    ) -> StepOutput | None:
        """:meth:`sweeps` as one compiled scan (:func:`sampler_plugins.mcmc.fused._sweeps`), or ``None``.

        With ``compile=True``, at least two sweeps, no per-particle step jitter, an unsharded
        run on the CPU, and at most :data:`~sampler_plugins.mcmc.fused.SWEEP_NUMBERS` random numbers: one
        call instead of one per sweep (whose guards and bookkeeping cost about 100 µs, a fifth
        of a sweep at N = 2000). The sweeps' noise is drawn first, then their uniforms.
        """
        # fused imports this module's step functions: imported here, not at the top (a cycle)
        from sampler_plugins.mcmc import fused

        x, kind = particles.x, self.fused_kind()
        if (
            kind is None
            or self._compiled_step(ctx) is None
            or self.n_steps < 2
            or self.step_jitter
            or ctx.shard is not None
            or ctx.streams is not None
            or x.device.type != "cpu"  # not measured on GPUs, where CUDA graphs are the tool
            or self.n_steps * x.numel() > fused.SWEEP_NUMBERS
        ):
            return None
        if self._sweeps is None:
            self._sweeps = fused.compiled_loop(fused.SWEEPS[kind])
        if self._sweeps.failed:
            return None
        ev = particles.evaluation if particles.evaluation.has_grad else ctx.path.evaluate(x, grad=True)
        drawn_from = ctx.generator.get_state()  # a failed compilation gives the draws back
        shape, device = (self.n_steps, *x.shape), x.device
        noise = torch.randn(shape, generator=ctx.generator, dtype=x.dtype, device=device)
        u = torch.rand(shape[:-1], generator=ctx.generator, dtype=torch.float64, device=device)
        steps = self.sweep_lengths(ctx.step * self.n_steps, self.n_steps)
        lengths = torch.tensor(steps, dtype=torch.int64, device=device)
        adaptation = torch.tensor(
            [float(self.adapt), self.adapt_rate, self.target_acceptance],
            dtype=torch.float64,
            device=device,
        )
        parts = (ev.log_ref, ev.log_target, ev.grad_ref, ev.grad_target)
        times, log_norm = _step_constants(ctx.path, ctx.t, x)
        out = self._sweeps(
            ctx.path,
            x,
            parts,
            state.step_size,
            adaptation,
            noise,
            u,
            lengths,
            metric,
            times,
            log_norm,
            self.longest_sweep(),
        )
        if out is None:
            ctx.generator.set_state(drawn_from)
            return None
        ctx.path.count(x, True, out[7], times=sum(steps))
        new = attrs.evolve(particles, x=out[0], evaluation=PathEvaluation(*out[1:5]))
        return StepOutput(new, KernelState(out[5], metric), {"acceptance": out[6], "step_size": out[5]})

    def transition(
        self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext, **options: Any
    ) -> tuple[Tensor, PathEvaluation, Tensor, Proposal]:
        """One proposal from ``x`` ``(R, N, d)`` and its Metropolis accept/reject at pi_t.

        ``eps`` and ``options`` are :meth:`propose`'s; ``ev`` is evaluated with its gradient first
        if the kernel needs one and it has none. Returns the new positions, their evaluation, the
        float64 log acceptance probabilities ``(R, N)`` (NaN read as a rejection, capped at 0)
        and the proposal itself.
        """
        if self.needs_grad and not ev.has_grad:
            ev = ctx.path.evaluate(x, grad=True)
        prop = self.propose(x, ev, eps, ctx, **options)
        if not self.metropolis:
            return prop.x, prop.evaluation, clean_log_alpha(prop.log_alpha), prop
        u = ctx.rand(prop.log_alpha.shape, torch.float64, x.device)
        return (*_metropolis_choice(x, ev, prop, u), prop)

    # -- helpers shared by the kernels ---------------------------------------------------------------
    def _compiled_step(self, ctx: StepContext) -> CompiledStep | None:
        """The compiled step if ``compile`` is on and the path is a plain :class:`GeometricPath`."""
        if self._compiled is None or self._compiled.failed or type(ctx.path) is not GeometricPath:
            return None
        return self._compiled

    @staticmethod
    def _evaluate(x: Tensor, ctx: StepContext) -> PathEvaluation:
        return ctx.path.evaluate(x, grad=True)

    @staticmethod
    def _noise(x: Tensor, ctx: StepContext) -> Tensor:
        return ctx.randn(x.shape, x.dtype, x.device)


def _langevin_mean(x: Tensor, grad: Tensor, eps: Tensor) -> Tensor:
    return x + 0.5 * eps**2 * grad


def _log_q(to: Tensor, mean: Tensor, eps: Tensor) -> Tensor:
    """Log density of ``N(mean, eps^2 I)`` at ``to`` up to a constant that cancels, float64 ``(R, N)``."""
    diff = to - mean
    return -0.5 * (diff * diff).sum(-1).to(torch.float64) / eps.to(torch.float64)[..., 0] ** 2


class MALA(MetropolisCorrector):
    """Metropolis-adjusted Langevin: ``x' = x + (eps^2 / 2) grad log pi_t(x) + eps xi``, then accept/reject.

    One target and one gradient evaluation per particle per sweep. Target acceptance 0.574.
    """

    needs_grad = True
    default_acceptance = 0.574
    compiled_function: Any = staticmethod(mala_transition)

    def default_step_size(self, scale: float, dim: int) -> float:
        return 1.65 * scale * dim ** (-1 / 6)

    def fused_kind(self) -> str | None:
        return "mala" if self.metropolis else None  # ULA moves without a choice: no compiled transition

    def propose(self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext, **kwargs: Any) -> Proposal:
        path, t = ctx.path, ctx.t
        metric = kwargs.get("metric")
        if metric is not None:
            return self._propose_whitened(x, ev, eps, ctx, metric)
        fwd_mean = _langevin_mean(x, path.grad_log_prob(ev, t), eps)
        y = fwd_mean + eps * self._noise(x, ctx)
        ev_y = self._evaluate(y, ctx)
        bwd_mean = _langevin_mean(y, path.grad_log_prob(ev_y, t), eps)
        log_alpha = path.log_prob(ev_y, t) - path.log_prob(ev, t) + _log_q(x, bwd_mean, eps) - _log_q(y, fwd_mean, eps)
        return Proposal(y, ev_y, log_alpha)

    def transition(
        self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext, **options: Any
    ) -> tuple[Tensor, PathEvaluation, Tensor, Proposal]:
        """:meth:`MetropolisCorrector.transition`; with ``compile=True`` one compiled :func:`mala_transition`.

        The noise and the uniforms are drawn in the eager order (noise, then uniforms), so a
        compiled run draws the same random numbers as an eager one.
        """
        step = self._compiled_step(ctx)
        if step is None or not ev.has_grad:
            return super().transition(x, ev, eps, ctx, **options)
        path, metric = ctx.path, options.get("metric")
        xi = self._noise(x, ctx)
        u = ctx.rand(x.shape[:-1], torch.float64, x.device)
        parts = (ev.log_ref, ev.log_target, ev.grad_ref, ev.grad_target)
        out = step(path, x, parts, xi, u, eps, metric, *_step_constants(path, ctx.t, x))
        if out is None:  # compilation failed: the same transition, eagerly, with the same draws
            prop = self._propose_whitened(x, ev, eps, ctx, metric, xi)
            return (*_metropolis_choice(x, ev, prop, u), prop)
        x1, ev1, log_alpha, y, ev_y, nonfinite = out[0], out[1:5], out[5], out[6], out[7:11], out[11]
        path.count(y, True, nonfinite)
        return x1, PathEvaluation(*ev1), log_alpha, Proposal(y, PathEvaluation(*ev_y), log_alpha)

    def _propose_whitened(
        self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext, metric: Tensor | None, xi=None
    ) -> Proposal:
        """MALA in ``z = L^{-1} x``: ``y = x + L (eps^2/2 L^T g(x) + eps xi)``.

        The whitened residuals need no triangular solve: forward ``eps xi``; backward
        ``L^{-1}(x - y) - eps^2/2 L^T g(y) = -(eps xi + eps^2/2 L^T (g(x) + g(y)))``. The
        Jacobian ``|L|`` cancels in the ratio. ``metric=None`` is the identity; ``xi`` the noise
        if already drawn (a failed compiled step's).
        """
        path, t = ctx.path, ctx.t
        gx = _down(path.grad_log_prob(ev, t), metric)
        xi = self._noise(x, ctx) if xi is None else xi
        step, y = _mala_move(x, gx, xi, eps, metric)
        ev_y = self._evaluate(y, ctx)
        grad_y = _down(path.grad_log_prob(ev_y, t), metric)
        log_alpha = _mala_log_ratio(path.log_prob(ev, t), path.log_prob(ev_y, t), step, grad_y, xi, eps)
        return Proposal(y, ev_y, log_alpha)


class ULA(MALA):
    """Unadjusted Langevin: the MALA proposal, always accepted (biased by O(eps^2)).

    The MALA acceptance probability is still computed and drives the step-size adaptation (a
    handle on the discretization bias); it is reported as ``acceptance``.
    """

    metropolis = False
    #: ULA moves without a Metropolis choice: MALA's compiled transition does not apply.
    compiled_function = None


class RWMH(MetropolisCorrector):
    """Random-walk Metropolis: ``x' = x + eps xi``. One target evaluation per sweep; target acceptance 0.234."""

    default_acceptance = 0.234

    def default_step_size(self, scale: float, dim: int) -> float:
        return 2.38 * scale / math.sqrt(dim)

    def propose(self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext, **kwargs: Any) -> Proposal:
        y = x + _up(eps * self._noise(x, ctx), kwargs.get("metric"))
        ev_y = ctx.path.evaluate(y, grad=ctx.needs_grad)
        return Proposal(y, ev_y, ctx.path.log_prob(ev_y, ctx.t) - ctx.path.log_prob(ev, ctx.t))


class HMC(MetropolisCorrector):
    """Hamiltonian Monte Carlo: leapfrog trajectories of step eps, mass matrix ``Sigma^{-1}`` of the metric.

    ``n_leapfrog`` gradient evaluations per particle per sweep. Target acceptance 0.65. With
    ``jitter`` in [0, 1) the number of leapfrog steps of sweep k is
    ``max(1, round(n_leapfrog * (1 + jitter * (2 u_k - 1))))`` with ``u_k = frac(k phi)``
    (phi the golden ratio): trajectory lengths spread evenly over ``n_leapfrog * [1 - jitter,
    1 + jitter]``, which breaks the resonances of a fixed length on targets with near-periodic
    orbits (Neal 2011, sec. 5.4.2.2; Hoffman, Radul & Sountsov 2021 jitter the length likewise).
    The sequence depends on the sweep's index only, never on the state, so every sweep still
    leaves pi_t invariant, no random draw is spent on it, and sharded runs agree across ranks.
    """

    needs_grad = True
    default_acceptance = 0.65
    default_adapt_rate = 0.3
    compiled_function: Any = staticmethod(leapfrog_step)

    def __init__(
        self,
        n_steps: int = 1,
        n_leapfrog: int = 5,
        step_size: float | None = None,
        target_acceptance: float | None = None,
        adapt: bool = True,
        adapt_rate: float | None = None,
        metric: str = "identity",
        step_jitter: float = 0.0,
        jitter: float = 0.0,
        compile: bool = False,
    ):
        super().__init__(n_steps, step_size, target_acceptance, adapt, adapt_rate, metric, step_jitter, compile)
        self.n_leapfrog = check_positive_int("n_leapfrog", n_leapfrog)
        #: HMC's other compiled functions: the Metropolis choice after a trajectory of compiled
        #: steps (lengths that vary: ChEES, jitter), and the whole transition (a fixed length).
        self._choice = CompiledStep(hmc_choice)
        self._whole = CompiledStep(hmc_transition)
        if not 0.0 <= jitter < 1.0:
            raise ConfigurationError(f"jitter must lie in [0, 1), got {jitter!r}")
        self.jitter = float(jitter)

    def default_step_size(self, scale: float, dim: int) -> float:
        return scale * dim ** (-1 / 4) / math.sqrt(self.n_leapfrog)

    def trajectory_length(self, sweep: int) -> int:
        """Leapfrog steps of sweep number ``sweep`` (``n_leapfrog`` without jitter)."""
        if self.jitter == 0.0:
            return self.n_leapfrog
        u = (sweep * _GOLDEN) % 1.0
        return max(1, round(self.n_leapfrog * (1.0 + self.jitter * (2.0 * u - 1.0))))

    def sweep_lengths(self, first: int, count: int) -> list[int]:
        return [self.trajectory_length(sweep) for sweep in range(first, first + count)]

    def longest_sweep(self) -> int:
        """The longest :meth:`trajectory_length` of any sweep: ``round(x)`` for ``x`` just below ``n (1 + jitter)``."""
        return max(1, math.ceil(self.n_leapfrog * (1.0 + self.jitter) - 0.5))

    def fused_kind(self) -> str | None:
        return "hmc" if self.jitter else "hmc-fixed"

    def _proposal_options(self, metric: Tensor | None, sweep: int) -> dict[str, Any]:
        options = super()._proposal_options(metric, sweep)
        if self.jitter > 0.0:
            options["sweep"] = sweep
        return options

    def propose(self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext, **kwargs: Any) -> Proposal:
        """Leapfrog in whitened coordinates: ``x += eps L p``, ``p += eps L^T grad`` (``L = I`` by default)."""
        y, ev_y, p0, p = self._trajectory(x, ev, eps, ctx, **kwargs)
        return Proposal(y, ev_y, _hmc_log_alpha(ctx.path, ev, ev_y, p0, p, ctx.t), momentum=p)

    def _trajectory(
        self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext, p0: Tensor | None = None, **kwargs: Any
    ) -> tuple[Tensor, PathEvaluation, Tensor, Tensor]:
        """The leapfrog trajectory from ``x`` with momentum ``p0`` (fresh if ``None``): end point, its evaluation,
        start and end momenta.

        With ``compile=True`` each step after the first half kick is one compiled :func:`leapfrog_step`.
        """
        path, t = ctx.path, ctx.t
        metric = kwargs.get("metric")
        n_leapfrog = kwargs.get("n_leapfrog") or self.trajectory_length(kwargs.get("sweep", 0))
        p0 = self._noise(x, ctx) if p0 is None else p0
        p = p0 + 0.5 * eps * _down(path.grad_log_prob(ev, t), metric)
        y, ev_y, done = x, ev, 0
        step = self._compiled_step(ctx)
        if step is not None:
            (times, log_norm), half = _step_constants(path, t, x), 0.5 * eps
            while done < n_leapfrog:
                out = step(path, y, p, eps, eps if done < n_leapfrog - 1 else half, metric, times, log_norm)
                if out is None:  # compilation failed: the eager loop below takes over from here
                    break
                y, p, *parts, nonfinite = out
                path.count(y, True, nonfinite)
                ev_y, done = PathEvaluation(*parts), done + 1
        for i in range(done, n_leapfrog):
            y = y + eps * _up(p, metric)
            ev_y = self._evaluate(y, ctx)
            p = p + (eps if i < n_leapfrog - 1 else 0.5 * eps) * _down(path.grad_log_prob(ev_y, t), metric)
        return y, ev_y, p0, p

    def transition(
        self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext, **options: Any
    ) -> tuple[Tensor, PathEvaluation, Tensor, Proposal]:
        """:meth:`MetropolisCorrector.transition`; with ``compile=True`` compiled functions.

        A fixed trajectory length (no ``jitter``, no per-call ``n_leapfrog``): one compiled
        :func:`hmc_transition`. Otherwise the trajectory's compiled :func:`leapfrog_step` calls,
        then one compiled :func:`hmc_choice`. The random draws keep the eager order (momentum,
        then uniforms).
        """
        if self._compiled_step(ctx) is None or self._choice.failed or not ev.has_grad:
            return super().transition(x, ev, eps, ctx, **options)
        parts_x = (ev.log_ref, ev.log_target, ev.grad_ref, ev.grad_target)
        if self.jitter == 0.0 and "n_leapfrog" not in options and not self._whole.failed:
            p0 = self._noise(x, ctx)
            u = ctx.rand(x.shape[:-1], torch.float64, x.device)
            times, log_norm = _step_constants(ctx.path, ctx.t, x)
            metric = options.get("metric")
            out = self._whole(ctx.path, x, parts_x, p0, u, eps, metric, times, log_norm, self.n_leapfrog)
            if out is not None:
                ctx.path.count(out[6], True, out[12], times=self.n_leapfrog)
                log_alpha, ev_y = out[5], PathEvaluation(*out[7:11])
                prop = Proposal(out[6], ev_y, log_alpha, momentum=out[11])
                return out[0], PathEvaluation(*out[1:5]), log_alpha, prop
            y, ev_y, p0, p = self._trajectory(x, ev, eps, ctx, p0=p0, **options)
        else:
            y, ev_y, p0, p = self._trajectory(x, ev, eps, ctx, **options)
            u = ctx.rand(x.shape[:-1], torch.float64, x.device)
        parts_y = (ev_y.log_ref, ev_y.log_target, ev_y.grad_ref, ev_y.grad_target)
        out = self._choice(ctx.path, x, parts_x, y, parts_y, p0, p, u, _step_constants(ctx.path, ctx.t, x)[0])
        if out is None:  # compilation failed: the same choice, eagerly, with the same draws
            prop = Proposal(y, ev_y, _hmc_log_alpha(ctx.path, ev, ev_y, p0, p, ctx.t), momentum=p)
            return (*_metropolis_choice(x, ev, prop, u), prop)
        log_alpha = out[5]
        return out[0], PathEvaluation(*out[1:5]), log_alpha, Proposal(y, ev_y, log_alpha, momentum=p)


#: The golden ratio's fractional part: ``frac(k * phi)`` spreads evenly over [0, 1).
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
