"""MCMC correctors: ULA, MALA, HMC and random-walk Metropolis, batched over (R, N, d).

Each targets pi_t at the stage's time ``ctx.t`` and uses one step size per replica. With
``adapt=True`` the step size moves after every sweep toward ``target_acceptance``:
``eps <- eps * exp(adapt_rate * (mean acceptance probability - target_acceptance))``. The
step size of a sweep is fixed before the sweep, so each sweep leaves pi_t invariant (for the
Metropolis-adjusted kernels); ``adapt=False`` keeps it fixed altogether.
"""

from __future__ import annotations

import abc
import math

import attrs
import torch
from torch import Tensor

from sampler.ext import (
    ConfigurationError,
    Corrector,
    Particles,
    PathEvaluation,
    StepContext,
    StepOutput,
    check_positive_int,
)

#: Adapted step sizes stay within these bounds (a stuck acceptance cannot drive them to 0 or inf).
STEP_SIZE_BOUNDS = (1e-10, 1e10)


@attrs.frozen
class KernelState:
    """Adapted state of a kernel: ``step_size`` ``(R,)`` float64, one per replica."""

    step_size: Tensor


@attrs.frozen
class Proposal:
    """A proposed move: positions ``x`` ``(R, N, d)``, their evaluation, and ``log_alpha`` ``(R, N)``."""

    x: Tensor
    evaluation: PathEvaluation
    log_alpha: Tensor


class MetropolisCorrector(Corrector):
    """Base of the MCMC correctors: ``n_steps`` sweeps of propose / accept with adaptation.

    Args:
        n_steps: sweeps per application (per annealing stage).
        step_size: initial step size (default: scaled to the reference and the dimension).
        target_acceptance: the acceptance rate the adaptation aims at.
        adapt: adapt the step size between sweeps.
        adapt_rate: gain of the adaptation (default per kernel: 1 for MALA/ULA/RWMH, 0.3 for
            HMC, whose acceptance falls off a cliff as the step grows and would oscillate).
    """

    default_acceptance: float = 0.5
    default_adapt_rate: float = 1.0
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
    ):
        check_positive_int("n_steps", n_steps)
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
        """One step size per replica: ``step_size`` or :meth:`default_step_size` of the reference."""
        if self.step_size is not None:
            eps = self.step_size
        else:
            scale = float(ctx.path.reference.scale.mean())
            eps = self.default_step_size(scale, particles.dim)
        return KernelState(torch.full((particles.n_replicas,), eps, dtype=torch.float64, device=particles.x.device))

    @abc.abstractmethod
    def propose(self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext) -> Proposal:
        """Propose from ``x`` with step sizes ``eps`` ``(R, 1, 1)`` (in ``x``'s dtype)."""

    def apply(self, particles: Particles, state: KernelState, ctx: StepContext) -> StepOutput:
        """``n_steps`` sweeps at pi_t; reports mean ``acceptance`` probability and ``step_size`` per replica."""
        x, ev = particles.x, particles.evaluation
        if self.needs_grad and not ev.has_grad:
            ev = ctx.path.evaluate(x, grad=True)
        eps = state.step_size
        acceptance = torch.zeros_like(eps)
        for _ in range(self.n_steps):
            prop = self.propose(x, ev, eps.to(x.dtype)[:, None, None], ctx)
            log_alpha = prop.log_alpha.to(torch.float64)
            log_alpha = log_alpha.masked_fill(torch.isnan(log_alpha), -math.inf).clamp(max=0.0)
            if self.metropolis:
                u = ctx.rand(log_alpha.shape, torch.float64, x.device)
                accept = torch.log(u) < log_alpha
                x = torch.where(accept[..., None], prop.x, x)
                ev = prop.evaluation.where(accept, ev)
            else:
                x, ev = prop.x, prop.evaluation
            rate = ctx.mean_probability(log_alpha.exp())
            acceptance = acceptance + rate / self.n_steps
            if self.adapt:
                eps = (eps * torch.exp(self.adapt_rate * (rate - self.target_acceptance))).clamp(*STEP_SIZE_BOUNDS)
        new = attrs.evolve(particles, x=x, evaluation=ev)
        return StepOutput(new, KernelState(eps), {"acceptance": acceptance, "step_size": eps})

    # -- helpers shared by the kernels ---------------------------------------------------------------
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
    diff = (to - mean).to(torch.float64)
    return -0.5 * (diff**2).sum(-1) / eps.to(torch.float64)[..., 0] ** 2


