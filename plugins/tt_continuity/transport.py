"""The TT flow step: fit ``v_t = grad Phi_t`` to the continuity equation, move ``x -> x + eps v_t(x)``.

Per annealing stage ``t -> t'`` (per replica), at the current weighted particles (a weighted
sample of pi_t):

1. box and basis: per coordinate, the inner box ``mean +- box_width * std`` (weighted moments)
   with a C² window outside it (:class:`~sampler_plugins.tt_continuity.basis.TensorBasis`);
2. ALS fit of the TT potential (warm-started from the previous stage) on the continuity-equation
   residual (:func:`~sampler_plugins.tt_continuity.als.fit_potential`), with rank adaptation:
   when the moving average (EMA) of the relative residual is above ``target_residual`` every bond
   rank is raised by one before the fit (up to ``rank``); after it, TT-SVD rounding to relative
   H² error ``round_eps`` drops what the fit did not need;
3. the Euler step ``T(x) = x + eps grad Phi(x)`` with ``eps = flow_scale * (t' - t)`` (0 from
   ``t >= flow_until`` on), shortened per replica when needed so that at every particle the
   Jacobian ``I + eps Hess Phi`` has eigenvalues ``>= min_jacobian`` (a local diffeomorphism);
4. the log-weight increment beyond the density change is the exact ``log det(I + eps Hess Phi(x))``
   (eigenvalues of the TT Hessian, not the first-order ``eps * div v``), so the engine's weights
   ``pi_t'(T x) |det grad T(x)| / pi_t(x)`` are exact importance weights and log Z stays an
   honest SMC estimate (``T`` depends on the particles it moves, like every adaptive choice in
   SMC: O(1/N) effects).

Out-of-box policy: the basis vanishes outside the (outer) box, so ``grad Phi`` is zero there and
such particles are not moved by the flow (the MCMC corrector still moves them); in the window
margin the field is damped smoothly. ``outside_box`` reports the fraction of particles outside
the inner box, ``not_moved`` the fraction outside the outer box.

The flow costs one target and gradient evaluation per particle and stage (at the moved points);
the fit itself uses the cached evaluations at the current points and no target call.
"""

from __future__ import annotations

import math
import time
from typing import Any

import attrs
import torch
from torch import Tensor

from sampler.ext import (
    ConfigurationError,
    Particles,
    StepContext,
    StepOutput,
    Transport,
    check_positive_int,
    conditional_ess,
)
from sampler_plugins.tt_continuity.als import fit_additive, fit_potential, weighted_residual
from sampler_plugins.tt_continuity.basis import BASES, BasisValues, TensorBasis
from sampler_plugins.tt_continuity.ftt import FunctionalTT, rank_caps

__all__ = ["TTFlow", "TTFlowState", "FlowMove", "flow_map", "euler_map"]


@attrs.frozen
class TTFlowState:
    """Adapted state of :class:`TTFlow` across stages.

    Attributes:
        potential: the fitted TT potential of the last stage (``None`` before the first fit).
        ema_residual: moving average of the mean held-out relative residual (drives rank increases).
        rank: the working rank of the next stage's higher-rank candidate.
        basis: the basis of ``potential`` (the last stage's box).
        eps: the last stage's step per replica ``(R,)``; ``euler_map(potential, basis, x, eps)`` is
            the map it applied.
    """

    potential: FunctionalTT | None = None
    ema_residual: float = 1.0
    basis: TensorBasis | None = None
    eps: Tensor | None = None
    rank: int = 3


@attrs.frozen
class FlowMove:
    """The Euler map ``T(x) = x + eps grad Phi(x)`` of a fitted potential at the particles.

    Attributes:
        x: moved positions ``(R, N, d)`` float64.
        log_det: ``log det grad T(x) = sum_i log(1 + eps lambda_i(x))`` ``(R, N)`` float64, with
            ``lambda_i`` the eigenvalues of ``Hess Phi(x)``.
        eps: the step taken per replica ``(R,)`` (the requested one unless curvature limited it).
        inside: ``(R, N)`` the particle lies in the inner box (full velocity).
        in_box: ``(R, N)`` the particle lies in the outer box (outside it the velocity is 0).
    """

    x: Tensor
    log_det: Tensor
    eps: Tensor
    inside: Tensor
    in_box: Tensor


