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
import warnings
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
from sampler.distributed import ParticleStreams, Shard, agree, is_initialized, is_main_process
from sampler.errors import (
    ConfigurationError,
    Interrupted,
    NonFiniteError,
    PersistenceError,
    RunError,
    TargetError,
    check_positive_int,
)
from sampler._indexing import gather_particles
from sampler.particles import Particles
from sampler.particles import ess as ess_of
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


def initial_particles(
    path: GeometricPath, cfg: RunSettings, gen: torch.Generator, grad: bool, streams: ParticleStreams | None = None
) -> Particles:
    """R x N equally weighted draws from the path's reference, evaluated (with gradients if ``grad``).

    With ``streams`` (a sharded run) only this rank's particles, ``(R, N_local, d)``, drawn
    from the per-particle streams; their weights are still ``1 / N`` with N the global count.
    """
    if streams is None:
        x = path.reference.sample((cfg.n_replicas, cfg.n_particles), gen, cfg.dtype)
    else:
        shape = (cfg.n_replicas, streams.stop - streams.start, path.reference.dim)
        x = path.reference.from_standard(streams.randn(shape, cfg.dtype))
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
    log_weights, log_Z, lse = _reweighted(particles.log_weights, log_increment, particles.log_Z, step, t)
    return attrs.evolve(particles, log_weights=log_weights, log_Z=log_Z), lse


