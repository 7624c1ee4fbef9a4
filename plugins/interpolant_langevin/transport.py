"""The probability-flow ODE of the linear interpolant as an engine :class:`sampler.Transport`.

Engine time *is* interpolant time. A stage from ``t_from`` to ``t``:

* **initialization** (the first stage, ``t_from = 0``, when ``init_steps > 0``): the particles
  start as reference draws ``X0 ~ N(mu, sigma^2)`` and run ``init_steps`` unadjusted Langevin steps
  on ``p_t`` (the law of ``X_t``), ``x <- x + h Q s + sqrt(2 h Q) xi`` with the Langevin-estimated
  score ``s = grad log p_t(x)`` and preconditioner ``Q = sigma^2 (1 - t)^2`` (the curvature of
  ``-log p_t`` is at most ``1 / Q``, so the step is stable for every ``t``);
* **an ODE step** otherwise: estimate ``m_{t_from}(x)``, then the Euler step
  ``x <- x + (t - t_from) u = x + (t - t_from) / (1 - t_from) (m - x)``, a convex combination of
  ``x`` and ``m`` (stable for any step). The step that reaches ``t = 1`` lands on the posterior
  mean ``m`` (``finish="mean"``, the paper's choice) or on one posterior draw, a chain state picked
  by its weight (``finish="sample"``: ``X1 | X_t = x`` drawn exactly when the chains are exact).

The inner chains live in ``particles.extras`` (``il_y`` ``(R, N, M, d)`` and friends, reordered by any
resampling), anchored at the last ``(t, x)`` they targeted, and are warm-started at every stage.

**No density.** The transport does not know the density of its output, so it cannot give an
importance weight. It reports the log-weight increment ``-(log pi_t(x') - log pi_{t_from}(x))`` of
the engine's geometric path, which leaves the weights equal (points where the target density is
zero still lose their weight). The log Z a plain :class:`sampler.Pipeline` accumulates from this is
meaningless; :class:`~sampler_plugins.interpolant_langevin.method.InterpolantPipeline` reports
``log_Z = None`` instead.
"""

from __future__ import annotations

import math
import warnings

import attrs
import torch
from torch import Tensor

from sampler.ext import ConfigurationError, Particles, RunError, StepContext, StepOutput, Transport
from sampler_plugins.interpolant_langevin.posterior import (
    InnerSampler,
    PosteriorChains,
    PosteriorEstimate,
    init_chains,
    move_chains,
    reference_params,
    run_chains,
)

__all__ = ["InterpolantFlow", "CHAIN_KEYS"]

#: Keys of ``Particles.extras`` that hold the inner chains.
CHAIN_KEYS = ("il_y", "il_log_weights", "il_log_target", "il_grad_target", "il_step_size", "il_anchor_x", "il_anchor_t")

_FINISH = ("mean", "sample")
_INTEGRATORS = ("heun", "euler")


