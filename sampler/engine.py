"""The engine: walks an annealing schedule over batched particles and keeps the books.

Per stage (``t -> t'``): transports, reweighting (``log pi_t'(x') - log pi_t(x) + log-det``),
then correctors (resampling, MCMC). The engine alone updates log weights and log Z: with
normalized weights ``W``, the stage's log Z increment is ``log sum_i W_i exp(increment_i)``,
which stays exact under adaptive resampling (resampling changes weights, never log Z).
"""

from __future__ import annotations

import math
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from sampler.checkpoint import (
    Checkpoint,
    CheckpointData,
    check_resumable,
    read_checkpoint,
    restore_counter,
    run_record,
    state_to_tree,
    stats_from_tree,
    tree_to_state,
    write_checkpoint,
)
from sampler.errors import (
    ConfigurationError,
    Interrupted,
    NonFiniteError,
    PersistenceError,
    RunError,
    TargetError,
    check_positive_int,
)
from sampler.particles import Particles
from sampler.paths import EvaluationCounter, GaussianReference, GeometricPath, PathEvaluation
from sampler.progress import progress_bar
from sampler.resampling import get_scheme
from sampler.result import Result, StepStats
from sampler.schedules import Adaptive, Schedule, as_times
from sampler.steps import Corrector, Step, StepContext, Transport
from sampler.targets.base import Target, as_target

__all__ = ["Pipeline", "RunSettings", "reweight", "make_reference", "initial_particles", "check_target"]


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
        check_positive_int("n_particles", n_particles)
        check_positive_int("n_replicas", n_replicas)
        if seed is None:
            seed = secrets.randbits(62)
        elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigurationError(f"seed must be a non-negative integer, got {seed!r}")
        try:
            dev = torch.device(device) if device is not None else _default_device()
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("this torch build or machine has no CUDA device")
            torch.Generator(device=dev)
        except RuntimeError as exc:
            raise ConfigurationError(f"device {device!r} cannot be used: {exc}") from None
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


def initial_particles(path: GeometricPath, cfg: RunSettings, gen: torch.Generator, grad: bool) -> Particles:
    """R x N equally weighted draws from the path's reference, evaluated (with gradients if ``grad``)."""
    x = path.reference.sample((cfg.n_replicas, cfg.n_particles), gen, cfg.dtype)
    return Particles(
        x=x,
        log_weights=torch.full(x.shape[:2], -math.log(cfg.n_particles), dtype=torch.float64, device=x.device),
        log_Z=torch.zeros(cfg.n_replicas, dtype=torch.float64, device=x.device),
        evaluation=path.evaluate(x, grad=grad),
    )


def make_reference(target: Target, loc: float | Tensor | None = None, scale: float | Tensor | None = None) -> GaussianReference:
    """The default reference: ``N(loc, scale^2 I)`` from the arguments or the target's hints."""
    loc = getattr(target, "reference_loc", 0.0) if loc is None else loc
    scale = getattr(target, "reference_scale", 1.0) if scale is None else scale
    return GaussianReference(target.dim, loc=loc, scale=scale)


