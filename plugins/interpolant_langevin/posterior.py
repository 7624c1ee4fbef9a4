"""Langevin estimates of the endpoint posterior of the linear stochastic interpolant.

Interpolant: ``X_t = (1 - t) X0 + t X1`` with ``X0 ~ N(mu, diag(sigma^2))`` (the reference) and
``X1 ~ pi`` (the target). Given ``X_t = x`` the endpoint ``X1`` has the posterior density

    pi_{t,x}(y)  ∝  pi(y) * g_{t,x}(y),   log g_{t,x}(y) = -|x - (1 - t) mu - t y|^2 / (2 (1 - t)^2 sigma^2)

(componentwise division by ``sigma^2``). Its mean ``m_t(x) = E[X1 | X_t = x]`` gives, in closed form,

* the flow velocity   ``u(t, x) = E[X1 - X0 | X_t = x] = (m_t(x) - x) / (1 - t)``,
* the marginal score  ``grad log p_t(x) = (t m_t(x) + (1 - t) mu - x) / ((1 - t)^2 sigma^2)``.

This module estimates ``m_t(x)`` for a batch of points ``x`` ``(..., d)`` by ``M`` Metropolis-adjusted
(or unadjusted) Langevin chains per point, all points x chains in one batch ``(..., M, d)``:

* The chains are preconditioned by ``P = sigma^2 (1 - t)^2 / (t^2 + (1 - t)^2)``, the harmonic
  combination of the reference variance and the Gaussian factor's variance ``((1 - t) sigma / t)^2``.
  The curvature of ``-log g`` grows like ``t^2 / (1 - t)^2``, so the effective step ``h P`` shrinks
  like ``(1 - t)^2 / t^2`` as ``t -> 1`` (the dimensionless ``h`` is adapted per point toward a
  target acceptance rate).
* Chains are warm-started: when the point or time moves from ``(t, x)`` to ``(t', x')``, the chain
  states are kept and, by default, reweighted by ``g_{t',x'}(y) / g_{t,x}(y)`` -- an exact
  importance correction that needs no target evaluation (the target factor cancels) -- and
  resampled (systematic, per point) when the chains' ESS drops below a threshold. The estimate
  of ``m`` is the self-normalized weighted average of the chain states over the kept sweeps.
* Every target evaluation goes through a :class:`sampler.GeometricPath`, so gradient evaluations
  are counted (one per chain per sweep) and non-finite target values are handled as in the engine.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from sampler.ext import (
    ConfigurationError,
    EvaluationCounter,
    GaussianReference,
    GeometricPath,
    Target,
    as_target,
    check_positive_int,
    make_reference,
    systematic,
)

__all__ = [
    "InnerSampler",
    "PosteriorChains",
    "PosteriorEstimate",
    "reference_params",
    "as_path",
    "init_chains",
    "move_chains",
    "run_chains",
    "estimate_posterior",
    "velocity",
    "score",
]

_KERNELS = ("mala", "ula")

#: Adapted (dimensionless) inner step sizes stay within these bounds.
STEP_SIZE_BOUNDS = (1e-6, 10.0)


@attrs.frozen
class InnerSampler:
    """Configuration of the inner Langevin chains that estimate the posterior mean.

    Attributes:
        n_chains: chains M per point.
        n_steps: sweeps per estimate (each sweep costs one gradient evaluation per chain).
        burn_in: leading sweeps left out of the average (warm-started chains need few or none).
        kernel: ``"mala"`` (Metropolis-adjusted, exact in the limit) or ``"ula"`` (unadjusted, as in
            the paper; its acceptance rate is still computed and drives the adaptation).
        step_size: initial dimensionless step ``eps`` (the proposal is
            ``y + eps^2/2 P grad + eps sqrt(P) xi``); default ``1.65 d^(-1/6)``.
        target_acceptance: acceptance rate the per-point step adaptation aims at.
        adapt_rate: gain of the adaptation ``eps <- eps exp(rate (acceptance - target))``; 0 freezes it.
        reweight: importance-reweight warm-started chains when the point or time moves.
        init_weights: weight cold-started chains by ``pi(y) / ref(y)`` (``True``): the Gaussian start
            is then an importance proposal and the weighted chains a consistent sample of the
            posterior, which gets multimodal posteriors' mode weights right in low dimension (the
            weights degenerate in high dimension); ``False`` starts them equally weighted (mode
            weights then follow the basins the chains fall into).
        resample_threshold: chains of a point are resampled when their ESS fraction falls below this.
    """

    n_chains: int = attrs.field(default=8)
    n_steps: int = attrs.field(default=4)
    burn_in: int = attrs.field(default=0)
    kernel: str = attrs.field(default="mala")
    step_size: float | None = attrs.field(default=None)
    target_acceptance: float = attrs.field(default=0.574)
    adapt_rate: float = attrs.field(default=0.5)
    reweight: bool = attrs.field(default=True)
    init_weights: bool = attrs.field(default=True)
    resample_threshold: float = attrs.field(default=0.5)

    def __attrs_post_init__(self) -> None:
        check_positive_int("n_chains", self.n_chains)
        check_positive_int("n_steps", self.n_steps)
        if isinstance(self.burn_in, bool) or not isinstance(self.burn_in, int) or not 0 <= self.burn_in < self.n_steps:
            raise ConfigurationError(f"burn_in must be an integer in [0, n_steps={self.n_steps}), got {self.burn_in!r}")
        if self.kernel not in _KERNELS:
            raise ConfigurationError(f"inner kernel must be one of {', '.join(_KERNELS)}, got {self.kernel!r}")
        if self.step_size is not None and not (isinstance(self.step_size, (int, float)) and self.step_size > 0):
            raise ConfigurationError(f"inner step_size must be positive, got {self.step_size!r}")
        if not 0 < self.target_acceptance < 1:
            raise ConfigurationError(f"target_acceptance must lie in (0, 1), got {self.target_acceptance!r}")
        if not self.adapt_rate >= 0:
            raise ConfigurationError(f"adapt_rate must be non-negative, got {self.adapt_rate!r}")
        if not 0 <= self.resample_threshold <= 1:
            raise ConfigurationError(f"resample_threshold must lie in [0, 1], got {self.resample_threshold!r}")

    def default_step_size(self, dim: int) -> float:
        """Initial dimensionless step ``eps``."""
        return self.step_size if self.step_size is not None else 1.65 * dim ** (-1 / 6)


@attrs.frozen
class PosteriorChains:
    """Inner chains for points ``x`` ``(..., d)`` at times ``t`` ``(...)``, anchored at ``(t, x)``.

    Attributes:
        y: chain states ``(..., M, d)`` in the points' dtype.
        log_weights: ``(..., M)`` float64 importance log weights (unnormalized) of the chains.
        log_target: ``(..., M)`` float64 cached target log density at ``y`` (``-inf`` where not finite).
        grad_target: ``(..., M, d)`` cached gradient of the target log density at ``y``.
        step_size: ``(...)`` float64 dimensionless step ``eps`` per point.
        x: ``(..., d)`` the points the chains currently target the posterior of.
        t: ``(...)`` float64 the time they target.
    """

    y: Tensor
    log_weights: Tensor
    log_target: Tensor
    grad_target: Tensor
    step_size: Tensor
    x: Tensor
    t: Tensor

    @property
    def n_chains(self) -> int:
        """M."""
        return self.y.shape[-2]

    def normalized_weights(self) -> Tensor:
        """``(..., M)`` float64 self-normalized weights (uniform where every weight is zero)."""
        lw = self.log_weights
        finite = torch.isfinite(lw).any(-1, keepdim=True)
        return torch.softmax(torch.where(finite, lw, torch.zeros_like(lw)), dim=-1)

    def ess(self) -> Tensor:
        """Kish ESS fraction of the chain weights per point, ``(...)`` in [0, 1]."""
        w = self.normalized_weights()
        return 1.0 / (w.square().sum(-1) * self.n_chains)


@attrs.frozen
class PosteriorEstimate:
    """An estimate of the posterior mean ``m_t(x)`` and what follows from it.

    Attributes:
        mean: ``(..., d)`` estimate of ``E[X1 | X_t = x]``.
        x: ``(..., d)`` the points; ``t``: ``(...)`` float64 times.
        loc, scale: ``(d,)`` reference parameters ``mu``, ``sigma`` (in ``x``'s dtype).
        chains: the chains after the estimate (warm start for the next one).
        acceptance: ``(...)`` float64 mean acceptance probability of the sweeps per point.
        ess: ``(...)`` float64 chain-weight ESS fraction before the sweeps.
        grad_evals: gradient evaluations spent on this estimate.
    """

    mean: Tensor
    x: Tensor
    t: Tensor
    loc: Tensor
    scale: Tensor
    chains: PosteriorChains
    acceptance: Tensor
    ess: Tensor
    grad_evals: int

    def velocity(self) -> Tensor:
        """``(m - x) / (1 - t)``, ``(..., d)``: the probability-flow velocity ``u(t, x)``."""
        one_minus = (1.0 - self.t).to(self.x.dtype)[..., None]
        return (self.mean - self.x) / one_minus

    def score(self) -> Tensor:
        """``(t m + (1 - t) mu - x) / ((1 - t)^2 sigma^2)``, ``(..., d)``: ``grad log p_t(x)``."""
        t = self.t.to(self.x.dtype)[..., None]
        return (t * self.mean + (1 - t) * self.loc - self.x) / ((1 - t) ** 2 * self.scale**2)


# -- helpers -----------------------------------------------------------------------------------------
def reference_params(reference: GaussianReference, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(mu, sigma)`` of the reference as ``(d,)`` tensors on ``like``'s device and dtype."""
    loc = torch.as_tensor(reference.loc, device=like.device, dtype=like.dtype)
    scale = torch.as_tensor(reference.scale, device=like.device, dtype=like.dtype)
    return loc, scale


def as_path(target: Target | GeometricPath, reference: GaussianReference | None = None) -> GeometricPath:
    """A counting :class:`GeometricPath` for a target (reference: the target's default), or the path itself."""
    if isinstance(target, GeometricPath):
        return target
    tgt = as_target(target)
    return GeometricPath(reference or make_reference(tgt), tgt, EvaluationCounter())


def _times(t: float | Tensor, x: Tensor) -> Tensor:
    """Times as float64 ``x.shape[:-1]``; checks they lie in [0, 1)."""
    tt = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    try:
        tt = torch.broadcast_to(tt, x.shape[:-1])
    except RuntimeError:
        raise ConfigurationError(
            f"times of shape {tuple(tt.shape)} do not broadcast to the points' batch shape {tuple(x.shape[:-1])}"
        ) from None
    if bool(((tt < 0) | (tt >= 1) | torch.isnan(tt)).any()):
        raise ConfigurationError("the posterior is defined for times in [0, 1); got a time outside")
    return tt


def _preconditioner(t: Tensor, scale: Tensor) -> Tensor:
    """``P = sigma^2 (1-t)^2 / (t^2 + (1-t)^2)``, shape ``t.shape + (1, d)`` (broadcast over chains)."""
    tt = t.to(scale.dtype)[..., None, None]
    return scale**2 * (1 - tt) ** 2 / (tt**2 + (1 - tt) ** 2)


def _log_factor(y: Tensor, x: Tensor, t: Tensor, loc: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """``log g_{t,x}(y)`` float64 ``(..., M)`` and its gradient in ``y`` ``(..., M, d)``."""
    tt = t.to(y.dtype)[..., None, None]
    var = (1 - tt) ** 2 * scale**2
    resid = x[..., None, :] - (1 - tt) * loc - tt * y
    log_g = -0.5 * (resid.to(torch.float64) ** 2 / var.to(torch.float64)).sum(-1)
    return log_g, tt * resid / var


def _evaluate(path: GeometricPath, y: Tensor) -> tuple[Tensor, Tensor]:
    ev = path.evaluate(y, grad=True)
    assert ev.grad_target is not None  # evaluate(grad=True) always returns the gradient
    return ev.log_target, ev.grad_target


# -- the chains ---------------------------------------------------------------------------------------
def init_chains(
    path: GeometricPath,
    x: Tensor,
    t: float | Tensor,
    config: InnerSampler,
    generator: torch.Generator,
    step_size: Tensor | None = None,
) -> PosteriorChains:
    """Start ``M`` chains per point from the Gaussian approximation of the posterior.

    The target is replaced by its reference ``N(mu, sigma^2)``; the product with the Gaussian
    factor is ``N(P (mu / sigma^2 + t (x - (1-t) mu) / ((1-t)^2 sigma^2)), P)`` -- exactly the
    posterior when the target equals the reference, and the point mass ``x / t`` as ``t -> 1``.
    With ``config.init_weights`` the chains get the importance weights ``pi(y) / ref(y)`` of that
    proposal (the Gaussian factor cancels). Costs one target and gradient evaluation per chain.
    """
    tt = _times(t, x)
    loc, scale = reference_params(path.reference, x)
    p = _preconditioner(tt, scale)[..., 0, :]  # (..., d)
    tx = tt.to(x.dtype)[..., None]
    mean = p * (loc / scale**2 + tx * (x - (1 - tx) * loc) / ((1 - tx) ** 2 * scale**2))
    noise = torch.randn(
        *x.shape[:-1], config.n_chains, x.shape[-1], generator=generator, device=x.device, dtype=x.dtype
    )
    y = mean[..., None, :] + p.sqrt()[..., None, :] * noise
    log_target, grad = _evaluate(path, y)
    if step_size is None:
        step_size = torch.full(
            x.shape[:-1], config.default_step_size(x.shape[-1]), dtype=torch.float64, device=x.device
        )
    if config.init_weights:
        log_w = log_target - path.reference.log_prob(y)
        log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True).nan_to_num(nan=0.0, neginf=0.0, posinf=0.0)
    else:
        log_w = torch.zeros(y.shape[:-1], dtype=torch.float64, device=x.device)
    return PosteriorChains(
        y=y,
        log_weights=log_w,
        log_target=log_target,
        grad_target=grad,
        step_size=step_size,
        x=x,
        t=tt,
    )


def move_chains(
    path: GeometricPath, chains: PosteriorChains, x: Tensor, t: float | Tensor, config: InnerSampler
) -> PosteriorChains:
    """Re-anchor warm-started chains at new points/times ``(t, x)``.

    With ``config.reweight`` the chain weights are multiplied by ``g_{t,x}(y) / g_{t_old,x_old}(y)``,
    which turns a weighted sample of the old posterior into one of the new (no target evaluation).
    """
    tt = _times(t, x)
    log_w = chains.log_weights
    if config.reweight:
        loc, scale = reference_params(path.reference, x)
        new, _ = _log_factor(chains.y, x, tt, loc, scale)
        old, _ = _log_factor(chains.y, chains.x, chains.t, loc, scale)
        log_w = log_w + (new - old)
        log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True).nan_to_num(nan=0.0, neginf=0.0, posinf=0.0)
    return attrs.evolve(chains, x=x, t=tt, log_weights=log_w)


