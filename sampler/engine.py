"""The engine: walks an annealing schedule over batched particles and keeps the books.

Per stage (``t -> t'``): transports, reweighting (``log pi_t'(x') - log pi_t(x) + log-det``),
then correctors (resampling, MCMC). The engine alone updates log weights and log Z: with
normalized weights ``W``, the stage's log Z increment is ``log sum_i W_i exp(increment_i)``,
which stays exact under adaptive resampling (resampling changes weights, never log Z).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from sampler.errors import ConfigurationError, NonFiniteError, TargetError
from sampler.particles import Particles
from sampler.paths import EvaluationCounter, GaussianReference, GeometricPath
from sampler.progress import progress_bar
from sampler.resampling import get_scheme
from sampler.result import Result, StepStats
from sampler.schedules import Adaptive, Schedule
from sampler.steps import Corrector, Step, StepContext, Transport
from sampler.targets.base import Target

__all__ = ["Pipeline", "RunSettings", "reweight", "make_reference"]


@attrs.frozen
class RunSettings:
    """Validated run arguments shared by every runner (pipelines, MCMC chains).

    Attributes:
        n_particles: N per replica (draws per chain for MCMC).
        n_replicas: R independent replicas (chains).
        seed: the seed used (drawn at random and recorded when not given).
        device, dtype: where and in what precision positions live.
        progress: ``None`` shows a bar on a terminal only; ``True``/``False`` force it.
    """

    n_particles: int
    n_replicas: int
    seed: int
    device: torch.device
    dtype: torch.dtype
    progress: bool | None

    @classmethod
    def create(
        cls,
        target: Target,
        n_particles: int,
        n_replicas: int = 1,
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        progress: bool | None = None,
    ) -> RunSettings:
        """Check the arguments before any work; raise :class:`ConfigurationError` if bad."""
        check_target(target)
        for name, value in (("n_particles", n_particles), ("n_replicas", n_replicas)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        if seed is None:
            seed = secrets.randbits(62)
        elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigurationError(f"seed must be a non-negative integer, got {seed!r}")
        try:
            dev = torch.device(device) if device is not None else _default_device()
        except RuntimeError as exc:
            raise ConfigurationError(f"invalid device {device!r}: {exc}") from None
        if isinstance(dtype, str):
            resolved = getattr(torch, dtype, None)
            if not isinstance(resolved, torch.dtype):
                raise ConfigurationError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'float64'")
            dtype = resolved
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise ConfigurationError(f"dtype must be a floating dtype, got {dtype}")
        return cls(n_particles, n_replicas, seed, dev, dtype, progress)

    def generator(self) -> torch.Generator:
        """A fresh generator on the run's device, seeded with :attr:`seed`."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed)
        return gen


def _default_device() -> torch.device:
    get = getattr(torch, "get_default_device", None)
    return get() if get is not None else torch.empty(0).device


def check_target(target: Any) -> None:
    """Raise :class:`TargetError` unless ``target`` looks like a :class:`Target`."""
    if not callable(getattr(target, "log_prob", None)):
        raise TargetError(f"{target!r} is not a target: it has no log_prob(x) method (see sampler.Target and sampler.target)")
    dim = getattr(target, "dim", None)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise TargetError(f"target {getattr(target, 'name', target)!r} must have a positive integer dim, got {dim!r}")


def make_reference(target: Target, loc: float | Tensor | None = None, scale: float | Tensor | None = None) -> GaussianReference:
    """The default reference: ``N(loc, scale^2 I)`` from the arguments or the target's hints."""
    loc = getattr(target, "reference_loc", 0.0) if loc is None else loc
    scale = getattr(target, "reference_scale", 1.0) if scale is None else scale
    return GaussianReference(target.dim, loc=loc, scale=scale)