def reweight(particles: Particles, log_increment: Tensor, step: int, t: Tensor) -> tuple[Particles, Tensor]:
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
        values = sorted({float(t[r]) for r in replicas}) if isinstance(t, Tensor) else [float(t)]
        times = ", ".join(f"{v:.6g}" for v in values)
        raise NonFiniteError(
            f"every particle of replica(s) {replicas} has zero weight at step {step} (t={times}): the target's "
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
        reference_loc: overrides the target's ``reference_loc`` hint for the default reference.
        reference_scale: overrides the target's ``reference_scale`` hint for the default reference.
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
        checkpoint: Checkpoint | str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
    ) -> Result:
        """Run the pipeline on ``target`` with R replicas of N particles; return a :class:`Result`.

        With ``checkpoint`` (a file path) the run saves its state there every
        ``checkpoint_every`` stages and when interrupted by Ctrl-C (raising
        :class:`~sampler.errors.Interrupted`); :meth:`resume` continues from that file.
        """
        cfg = RunSettings.create(target, n_particles, n_replicas, seed, device, dtype, progress)
        ckpt = Checkpoint.create(checkpoint, checkpoint_every)
        return self._run(as_target(target), cfg, ckpt, None)

    def resume(
        self,
        checkpoint: CheckpointData | str | os.PathLike,
        target: Target,
        *,
        progress: bool | None = None,
        checkpoint_every: int | None = None,
    ) -> Result:
        """Continue a run from its checkpoint; the result equals that of an uninterrupted run.

        ``target`` and this pipeline must be the ones the run started with (checked by name,
        dimension and step types). The resumed run keeps writing to the same checkpoint file,
        every ``checkpoint_every`` stages (default: as before).
        """
        data = checkpoint if isinstance(checkpoint, CheckpointData) else read_checkpoint(checkpoint)
        run = data.run
        target = as_target(target)
        check_resumable(data, target, [type(s).__name__ for s in self.steps])
        cfg = RunSettings.create(target, run["n_particles"], run["n_replicas"], run["seed"], run["device"], run["dtype"], progress)
        every = run.get("every") if checkpoint_every is None else checkpoint_every
        path = checkpoint if not isinstance(checkpoint, CheckpointData) else run["path"]
        ckpt = Checkpoint(path, every, run.get("metadata", {}))
        return self._run(target, cfg, ckpt, data)

    def _run(self, target: Target, cfg: RunSettings, ckpt: Checkpoint | None, resume: CheckpointData | None) -> Result:
        reference = self.reference or make_reference(target, self.reference_loc, self.reference_scale)
        if reference.dim != target.dim:
            raise ConfigurationError(f"reference has dim {reference.dim} but the target has dim {target.dim}")
        gen = cfg.generator()
        path = GeometricPath(reference, target, EvaluationCounter())
        needs_grad = any(s.needs_grad for s in self.steps)
        start = time.perf_counter()

        if resume is None:
            particles = initial_particles(path, cfg, gen, needs_grad)
            t = torch.zeros(cfg.n_replicas, dtype=torch.float64, device=particles.x.device)
            ctx = StepContext(path=path, t=t, t_from=t, step=0, generator=gen, needs_grad=needs_grad)
            transport_states = [s.init(particles, ctx) for s in self.transports]
            corrector_states = [s.init(particles, ctx) for s in self.correctors]
            weighted = particles  # per replica: the state right after its reweighting to t = 1
            stats: list[StepStats] = []
            k, elapsed = 0, 0.0
        else:
            k, t, particles, weighted, transport_states, corrector_states, stats, elapsed = self._restore(
                resume, path, gen, cfg, needs_grad
            )
        steps = [type(s).__name__ for s in self.steps]
        record = run_record(self.name, target, cfg, ckpt, steps) if ckpt is not None else {}
        def capture(elapsed_now: float) -> _Snapshot | None:
            if ckpt is None:
                return None
            return _Snapshot.capture(k, t, particles, weighted, transport_states, corrector_states, len(stats), path.counter, gen, elapsed_now)

        snapshot = capture(elapsed)

        with progress_bar(total=self.schedule.n_steps, enabled=cfg.progress, desc=f"{self.name} on {target.name}") as bar:
            if k:
                bar.advance(k if self.schedule.n_steps is not None else float(t.min()), step=k, t=float(t.min()))
            try:
                while bool((t < 1.0).any()):
                    seen = attrs.evolve(path.counter)
                    t_next = _checked_times(self.schedule, self.schedule.next_time(k, t, particles, path), t, particles)
                    k += 1
                    ctx = StepContext(path=path, t=t_next, t_from=t, step=k, generator=gen, needs_grad=needs_grad)
                    info: dict[str, Tensor] = {}

                    moved, extra = particles, torch.zeros_like(particles.log_weights)
                    for i, step in enumerate(self.transports):
                        out = step.apply(moved, transport_states[i], ctx)
                        transport_states[i] = out.state
                        moved = out.particles
                        if out.log_weight_increment is not None:
                            extra = extra + _checked_increment(step, out.log_weight_increment, extra)
                        _merge(info, out.info, t)
                    inc = path.log_weight_increment(particles.evaluation, t, moved.evaluation, t_next) + extra
                    particles, dlogz = reweight(moved, inc, k, t_next)
                    weighted = _keep_where((t < 1.0) & (t_next == 1.0), particles, weighted)
                    ess = particles.ess()

                    for i, step in enumerate(self.correctors):
                        out = step.apply(particles, corrector_states[i], ctx)
                        corrector_states[i] = out.state
                        particles = out.particles
                        _merge(info, out.info, t)

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
                    advance = float(t_next.min() - t.min()) if self.schedule.n_steps is None else 1
                    bar.advance(advance, step=k, t=float(t_next.min()), ess=ess, info=info)
                    t = t_next
                    snapshot = capture(elapsed + time.perf_counter() - start)
                    if snapshot is not None and ckpt.every is not None and k % ckpt.every == 0 and bool((t < 1.0).any()):
                        write_checkpoint(ckpt.path, record, snapshot.tree(stats))
            except KeyboardInterrupt:
                if snapshot is None:
                    raise
                write_checkpoint(ckpt.path, record, snapshot.tree(stats))
                raise Interrupted(
                    f"interrupted after stage {snapshot.k}; the state was saved to {str(ckpt.path)!r} "
                    f"(resume with sampler.resume({str(ckpt.path)!r}))",
                    str(ckpt.path),
                    snapshot.k,
                ) from None

        return self._result(target, cfg, path, particles, weighted, stats, gen, elapsed + time.perf_counter() - start)

    def _restore(self, data: CheckpointData, path: GeometricPath, gen: torch.Generator, cfg: RunSettings, needs_grad: bool):
        """The loop state saved in ``data``, on the run's device, with fresh-typed step states."""
        st, dev = data.state, cfg.device

        def particles_from(tree: Mapping[str, Any]) -> Particles:
            ev = PathEvaluation(**{f: (None if v is None else v.to(dev)) for f, v in tree["evaluation"].items()})
            return Particles(
                x=tree["x"].to(dev),
                log_weights=tree["log_weights"].to(dev),
                log_Z=tree["log_Z"].to(dev),
                evaluation=ev,
                extras={k: v.to(dev) for k, v in tree["extras"].items()},
            )

        particles, weighted = particles_from(st["particles"]), particles_from(st["weighted"])
        t = st["t"].to(dev)
        # Fresh states of the right types from each step's init, on a scratch path and generator,
        # so that neither the evaluation counts nor the random stream see them.
        scratch = StepContext(
            path=GeometricPath(path.reference, path.target, EvaluationCounter()),
            t=t,
            t_from=t,
            step=int(st["k"]),
            generator=torch.Generator(device=dev).manual_seed(0),
            needs_grad=needs_grad,
        )
        try:
            transport_states = [tree_to_state(tr, s.init(particles, scratch), dev) for s, tr in zip(self.transports, st["transport_states"])]
            corrector_states = [tree_to_state(tr, s.init(particles, scratch), dev) for s, tr in zip(self.correctors, st["corrector_states"])]
        except (KeyError, TypeError, RuntimeError) as exc:
            raise PersistenceError(f"the checkpoint's step states do not fit this pipeline's steps: {exc}") from None
        stats = stats_from_tree(st["stats"], dev)
        restore_counter(path.counter, st["counter"])
        gen.set_state(st["generator"])
        return int(st["k"]), t, particles, weighted, transport_states, corrector_states, stats, float(st["elapsed"])

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
        uniform = (logw == logw[:, :1]).all(-1)
        if not bool(uniform.all()):  # resample only the replicas whose weights are still unequal
            keep = torch.arange(logw.shape[1], device=logw.device).expand_as(logw)
            samples = particles.gather(torch.where(uniform[:, None], keep, self.final_scheme(logw, gen))).x
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
            dim_names=getattr(target, "dim_names", None),
        )

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, schedule={self.schedule!r}, steps={self.steps!r})"