def _resample(chains: PosteriorChains, generator: torch.Generator, threshold: float) -> tuple[PosteriorChains, Tensor]:
    """Systematically resample the chains of points whose chain ESS fraction is below ``threshold``."""
    ess = chains.ess()
    low = ess < threshold
    if not bool(low.any()):
        return chains, ess
    batch, m = chains.log_weights.shape[:-1], chains.n_chains
    flat_w = chains.normalized_weights().reshape(-1, m).log()
    idx = systematic(flat_w, generator).reshape(*batch, m)
    keep = torch.arange(m, device=idx.device).expand_as(idx)
    idx = torch.where(low[..., None], idx, keep)

    def take(v: Tensor) -> Tensor:
        if v.ndim == idx.ndim:
            return torch.gather(v, -1, idx)
        return torch.gather(v, -2, idx[..., None].expand(v.shape))

    log_w = torch.where(low[..., None], torch.zeros_like(chains.log_weights), chains.log_weights)
    return attrs.evolve(
        chains,
        y=take(chains.y),
        log_target=take(chains.log_target),
        grad_target=take(chains.grad_target),
        log_weights=log_w,
    ), ess


def run_chains(
    path: GeometricPath,
    chains: PosteriorChains,
    config: InnerSampler,
    generator: torch.Generator,
    n_steps: int | None = None,
) -> PosteriorEstimate:
    """Run ``n_steps`` (default ``config.n_steps``) Langevin sweeps at the chains' anchor ``(t, x)``.

    Returns the weighted average of the chain states over the sweeps after ``burn_in``.
    """
    n_steps = config.n_steps if n_steps is None else check_positive_int("n_steps", n_steps)
    burn_in = min(config.burn_in, n_steps - 1)
    seen = path.counter.grad_evals
    chains, ess = _resample(chains, generator, config.resample_threshold)
    x, t = chains.x, chains.t
    loc, scale = reference_params(path.reference, x)
    p = _preconditioner(t, scale)
    sqrt_p = p.sqrt()
    y, lp, g_tgt = chains.y, chains.log_target, chains.grad_target
    log_g, g_fac = _log_factor(y, x, t, loc, scale)
    eps = chains.step_size
    acceptance = torch.zeros_like(eps)
    total = torch.zeros_like(x)
    w = chains.normalized_weights().to(x.dtype)[..., None]  # MCMC moves keep the weights
    for k in range(n_steps):
        e = eps.to(x.dtype)[..., None, None]
        h = e**2
        fwd = y + 0.5 * h * p * (g_tgt + g_fac)
        y_new = fwd + e * sqrt_p * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        lp_new, g_tgt_new = _evaluate(path, y_new)
        log_g_new, g_fac_new = _log_factor(y_new, x, t, loc, scale)
        bwd = y_new + 0.5 * h * p * (g_tgt_new + g_fac_new)
        h64 = h.to(torch.float64)[..., 0]
        log_q_fwd = -0.5 * ((y_new - fwd).to(torch.float64) ** 2 / p.to(torch.float64)).sum(-1) / h64
        log_q_bwd = -0.5 * ((y - bwd).to(torch.float64) ** 2 / p.to(torch.float64)).sum(-1) / h64
        cur, new = lp + log_g, lp_new + log_g_new
        log_alpha = new - cur + log_q_bwd - log_q_fwd
        log_alpha = torch.where(cur == -math.inf, torch.where(new > -math.inf, 0.0, -math.inf), log_alpha)
        log_alpha = log_alpha.nan_to_num(nan=-math.inf).clamp(max=0.0)
        if config.kernel == "mala":
            u = torch.rand(log_alpha.shape, generator=generator, device=y.device, dtype=torch.float64)
            accept = torch.log(u) < log_alpha
        else:
            accept = torch.ones_like(log_alpha, dtype=torch.bool)
        y = torch.where(accept[..., None], y_new, y)
        lp = torch.where(accept, lp_new, lp)
        log_g = torch.where(accept, log_g_new, log_g)
        g_tgt = torch.where(accept[..., None], g_tgt_new, g_tgt)
        g_fac = torch.where(accept[..., None], g_fac_new, g_fac)
        rate = log_alpha.exp().mean(-1)
        acceptance = acceptance + rate / n_steps
        if config.adapt_rate > 0:
            eps = (eps * torch.exp(config.adapt_rate * (rate - config.target_acceptance))).clamp(*STEP_SIZE_BOUNDS)
        if k >= burn_in:
            total = total + (w * y).sum(-2)
    mean = total / (n_steps - burn_in)
    new_chains = attrs.evolve(chains, y=y, log_target=lp, grad_target=g_tgt, step_size=eps)
    return PosteriorEstimate(
        mean=mean,
        x=x,
        t=t,
        loc=loc,
        scale=scale,
        chains=new_chains,
        acceptance=acceptance,
        ess=ess,
        grad_evals=path.counter.grad_evals - seen,
    )


