"""Plain MCMC chains (methods ``mala`` and ``hmc``): R chains x N draws at t = 1."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs
import torch

from sampler import Result, RunSettings, StepContext, StepStats, corrector, make_reference
from sampler.checkpoint import (
    Checkpoint,
    CheckpointData,
    check_resumable,
    counter_tree,
    read_checkpoint,
    restore_counter,
    run_record,
    state_to_tree,
    stats_from_tree,
    tree_to_state,
    write_checkpoint,
)
from sampler.engine import initial_particles
from sampler.targets.base import as_target
from sampler.errors import ConfigurationError, Interrupted, check_positive_int
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

    def run(
        self,
        target,
        *,
        n_particles: int,
        n_replicas: int = 4,
        seed=None,
        device=None,
        dtype=None,
        progress=None,
        checkpoint=None,
        checkpoint_every: int | None = None,
    ) -> Result:
        """Run the chains; ``n_particles`` is the number of kept draws per chain.

        With ``checkpoint`` (a file) the chains save their state every ``checkpoint_every``
        iterations and on Ctrl-C; :meth:`resume` continues to the uninterrupted result.
        """
        cfg = RunSettings.create(target, n_particles, n_replicas, seed, device, dtype, progress)
        return self._run(as_target(target), cfg, Checkpoint.create(checkpoint, checkpoint_every), None)

    def resume(self, checkpoint, target, *, progress=None, checkpoint_every: int | None = None) -> Result:
        """Continue chains from their checkpoint (same kernel, options and target)."""
        data = checkpoint if isinstance(checkpoint, CheckpointData) else read_checkpoint(checkpoint)
        run = data.run
        target = as_target(target)
        check_resumable(data, target, [type(self.kernel).__name__])
        cfg = RunSettings.create(target, run["n_particles"], run["n_replicas"], run["seed"], run["device"], run["dtype"], progress)
        path = run["path"] if isinstance(checkpoint, CheckpointData) else checkpoint
        every = run.get("every") if checkpoint_every is None else checkpoint_every
        return self._run(target, cfg, Checkpoint(path, every, run.get("metadata", {})), data)

    def _run(self, target, cfg: RunSettings, ckpt: Checkpoint | None, resume: CheckpointData | None) -> Result:
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
        done, elapsed = 0, 0.0
        if resume is not None:  # the initial draw above is replaced by the saved state, counts and all
            st, dev = resume.state, x.device
            state = tree_to_state(st["chain"], state, dev)
            kstate = tree_to_state(st["kernel"], kstate, dev)
            tuner.load(tree_to_state(st["tuner"], tuner.state(), dev))
            draws = st["draws"].to(dev)
            stats = stats_from_tree(st["stats"], dev)
            path.counter = EvaluationCounter()
            restore_counter(path.counter, st["counter"])
            gen.set_state(st["generator"])
            done, elapsed = int(st["k"]), float(st["elapsed"])
        record = run_record(self.kernel_name, target, cfg, ckpt, [type(self.kernel).__name__]) if ckpt else {}

        def snapshot(it: int, generator_state: torch.Tensor, counter: EvaluationCounter) -> dict[str, Any]:
            return {
                "k": it,
                "chain": state_to_tree(state),
                "kernel": state_to_tree(kstate),
                "tuner": state_to_tree(tuner.state()),
                "draws": draws.detach().cpu().clone(),
                "stats": [state_to_tree(s) for s in stats],
                "counter": counter_tree(counter),
                "generator": generator_state,
                "elapsed": elapsed + time.perf_counter() - start,
            }

        total = self.n_warmup + cfg.n_particles * self.thin
        begin = (gen.get_state(), attrs.evolve(path.counter))  # the state the next iteration starts from
        with progress_bar(total=total, enabled=cfg.progress, desc=f"{self.kernel_name} chains on {target.name}") as bar:
            if done:
                bar.advance(done, step=done)
            try:
                for it in range(done, total):
                    seen = attrs.evolve(path.counter)
                    if ckpt:
                        begin = (gen.get_state(), seen)
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
                    if ckpt and ckpt.every is not None and (it + 1) % ckpt.every == 0 and it + 1 < total:
                        write_checkpoint(ckpt.path, record, snapshot(it + 1, gen.get_state(), path.counter))
            except KeyboardInterrupt:
                if not ckpt:
                    raise
                # Every completed iteration leaves a consistent state: save the last one, with the
                # generator and counts as they were when the interrupted iteration began.
                saved = snapshot(len(stats), *begin)
                write_checkpoint(ckpt.path, record, saved)
                raise Interrupted(
                    f"interrupted after iteration {saved['k']}; the state was saved to {str(ckpt.path)!r} "
                    f"(resume with sampler.resume({str(ckpt.path)!r}))",
                    str(ckpt.path),
                    int(saved["k"]),
                ) from None
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
            wall_time=elapsed + time.perf_counter() - start,
            device=str(cfg.device),
            options=self.options,
            exact_log_Z=getattr(target, "log_Z", None),
            dim_names=getattr(target, "dim_names", None),
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

    def state(self) -> dict[str, Any]:
        """The adapted quantities (for checkpoints)."""
        return {"mu": self.mu, "h_bar": self.h_bar, "log_eps_bar": self.log_eps_bar, "m": self.m}

    def load(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        self.mu, self.h_bar, self.log_eps_bar, self.m = state["mu"], state["h_bar"], state["log_eps_bar"], int(state["m"])


def build_chains(kernel: str) -> Callable[..., MCMCChains]:
    """A method builder running chains of ``kernel``."""

    def build(**options: Any) -> MCMCChains:
        return MCMCChains(kernel, **options)

    build.__doc__ = f"{kernel.upper()} chains: R chains x N draws after warm-up (dual-averaging step size)."
    return build