@attrs.frozen
class _Snapshot:
    """References to the loop state at the end of a stage (tensors are never modified in place)."""

    k: int
    t: Tensor
    particles: Particles
    weighted: Particles
    transport_states: list[Any]
    corrector_states: list[Any]
    n_stats: int
    target_evals: int
    grad_evals: int
    nonfinite: Tensor | int
    generator_state: Tensor
    elapsed: float

    @classmethod
    def capture(cls, k, t, particles, weighted, transport_states, corrector_states, n_stats, counter, gen, elapsed) -> _Snapshot:
        """The state now; copies only the small things that change in place (counts, generator)."""
        return cls(
            k, t, particles, weighted, list(transport_states), list(corrector_states), n_stats,
            counter.target_evals, counter.grad_evals, counter._nonfinite, gen.get_state(), elapsed,
        )

    def tree(self, stats: list[StepStats]) -> dict[str, Any]:
        """The checkpoint's ``state``: plain data and CPU tensors."""
        return {
            "k": self.k,
            "t": self.t.detach().cpu(),
            "particles": state_to_tree(self.particles, "particles"),
            "weighted": state_to_tree(self.weighted, "weighted"),
            "transport_states": [state_to_tree(s, f"transport state {i}") for i, s in enumerate(self.transport_states)],
            "corrector_states": [state_to_tree(s, f"corrector state {i}") for i, s in enumerate(self.corrector_states)],
            "stats": [state_to_tree(s, "stats") for s in stats[: self.n_stats]],
            "counter": {"target_evals": self.target_evals, "grad_evals": self.grad_evals, "nonfinite": int(self.nonfinite)},
            "generator": self.generator_state,
            "elapsed": self.elapsed,
        }