def estimate_posterior(
    target: Target | GeometricPath,
    x: Tensor,
    t: float | Tensor,
    inner: InnerSampler | None = None,
    chains: PosteriorChains | None = None,
    generator: torch.Generator | None = None,
    reference: GaussianReference | None = None,
) -> PosteriorEstimate:
    """Estimate ``E[X1 | X_t = x]`` for points ``x`` ``(..., d)`` at times ``t`` (float or broadcastable to ``(...)``).

    Args:
        target: the target (wrapped in a counting path with its default reference) or a
            :class:`sampler.GeometricPath` whose reference is the interpolant's ``X0`` law.
        inner: chain configuration (default :class:`InnerSampler()`).
        chains: warm start (e.g. ``previous.chains``); re-anchored at ``(t, x)``.
        generator: random generator on ``x``'s device (a fresh unseeded one if omitted).
        reference: the ``X0`` law when ``target`` is not a path (default: the target's reference).

    Returns:
        a :class:`PosteriorEstimate`; ``.velocity()`` and ``.score()`` give ``u(t, x)`` and ``grad log p_t(x)``.
    """
    inner = inner or InnerSampler()
    path = as_path(target, reference)
    if x.ndim < 1 or x.shape[-1] != path.target.dim:
        raise ConfigurationError(f"points must have shape (..., {path.target.dim}), got {tuple(x.shape)}")
    if generator is None:
        generator = torch.Generator(device=x.device)
        generator.seed()
    seen = path.counter.grad_evals
    if chains is None:
        chains = init_chains(path, x, t, inner, generator)
    else:
        chains = move_chains(path, chains, x, t, inner)
    est = run_chains(path, chains, inner, generator)
    return attrs.evolve(est, grad_evals=path.counter.grad_evals - seen)


def velocity(target: Target | GeometricPath, x: Tensor, t: float | Tensor, **kwargs) -> Tensor:
    """Langevin estimate of the flow velocity ``u(t, x) = (m_t(x) - x) / (1 - t)``, ``(..., d)``.

    Keyword arguments as :func:`estimate_posterior`.
    """
    return estimate_posterior(target, x, t, **kwargs).velocity()


def score(target: Target | GeometricPath, x: Tensor, t: float | Tensor, **kwargs) -> Tensor:
    """Langevin estimate of the marginal score ``grad log p_t(x)``, ``(..., d)``.

    Keyword arguments as :func:`estimate_posterior`.
    """
    return estimate_posterior(target, x, t, **kwargs).score()
