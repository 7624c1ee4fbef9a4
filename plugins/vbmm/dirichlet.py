"""Dirichlet maximum-likelihood estimation: VBMM, BPG, Minka's fixed point and Newton.

Observations ``p_n`` on the simplex (``n = 1..N``), sufficient statistic
``s_k = (1/N) sum_n log p_{n,k}``. The negative log-likelihood per observation is::

    F(alpha) = sum_k lgamma(alpha_k) - lgamma(alpha_0) - sum_k (alpha_k - 1) s_k,   alpha_0 = sum_k alpha_k,

convex on ``alpha > 0``, with gradient ``psi(alpha_k) - psi(alpha_0) - s_k`` and Hessian
``diag(psi'(alpha)) - psi'(alpha_0) 1 1^T`` (diagonal plus rank one). Every solver here is an
instance of :func:`~sampler_plugins.vbmm.solver.vbmm` with a different separable Bregman family,
except Newton's method:

* ``minka``: BPG with the fixed ``h(alpha) = sum_k lgamma(alpha_k)`` -- exactly Minka's fixed
  point ``psi(alpha_k^+) = psi(alpha_0) + s_k`` (``h - F = lgamma(alpha_0) + linear`` is convex).
* ``bpg``: BPG with the fixed ``h(x) = sum_k x_k log x_k - log x_k`` (``h'' = 1/x + 1/x^2 >= psi'``,
  so ``h - F`` is convex and the step is 1); the update is closed form through Lambert's W.
* ``vbmm``: the variable majorants of :class:`VariableSplitFamily`: at each iterate one coordinate
  (the largest ``alpha_j``) takes over part of the curvature of ``-lgamma(alpha_0)``, which the
  fixed ``lgamma`` majorant throws away, and the others pay for it with a quadratic term; the
  split is chosen per iteration (and the plain ``lgamma`` majorant when it is better).
* ``newton``: Newton's method on the diagonal-plus-rank-one Hessian (Sherman-Morrison, O(K) per
  step), with backtracking that keeps ``alpha > 0`` and decreases ``F``.

Provenance: the VBMM and BPG Bregman functions of Martin, Pesquet, Steidl and Ben Ayed (2025)
could not be read (only the paper's abstract was available to us); the three families above are
our own constructions, each with a majorization proof in its docstring and a numerical check in
the tests. :func:`separable_speedup_possible` states the limit every separable majorant --
the paper's included -- obeys against Minka's fixed point.

All work is float64 and batched: ``alpha`` and ``s`` are ``(B, K)``.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import Tensor

from sampler.ext import ConfigurationError
from sampler_plugins.vbmm.solver import FixedFamily, VBMMResult, solve_increasing, vbmm

__all__ = [
    "SOLVERS",
    "DirichletStats",
    "DirichletFit",
    "DirichletMLE",
    "dirichlet_nll",
    "dirichlet_grad",
    "LogGammaBregman",
    "EntropyBurgBregman",
    "SplitBregman",
    "VariableSplitFamily",
    "moments_init",
    "newton",
    "separable_speedup_possible",
    "fit_dirichlet",
    "solve_stats",
]

#: Solver names accepted by :func:`fit_dirichlet` and the ``dirichlet-vbmm`` estimator.
SOLVERS = ("vbmm", "bpg", "minka", "newton")

DTYPE = torch.float64


def _digamma(x: Tensor) -> Tensor:
    return torch.special.digamma(x)


def _trigamma(x: Tensor) -> Tensor:
    return torch.special.polygamma(1, x)


def dirichlet_nll(alpha: Tensor, log_mean: Tensor) -> Tensor:
    """``F(alpha)``: negative mean log-likelihood per observation, ``(B, K), (B, K) -> (B,)``."""
    return torch.lgamma(alpha).sum(-1) - torch.lgamma(alpha.sum(-1)) - ((alpha - 1) * log_mean).sum(-1)


def dirichlet_grad(alpha: Tensor, log_mean: Tensor) -> Tensor:
    """``grad F(alpha) = psi(alpha) - psi(alpha_0) - s``, ``(B, K)``."""
    return _digamma(alpha) - _digamma(alpha.sum(-1, keepdim=True)) - log_mean


# ------------------------------------------------------------------------------------------
# Sufficient statistics


@attrs.frozen(eq=False)
class DirichletStats:
    """What the fit needs from the observations (float64).

    Attributes:
        log_mean: ``(B, K)`` ``s_k = mean_n log p_{n,k}``.
        mean: ``(B, K)`` ``mean_n p_{n,k}`` (for the moment-matching start).
        var: ``(B, K)`` unbiased variance of ``p_{n,k}`` over ``n`` (NaN when ``N = 1``).
        n_obs: number of observations ``N`` per problem.
    """

    log_mean: Tensor
    mean: Tensor
    var: Tensor
    n_obs: int

    @classmethod
    def from_observations(cls, data: Any, clip: float | None = None) -> DirichletStats:
        """Statistics of ``data`` ``(N, K)`` or ``(B, N, K)``: rows on the simplex.

        Zeros make ``log p`` infinite. With ``clip=None`` (default) a zero or negative entry is
        an error; with ``clip=c`` every entry is raised to at least ``c`` and the rows are
        renormalized (a documented bias toward smaller concentrations for tiny ``c``).
        """
        p = torch.as_tensor(data)
        if not p.is_floating_point():
            p = p.to(DTYPE)
        p = p.to(DTYPE)
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3 or p.shape[-1] < 2 or p.shape[-2] < 1:
            raise ConfigurationError(
                "Dirichlet data must have shape (N, K) or (B, N, K) with K >= 2 and N >= 1, "
                f"got {tuple(torch.as_tensor(data).shape)}"
            )
        if not bool(torch.isfinite(p).all()):
            raise ConfigurationError("Dirichlet data contain NaN or infinite entries")
        if clip is not None:
            if not (isinstance(clip, (int, float)) and 0 < clip < 1.0 / p.shape[-1]):
                raise ConfigurationError(f"clip must be a number in (0, 1/K), got {clip!r}")
            p = p.clamp_min(clip)
            p = p / p.sum(-1, keepdim=True)
        elif bool((p <= 0).any()):
            n_bad = int((p <= 0).sum())
            raise ConfigurationError(
                f"Dirichlet data contain {n_bad} zero or negative entries; their log is -inf. "
                "Pass clip=1e-12 (or another small floor) to clip and renormalize them."
            )
        rows = p.sum(-1)
        if bool(((rows - 1).abs() > 1e-6).any()):
            worst = float((rows - 1).abs().max())
            raise ConfigurationError(
                f"Dirichlet observations must sum to 1 over the last axis (worst row is off by {worst:.3g})"
            )
        n = p.shape[-2]
        var = p.var(-2) if n > 1 else torch.full_like(p[:, 0], math.nan)
        return cls(log_mean=p.log().mean(-2), mean=p.mean(-2), var=var, n_obs=n)


def moments_init(stats: DirichletStats) -> Tensor:
    """Moment-matching start ``alpha = mean * c`` (Ronning / Minka), ``(B, K)``.

    ``c`` is the median over ``k`` of ``mean_k (1 - mean_k) / var_k - 1`` (the Dirichlet
    identity ``var_k = m_k (1 - m_k) / (alpha_0 + 1)``); ``c = K`` when no coordinate gives a
    usable value (one observation, or zero variance).
    """
    m, v = stats.mean, stats.var
    c = m * (1 - m) / v - 1
    c = torch.where(torch.isfinite(c) & (c > 0), c, torch.full_like(c, math.nan))
    c0 = torch.nanmedian(c, dim=-1, keepdim=True).values
    k = m.shape[-1]
    c0 = torch.where(torch.isfinite(c0), c0, torch.full_like(c0, float(k)))
    return (m * c0).clamp_min(1e-8)


# ------------------------------------------------------------------------------------------
# Bregman functions


class LogGammaBregman:
    """``h(x) = sum_k lgamma(x_k)``: BPG with it is Minka's fixed point (inverse digamma update)."""

    def value(self, x: Tensor) -> Tensor:
        """``lgamma(x_k)``."""
        return torch.lgamma(x)

    def grad(self, x: Tensor) -> Tensor:
        """``psi(x_k)``."""
        return _digamma(x)

    def solve(self, target: Tensor, x_init: Tensor) -> Tensor:
        """Inverse digamma ``psi(x) = target`` by safeguarded Newton from ``x_init``."""
        return solve_increasing(lambda x: (_digamma(x) - target, _trigamma(x)), x_init)


