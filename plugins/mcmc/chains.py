"""Plain MCMC chains (methods ``mala`` and ``hmc``): R chains x N draws at t = 1."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs
import torch

from sampler import Result, RunSettings, StepContext, StepStats, corrector, make_reference
from sampler.engine import initial_particles
from sampler.targets.base import as_target
from sampler.errors import ConfigurationError, check_positive_int
from sampler.paths import EvaluationCounter, GeometricPath
from sampler.progress import progress_bar

from sampler_plugins.mcmc.kernels import KernelState


class MCMCChains:
    """Run ``n_replicas`` independent chains of a kernel on the target itself.

    Chains start from the target's default reference. During ``n_warmup`` iterations the step
    size of each chain is tuned by dual averaging (Hoffman & Gelman 2014) toward the kernel's
    target acceptance; then it is frozen and ``n_particles`` draws are kept per chain, one every
    ``thin`` iterations. The result has ``samples`` ``(chains, draws, d)`` and no log Z.

    Args:
        kernel: ``mala`` or ``hmc`` (any registered Metropolis corrector works).
        n_warmup: tuning iterations, discarded.
        thin: keep one draw every ``thin`` iterations.
        reference_loc, reference_scale: where the chains start (default: the target's reference).
        **kernel_options: passed to the kernel (``step_size``, ``target_acceptance``, ``n_leapfrog``).
    """

    def __init__(
        self,
        kernel: str = "mala",
        n_warmup: int = 1000,
        thin: int = 1,
        reference_loc=None,
        reference_scale=None,
        **kernel_options: Any,
    ):
        if isinstance(n_warmup, bool) or not isinstance(n_warmup, int) or n_warmup < 0:
            raise ConfigurationError(f"n_warmup must be a non-negative integer, got {n_warmup!r}")
        check_positive_int("thin", thin)
        self.kernel_name = kernel
        self.kernel = corrector(kernel, n_steps=1, adapt=False, **kernel_options)
        self.n_warmup = n_warmup
        self.thin = thin
        self.reference_loc = reference_loc
        self.reference_scale = reference_scale
        self.options = dict(kernel=kernel, n_warmup=n_warmup, thin=thin, **kernel_options)

    def run(self, target, *, n_particles: int, n_replicas: int = 4, seed=None, device=None, dtype=None, progress=None) -> Result:
        """Run the chains; ``n_particles`` is the number of kept draws per chain."""
        cfg = RunSettings.create(target, n_particles, n_replicas, seed, device, dtype, progress)
        target = as_target(target)
        gen = cfg.generator()
        path = GeometricPath(make_reference(target, self.reference_loc, self.reference_scale), target, EvaluationCounter())
        start = time.perf_counter()
        state = initial_particles(path, attrs.evolve(cfg, n_particles=1), gen, self.kernel.needs_grad)
        x = state.x
        one = torch.ones(cfg.n_replicas, dtype=torch.float64, device=x.device)
        ctx = StepContext(path=path, t=one, t_from=one, step=0, generator=gen, needs_grad=self.kernel.needs_grad)
        kstate = self.kernel.init(state, ctx)
        tuner = DualAveraging(kstate.step_size, self.kernel.target_acceptance)
        draws = torch.empty(cfg.n_replicas, cfg.n_particles, target.dim, dtype=cfg.dtype, device=x.device)
        stats: list[StepStats] = []
        total = self.n_warmup + cfg.n_particles * self.thin
        with progress_bar(total=total, enabled=cfg.progress, desc=f"{self.kernel_name} chains on {target.name}") as bar:
            for it in range(total):
                seen = attrs.evolve(path.counter)
                ctx = attrs.evolve(ctx, step=it + 1)
                out = self.kernel.apply(state, kstate, ctx)
                state = out.particles
                acc = out.info["acceptance"]
                if it < self.n_warmup:
                    kstate = KernelState(tuner.update(acc) if it < self.n_warmup - 1 else tuner.final())
                kept = it - self.n_warmup
                if kept >= 0 and (kept + 1) % self.thin == 0:
                    draws[:, kept // self.thin] = state.x[:, 0]
                stats.append(
                    StepStats(
                        step=it + 1,
                        t=one,
                        ess=torch.ones_like(acc),
                        log_Z_increment=torch.zeros_like(acc),
                        target_evals=path.counter.target_evals - seen.target_evals,
                        grad_evals=path.counter.grad_evals - seen.grad_evals,
                        nonfinite=path.counter.nonfinite - seen.nonfinite,
                        info={"acceptance": acc, "step_size": kstate.step_size, "warmup": torch.full_like(acc, float(it < self.n_warmup))},
                    )
                )
                bar.advance(1, step=it + 1, info={"acceptance": acc})
        return Result(
            samples=draws,
            log_weights=torch.zeros(cfg.n_replicas, cfg.n_particles, dtype=torch.float64, device=x.device),
            weighted_samples=draws,
            log_Z_per_replica=None,
            n_target_evals=path.counter.target_evals,
            n_grad_evals=path.counter.grad_evals,
            n_nonfinite=path.counter.nonfinite,
            steps=tuple(stats),
            method=self.kernel_name,
            target=target.name,
            kind="mcmc",
            seed=cfg.seed,
            wall_time=time.perf_counter() - start,
            device=str(cfg.device),
            options=self.options,
            exact_log_Z=getattr(target, "log_Z", None),
        )


class DualAveraging:
    """Dual-averaging step-size tuning per chain (Nesterov; Hoffman & Gelman 2014, Alg. 5).

    ``update(acceptance)`` returns the step sizes for the next iteration; ``final()`` the
    averaged step sizes to freeze after warm-up.
    """

    def __init__(self, step_size: torch.Tensor, target: float, gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75):
        self.mu = torch.log(10 * step_size)
        self.target, self.gamma, self.t0, self.kappa = target, gamma, t0, kappa
        self.h_bar = torch.zeros_like(step_size)
        self.log_eps_bar = torch.log(step_size)
        self.m = 0

    def update(self, acceptance: torch.Tensor) -> torch.Tensor:
        """Record one iteration's acceptance ``(R,)``; return the next step sizes ``(R,)``."""
        self.m += 1
        m = self.m
        w = 1.0 / (m + self.t0)
        self.h_bar = (1 - w) * self.h_bar + w * (self.target - acceptance)
        log_eps = self.mu - math.sqrt(m) / self.gamma * self.h_bar
        eta = m ** (-self.kappa)
        self.log_eps_bar = eta * log_eps + (1 - eta) * self.log_eps_bar
        return log_eps.exp()

    def final(self) -> torch.Tensor:
        """The averaged step sizes ``(R,)`` to keep after warm-up."""
        return self.log_eps_bar.exp()


def build_chains(kernel: str) -> Callable[..., MCMCChains]:
    """A method builder running chains of ``kernel``."""

    def build(**options: Any) -> MCMCChains:
        return MCMCChains(kernel, **options)

    build.__doc__ = f"{kernel.upper()} chains: R chains x N draws after warm-up (dual-averaging step size)."
    return build