def reweight(particles: Particles, log_increment: Tensor, step: int, t: float) -> tuple[Particles, Tensor]:
    """Multiply weights by ``exp(log_increment)`` ``(R, N)``; return new particles and the log Z increment ``(R,)``.

    Raises :class:`NonFiniteError` if every particle of some replica ends with zero weight.
    """
    inc = log_increment.to(torch.float64)
    inc = inc.masked_fill(torch.isnan(inc), -math.inf)
    unnorm = particles.log_weights + inc
    lse = torch.logsumexp(unnorm, dim=-1)
    dead = ~torch.isfinite(lse)
    if bool(dead.any()):
        replicas = dead.nonzero().flatten().tolist()
        raise NonFiniteError(
            f"every particle of replica(s) {replicas} has zero weight at step {step} (t={t:.6g}): the target's "
            "log density is NaN, +inf or -inf at all of them (or a transport returned such increments). "
            "Check the target where the reference puts mass, or narrow the reference."
        )
    new = attrs.evolve(particles, log_weights=unnorm - lse[:, None], log_Z=particles.log_Z + lse)
    return new, lse


class Pipeline:
    """An annealing run: a schedule plus a list of steps, applied stage by stage.

    Args:
        schedule: the annealing times (default: :class:`~sampler.schedules.Adaptive` with
            conditional ESS 0.5).
        steps: transports and correctors. Transports run first in each stage, then the engine
            reweights, then correctors run in the order given.
        reference: the path's start; default ``N(target.reference_loc, target.reference_scale^2 I)``.
        reference_loc, reference_scale: override the target's hints for the default reference.
        final_resampling: scheme that turns the final weighted particles into equally weighted
            ``Result.samples`` (skipped when the weights are already equal).
        name: recorded as the method name in results.
    """

    def __init__(
        self,
        schedule: Schedule | None = None,
        steps: Sequence[Step] = (),
        reference: GaussianReference | None = None,
        reference_loc: float | Tensor | None = None,
        reference_scale: float | Tensor | None = None,
        final_resampling: str = "systematic",
        name: str = "pipeline",
        options: dict[str, Any] | None = None,
    ):
        self.schedule = schedule if schedule is not None else Adaptive()
        if not isinstance(self.schedule, Schedule):
            raise ConfigurationError(f"schedule must be a sampler.schedules.Schedule, got {type(schedule).__name__}")
        steps = list(steps)
        for s in steps:
            if not isinstance(s, Step):
                raise ConfigurationError(
                    f"steps must be Transport or Corrector instances (e.g. sampler.corrector('mala')), got {s!r}"
                )
        self.transports = [s for s in steps if isinstance(s, Transport)]
        self.correctors = [s for s in steps if isinstance(s, Corrector)]
        self.reference = reference
        self.reference_loc = reference_loc
        self.reference_scale = reference_scale
        self.final_scheme = get_scheme(final_resampling)
        self.name = name
        self.options = dict(options or {})

    @property
    def steps(self) -> list[Step]:
        """Transports then correctors, in the order they run within a stage."""
        return [*self.transports, *self.correctors]

    def run(
        self,
        target: Target,
        *,
        n_particles: int,
        n_replicas: int = 1,
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        progress: bool | None = None,
    ) -> Result:
        """Run the pipeline on ``target`` with R replicas of N particles; return a :class:`Result`."""
        cfg = RunSettings.create(target, n_particles, n_replicas, seed, device, dtype, progress)
        reference = self.reference or make_reference(target, self.reference_loc, self.reference_scale)
        if reference.dim != target.dim:
            raise ConfigurationError(f"reference has dim {reference.dim} but the target has dim {target.dim}")
        gen = cfg.generator()
        path = GeometricPath(reference, target, EvaluationCounter())
        needs_grad = any(s.needs_grad for s in self.steps)
        start = time.perf_counter()

        x = reference.sample((cfg.n_replicas, cfg.n_particles), gen, cfg.dtype)
        particles = Particles(
            x=x,
            log_weights=torch.full((cfg.n_replicas, cfg.n_particles), -math.log(cfg.n_particles), dtype=torch.float64, device=x.device),
            log_Z=torch.zeros(cfg.n_replicas, dtype=torch.float64, device=x.device),
            evaluation=path.evaluate(x, grad=needs_grad),
        )
        ctx = StepContext(path=path, t=0.0, t_from=0.0, step=0, generator=gen, needs_grad=needs_grad)
        transport_states = [s.init(particles, ctx) for s in self.transports]
        corrector_states = [s.init(particles, ctx) for s in self.correctors]

        stats: list[StepStats] = []
        t, k = 0.0, 0
        with progress_bar(total=self.schedule.n_steps, enabled=cfg.progress, desc=f"{self.name} on {target.name}") as bar:
            while t < 1.0:
                seen = attrs.evolve(path.counter)
                t_next = self.schedule.next_time(k, t, particles, path)
                k += 1
                ctx = StepContext(path=path, t=t_next, t_from=t, step=k, generator=gen, needs_grad=needs_grad)
                info: dict[str, Tensor] = {}

                moved, extra = particles, torch.zeros_like(particles.log_weights)
                for i, step in enumerate(self.transports):
                    out = step.apply(moved, transport_states[i], ctx)
                    transport_states[i] = out.state
                    moved = out.particles
                    if out.log_weight_increment is not None:
                        extra = extra + out.log_weight_increment.to(torch.float64)
                    _merge(info, out.info, particles.log_Z)
                inc = path.log_weight_increment(particles.evaluation, t, moved.evaluation, t_next) + extra
                particles, dlogz = reweight(moved, inc, k, t_next)
                weighted = particles
                ess = particles.ess()

                for i, step in enumerate(self.correctors):
                    out = step.apply(particles, corrector_states[i], ctx)
                    corrector_states[i] = out.state
                    particles = out.particles
                    _merge(info, out.info, particles.log_Z)

                stats.append(
                    StepStats(
                        step=k,
                        t=t_next,
                        ess=ess,
                        log_Z_increment=dlogz,
                        target_evals=path.counter.target_evals - seen.target_evals,
                        grad_evals=path.counter.grad_evals - seen.grad_evals,
                        nonfinite=path.counter.nonfinite - seen.nonfinite,
                        info=info,
                    )
                )
                bar.advance(t_next - t if self.schedule.n_steps is None else 1, step=k, t=t_next, ess=ess, info=info)
                t = t_next

        return self._result(target, cfg, path, particles, weighted, stats, gen, time.perf_counter() - start)

    def _result(
        self,
        target: Target,
        cfg: RunSettings,
        path: GeometricPath,
        particles: Particles,
        weighted: Particles,
        stats: list[StepStats],
        gen: torch.Generator,
        wall_time: float,
    ) -> Result:
        """Package the final state; ``weighted`` is the state right after the last reweighting."""
        logw = particles.log_weights
        samples = particles.x
        if not bool((logw == logw[:, :1]).all()):
            samples = particles.gather(self.final_scheme(logw, gen)).x
        return Result(
            samples=samples,
            log_weights=weighted.log_weights + math.log(weighted.n_particles) + weighted.log_Z[:, None],
            weighted_samples=weighted.x,
            log_Z_per_replica=particles.log_Z,
            n_target_evals=path.counter.target_evals,
            n_grad_evals=path.counter.grad_evals,
            n_nonfinite=path.counter.nonfinite,
            steps=tuple(stats),
            method=self.name,
            target=target.name,
            kind="smc",
            seed=cfg.seed,
            wall_time=wall_time,
            device=str(cfg.device),
            options=self.options,
            exact_log_Z=getattr(target, "log_Z", None),
        )

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, schedule={self.schedule!r}, steps={self.steps!r})"


def _merge(info: dict[str, Tensor], new: Any, like: Tensor) -> None:
    """Add a step's statistics; a repeated key gets a numeric suffix rather than overwriting."""
    for key, value in dict(new).items():
        name, i = key, 2
        while name in info:
            name, i = f"{key}_{i}", i + 1
        info[name] = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float64, device=like.device)