class EntropyBurgBregman:
    """``h(x) = sum_k x_k log x_k - log x_k`` (``h'' = 1/x + 1/x^2``, which dominates ``psi'``).

    The update ``log x + 1 - 1/x = c`` has the closed form ``x = 1 / W(exp(1 - c))`` with
    Lambert's ``W``, evaluated by :func:`lambertw_exp`.
    """

    def value(self, x: Tensor) -> Tensor:
        """``x log x - log x``."""
        return x * x.log() - x.log()

    def grad(self, x: Tensor) -> Tensor:
        """``log x + 1 - 1/x``."""
        return x.log() + 1 - 1 / x

    def solve(self, target: Tensor, x_init: Tensor) -> Tensor:
        """``x = 1 / W(exp(1 - target))``."""
        return 1.0 / lambertw_exp(1.0 - target)


def lambertw_exp(z: Tensor) -> Tensor:
    """``W(exp(z))``, the principal Lambert W of ``e^z``: the ``u > 0`` with ``u + log u = z``.

    Computed without forming ``exp(z)`` (no overflow), by safeguarded Newton from the
    asymptotic start ``z - log z`` (``z > 1``) or ``exp(z)`` (``z <= 1``).
    """
    start = torch.where(z > 1, z - torch.log(z.clamp_min(1.0)), torch.exp(z.clamp_max(1.0)))
    return solve_increasing(lambda u: (u + u.log() - z, 1 + 1 / u), start.clamp_min(1e-300))