def _reweighted(log_weights: Tensor, log_increment: Tensor, log_Z: Tensor, step: int, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`reweight` on tensors: new normalized log weights ``(R, N)``, log Z ``(R,)``, increment ``(R,)``."""
    inc = log_increment.to(torch.float64)
    inc = inc.masked_fill(torch.isnan(inc), -math.inf)
    unnorm = log_weights + inc
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
    return unnorm - lse[:, None], log_Z + lse, lse


def _reweight_sharded(particles: Particles, log_increment: Tensor, step: int, t: Tensor, shard: Shard) -> tuple[Particles, Tensor, Tensor]:
    """:func:`reweight` of a shard from the gathered weights; also returns the new global log weights ``(R, N)``.

    Every rank computes the same full-length log-sum-exp as one process would, so log Z and
    the weights are the same bits for any number of ranks.
    """
    full_w = shard.gather(particles.log_weights, "log weights", keep=True)
    full_inc = shard.gather(log_increment.to(torch.float64), "log-weight increments")
    log_weights, log_Z, lse = _reweighted(full_w, full_inc, particles.log_Z, step, t)
    local = shard.local(log_weights)
    shard.remember(local, log_weights)
    return attrs.evolve(particles, log_weights=local, log_Z=log_Z), lse, log_weights


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
        distributed: bool | None = None,
    ) -> Result:
        """Run the pipeline on ``target`` with R replicas of N particles; return a :class:`Result`.

        With ``checkpoint`` (a file path) the run saves its state there every
        ``checkpoint_every`` stages and when interrupted by Ctrl-C (raising
        :class:`~sampler.errors.Interrupted`); :meth:`resume` continues from that file.

        ``distributed`` selects a sharded run (:mod:`sampler.distributed`): the N particles of
        each replica split across the ranks of the default ``torch.distributed`` process group,
        with per-particle random streams, so the result is the same for any number of ranks,
        one process without a group included (but differs from an ordinary run with the same
        seed, whose random stream is not per particle). ``None`` (default): sharded when a
        process group is initialized and every step supports it (else, with a warning, every
        rank runs the whole, identical run); ``True``: sharded, or an error if a step does not
        support it; ``False``: an ordinary run. Every rank returns the same full
        :class:`Result`; with a checkpoint, rank 0 writes the file.
        """
        cfg = RunSettings.create(target, n_particles, n_replicas, seed, device, dtype, progress)
        ckpt = Checkpoint.create(checkpoint, checkpoint_every)
        shard = self._shard(distributed, cfg)
        replicated = shard is None and distributed is None and is_initialized()
        if shard is not None or replicated:  # one seed for all ranks (each may have drawn its own at random)
            cfg = attrs.evolve(cfg, seed=shard.agree(cfg.seed) if shard is not None else agree(cfg.seed))
        return self._run(as_target(target), cfg, ckpt, None, shard, main=not replicated or is_main_process())

    def unshardable(self, short: bool = False) -> list[str]:
        """The steps (and schedule) that keep this pipeline from a sharded run (empty: it shards).

        Each is named by its ``repr``, or by its class name with ``short``.
        """
        name = (lambda obj: type(obj).__name__) if short else repr
        unsupported = [name(s) for s in self.steps if not getattr(s, "shardable", False)]
        if not getattr(self.schedule, "shardable", False):
            unsupported.append(f"schedule {name(self.schedule)}")
        return unsupported

    def _shard(self, distributed: bool | None, cfg: RunSettings) -> Shard | None:
        """The shard of a sharded run (``None`` for an ordinary one); see :meth:`run`."""
        if distributed is None:
            distributed = is_initialized()
            explicit = False
        else:
            explicit = True
        if not distributed:
            return None
        unsupported = self.unshardable()
        if unsupported:
            message = (
                f"{self.name!r} cannot shard its particles across processes: {', '.join(unsupported)} "
                "do(es) not support sharded runs (shardable = False)"
            )
            if explicit:
                raise ConfigurationError(message)
            warnings.warn(message + "; every rank runs the whole run instead", stacklevel=3)
            return None
        return Shard(cfg.n_particles, cfg.device)

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
        # A sharded run resumes sharded, over however many ranks there are now; an ordinary one as
        # before (under a process group: the same run on every rank, rank 0 writing).
        shard = self._shard(True, cfg) if run.get("sharded") else None
        return self._run(target, cfg, ckpt, data, shard, main=shard is not None or is_main_process())

    def _run(
        self,
        target: Target,
        cfg: RunSettings,
        ckpt: Checkpoint | None,
        resume: CheckpointData | None,
        shard: Shard | None = None,
        main: bool = True,
    ) -> Result:
        """The run; ``shard`` for a sharded one; ``main`` False on ranks that neither write nor show progress."""
        reference = self.reference or make_reference(target, self.reference_loc, self.reference_scale)
        if reference.dim != target.dim:
            raise ConfigurationError(f"reference has dim {reference.dim} but the target has dim {target.dim}")
        gen = cfg.generator()
        path = GeometricPath(reference, target, EvaluationCounter())
        needs_grad = any(s.needs_grad for s in self.steps)
        streams = None if shard is None else ParticleStreams(cfg.seed, cfg.n_particles, shard.start, shard.stop, cfg.device)
        main = main and (shard is None or shard.rank == 0)
        start = time.perf_counter()

        if resume is None:
            particles = initial_particles(path, cfg, gen, needs_grad, streams)
            t = torch.zeros(cfg.n_replicas, dtype=torch.float64, device=particles.x.device)
            ctx = StepContext(path=path, t=t, t_from=t, step=0, generator=gen, needs_grad=needs_grad, shard=shard, streams=streams)
            transport_states = [s.init(particles, ctx) for s in self.transports]
            corrector_states = [s.init(particles, ctx) for s in self.correctors]
            weighted = particles  # per replica: the state right after its reweighting to t = 1
            stats: list[StepStats] = []
            k, elapsed = 0, 0.0
        else:
            k, t, particles, weighted, transport_states, corrector_states, stats, elapsed = self._restore(
                resume, path, gen, cfg, needs_grad, shard, streams
            )
        steps = [type(s).__name__ for s in self.steps]
        record = run_record(self.name, target, cfg, ckpt, steps) if ckpt is not None else {}
        if shard is not None and ckpt is not None:
            record["sharded"] = True

        def capture(elapsed_now: float) -> _Snapshot | None:
            if ckpt is None:
                return None
            return _Snapshot.capture(
                k, t, particles, weighted, transport_states, corrector_states, len(stats), path.counter, gen, elapsed_now, streams
            )

        def save(snap: _Snapshot) -> None:
            tree = snap.tree(stats, shard)  # a collective in a sharded run: every rank takes part
            if main:
                write_checkpoint(ckpt.path, record, tree)

        snapshot = capture(elapsed)
        bar_enabled = cfg.progress if main else False

        with progress_bar(total=self.schedule.n_steps, enabled=bar_enabled, desc=f"{self.name} on {target.name}") as bar:
            if k:
                bar.advance(k if self.schedule.n_steps is not None else float(t.min()), step=k, t=float(t.min()))
            try:
                while bool((t < 1.0).any()):
                    seen = attrs.evolve(path.counter)
                    view = particles if shard is None else _global_view(particles, shard, self.schedule.uses_particles)
                    t_next = _checked_times(self.schedule, self.schedule.next_time(k, t, view, path), t, particles)
                    k += 1
                    ctx = StepContext(
                        path=path, t=t_next, t_from=t, step=k, generator=gen, needs_grad=needs_grad, shard=shard, streams=streams
                    )
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
                    if shard is None:
                        particles, dlogz = reweight(moved, inc, k, t_next)
                        ess = particles.ess()
                    else:
                        particles, dlogz, full_log_weights = _reweight_sharded(moved, inc, k, t_next, shard)
                        ess = ess_of(full_log_weights)
                    weighted = _keep_where((t < 1.0) & (t_next == 1.0), particles, weighted)

                    for i, step in enumerate(self.correctors):
                        out = step.apply(particles, corrector_states[i], ctx)
                        corrector_states[i] = out.state
                        particles = out.particles
                        _merge(info, out.info, t)

                    counts = [
                        path.counter.target_evals - seen.target_evals,
                        path.counter.grad_evals - seen.grad_evals,
                        path.counter.nonfinite - seen.nonfinite,
                    ]
                    if shard is not None:
                        counts = shard.sum_ints(counts)
                    stats.append(
                        StepStats(
                            step=k,
                            t=t_next,
                            ess=ess,
                            log_Z_increment=dlogz,
                            target_evals=counts[0],
                            grad_evals=counts[1],
                            nonfinite=counts[2],
                            info=info,
                        )
                    )
                    advance = float(t_next.min() - t.min()) if self.schedule.n_steps is None else 1
                    bar.advance(advance, step=k, t=float(t_next.min()), ess=ess, info=info)
                    t = t_next
                    snapshot = capture(elapsed + time.perf_counter() - start)
                    if snapshot is not None and ckpt.every is not None and k % ckpt.every == 0 and bool((t < 1.0).any()):
                        save(snapshot)
            except KeyboardInterrupt:
                # Ranks of a sharded run cannot gather their state once one of them stops: there,
                # only the periodic checkpoints (checkpoint_every) are saved.
                if snapshot is None or (shard is not None and shard.world_size > 1):
                    raise
                save(snapshot)
                raise Interrupted(
                    f"interrupted after stage {snapshot.k}; the state was saved to {str(ckpt.path)!r} "
                    f"(resume with sampler.resume({str(ckpt.path)!r}))",
                    str(ckpt.path),
                    snapshot.k,
                ) from None

        return self._result(target, cfg, path, particles, weighted, stats, gen, elapsed + time.perf_counter() - start, shard)

    def _restore(
        self,
        data: CheckpointData,
        path: GeometricPath,
        gen: torch.Generator,
        cfg: RunSettings,
        needs_grad: bool,
        shard: Shard | None = None,
        streams: ParticleStreams | None = None,
    ):
        """The loop state saved in ``data``, on the run's device, with fresh-typed step states.

        A sharded checkpoint holds all N particles; each rank keeps its own share.
        """
        st, dev = data.state, cfg.device
        part = (lambda v: v) if shard is None else (lambda v: v[:, shard.start : shard.stop].contiguous())

        def particles_from(tree: Mapping[str, Any]) -> Particles:
            ev = PathEvaluation(**{f: (None if v is None else part(v).to(dev)) for f, v in tree["evaluation"].items()})
            return Particles(
                x=part(tree["x"]).to(dev),
                log_weights=part(tree["log_weights"]).to(dev),
                log_Z=tree["log_Z"].to(dev),
                evaluation=ev,
                extras={k: part(v).to(dev) for k, v in tree["extras"].items()},
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
        if shard is None or shard.rank == 0:  # the saved counts are totals over the ranks: rank 0 carries them
            restore_counter(path.counter, st["counter"])
        gen.set_state(st["generator"])
        if streams is not None:
            streams.counter = int(st["streams"])
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
        shard: Shard | None = None,
    ) -> Result:
        """Package the final state; ``weighted`` is the state right after the last reweighting.

        A sharded run gathers positions and weights of all N particles on every rank.
        """
        logw, samples = particles.log_weights, particles.x
        weighted_logw, weighted_x = weighted.log_weights, weighted.x
        counts = [path.counter.target_evals, path.counter.grad_evals, path.counter.nonfinite]
        if shard is not None:
            logw, samples = shard.gather(logw, "log weights"), shard.gather(samples, "positions")
            weighted_logw, weighted_x = shard.gather(weighted_logw, "log weights"), shard.gather(weighted_x, "positions")
            counts = shard.sum_ints(counts)
        uniform = (logw == logw[:, :1]).all(-1)
        if not bool(uniform.all()):  # resample only the replicas whose weights are still unequal
            keep = torch.arange(logw.shape[1], device=logw.device).expand_as(logw)
            samples = gather_particles(samples, torch.where(uniform[:, None], keep, self.final_scheme(logw, gen)))
        return Result(
            samples=samples,
            log_weights=weighted_logw + math.log(weighted_logw.shape[1]) + weighted.log_Z[:, None],
            weighted_samples=weighted_x,
            log_Z_per_replica=particles.log_Z,
            n_target_evals=counts[0],
            n_grad_evals=counts[1],
            n_nonfinite=counts[2],
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
    streams_counter: int | None = None

    @classmethod
    def capture(cls, k, t, particles, weighted, transport_states, corrector_states, n_stats, counter, gen, elapsed, streams=None) -> _Snapshot:
        """The state now; copies only the small things that change in place (counts, generator)."""
        return cls(
            k, t, particles, weighted, list(transport_states), list(corrector_states), n_stats,
            counter.target_evals, counter.grad_evals, counter._nonfinite, gen.get_state(), elapsed,
            None if streams is None else streams.counter,
        )

    def tree(self, stats: list[StepStats], shard: Shard | None = None) -> dict[str, Any]:
        """The checkpoint's ``state``: plain data and CPU tensors.

        In a sharded run this gathers all N particles and the total counts (a collective: every
        rank calls it), so the file does not depend on the number of ranks.
        """
        particles, weighted = self.particles, self.weighted
        counts = [self.target_evals, self.grad_evals, int(self.nonfinite)]
        if shard is not None:
            particles, weighted = _gathered(particles, shard), _gathered(weighted, shard)
            counts = shard.sum_ints(counts)
        tree = {
            "k": self.k,
            "t": self.t.detach().cpu(),
            "particles": state_to_tree(particles, "particles"),
            "weighted": state_to_tree(weighted, "weighted"),
            "transport_states": [state_to_tree(s, f"transport state {i}") for i, s in enumerate(self.transport_states)],
            "corrector_states": [state_to_tree(s, f"corrector state {i}") for i, s in enumerate(self.corrector_states)],
            "stats": [state_to_tree(s, "stats") for s in stats[: self.n_stats]],
            "counter": {"target_evals": counts[0], "grad_evals": counts[1], "nonfinite": counts[2]},
            "generator": self.generator_state,
            "elapsed": self.elapsed,
        }
        if self.streams_counter is not None:
            tree["streams"] = self.streams_counter
        return tree


def _gathered(particles: Particles, shard: Shard) -> Particles:
    """All N particles of a sharded state (positions, weights, cached evaluations, extras) on every rank."""
    ev = particles.evaluation
    grads = {f: (None if getattr(ev, f) is None else shard.gather(getattr(ev, f), "cached gradients")) for f in ("grad_ref", "grad_target")}
    return attrs.evolve(
        particles,
        x=shard.gather(particles.x, "positions"),
        log_weights=shard.gather(particles.log_weights, "log weights"),
        evaluation=attrs.evolve(
            ev, log_ref=shard.gather(ev.log_ref, "log densities"), log_target=shard.gather(ev.log_target, "log densities"), **grads
        ),
        extras={k: shard.gather(v, "particle extras") for k, v in particles.extras.items()},
    )


def _global_view(particles: Particles, shard: Shard, uses_particles: bool) -> Particles:
    """What a schedule sees in a sharded run: weights and cached log densities of all N particles.

    Positions are not gathered: ``x`` is a zero placeholder ``(R, N, d)`` (an expanded scalar).
    """
    if not uses_particles:
        return particles
    ev = particles.evaluation
    full = shard.gather(torch.stack([ev.log_ref, ev.log_target], -1), "log densities")
    log_w = shard.gather(particles.log_weights, "log weights", keep=True)
    r, n = log_w.shape
    x = particles.x.new_zeros(()).expand(r, n, particles.dim)
    return Particles(x=x, log_weights=log_w, log_Z=particles.log_Z, evaluation=PathEvaluation(full[..., 0], full[..., 1]))


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
