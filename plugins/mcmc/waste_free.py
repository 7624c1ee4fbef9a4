"""The ``waste-free`` corrector: waste-free SMC moves (Dau & Chopin 2022).

Standard SMC resamples N particles and runs ``n_steps`` MCMC sweeps on each, keeping only the
last state: ``n_steps * N`` gradient evaluations per temperature for N particles. Waste-free SMC
(Dau & Chopin 2022, *Waste-free sequential Monte Carlo*, JRSS B 84(1)) resamples only
``M = ceil(N / P)`` ancestors and runs each as a chain of ``P - 1`` sweeps, keeping **every** state
of every chain: the N new particles are the first N of the ``M * P`` chain states (the M resampled
starts, then the M states after one sweep, and so on). A temperature then costs about N gradient
evaluations instead of ``n_steps * N``.

Every chain starts from a draw of pi_t (the resampled weighted particles) and each sweep leaves
pi_t invariant, so every kept state is marginally a draw of pi_t; the states are correlated along
each chain, which the estimates of the next temperatures average over (Dau & Chopin prove the
estimates consistent as M grows and give their asymptotic variance). The step size adapts between
sweeps as in :class:`~sampler_plugins.mcmc.kernels.MetropolisCorrector` (each sweep's step size is
fixed before it); which states are kept depends on their index only, never on their values.
"""

from __future__ import annotations

import math
from typing import Any, cast

import attrs
import torch

from sampler.ext import (
    ConfigurationError,
    Corrector,
    Particles,
    PathEvaluation,
    StepContext,
    StepOutput,
    check_positive_int,
    corrector,
    systematic,
)
from sampler_plugins.mcmc.kernels import MetropolisCorrector


class WasteFree(Corrector):
    """Resample ``ceil(N / P)`` ancestors, run each for ``P - 1`` kernel sweeps, keep all states.

    Args:
        kernel: the MCMC corrector run along the chains (``mala``, ``hmc``, ``rwmh``, ``ula``),
            built with one sweep per application.
        chain_length: P >= 2, the states kept per chain (the resampled start included). The
            cost per temperature is ``(P - 1) * ceil(N / P)`` kernel sweeps of one particle
            (about N for large P); longer chains mix further from the resampled starts but keep
            fewer distinct ancestors.
        **kernel_options: passed to the kernel (``step_size``, ``metric``, ``n_leapfrog``, ...).

    Particles ``(R, N, d)`` in, ``(R, N, d)`` out, equally weighted; log Z is unchanged (the
    weights are consumed by the resampling). Resampling is systematic and always done (the
    ``resample`` corrector is not needed before it). Reports the kernel's mean ``acceptance`` and
    last ``step_size`` per replica and ``ancestors`` (M). Not shardable (the chains' states are
    interleaved over the particle axis).
    """

    def __init__(self, kernel: str = "mala", chain_length: int = 10, **kernel_options: Any):
        check_positive_int("chain_length", chain_length)
        if chain_length < 2:
            raise ConfigurationError(f"chain_length must be at least 2 (a start and one sweep), got {chain_length}")
        if "n_steps" in kernel_options:
            raise ConfigurationError("waste-free chains run one sweep per state: give chain_length, not n_steps")
        self.kernel_name = kernel
        self.chain_length = chain_length
        self.kernel = cast(MetropolisCorrector, corrector(kernel, n_steps=1, **kernel_options))
        self.needs_grad = self.kernel.needs_grad

    def init(self, particles: Particles, ctx: StepContext) -> Any:
        """The kernel's state (its initial step size and metric)."""
        return self.kernel.init(particles, ctx)

    def apply(self, particles: Particles, state: Any, ctx: StepContext) -> StepOutput:
        """Resample the ancestors, run the chains, return their first N states equally weighted."""
        r, n = particles.log_weights.shape
        p = self.chain_length
        if p > n // 2:
            raise ConfigurationError(
                f"waste-free chains of {p} states leave fewer than 2 chains for {n} particles per replica: "
                f"use a chain_length (smc: waste_free) of at most N / 2 = {n // 2}, or more particles"
            )
        m = math.ceil(n / p)
        ancestors = systematic(particles.log_weights, ctx.generator, n_out=m)
        chain = particles.gather(ancestors)
        if self.needs_grad and not chain.evaluation.has_grad:
            chain = attrs.evolve(chain, evaluation=ctx.path.evaluate(chain.x, grad=True))
        # one metric for every sweep, from all N weighted particles (re-estimating it from the M
        # chains' current states would make each chain's kernel depend on its own state, an O(1/M)
        # bias: on an 8-d Gaussian 47 temperatures away, M = 100 put log Z off by +0.33, 10 sigma)
        metric = self.kernel.current_metric(particles, state, ctx)
        states = [chain]
        acceptance = torch.zeros(r, dtype=torch.float64, device=particles.x.device)
        for k in range(p - 1):
            # each sweep its own index, so HMC's jittered trajectory lengths vary along the chain
            out = self.kernel.sweeps(states[-1], state, attrs.evolve(ctx, step=ctx.step * (p - 1) + k), metric)
            states.append(out.particles)
            state = out.state
            acceptance = acceptance + out.info["acceptance"] / (p - 1)
        new = attrs.evolve(
            particles,
            x=torch.cat([s.x for s in states], dim=1)[:, :n],
            log_weights=torch.full_like(particles.log_weights, -math.log(n)),
            evaluation=_concatenate([s.evaluation for s in states], n),
            extras={k: torch.cat([s.extras[k] for s in states], dim=1)[:, :n] for k in particles.extras},
        )
        info = {
            "acceptance": acceptance,
            "step_size": out.info["step_size"],
            "ancestors": torch.full_like(acceptance, float(m)),
        }
        return StepOutput(new, state, info)


def _concatenate(evaluations: list[PathEvaluation], n: int) -> PathEvaluation:
    """The evaluations of consecutive particle blocks as one, cut to the first ``n`` particles."""

    def cat(values: list[torch.Tensor | None]) -> torch.Tensor | None:
        if any(v is None for v in values):
            return None
        return torch.cat(values, dim=1)[:, :n]  # type: ignore[arg-type]

    return PathEvaluation(
        log_ref=torch.cat([e.log_ref for e in evaluations], dim=1)[:, :n],
        log_target=torch.cat([e.log_target for e in evaluations], dim=1)[:, :n],
        grad_ref=cat([e.grad_ref for e in evaluations]),
        grad_target=cat([e.grad_target for e in evaluations]),
    )