@attrs.frozen(eq=False)
class SplitBregman:
    """The variable majorant of :class:`VariableSplitFamily` at the iterate ``y`` ``(B, K)``.

    With ``m = y_0 - y_j`` (the mass outside the split coordinate ``j``), ``a = psi'(y_0)`` and
    ``G(u) = lgamma(u) - lgamma(y_0) - psi(y_0)(u - y_0)`` (the Bregman divergence of lgamma at
    ``y_0``)::

        h_k(x) = lgamma(x) + rho m / (2 theta y_k) (x - y_k)^2                       (k != j)
        h_j(x) = lgamma(x) - rho [G(x + m) - theta/2 * Gd(x)^2]
        Gd(x)  = G'(x + m) = psi(x + m) - psi(y_0)   for x <= y_j,   a (x - y_j) for x > y_j

    Why it majorizes ``F``: ``D_F(x, y) = sum_k D_lgamma(x_k, y_k) - G(x_0)``. Convexity of ``G``
    gives ``G(x_0) >= G(x_j + m) + G'(x_j + m)(S - m)`` with ``S = sum_{k != j} x_k``; Young's
    inequality ``uv >= -theta u^2/2 - v^2/(2 theta)``, ``|G'(x_j + m)| <= |Gd(x_j)|`` (concavity of
    psi) and Cauchy-Schwarz ``(S - m)^2 <= m sum_{k != j} (x_k - y_k)^2 / y_k`` give a separable
    lower bound of ``G(x_0)``; so does ``0``, and any mixture ``rho in [0, 1]`` of the two. Hence
    ``D_h(x, y) >= D_F(x, y)`` for every ``x > 0``. Each ``h_k`` is strictly convex with
    ``h_k'`` onto the reals, so every update has a unique positive solution. ``rho = 0`` is the
    fixed ``lgamma`` majorant (Minka's step).

    Attributes:
        y: ``(B, K)`` the iterate; ``j``: ``(B, 1)`` int64 split coordinate;
        rho: ``(B, 1)`` in ``[0, 1]``; ``theta``: ``(B, 1)`` positive.
    """

    y: Tensor
    j: Tensor
    rho: Tensor
    theta: Tensor
    y0: Tensor = attrs.field(init=False)
    yj: Tensor = attrs.field(init=False)
    m: Tensor = attrs.field(init=False)
    a: Tensor = attrs.field(init=False)
    beta: Tensor = attrs.field(init=False)
    psi_y0: Tensor = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        y0 = self.y.sum(-1, keepdim=True)
        yj = self.y.gather(-1, self.j)
        m = y0 - yj
        object.__setattr__(self, "y0", y0)
        object.__setattr__(self, "yj", yj)
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "a", _trigamma(y0))
        object.__setattr__(self, "psi_y0", _digamma(y0))
        # quadratic weight of the k != j coordinates
        object.__setattr__(self, "beta", self.rho * m / (self.theta * self.y))

    def _parts(self):
        return self.y0, self.yj, self.m, self.a, self.beta

    def _mask(self) -> Tensor:
        return torch.zeros_like(self.y, dtype=torch.bool).scatter(-1, self.j, True)

    def value(self, x: Tensor) -> Tensor:
        """``h_k(x_k)`` ``(..., B, K)``."""
        y0, yj, m, a, beta = self._parts()
        xj = x.gather(-1, self.j.expand(*x.shape[:-1], 1))
        u = xj + m
        g = torch.lgamma(u) - torch.lgamma(y0) - _digamma(y0) * (u - y0)
        gd = torch.where(xj <= yj, _digamma(u) - _digamma(y0), a * (xj - yj))
        hj = torch.lgamma(xj) - self.rho * (g - 0.5 * self.theta * gd * gd)
        hk = torch.lgamma(x) + 0.5 * beta * (x - self.y) ** 2
        return torch.where(self._mask(), hj, hk)

    def grad(self, x: Tensor) -> Tensor:
        """``h_k'(x_k)``."""
        _, _, _, _, beta = self._parts()
        xj = x.gather(-1, self.j.expand(*x.shape[:-1], 1))
        hk = _digamma(x) + beta * (x - self.y)
        return torch.where(self._mask(), self._phi_j(xj)[0], hk)

    def _phi_j(self, xj: Tensor) -> tuple[Tensor, Tensor]:
        """``h_j'(x)`` and ``h_j''(x)`` for the split coordinate ``(…, B, 1)``."""
        y0, yj, m, a, _ = self._parts()
        u = xj + m
        gp = _digamma(u) - self.psi_y0
        tu = _trigamma(u)
        left = xj <= yj
        w = torch.where(left, gp * tu, a * a * (xj - yj))
        dw = torch.where(left, tu * tu + gp * torch.special.polygamma(2, u), a * a)
        value = _digamma(xj) - self.rho * (gp - self.theta * w)
        slope = _trigamma(xj) - self.rho * (tu - self.theta * dw)
        return value, slope

    def solve(self, target: Tensor, x_init: Tensor) -> Tensor:
        """Solve ``h_k'(x_k) = target_k``: safeguarded Newton per coordinate."""
        _, _, _, _, beta = self._parts()
        x = solve_increasing(lambda x: (_digamma(x) + beta * (x - self.y) - target, _trigamma(x) + beta), x_init)
        tj = target.gather(-1, self.j)

        def phi(xj):
            v, s = self._phi_j(xj)
            return v - tj, s

        xj = solve_increasing(phi, x_init.gather(-1, self.j))
        return x.scatter(-1, self.j, xj)