class InterpolantFlow(Transport):
    """Euler steps of ``dx/dt = u(t, x)`` with ``u`` estimated by inner Langevin chains.

    Args:
        inner: the inner chains (:class:`InnerSampler`): chains per particle, sweeps per ODE step, kernel.
        init_steps: outer Langevin steps at the first stage's time ``T0`` (0: no initialization; the
            first stage is then an ODE step from the reference).
        init_step_size: dimensionless outer step ``h`` (the ULA discretization bias grows with it).
        init_inner_steps: inner sweeps per outer Langevin step (the chains are warm-started).
        finish: ``"mean"`` or ``"sample"``: what the stage that reaches ``t = 1`` returns.
        integrator: ``"heun"`` (second order: a second estimate at the Euler point, twice the
            cost per step) or ``"euler"`` (first order; with the exact posterior mean it is the
            deterministic DDIM update, which contracts the distribution on coarse grids).
    """

    needs_grad = False

    def __init__(
        self,
        inner: InnerSampler | None = None,
        init_steps: int = 100,
        init_step_size: float = 0.1,
        init_inner_steps: int = 1,
        finish: str = "sample",
        integrator: str = "heun",
    ):
        self.inner = inner or InnerSampler()
        if isinstance(init_steps, bool) or not isinstance(init_steps, int) or init_steps < 0:
            raise ConfigurationError(f"init_steps must be a non-negative integer, got {init_steps!r}")
        if not (isinstance(init_step_size, (int, float)) and 0 < init_step_size <= 1):
            raise ConfigurationError(f"init_step_size must lie in (0, 1], got {init_step_size!r}")
        if isinstance(init_inner_steps, bool) or not isinstance(init_inner_steps, int) or init_inner_steps < 1:
            raise ConfigurationError(f"init_inner_steps must be a positive integer, got {init_inner_steps!r}")
        if finish not in _FINISH:
            raise ConfigurationError(f"finish must be one of {', '.join(_FINISH)}, got {finish!r}")
        self.init_steps = init_steps
        self.init_step_size = float(init_step_size)
        self.init_inner_steps = init_inner_steps
        self.finish = finish
        if integrator not in _INTEGRATORS:
            raise ConfigurationError(f"integrator must be one of {', '.join(_INTEGRATORS)}, got {integrator!r}")
        self.integrator = integrator
        #: Set by InterpolantPipeline, which reports no log Z; a plain Pipeline would report a meaningless one.
        self._owned = False

    def init(self, particles: Particles, ctx: StepContext) -> None:
        if not self._owned:
            warnings.warn(
                "InterpolantFlow gives no importance weights: the log Z of a plain sampler.Pipeline that contains it "
                "is meaningless. Use sampler_plugins.interpolant_langevin.InterpolantPipeline (or the "
                "'interpolant-langevin' method), which reports log_Z = None.",
                stacklevel=2,
            )
        return None

    # -- chains in the particles' extras ---------------------------------------------------------------
    @staticmethod
    def _chains(particles: Particles) -> PosteriorChains | None:
        ex = particles.extras
        if "il_y" not in ex:
            return None
        return PosteriorChains(
            y=ex["il_y"],
            log_weights=ex["il_log_weights"],
            log_target=ex["il_log_target"],
            grad_target=ex["il_grad_target"],
            step_size=ex["il_step_size"],
            x=ex["il_anchor_x"],
            t=ex["il_anchor_t"],
        )

    @staticmethod
    def _store(chains: PosteriorChains) -> dict[str, Tensor]:
        return dict(
            il_y=chains.y,
            il_log_weights=chains.log_weights,
            il_log_target=chains.log_target,
            il_grad_target=chains.grad_target,
            il_step_size=chains.step_size,
            il_anchor_x=chains.x,
            il_anchor_t=chains.t,
        )

    # -- the step ------------------------------------------------------------------------------------------
    def apply(self, particles: Particles, state: None, ctx: StepContext) -> StepOutput:
        """One initialization or ODE stage from ``ctx.t_from`` to ``ctx.t``; equal weights (see module doc)."""
        x = particles.x
        t_from, t_to = ctx.t_from, ctx.t
        chains = self._chains(particles)
        info: dict[str, Tensor] = {}
        starting = t_from == 0.0
        if self.init_steps > 0 and bool(starting.any()):
            if not bool(starting.all()):
                raise RunError("interpolant-langevin: replicas must start together (use a fixed schedule)")
            if bool((t_to >= 1.0).any()):
                raise ConfigurationError("interpolant-langevin: the initialization time T0 must lie in (0, 1)")
            x_new, chains, info = self._initialize(x, t_to, ctx)
        else:
            x_new, chains, info = self._ode_step(particles, x, t_from, t_to, chains, ctx)
        ev = ctx.path.evaluate(x_new, grad=ctx.needs_grad)
        moved = attrs.evolve(particles, x=x_new, evaluation=ev, extras={**particles.extras, **self._store(chains)})
        # Equal weights: cancel the engine's density-change term (a zero-density end point still gets -inf).
        increment = -ctx.path.log_weight_increment(particles.evaluation, t_from, ev, t_to)
        return StepOutput(moved, None, info, log_weight_increment=increment)

    def _initialize(self, x: Tensor, t: Tensor, ctx: StepContext) -> tuple[Tensor, PosteriorChains, dict[str, Tensor]]:
        """``init_steps`` Langevin steps on ``p_t`` from reference draws ``x`` ``(R, N, d)``."""
        r, n, d = x.shape
        tt = t[:, None].expand(r, n)
        loc, scale = reference_params(ctx.path.reference, x)
        tq = t.to(x.dtype)[:, None, None]
        # -log p_t has curvature at most 1 / ((1-t)^2 sigma^2) (p_t is a convolution with that Gaussian),
        # so this preconditioner keeps the outer ULA stable for any T0 (h < 2).
        q = scale**2 * (1 - tq) ** 2  # (R, 1, d)
        h = self.init_step_size
        chains = None
        acc = torch.zeros(r, dtype=torch.float64, device=x.device)
        for _ in range(self.init_steps):
            est = self._estimate_at(x, tt, ctx, chains, self.init_inner_steps)
            chains = est.chains
            acc = acc + est.acceptance.mean(-1) / self.init_steps
            noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
            x = x + h * q * est.score() + math.sqrt(2 * h) * q.sqrt() * noise
        chains = move_chains(ctx.path, chains, x, tt, self.inner)
        info = {"inner_acceptance": acc, "inner_step_size": chains.step_size.median(-1).values}
        return x, chains, info

    def _estimate_at(
        self, x: Tensor, t: Tensor, ctx: StepContext, chains: PosteriorChains | None, n_steps: int
    ) -> PosteriorEstimate:
        if chains is None:
            chains = init_chains(ctx.path, x, t, self.inner, ctx.generator)
        else:
            chains = move_chains(ctx.path, chains, x, t, self.inner)
        return run_chains(ctx.path, chains, self.inner, ctx.generator, n_steps)

    def _ode_step(
        self,
        particles: Particles,
        x: Tensor,
        t_from: Tensor,
        t_to: Tensor,
        chains: PosteriorChains | None,
        ctx: StepContext,
    ) -> tuple[Tensor, PosteriorChains, dict[str, Tensor]]:
        """Euler step from ``t_from`` to ``t_to`` (``(R,)``), landing on ``m`` or a posterior draw at ``t_to = 1``."""
        r, n, d = x.shape
        if bool((t_from >= 1.0).any()):
            raise RunError("interpolant-langevin: an ODE step cannot start at t = 1 (the velocity is 0/0 there)")
        tt = t_from[:, None].expand(r, n)
        est = self._estimate_at(x, tt, ctx, chains, self.inner.n_steps)
        dt = (t_to - t_from).to(x.dtype)[:, None, None]
        u = est.velocity()
        x_new = x + dt * u  # Euler: x + (t' - t) / (1 - t) (m - x), a convex combination of x and m
        final = (t_to >= 1.0)[:, None, None]
        acceptance, ess = est.acceptance.mean(-1), est.ess.mean(-1)
        if self.integrator == "heun" and not bool(final.all()):
            # Heun's corrector: average with the velocity at the Euler point (chains warm-started there).
            t_pred = torch.where(final[:, 0, 0], t_from, t_to)[:, None].expand(r, n)
            est2 = self._estimate_at(x_new, t_pred, ctx, est.chains, self.inner.n_steps)
            x_heun = x + dt * 0.5 * (u + est2.velocity())
            x_new = torch.where(final, x_new, x_heun)
            acceptance, ess = 0.5 * (acceptance + est2.acceptance.mean(-1)), 0.5 * (ess + est2.ess.mean(-1))
            est = est2 if not bool(final.any()) else est
        if self.finish == "sample" and bool(final.any()):
            w = est.chains.normalized_weights().reshape(-1, est.chains.n_chains)
            pick = torch.multinomial(w, 1, generator=ctx.generator).reshape(r, n, 1, 1).expand(r, n, 1, d)
            draw = torch.gather(est.chains.y, -2, pick)[..., 0, :]
            x_new = torch.where(final, draw, x_new)
        info = {
            "inner_acceptance": acceptance,
            "inner_ess": ess,
            "inner_step_size": est.chains.step_size.median(-1).values,
        }
        return x_new, est.chains, info