def euler_map(potential: FunctionalTT, basis: TensorBasis, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``T(x) = x + eps grad Phi(x)`` at points ``x`` ``(R, M, d)`` for steps ``eps`` ``(R,)``.

    Returns ``T(x)``, ``log det grad T(x)`` ``(R, M)`` (NaN or -inf where ``T`` folds: some
    eigenvalue of ``I + eps Hess Phi`` is ``<= 0``) and the Hessian eigenvalues ``(R, M, d)``.
    """
    y = x.to(torch.float64)
    _, grad, hess = potential.derivatives(basis.evaluate(y))
    lam = torch.linalg.eigvalsh(hess)  # (R, M, d), ascending
    e = eps.to(torch.float64)[:, None, None]
    return y + e * grad, torch.log1p(e * lam).sum(-1), lam


def flow_map(
    potential: FunctionalTT,
    basis: TensorBasis,
    x: Tensor,
    eps: Tensor,
    min_jacobian: float,
    valid: Tensor | None = None,
    groups: int = 1,
) -> FlowMove:
    """The Euler step of the fitted field, shortened so that it is a mild deformation at every particle.

    ``eps`` is reduced per replica so that every eigenvalue of the Jacobian ``I + eps Hess Phi`` at
    the (``valid``) particles is ``>= min_jacobian``: ``eps <= (1 - min_jacobian) / max(-lambda_min)``.
    The Euler step of the field at time t is accurate only where ``eps |Hess Phi|`` is small; a
    longer step (or several steps of the frozen field) over-contracts where the velocity is large
    and changes fast -- in the tails early on -- and gives a proposal with lighter tails than
    pi_t', whose importance weights then underestimate Z (observed: log Z off by -0.4 on the
    double well with 8 frozen-field substeps; exact to quadrature accuracy with one shortened step).

    Args:
        potential, basis: the TT potential and its basis.
        x: particles ``(R, N, d)``.
        eps: requested step per replica ``(R,)`` (float64, ``>= 0``).
        min_jacobian: lower bound in (0, 1) for the Jacobian's eigenvalues at the particles.
        valid: ``(R, N)`` particles the bound considers (default all).
        groups: consecutive batch entries that share one step (the folds of a replica).
    """
    y = x.to(torch.float64)
    bv = basis.evaluate(y)
    _, grad, hess = potential.derivatives(bv)
    lam = torch.linalg.eigvalsh(hess)  # (R, N, d), ascending
    lam_min = lam[..., 0] if valid is None else torch.where(valid, lam[..., 0], torch.zeros_like(lam[..., 0]))
    worst = (-lam_min.min(-1).values).clamp_min(0.0)  # (R,)
    worst = worst.reshape(-1, groups).max(-1).values.repeat_interleave(groups)
    limit = torch.where(worst > 0, (1.0 - min_jacobian) / worst.clamp_min(1e-300), torch.full_like(worst, math.inf))
    eps = torch.minimum(eps.to(torch.float64), limit)
    e = eps[:, None, None]
    return FlowMove(y + e * grad, torch.log1p(e * lam).sum(-1), eps, bv.inside, bv.in_box)


def _gather(v: Tensor, order: Tensor) -> Tensor:
    """``v[r, order[r]]`` for ``v`` ``(R, N, ...)`` and ``order`` ``(R, M)``."""
    idx = order.reshape(*order.shape, *([1] * (v.ndim - 2))).expand(*order.shape, *v.shape[2:])
    return torch.gather(v, 1, idx)


def _scatter(v: Tensor, order: Tensor, n: int) -> Tensor:
    """Inverse of :func:`_gather` for the first ``n`` entries of ``order`` (a permutation of 0..n-1)."""
    order = order[:, :n]
    v = v[:, :n]
    idx = order.reshape(*order.shape, *([1] * (v.ndim - 2))).expand(*order.shape, *v.shape[2:])
    return torch.empty_like(v).scatter_(1, idx, v)


def _swap(v: Tensor, r: int, folds: int) -> Tensor:
    """Exchange the folds of a ``(R * folds, H, ...)`` batch.

    Entry ``r * folds + f`` <- ``r * folds + folds - 1 - f``.
    """
    if folds == 1:
        return v
    return v.reshape(r, folds, *v.shape[1:]).flip(1).reshape(v.shape)


def _weighted_moments(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    mean = (w[..., None] * x).sum(1)
    var = (w[..., None] * (x - mean[:, None]) ** 2).sum(1)
    return mean, var.sqrt()


def _weighted_var(v: Tensor, w: Tensor) -> Tensor:
    ok = torch.isfinite(v) & (w > 0)
    w = torch.where(ok, w, torch.zeros_like(w))
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-300)
    v = torch.where(ok, v, torch.zeros_like(v))
    mean = (w * v).sum(-1, keepdim=True)
    return (w * (v - mean) ** 2).sum(-1)


class TTFlow(Transport):
    """Deterministic flow along the geometric path with a TT velocity fitted to the continuity equation.

    Args:
        basis: univariate family, ``"legendre"`` (default) or ``"fourier"`` (H²-orthonormal, windowed).
        n_basis: functions per coordinate.
        rank: cap on every TT bond rank. Each stage first fits the best additive potential
            (rank 2, one joint least squares, :func:`~sampler_plugins.tt_continuity.als.fit_additive`);
            with ``rank > 2`` a higher-rank candidate grown from it by ALS competes with it on
            held-out particles, per replica.
        adaptive_rank: fit the higher-rank candidate only while the moving average (EMA) of the
            held-out residual exceeds ``target_residual``, and let its rank move between 3 and
            ``rank``: up while higher ranks win on held-out data, down when they lose; TT-SVD
            rounding (``round_eps``) after each ALS fit. ``False``: a rank-``rank`` candidate at
            every stage.
        target_residual: relative residual below which ranks stop growing.
        round_eps: relative (H²) tolerance of the TT-SVD rounding.
        ema: weight of the past in the residual moving average.
        n_sweeps: ALS sweeps per stage.
        ridge: relative Tikhonov parameter on the coefficients (the H² norm of the potential).
        fit_constant: fit ``C_t`` jointly (control-variate estimate) rather than fixing it to the
            weighted mean of ``log target - log ref``.
        box_width: half-width of the inner box in weighted standard deviations per coordinate.
        window: width of the window ramps, as a fraction of the inner box width.
        flow_scale: fraction of the Euler step ``t' - t`` taken (1: the full step).
        flow_until: no flow from this time on (MCMC only near t = 1 when ``< 1``).
        min_jacobian: smallest eigenvalue of the step's Jacobian allowed at the particles (in (0, 1));
            the step is shortened per replica to respect it (see :func:`flow_map`).
        warm_start: start the higher-rank candidate's ALS from the previous stage's potential
            (else, the default, from this stage's additive fit).
        cross_fit: split the particles into two random folds, fit one potential per fold and move
            each fold with the other fold's potential, so that no particle's map depends on the
            particle itself. A potential fitted to the very particles it moves makes their weights
            look better than they are (in-sample overfitting), which biases log Z downwards by
            O(parameters / N) -- measured -0.056 +- 0.016 on a 10-d Gaussian at N = 500 without
            it. Costs a second, half-size fit; the held-out residual it gives is what ``tt_residual``
            reports.

    Reports per stage: ``tt_rank`` (largest bond rank used), ``tt_residual`` (relative PDE residual
    of the fields used, at held-out particles), ``tt_residual_fit`` (at the particles they were
    fitted to), ``tt_rank_won`` (fraction of fits where the higher-rank candidate won),
    ``flow_scale`` (step taken / ``t' - t``), ``cess_flow`` / ``cess_no_flow`` (conditional ESS of
    the stage's increments with and without the
    flow), ``flow_share`` (``1 - Var(log w with flow) / Var(log w without)``: the part of the stage's
    density change carried by the flow rather than left to reweighting, resampling and MCMC),
    ``outside_box``, ``not_moved`` and ``tt_seconds`` (fit and move wall time).
    """

    needs_grad = True

    def __init__(
        self,
        basis: str = "legendre",
        n_basis: int = 6,
        rank: int = 4,
        adaptive_rank: bool = True,
        target_residual: float = 0.05,
        round_eps: float = 1e-3,
        ema: float = 0.5,
        n_sweeps: int = 2,
        ridge: float = 1e-6,
        fit_constant: bool = True,
        box_width: float = 4.0,
        window: float = 0.25,
        flow_scale: float = 1.0,
        flow_until: float = 1.0,
        min_jacobian: float = 0.5,
        warm_start: bool = False,
        cross_fit: bool = True,
    ):
        if basis not in BASES:
            raise ConfigurationError(f"basis must be one of {', '.join(BASES)}, got {basis!r}")
        self.basis = basis
        self.n_basis = check_positive_int("n_basis", n_basis)
        if basis == "legendre" and n_basis < 2:
            raise ConfigurationError("a legendre basis needs n_basis >= 2 (constants carry no velocity)")
        if basis == "fourier" and n_basis < 3:
            raise ConfigurationError("a fourier basis needs n_basis >= 3 (1, cos, sin)")
        self.rank = check_positive_int("rank", rank)
        self.adaptive_rank = bool(adaptive_rank)
        _check_range("target_residual", target_residual, 0, 1, closed=(False, True))
        _check_range("round_eps", round_eps, 0, 1)
        _check_range("ema", ema, 0, 1, closed=(True, False))
        self.target_residual, self.round_eps, self.ema = float(target_residual), float(round_eps), float(ema)
        self.n_sweeps = check_positive_int("n_sweeps", n_sweeps)
        _check_range("ridge", ridge, 0, math.inf, closed=(True, False))
        self.ridge = float(ridge)
        self.fit_constant = bool(fit_constant)
        _check_range("box_width", box_width, 0, math.inf)
        _check_range("window", window, 0, math.inf, closed=(True, False))
        self.box_width, self.window = float(box_width), float(window)
        _check_range("flow_scale", flow_scale, 0, math.inf, closed=(True, False))
        _check_range("flow_until", flow_until, 0, 1, closed=(True, True))
        _check_range("min_jacobian", min_jacobian, 0, 1)
        self.flow_scale, self.flow_until, self.min_jacobian = float(flow_scale), float(flow_until), float(min_jacobian)
        self.warm_start = bool(warm_start)
        self.cross_fit = bool(cross_fit)

    def init(self, particles: Particles, ctx: StepContext) -> TTFlowState:
        """No potential yet; the residual EMA starts at 1 (the zero field's residual)."""
        return TTFlowState()

    # -- the stage ----------------------------------------------------------------------------------
    def _folds(self, n_replicas: int, n: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, int]:
        """Random fold assignment: an order ``(R, M)`` of the particle indices, fold f = entries ``[f H, (f+1) H)``.

        With cross-fitting ``M = 2 H`` and an odd N repeats one index at the end (its copy gets no
        weight in the fit and is dropped after the move); otherwise ``M = N`` (one fold).
        """
        if not self.cross_fit or n < 4:
            return torch.arange(n, device=device).expand(n_replicas, n), 1
        order = torch.argsort(torch.rand(n_replicas, n, generator=generator, device=device), dim=-1)
        if n % 2:
            order = torch.cat([order, order[:, :1]], -1)
        return order, 2

    def fit(
        self, particles: Particles, state: TTFlowState, ctx: StepContext
    ) -> tuple[TTFlowState, dict[str, Any], Tensor, int]:
        """Fit the potential(s) at pi_{t_from} to the current particles.

        Returns the new state, statistics, the particle order and the number of folds: the
        potentials (and bases) are batched as ``(R * folds)``, entry ``r * folds + f`` fitted on fold
        f of replica r (see :meth:`_folds`).
        """
        path, t = ctx.path, ctx.t_from
        x64 = particles.x.to(torch.float64)
        ev = particles.evaluation
        if not ev.has_grad:
            ev = path.evaluate(particles.x, grad=True)
        drift = path.grad_log_prob(ev, t).to(torch.float64)
        g = (ev.log_target - ev.log_ref).to(torch.float64)
        w = torch.softmax(particles.log_weights, -1)
        ok = torch.isfinite(g) & torch.isfinite(drift).all(-1) & (w > 0)

        r, n, d = x64.shape
        order, folds = self._folds(r, n, ctx.generator, x64.device)
        m = order.shape[1]
        h = m // folds
        take = lambda v: _gather(v, order).reshape(r * folds, h, *v.shape[2:])  # noqa: E731
        xs, drift, g, ok = take(x64), take(drift), take(g), take(ok)
        w = take(w)
        if m > n:  # the repeated index of an odd N carries no weight
            w = w.reshape(r, m)
            w[:, -1] = 0.0
            w = w.reshape(r * folds, h)
        w = torch.where(ok, w, torch.zeros_like(w))
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-300)
        g = torch.where(ok, g, torch.zeros_like(g))
        drift = torch.where(ok[..., None], drift, torch.zeros_like(drift))
        rhs = (w * g).sum(-1, keepdim=True) - g  # L Phi = C_t - g

        mean, std = _weighted_moments(torch.where(ok[..., None], xs, torch.zeros_like(xs)), w)
        half = self.box_width * std.clamp_min(1e-12 * (1 + mean.abs()))
        basis = TensorBasis.around(self.basis, self.n_basis, mean, half, self.window)
        bv = basis.evaluate(xs)

        def residual(pot: FunctionalTT, bvals: BasisValues, dr: Tensor, y: Tensor, wt: Tensor) -> Tensor:
            lphi = pot.generator(bvals, dr)
            if self.fit_constant:
                lphi = lphi - (wt * lphi).sum(-1, keepdim=True)
                y = y - (wt * y).sum(-1, keepdim=True)
            return weighted_residual(lphi, y, wt)

        if folds > 1:  # each fold's potential is scored at the other fold's particles
            sw = lambda v: _swap(v, r, folds)  # noqa: E731
            held = (basis.evaluate(sw(xs)), sw(drift), sw(rhs), sw(w))
        else:
            held = (bv, drift, rhs, w)

        caps = rank_caps(d, self.n_basis, self.rank)
        work = min(state.rank, max(caps, default=1))
        additive = fit_additive(bv, drift, rhs, w, self.ridge, self.fit_constant)
        potential, res_fit = additive, residual(additive, bv, drift, rhs, w)
        res_held = residual(additive, *held)
        tt_won = None
        # a higher-rank candidate only while the fits are poor (residual EMA above target)
        if max(caps, default=1) > 2 and (not self.adaptive_rank or state.ema_residual > self.target_residual):
            start = additive.clone() if self.warm_start is False or state.potential is None else state.potential.clone()
            if start.tt.cores[0].shape[0] != r * folds:
                start = additive.clone()
            target_rank = work if self.adaptive_rank else self.rank
            start.enrich(
                max(target_rank - max(start.ranks, default=1), 0), [min(c, target_rank) for c in caps], ctx.generator
            )
            fit_potential(start, bv, drift, rhs, w, self.n_sweeps, self.ridge, self.fit_constant)
            start.round(self.round_eps, target_rank)
            res_tt = residual(start, *held)
            better = res_tt < res_held
            potential = start.where(better, additive)
            res_fit = torch.where(better, residual(start, bv, drift, rhs, w), res_fit)
            res_held = torch.where(better, res_tt, res_held)
            tt_won = float(better.to(torch.float64).mean())
        ema = self.ema * state.ema_residual + (1 - self.ema) * float(res_held.mean())
        rank = state.rank
        if (
            self.adaptive_rank and tt_won is not None
        ):  # grow while higher ranks win on held-out data and the fit is poor
            rank = min(rank + 1, self.rank) if tt_won > 0.5 and ema > self.target_residual else max(rank - 1, 3)
        info = {
            "tt_rank": torch.full_like(t, float(max(potential.ranks, default=1))),
            "tt_residual": res_held.reshape(r, folds).mean(-1),
            "tt_residual_fit": res_fit.reshape(r, folds).mean(-1),
            "tt_rank_won": torch.full_like(t, math.nan if tt_won is None else tt_won),
        }
        return TTFlowState(potential, ema, basis, rank=rank), info, order, folds

    def apply(self, particles: Particles, state: TTFlowState, ctx: StepContext) -> StepOutput:
        """Fit, move by the Euler step of the fitted field, and return ``log det`` of the map's Jacobian.

        With cross-fitting, the particles of each fold are moved by the potential fitted on the
        other fold, so no particle's map depends on the particle itself.
        """
        eps = (ctx.t - ctx.t_from).to(torch.float64) * self.flow_scale
        eps = torch.where(ctx.t_from >= self.flow_until, torch.zeros_like(eps), eps)
        zero = torch.zeros_like(particles.log_weights)
        if not bool((eps > 0).any()):
            return StepOutput(particles, state, {"flow_scale": torch.zeros_like(eps)}, zero)
        start = time.perf_counter()
        state, info, order, folds = self.fit(particles, state, ctx)
        r, n, d = particles.x.shape
        h = order.shape[1] // folds
        ok = torch.isfinite(particles.evaluation.log_target) & torch.isfinite(particles.log_weights)
        sw = lambda v: _swap(_gather(v, order).reshape(r * folds, h, *v.shape[2:]), r, folds)  # noqa: E731
        move = flow_map(
            state.potential,
            state.basis,
            sw(particles.x),
            eps.repeat_interleave(folds),
            self.min_jacobian,
            valid=sw(ok),
            groups=folds,
        )
        back = lambda v: _scatter(_swap(v, r, folds).reshape(r, folds * h, *v.shape[2:]), order, n)  # noqa: E731
        eps_taken = move.eps.reshape(r, folds)[:, 0]
        moved = eps_taken > 0
        x_new = torch.where(moved[:, None, None], back(move.x).to(particles.x.dtype), particles.x)
        log_det = torch.where(moved[:, None], back(move.log_det), zero)
        ev_new = ctx.path.evaluate(x_new, grad=ctx.needs_grad)
        new = attrs.evolve(particles, x=x_new, evaluation=ev_new)
        state = attrs.evolve(state, eps=move.eps)

        path, ev = ctx.path, particles.evaluation
        w = torch.softmax(particles.log_weights, -1)
        inc_flow = path.log_weight_increment(ev, ctx.t_from, ev_new, ctx.t) + log_det
        inc_none = path.log_weight_increment(ev, ctx.t_from, ev, ctx.t)
        var_flow, var_none = _weighted_var(inc_flow, w), _weighted_var(inc_none, w)
        info.update(
            outside_box=1.0 - back(move.inside.to(torch.float64)).mean(-1),
            not_moved=1.0 - back(move.in_box.to(torch.float64)).mean(-1),
            flow_scale=torch.where(eps > 0, eps_taken / (ctx.t - ctx.t_from).clamp_min(1e-300), torch.zeros_like(eps)),
            cess_flow=conditional_ess(particles.log_weights, inc_flow),
            cess_no_flow=conditional_ess(particles.log_weights, inc_none),
            flow_share=torch.where(var_none > 0, 1 - var_flow / var_none.clamp_min(1e-300), torch.zeros_like(var_none)),
            tt_seconds=time.perf_counter() - start,
        )
        return StepOutput(new, state, info, log_det)

    def __repr__(self) -> str:
        return (
            f"TTFlow(basis={self.basis!r}, n_basis={self.n_basis}, rank={self.rank}, "
            f"flow_scale={self.flow_scale}, flow_until={self.flow_until})"
        )


def _check_range(name: str, value: Any, lo: float, hi: float, closed: tuple[bool, bool] = (False, False)) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) or value == math.inf
    if ok:
        ok = (value >= lo if closed[0] else value > lo) and (value <= hi if closed[1] else value < hi)
    if not ok:
        left, right = "[" if closed[0] else "(", "]" if closed[1] else ")"
        raise ConfigurationError(f"{name} must lie in {left}{lo}, {hi}{right}, got {value!r}")