#: The curvature fractions ``t`` tried by :class:`VariableSplitFamily` (``t = 0`` is Minka's step).
DEFAULT_SPLITS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 0.9, 0.97, 0.995)


@attrs.frozen
class VariableSplitFamily:
    """VBMM's Bregman family for the Dirichlet likelihood: a :class:`SplitBregman` per iterate.

    At the iterate ``y`` the split coordinate is ``j = argmax_k y_k``. Locally the majorant has
    curvature ``psi'(y_j) - t a`` on ``j`` (``a = psi'(y_0)``, ``t in [0, 1)`` the share of the
    rank-one curvature handed to it) and ``psi'(y_k) + E_k(t)`` elsewhere, with
    ``E_k = 4 t a m / y_k`` (``rho = 2t``, ``theta = 1/(2a)``, for ``t < 1/2``) or
    ``a m / ((1 - t) y_k)`` (``rho = 1``, ``theta = (1 - t)/a``, for ``t >= 1/2``) -- the cheapest
    pair for a given ``t``. The family picks, per problem and per iteration, the ``t`` among
    ``{0} + splits`` whose diagonal quadratic model promises the largest decrease
    ``sum_k grad_k^2 / curvature_k``; ``t = 0`` (the ``lgamma`` majorant, Minka's step) is always
    a candidate, so the family never does worse than Minka by that measure.
    """

    splits: tuple[float, ...] = DEFAULT_SPLITS

    def at(self, y: Tensor, grad: Tensor) -> SplitBregman | LogGammaBregman:
        """The majorant for iterate ``y`` ``(B, K)`` with ``grad = grad F(y)``."""
        y0 = y.sum(-1, keepdim=True)
        a = _trigamma(y0)
        b = _trigamma(y)
        j = y.argmax(-1, keepdim=True)
        m = y0 - y.gather(-1, j)
        ts = torch.tensor(self.splits, dtype=y.dtype, device=y.device)[:, None, None]  # (T, 1, 1)
        coef = torch.where(ts < 0.5, 4 * ts, 1 / (1 - ts))
        mask = torch.zeros_like(y, dtype=torch.bool).scatter(-1, j, True)
        curv = torch.where(mask, b - ts * a, b + coef * a * m / y)  # (T, B, K)
        g2 = grad * grad
        gain = (g2 / curv).sum(-1)  # (T, B)
        base = (g2 / b).sum(-1)  # (B,)
        best_gain, best = gain.max(0)
        t = ts[:, 0, 0][best][:, None]  # (B, 1)
        use = (best_gain > base)[:, None]
        rho = torch.where(t < 0.5, 2 * t, torch.ones_like(t))
        theta = torch.where(t < 0.5, 0.5 / a, (1 - t) / a)
        rho = torch.where(use, rho, torch.zeros_like(rho))
        if not bool(use.any()):
            # every problem keeps the plain lgamma majorant: skip the split machinery (same step)
            return LogGammaBregman()
        return SplitBregman(y=y, j=j, rho=rho, theta=theta)