def _checked_times(schedule: Schedule, t_next: Any, t: Tensor, particles: Particles) -> Tensor:
    """The schedule's next times as ``(R,)`` float64; a float applies to every replica."""
    try:
        out = as_times(t_next, particles)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise RunError(f"schedule {schedule!r} returned {t_next!r}; expected one time per replica: {exc}") from None
    if bool(((out < t) | (out > 1) | torch.isnan(out)).any()):
        raise RunError(f"schedule {schedule!r} returned times {out.tolist()} after {t.tolist()}; times must increase to 1")
    return out


def _checked_increment(step: Step, increment: Tensor, like: Tensor) -> Tensor:
    if not isinstance(increment, Tensor) or increment.shape != like.shape:
        shape = tuple(increment.shape) if isinstance(increment, Tensor) else type(increment).__name__
        raise RunError(f"transport {step!r} returned a log-weight increment of shape {shape}; expected {tuple(like.shape)}")
    return increment.to(torch.float64)


def _keep_where(mask: Tensor, new: Particles, old: Particles) -> Particles:
    """Per replica (``mask`` ``(R,)``): positions, weights and log Z from ``new`` where true."""
    if not bool(mask.any()):
        return old
    return attrs.evolve(
        old,
        x=torch.where(mask[:, None, None], new.x, old.x),
        log_weights=torch.where(mask[:, None], new.log_weights, old.log_weights),
        log_Z=torch.where(mask, new.log_Z, old.log_Z),
    )


def _merge(info: dict[str, Tensor], new: Any, like: Tensor) -> None:
    """Add a step's statistics; a repeated key gets a numeric suffix rather than overwriting."""
    for key, value in dict(new).items():
        name, i = key, 2
        while name in info:
            name, i = f"{key}_{i}", i + 1
        info[name] = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float64, device=like.device)
