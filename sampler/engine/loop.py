"""The loop every runner shares: a frozen loop state, named phases, one checkpoint and interrupt path.

A run is a sequence of iterations (annealing stages of a :class:`~sampler.Pipeline`, iterations
of MCMC chains). Each iteration maps one frozen :class:`LoopState` to the next through named
phases::

    move      transports carry the particles from pi_t toward pi_t'    (annealing only)
    reweight  the engine multiplies the weights and updates log Z       (annealing only)
    correct   correctors act at pi_t' (resampling, MCMC)
    record    the iteration's statistics (:class:`~sampler.StepStats`, or a
              :class:`~sampler.ext.StepBlock` for a fused segment) are appended

:class:`Loop` runs the iterations and owns what every runner would otherwise repeat: the
progress bar, the periodic checkpoint, and Ctrl-C (the last completed iteration is saved and
:class:`~sampler.errors.Interrupted` raised, with the resume command). Since the state is
frozen and tensors are never modified in place, remembering the last completed iteration
costs a reference, a copy of the generator state and of the counts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from sampler.core.particles import Particles
from sampler.core.paths import EvaluationCounter, GeometricPath, PathEvaluation
from sampler.core.records import Record, StepRecords, StepStats, last_step
from sampler.core.settings import RunSettings
from sampler.core.steps import Step, StepContext
from sampler.core.threads import follow_load
from sampler.engine.distributed import ParticleStreams, Shard
from sampler.engine.progress import progress_bar
from sampler.errors import Interrupted, PersistenceError
from sampler.io.checkpoint import (
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
from sampler.targets.base import Target, as_target

__all__ = ["LoopState", "Session", "Loop", "Reopened", "reopen", "apply_steps", "record", "saved_particles"]


@attrs.frozen
class LoopState:
    """The state of a run between two iterations: everything a checkpoint saves but the records.

    Attributes:
        k: completed iterations (stages, or chain iterations).
        t: ``(R,)`` float64 annealing time per replica (ones for chains).
        particles: the current particles ``(R, N, d)``.
        weighted: per replica, the particles right after its reweighting to t = 1 (annealing
            runs; what ``Result.weighted_samples`` holds); chains keep their current particles.
        step_states: each step's adapted state, in the runner's step order.
        aux: the runner's own frozen state by name (chains: the step-size tuner, the buffer
            of kept draws, which is written in place once per kept draw and copied when saved).
    """

    k: int
    t: Tensor
    particles: Particles
    weighted: Particles
    step_states: tuple[Any, ...]
    aux: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.define
class Session:
    """What one run owns besides its loop state: settings, path and counts, generator, records.

    Attributes:
        name: the runner's name (method), for progress, checkpoints and messages.
        target: the target sampled.
        cfg: the run's settings.
        path: the annealing path; its counter holds the run's evaluation counts.
        generator: the run's random generator.
        needs_grad: whether any step needs gradients.
        checkpoint: where and how often to save (``None``: never).
        steps: the class names of the runner's steps (recorded in, and checked against, checkpoints).
        options: the runner's effective options (recorded in checkpoints; a resume with other
            options is refused). Empty: unknown, not checked.
        shard, streams: this rank's share and per-particle random streams in a sharded run.
        main: whether this process shows progress and writes files.
        stats: the per-iteration records so far (append-only): :class:`StepStats`, or one
            :class:`~sampler.core.records.StepBlock` per fused segment of iterations.
        elapsed: wall seconds spent before this session (a resumed run's earlier sessions).
    """

    name: str
    target: Target
    cfg: RunSettings
    path: GeometricPath
    generator: torch.Generator
    needs_grad: bool
    checkpoint: Checkpoint | None = None
    steps: Sequence[str] = ()
    options: Mapping[str, Any] = attrs.field(factory=dict)
    shard: Shard | None = None
    streams: ParticleStreams | None = None
    main: bool = True
    stats: list[Record] = attrs.field(factory=list)
    elapsed: float = 0.0
    _start: float = attrs.field(factory=time.perf_counter, init=False)

    @property
    def wall_time(self) -> float:
        """Seconds this run has taken so far, earlier sessions included."""
        return self.elapsed + time.perf_counter() - self._start

    def context(self, t: Tensor, t_from: Tensor, step: int) -> StepContext:
        """The :class:`StepContext` of iteration ``step`` moving from ``t_from`` to ``t``."""
        return StepContext(
            path=self.path,
            t=t,
            t_from=t_from,
            step=step,
            generator=self.generator,
            needs_grad=self.needs_grad,
            shard=self.shard,
            streams=self.streams,
        )

    def scratch_context(self, t: Tensor, step: int) -> StepContext:
        """A context whose evaluations and random draws the run never sees (templates on resume)."""
        return StepContext(
            path=GeometricPath(self.path.reference, self.path.target, EvaluationCounter()),
            t=t,
            t_from=t,
            step=step,
            generator=torch.Generator(device=self.cfg.device).manual_seed(0),
            needs_grad=self.needs_grad,
        )

    def restore(self, data: CheckpointData, template: LoopState) -> LoopState:
        """The loop state saved in ``data``, poured into ``template`` (fresh, of the right types).

        Restores the records, the counts, the generator and the streams too. A sharded
        checkpoint holds all N particles: each rank keeps its own share.
        """
        tree = data.state
        try:
            state = tree_to_state({f.name: tree[f.name] for f in attrs.fields(LoopState)}, template, self.cfg.device)
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise PersistenceError(
                f"the state in checkpoint {data.source!r} does not fit this runner's steps: {exc}"
            ) from None
        if self.shard is not None:
            state = attrs.evolve(
                state,
                particles=_local_share(state.particles, self.shard),
                weighted=_local_share(state.weighted, self.shard),
            )
        self.stats = stats_from_tree(tree["stats"], self.cfg.device)
        self.path.counter = EvaluationCounter()
        if self.shard is None or self.shard.rank == 0:  # saved counts are totals over ranks: rank 0 carries them
            restore_counter(self.path.counter, tree["counter"])
        self.generator.set_state(tree["generator"])
        if self.streams is not None:
            self.streams.counter = int(tree["streams"])
        self.elapsed = float(tree["elapsed"])
        return state


@attrs.frozen
class Reopened:
    """A checkpoint opened for resuming: its content, the target, the run's settings and where to keep saving."""

    data: CheckpointData
    target: Target
    cfg: RunSettings
    checkpoint: Checkpoint


def reopen(
    checkpoint: CheckpointData | str | os.PathLike,
    target: Target,
    steps: Sequence[str],
    progress: bool | None = None,
    checkpoint_every: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> Reopened:
    """Read a checkpoint and check it fits ``target``, the runner's ``steps`` (class names) and ``options``.

    ``options`` are the resuming runner's effective options (``None`` or empty: not checked).

    The settings (N, R, seed, device, dtype) come from the checkpoint; the resumed run keeps
    writing to the same file, every ``checkpoint_every`` iterations (default: as before).
    """
    data = checkpoint if isinstance(checkpoint, CheckpointData) else read_checkpoint(checkpoint)
    run = data.run
    target = as_target(target)
    check_resumable(data, target, list(steps), options or None)
    cfg = RunSettings.create(
        target, run["n_particles"], run["n_replicas"], run["seed"], run["device"], run["dtype"], progress
    )
    every = run.get("every") if checkpoint_every is None else checkpoint_every
    path = run["path"] if isinstance(checkpoint, CheckpointData) else checkpoint
    return Reopened(data, target, cfg, Checkpoint(path, every, run.get("metadata", {})))


@attrs.frozen
class _Snapshot:
    """The last completed iteration: the frozen state plus copies of what changes in place."""

    state: LoopState
    n_stats: int
    counts: tuple[int, int, Tensor | int]
    generator_state: Tensor
    streams_counter: int | None
    elapsed: float

    @classmethod
    def capture(cls, state: LoopState, session: Session) -> _Snapshot:
        c = session.path.counter
        return cls(
            state,
            len(session.stats),
            (c.target_evals, c.grad_evals, c._nonfinite),
            session.generator.get_state(),
            None if session.streams is None else session.streams.counter,
            session.wall_time,
        )

    def tree(self, session: Session) -> dict[str, Any]:
        """The checkpoint's ``state``: plain data and CPU tensors.

        In a sharded run this gathers all N particles and the total counts (a collective:
        every rank calls it), so the file does not depend on the number of ranks.
        """
        state, counts = self.state, [self.counts[0], self.counts[1], int(self.counts[2])]
        if session.shard is not None:
            state = attrs.evolve(
                state,
                particles=_gathered(state.particles, session.shard),
                weighted=_gathered(state.weighted, session.shard),
            )
            counts = session.shard.sum_ints(counts)
        tree = {
            **state_to_tree(state, "loop state"),  # k, t, particles, weighted, step_states, aux
            "stats": [state_to_tree(s, "stats") for s in StepRecords(session.stats[: self.n_stats])],
            "counter": {"target_evals": counts[0], "grad_evals": counts[1], "nonfinite": counts[2]},
            "generator": self.generator_state,
            "elapsed": self.elapsed,
        }
        if self.streams_counter is not None:
            tree["streams"] = self.streams_counter
        return tree


class Loop:
    """Runs a session's iterations with progress, periodic checkpoints and Ctrl-C handling.

    Args:
        session: the run.
        iterate: one iteration, ``(state, session) -> state``; it appends its record to
            ``session.stats``. It may run several (a fused segment of chain iterations): the
            state's ``k`` says how many have run, and the bar advances by as many.
        finished: whether the run is done after a state.
        total: the number of iterations, or ``None`` when it is not known in advance (an
            adaptive schedule: the bar then runs over the time t, to 1).
        unit: what an iteration is called in messages (``"stage"``, ``"iteration"``).
        annealing: whether the bar shows the time t and the ESS (annealing runs).
    """

    def __init__(
        self,
        session: Session,
        iterate: Callable[[LoopState, Session], LoopState],
        finished: Callable[[LoopState], bool],
        total: int | None,
        unit: str = "stage",
        annealing: bool = True,
    ):
        self.session = session
        self.iterate = iterate
        self.finished = finished
        self.total = total
        self.unit = unit
        self.annealing = annealing

    def run(self, state: LoopState, desc: str) -> LoopState:
        """Iterate from ``state`` until :attr:`finished`; return the final state."""
        session, ckpt = self.session, self.session.checkpoint
        run_info = (
            run_record(session.name, session.target, session.cfg, ckpt, list(session.steps), session.options or None)
            if ckpt is not None
            else {}
        )
        if ckpt is not None and session.shard is not None:
            run_info["sharded"] = True
        snapshot = _Snapshot.capture(state, session) if ckpt is not None else None
        by_time = self.total is None

        def shown(st: LoopState) -> dict[str, Any]:
            return {"t": float(st.t.min())} if self.annealing else {}

        enabled = session.cfg.progress if session.main else False
        with (
            _terminate_as_interrupt(ckpt is not None),
            progress_bar(total=self.total, enabled=enabled, desc=desc) as bar,
        ):
            if state.k:
                bar.advance(float(state.t.min()) if by_time else state.k, step=state.k, **shown(state))
            try:
                while not self.finished(state):
                    follow_load()
                    new = self.iterate(state, session)
                    last = last_step(session.stats[-1])
                    amount = float(new.t.min() - state.t.min()) if by_time else new.k - state.k
                    bar.advance(
                        amount, step=new.k, ess=last.ess if self.annealing else None, info=last.info, **shown(new)
                    )
                    # due when k passed a multiple of the interval (an iterate may run several iterations)
                    due = ckpt is not None and ckpt.every is not None and new.k // ckpt.every > state.k // ckpt.every
                    state = new
                    if ckpt is not None:
                        snapshot = _Snapshot.capture(state, session)
                        if due and not self.finished(state):
                            self._save(snapshot, run_info)
            except KeyboardInterrupt:
                # Ranks of a sharded run cannot gather their state once one of them stops: there,
                # only the periodic checkpoints (checkpoint_every) are saved.
                if ckpt is None or snapshot is None or (session.shard is not None and session.shard.world_size > 1):
                    raise
                self._save(snapshot, run_info)
                raise Interrupted(
                    f"interrupted after {self.unit} {snapshot.state.k}; the state was saved to {str(ckpt.path)!r} "
                    f"(resume with sampler.resume({str(ckpt.path)!r}))",
                    str(ckpt.path),
                    snapshot.state.k,
                    self.unit,
                ) from None
        return state

    def _save(self, snapshot: _Snapshot, run_info: Mapping[str, Any]) -> None:
        tree = snapshot.tree(self.session)  # a collective in a sharded run: every rank takes part
        if self.session.main and self.session.checkpoint is not None:
            write_checkpoint(self.session.checkpoint.path, run_info, tree)


@contextlib.contextmanager
def _terminate_as_interrupt(enabled: bool) -> Iterator[None]:
    """While a checkpointed run iterates, SIGTERM (``kill``, a batch scheduler's time limit) acts as Ctrl-C.

    The loop then saves the last completed iteration and raises ``Interrupted``. Only the main
    thread can install signal handlers; elsewhere, and without a checkpoint, nothing changes.
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def apply_steps(
    steps: Sequence[Step], particles: Particles, states: Sequence[Any], ctx: StepContext, info: dict[str, Tensor]
) -> tuple[Particles, list[Any], list[Tensor | None]]:
    """Apply ``steps`` in order (the move and correct phases).

    Returns the particles, the steps' new states, and each step's log-weight increment
    (``None`` where it returned none); the steps' statistics are merged into ``info``.
    """
    new_states, increments = [], []
    for step, state in zip(steps, states):
        out = step.apply(particles, state, ctx)
        new_states.append(out.state)
        particles = out.particles
        increments.append(out.log_weight_increment)
        merge_info(info, out.info, ctx.t)
    return particles, new_states, increments


def record(
    session: Session,
    seen: EvaluationCounter,
    step: int,
    t: Tensor,
    ess: Tensor,
    log_Z_increment: Tensor,
    info: Mapping[str, Tensor],
) -> StepStats:
    """The record phase: append the iteration's :class:`StepStats` (counts since ``seen``)."""
    c = session.path.counter
    counts = [c.target_evals - seen.target_evals, c.grad_evals - seen.grad_evals, c.nonfinite - seen.nonfinite]
    if session.shard is not None:
        counts = session.shard.sum_ints(counts)
    stats = StepStats(
        step=step,
        t=t,
        ess=ess,
        log_Z_increment=log_Z_increment,
        target_evals=counts[0],
        grad_evals=counts[1],
        nonfinite=counts[2],
        info=dict(info),
    )
    session.stats.append(stats)
    return stats


def merge_info(info: dict[str, Tensor], new: Any, like: Tensor) -> None:
    """Add a step's statistics; a repeated key gets a numeric suffix rather than overwriting."""
    for key, value in dict(new).items():
        name, i = key, 2
        while name in info:
            name, i = f"{key}_{i}", i + 1
        info[name] = (
            value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float64, device=like.device)
        )


def _local_share(particles: Particles, shard: Shard) -> Particles:
    """This rank's particles ``[start, stop)`` of a state that holds all N."""

    def part(v: Tensor) -> Tensor:
        return v[:, shard.start : shard.stop].contiguous()

    ev = particles.evaluation
    grads = {f: (None if getattr(ev, f) is None else part(getattr(ev, f))) for f in ("grad_ref", "grad_target")}
    return attrs.evolve(
        particles,
        x=part(particles.x),
        log_weights=part(particles.log_weights),
        evaluation=attrs.evolve(ev, log_ref=part(ev.log_ref), log_target=part(ev.log_target), **grads),
        extras={k: part(v) for k, v in particles.extras.items()},
    )


def saved_particles(tree: Mapping[str, Any], device: torch.device, shard: Shard | None = None) -> Particles:
    """Particles from a checkpoint's tree (this rank's share in a sharded run), on ``device``."""
    ev = tree["evaluation"]
    particles = Particles(
        x=tree["x"].to(device),
        log_weights=tree["log_weights"].to(device),
        log_Z=tree["log_Z"].to(device),
        evaluation=PathEvaluation(
            ev["log_ref"].to(device),
            ev["log_target"].to(device),
            *(None if ev.get(f) is None else ev[f].to(device) for f in ("grad_ref", "grad_target")),
        ),
        extras={k: v.to(device) for k, v in tree["extras"].items()},
    )
    return particles if shard is None else _local_share(particles, shard)


def _gathered(particles: Particles, shard: Shard) -> Particles:
    """All N particles of a sharded state (positions, weights, cached evaluations, extras) on every rank."""
    ev = particles.evaluation
    grads = {
        f: (None if getattr(ev, f) is None else shard.gather(getattr(ev, f), "cached gradients"))
        for f in ("grad_ref", "grad_target")
    }
    return attrs.evolve(
        particles,
        x=shard.gather(particles.x, "positions"),
        log_weights=shard.gather(particles.log_weights, "log weights"),
        evaluation=attrs.evolve(
            ev,
            log_ref=shard.gather(ev.log_ref, "log densities"),
            log_target=shard.gather(ev.log_target, "log densities"),
            **grads,
        ),
        extras={k: shard.gather(v, "particle extras") for k, v in particles.extras.items()},
    )