def separable_speedup_possible(alpha: Tensor) -> Tensor:
    """Whether any separable Bregman majorant can beat Minka's asymptotic rate at ``alpha`` ``(B, K) -> (B,)``.

    Near the optimum every MM scheme with a diagonal metric ``M = diag(h''(alpha))`` contracts like
    ``I - M^{-1} H`` with ``H = diag(q) - a 1 1^T`` (``q = psi'(alpha)``, ``a = psi'(alpha_0)``), and a
    separable majorant needs ``M >= H``. Minka's metric ``diag(q)`` leaves one slow direction,
    ``v = 1/q``, with rate ``a sum_k 1/q_k``. Write ``M = diag(q + delta)``; ``M - H =
    diag(delta) + a 1 1^T >= 0`` lets at most one ``delta_j`` be negative, with
    ``-delta_j <= 1 / (1/a + sum_{k != j} 1/delta_k)``. Cauchy-Schwarz then gives
    ``v^T M v >= v^T diag(q) v`` -- so ``lambda_min(M^{-1} H) <= `` Minka's and no separable
    majorant converges faster -- unless one coordinate dominates:
    ``u_j > sum_{k != j} u_k`` with ``u = 1/psi'(alpha)`` (roughly ``alpha_j - 1/2 > sum_{k != j}
    (alpha_k - 1/2)``). Returns that condition; evaluated at the MLE it says whether VBMM can
    need fewer iterations than Minka's fixed point in the long run.
    """
    u = 1.0 / _trigamma(alpha)
    top = u.amax(-1)
    return top > u.sum(-1) - top


# ------------------------------------------------------------------------------------------
# Newton's method


def _newton_direction(alpha: Tensor, grad: Tensor) -> Tensor:
    """``H^{-1} grad`` for ``H = diag(q) - a 1 1^T`` (Sherman-Morrison), ``(B, K)``."""
    q = _trigamma(alpha)
    a = _trigamma(alpha.sum(-1, keepdim=True))
    inv_q = 1 / q
    corr = (grad * inv_q).sum(-1, keepdim=True) / (1 / a - inv_q.sum(-1, keepdim=True))
    return (grad + corr) * inv_q


def newton(
    log_mean: Tensor,
    x0: Tensor,
    *,
    max_iter: int = 200,
    xtol: float = 1e-10,
    gtol: float = 1e-10,
    record: bool = False,
    callback=None,
) -> VBMMResult:
    """Newton's method on ``F`` with the O(K) diagonal-plus-rank-one solve.

    A full step that leaves ``alpha > 0`` or fails the Armijo test
    ``F(alpha - s d) <= F(alpha) - 1e-4 s <grad, d>`` is halved (up to 60 times). Same stopping
    rule and result type as :func:`~sampler_plugins.vbmm.solver.vbmm`.
    """
    x = x0.clone()
    b = x.shape[0]
    n_iter = torch.zeros(b, dtype=torch.int64, device=x.device)
    converged = torch.zeros(b, dtype=torch.bool, device=x.device)
    fx = dirichlet_nll(x, log_mean)
    history = [fx] if record else None
    for it in range(max_iter):
        g = dirichlet_grad(x, log_mean)
        d = _newton_direction(x, g)
        slope = (g * d).sum(-1)
        step = torch.ones_like(fx)
        accepted = torch.zeros_like(converged)
        for _ in range(60):
            cand = x - step[:, None] * d
            inside = (cand > 0).all(-1)
            fc = torch.where(
                inside, dirichlet_nll(torch.where(inside[:, None], cand, x), log_mean), torch.full_like(fx, math.inf)
            )
            accepted = accepted | (fc <= fx - 1e-4 * step * slope)
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, 0.5 * step)
        new = torch.where((converged | ~accepted)[:, None], x, x - step[:, None] * d)
        fnew = dirichlet_nll(new, log_mean)
        change = ((new - x).abs() / x).amax(-1)
        gmax = dirichlet_grad(new, log_mean).abs().amax(-1)
        n_iter = n_iter + (~converged).to(torch.int64)
        # no acceptable step: the objective is flat to rounding, so the iterate is optimal
        converged = converged | ((change <= xtol) & (gmax <= gtol)) | ~accepted
        x, fx = new, fnew
        if history is not None:
            history.append(fx)
        if bool(converged.all()) or (callback is not None and callback(it + 1, x)):
            break
    return VBMMResult(
        x=x,
        objective=fx,
        n_iter=n_iter,
        converged=converged,
        history=torch.stack(history) if history is not None else None,
    )