class MALA(MetropolisCorrector):
    """Metropolis-adjusted Langevin: ``x' = x + (eps^2 / 2) grad log pi_t(x) + eps xi``, then accept/reject.

    One target and one gradient evaluation per particle per sweep. Target acceptance 0.574.
    """

    needs_grad = True
    default_acceptance = 0.574

    def default_step_size(self, scale: float, dim: int) -> float:
        return 1.65 * scale * dim ** (-1 / 6)

    def propose(self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext) -> Proposal:
        path, t = ctx.path, ctx.t
        fwd_mean = _langevin_mean(x, path.grad_log_prob(ev, t), eps)
        y = fwd_mean + eps * self._noise(x, ctx)
        ev_y = self._evaluate(y, ctx)
        bwd_mean = _langevin_mean(y, path.grad_log_prob(ev_y, t), eps)
        log_alpha = path.log_prob(ev_y, t) - path.log_prob(ev, t) + _log_q(x, bwd_mean, eps) - _log_q(y, fwd_mean, eps)
        return Proposal(y, ev_y, log_alpha)


class ULA(MALA):
    """Unadjusted Langevin: the MALA proposal, always accepted (biased by O(eps^2)).

    The MALA acceptance probability is still computed and drives the step-size adaptation (a
    handle on the discretization bias); it is reported as ``acceptance``.
    """

    metropolis = False


class RWMH(MetropolisCorrector):
    """Random-walk Metropolis: ``x' = x + eps xi``. One target evaluation per sweep; target acceptance 0.234."""

    default_acceptance = 0.234

    def default_step_size(self, scale: float, dim: int) -> float:
        return 2.38 * scale / math.sqrt(dim)

    def propose(self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext) -> Proposal:
        y = x + eps * self._noise(x, ctx)
        ev_y = ctx.path.evaluate(y, grad=ctx.needs_grad)
        return Proposal(y, ev_y, ctx.path.log_prob(ev_y, ctx.t) - ctx.path.log_prob(ev, ctx.t))


class HMC(MetropolisCorrector):
    """Hamiltonian Monte Carlo: ``n_leapfrog`` leapfrog steps of size eps, identity mass matrix.

    ``n_leapfrog`` gradient evaluations per particle per sweep. Target acceptance 0.65.
    """

    needs_grad = True
    default_acceptance = 0.65
    default_adapt_rate = 0.3

    def __init__(
        self,
        n_steps: int = 1,
        n_leapfrog: int = 5,
        step_size: float | None = None,
        target_acceptance: float | None = None,
        adapt: bool = True,
        adapt_rate: float | None = None,
    ):
        super().__init__(n_steps, step_size, target_acceptance, adapt, adapt_rate)
        self.n_leapfrog = check_positive_int("n_leapfrog", n_leapfrog)

    def default_step_size(self, scale: float, dim: int) -> float:
        return scale * dim ** (-1 / 4) / math.sqrt(self.n_leapfrog)

    def propose(self, x: Tensor, ev: PathEvaluation, eps: Tensor, ctx: StepContext) -> Proposal:
        path, t = ctx.path, ctx.t
        p0 = self._noise(x, ctx)
        p = p0 + 0.5 * eps * path.grad_log_prob(ev, t)
        y, ev_y = x, ev
        for i in range(self.n_leapfrog):
            y = y + eps * p
            ev_y = self._evaluate(y, ctx)
            p = p + (eps if i < self.n_leapfrog - 1 else 0.5 * eps) * path.grad_log_prob(ev_y, t)
        kinetic = lambda m: 0.5 * (m.to(torch.float64) ** 2).sum(-1)  # noqa: E731
        log_alpha = path.log_prob(ev_y, t) - kinetic(p) - path.log_prob(ev, t) + kinetic(p0)
        return Proposal(y, ev_y, log_alpha)