# ------------------------------------------------------------------------------------------
# Fitting


def _family(solver: str):
    if solver == "vbmm":
        return VariableSplitFamily()
    if solver == "minka":
        return FixedFamily(LogGammaBregman())
    if solver == "bpg":
        return FixedFamily(EntropyBurgBregman())
    raise ConfigurationError(f"unknown Dirichlet solver {solver!r}; choose one of {', '.join(SOLVERS)}")


def solve_stats(
    log_mean: Tensor,
    x0: Tensor,
    solver: str = "vbmm",
    *,
    max_iter: int | None = None,
    xtol: float = 1e-10,
    gtol: float = 1e-10,
    record: bool = False,
    record_iterates: bool = False,
    callback=None,
) -> VBMMResult:
    """Minimize ``F(., log_mean)`` from ``x0`` (both ``(B, K)``, float64) with a named solver.

    ``max_iter`` defaults to 200 for ``newton`` and 100,000 for the MM solvers.
    """
    if solver == "newton":
        return newton(log_mean, x0, max_iter=max_iter or 200, xtol=xtol, gtol=gtol, record=record, callback=callback)
    return vbmm(
        lambda a: dirichlet_nll(a, log_mean),
        lambda a: dirichlet_grad(a, log_mean),
        _family(solver),
        x0,
        max_iter=max_iter or 100_000,
        xtol=xtol,
        gtol=gtol,
        record=record,
        record_iterates=record_iterates,
        callback=callback,
    )


@attrs.frozen(eq=False)
class DirichletFit:
    """A fitted Dirichlet. Shapes: ``(K,)`` / scalars for one data set ``(N, K)``; a leading
    batch axis ``B`` for batched data ``(B, N, K)``.

    Attributes:
        alpha: ``(..., K)`` maximum-likelihood concentration parameters.
        concentration: ``(...)`` ``alpha_0 = sum_k alpha_k`` (how reproducible the proportions are:
            ``var(p_k) = m_k (1 - m_k) / (alpha_0 + 1)``).
        mean: ``(..., K)`` ``alpha / alpha_0``.
        stderr: ``(..., K)`` asymptotic standard errors of ``alpha`` (inverse Fisher information
            ``(diag(psi'(alpha)) - psi'(alpha_0) 1 1^T)^{-1} / N``).
        concentration_stderr: ``(...)`` asymptotic standard error of ``alpha_0``.
        objective: ``(...)`` negative mean log-likelihood per observation at ``alpha``.
        n_iter: ``(...)`` iterations; ``converged``: ``(...)`` stopping rule met.
        n_obs: N; ``solver``: the solver's name; ``history``: objective per iteration
            ``(n_iter + 1, ...)`` when requested.
    """

    alpha: Tensor
    concentration: Tensor
    mean: Tensor
    stderr: Tensor
    concentration_stderr: Tensor
    objective: Tensor
    n_iter: Tensor
    converged: Tensor
    n_obs: int
    solver: str
    history: Tensor | None = None


def asymptotic_stderr(alpha: Tensor, n_obs: int) -> tuple[Tensor, Tensor]:
    """Standard errors of ``alpha`` ``(B, K)`` and of ``alpha_0`` ``(B,)`` from the Fisher information."""
    q = _trigamma(alpha)
    a = _trigamma(alpha.sum(-1, keepdim=True))
    inv_q = 1 / q
    s = inv_q.sum(-1, keepdim=True)
    denom = 1 - a * s  # > 0 because the Fisher information is positive definite
    var = inv_q + a * inv_q * inv_q / denom
    var0 = (s / denom)[..., 0]
    return (var / n_obs).sqrt(), (var0 / n_obs).sqrt()


def fit_dirichlet(
    data: Any,
    solver: str = "vbmm",
    *,
    clip: float | None = None,
    init: Any = "moments",
    max_iter: int | None = None,
    xtol: float = 1e-10,
    gtol: float = 1e-10,
    record: bool = False,
) -> DirichletFit:
    """Maximum-likelihood Dirichlet fit of ``data`` ``(N, K)`` or ``(B, N, K)`` (or :class:`DirichletStats`).

    Args:
        solver: ``"vbmm"`` (default), ``"bpg"``, ``"minka"`` or ``"newton"``.
        clip: floor for zero entries (see :meth:`DirichletStats.from_observations`).
        init: ``"moments"`` (moment matching), ``"ones"``, or a positive ``(K,)``/``(B, K)`` tensor.
        max_iter, xtol, gtol: stopping rule (see :func:`~sampler_plugins.vbmm.solver.vbmm`).
        record: keep the objective of every iteration in ``history``.
    """
    if solver not in SOLVERS:
        raise ConfigurationError(f"unknown Dirichlet solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    batched = isinstance(data, DirichletStats) or torch.as_tensor(data).ndim == 3
    stats = data if isinstance(data, DirichletStats) else DirichletStats.from_observations(data, clip=clip)
    s = stats.log_mean
    if isinstance(init, str):
        if init == "moments":
            x0 = moments_init(stats)
        elif init == "ones":
            x0 = torch.ones_like(s)
        else:
            raise ConfigurationError(f"init must be 'moments', 'ones' or a tensor, got {init!r}")
    else:
        x0 = torch.as_tensor(init, dtype=DTYPE, device=s.device).expand_as(s).clone()
        if not bool((x0 > 0).all() & torch.isfinite(x0).all()):
            raise ConfigurationError("init must be finite and positive")
    out = solve_stats(s, x0, solver, max_iter=max_iter, xtol=xtol, gtol=gtol, record=record)
    alpha = out.x
    se, se0 = asymptotic_stderr(alpha, stats.n_obs)
    a0 = alpha.sum(-1)
    squeeze = (lambda t: t) if batched else (lambda t: t[0])
    return DirichletFit(
        alpha=squeeze(alpha),
        concentration=squeeze(a0),
        mean=squeeze(alpha / a0[:, None]),
        stderr=squeeze(se),
        concentration_stderr=squeeze(se0),
        objective=squeeze(out.objective),
        n_iter=squeeze(out.n_iter),
        converged=squeeze(out.converged),
        n_obs=stats.n_obs,
        solver=solver,
        history=None if out.history is None else (out.history if batched else out.history[:, 0]),
    )


class DirichletMLE:
    """The ``dirichlet-vbmm`` estimator: ``DirichletMLE(**options).fit(data) -> DirichletFit``.

    Args:
        solver: ``"vbmm"`` (default), ``"bpg"``, ``"minka"`` or ``"newton"``.
        clip: floor for zero entries of the data (``None``: zeros are an error).
        init, max_iter, xtol, gtol, record: see :func:`fit_dirichlet`.
    """

    def __init__(
        self,
        solver: str = "vbmm",
        clip: float | None = None,
        init: Any = "moments",
        max_iter: int | None = None,
        xtol: float = 1e-10,
        gtol: float = 1e-10,
        record: bool = False,
    ):
        if solver not in SOLVERS:
            raise ConfigurationError(f"unknown Dirichlet solver {solver!r}; choose one of {', '.join(SOLVERS)}")
        if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
            raise ConfigurationError(f"max_iter must be a positive integer, got {max_iter!r}")
        self.options = dict(solver=solver, clip=clip, init=init, max_iter=max_iter, xtol=xtol, gtol=gtol, record=record)

    def fit(self, data: Any) -> DirichletFit:
        """Fit ``data`` ``(N, K)`` or ``(B, N, K)`` of observations on the simplex."""
        return fit_dirichlet(data, **self.options)

    def __repr__(self) -> str:
        return f"DirichletMLE({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"
