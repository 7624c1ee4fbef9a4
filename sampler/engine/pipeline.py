"""The engine: walks an annealing schedule over batched particles and keeps the books.

Per stage (``t -> t'``): transports, reweighting (``log pi_t'(x') - log pi_t(x) + log-det``),
then correctors (resampling, MCMC). The engine alone updates log weights and log Z: with
normalized weights ``W``, the stage's log Z increment is ``log sum_i W_i exp(increment_i)``,
which stays exact under adaptive resampling (resampling changes weights, never log Z).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from sampler.core._indexing import gather_particles
from sampler.core.laplace import fit_laplace
from sampler.core.particles import Particles
from sampler.core.particles import ess as ess_of
from sampler.core.paths import EvaluationCounter, GaussianReference, GeometricPath, PathEvaluation
from sampler.core.prior_reference import PriorReference
from sampler.core.resampling import get_scheme
from sampler.core.result import Result
from sampler.core.runner import Capabilities
from sampler.core.schedules import Adaptive, Schedule, as_times
from sampler.core.seeding import derived_seed
from sampler.core.settings import RunSettings
from sampler.core.steps import Corrector, Step, Transport
from sampler.engine.auto_reference import auto_reference
from sampler.engine.distributed import ParticleStreams, Shard, agree, is_initialized, is_main_process
from sampler.engine.loop import Loop, LoopState, Session, apply_steps, record, reopen, saved_particles
from sampler.engine.spread_reference import spread_reference
from sampler.errors import ConfigurationError, NonFiniteError, RunError, check_positive_int
from sampler.io.checkpoint import Checkpoint, CheckpointData
from sampler.targets.base import Target, as_target

__all__ = ["Pipeline", "reweight", "make_reference", "initial_particles", "REFERENCES"]

#: The kinds of reference a pipeline can start from (besides a given :class:`GaussianReference`).
REFERENCES = ("prior", "laplace", "pilot", "auto", "spread")
#: Salts of the derived seeds of the reference fits (their random streams are not the run's).
_LAPLACE_SALT, _PILOT_SALT = 0x1A91ACE, 0x9170


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


def make_reference(
    target: Target, loc: float | Tensor | None = None, scale: float | Tensor | None = None
) -> GaussianReference:
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


def _reweighted(
    log_weights: Tensor, log_increment: Tensor, log_Z: Tensor, step: int, t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
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


def _reweight_sharded(
    particles: Particles, log_increment: Tensor, step: int, t: Tensor, shard: Shard
) -> tuple[Particles, Tensor, Tensor]:
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
        schedule: the annealing times (default: :class:`~sampler.core.schedules.Adaptive` with
            conditional ESS 0.5).
        steps: transports and correctors. Transports run first in each stage, then the engine
            reweights, then correctors run in the order given.
        reference: the path's start: a :class:`GaussianReference`, or how to make one:
            ``"prior"`` (default) ``N(target.reference_loc, target.reference_scale^2 I)``;
            ``"laplace"`` the Laplace approximation ``N(MAP, H^{-1})`` with a dense covariance
            (:mod:`sampler.core.laplace`, starts drawn from the prior reference);
            ``"auto"`` the Laplace approximation where it passes checks of dimension, of a
            single maximum, of a prior far off the target's scale and of coverage, the prior
            elsewhere (:mod:`sampler.engine.auto_reference`);
            ``"spread"`` the prior reference widened until the maxima that L-BFGS finds from
            it lose at most a nat of share to each other on the path
            (:mod:`sampler.engine.spread_reference`; for far-apart modes of comparable weight);
            ``"pilot"`` the mean and dense covariance of a short run of this pipeline from the
            prior reference (``pilot_particles`` per replica, all replicas pooled). The fits'
            evaluations count in the result's totals (in no stage's counts):
            ``Result.options["reference"]`` says which reference was used (for ``"auto"``, why)
            and ``Result.options["reference_evals"]`` what the fit cost,
            ``[target evaluations, gradient evaluations]``.
        reference_loc: overrides the target's ``reference_loc`` hint for the prior reference.
        reference_scale: overrides the target's ``reference_scale`` hint for the prior reference.
        pilot_particles: particles per replica of the pilot run (default ``max(64, N // 4)``).
        final_resampling: scheme that turns the final weighted particles into equally weighted
            ``Result.samples`` (skipped when the weights are already equal).
        name: recorded as the method name in results.
    """

    #: A pipeline checkpoints and resumes, and shards its particles across processes.
    capabilities = Capabilities(checkpoint=True, distributed=True)

    def __init__(
        self,
        schedule: Schedule | None = None,
        steps: Sequence[Step] = (),
        reference: GaussianReference | str | None = None,
        reference_loc: float | Tensor | None = None,
        reference_scale: float | Tensor | None = None,
        final_resampling: str = "systematic",
        name: str = "pipeline",
        options: dict[str, Any] | None = None,
        pilot_particles: int | None = None,
    ):
        self.schedule = schedule if schedule is not None else Adaptive()
        if not isinstance(self.schedule, Schedule):
            raise ConfigurationError(
                f"schedule must be a sampler.core.schedules.Schedule, got {type(schedule).__name__}"
            )
        steps = list(steps)
        for s in steps:
            if not isinstance(s, Step):
                raise ConfigurationError(
                    f"steps must be Transport or Corrector instances (e.g. sampler.corrector('mala')), got {s!r}"
                )
        self.transports = [s for s in steps if isinstance(s, Transport)]
        self.correctors = [s for s in steps if isinstance(s, Corrector)]
        if isinstance(reference, str) and reference not in REFERENCES:
            raise ConfigurationError(f"reference must be one of {', '.join(REFERENCES)} or a GaussianReference")
        if reference is not None and not isinstance(reference, (str, GaussianReference)):
            raise ConfigurationError(f"reference must be a GaussianReference or a name, got {type(reference).__name__}")
        if pilot_particles is not None:
            check_positive_int("pilot_particles", pilot_particles)
        self.reference = None if reference == "prior" else reference
        self.pilot_particles = pilot_particles
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

        ``distributed`` selects a sharded run (:mod:`sampler.engine.distributed`): the N particles of
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
        opened = reopen(
            checkpoint, target, [type(s).__name__ for s in self.steps], progress, checkpoint_every, self.options
        )
        # A sharded run resumes sharded, over however many ranks there are now; an ordinary one as
        # before (under a process group: the same run on every rank, rank 0 writing).
        shard = self._shard(True, opened.cfg) if opened.data.run.get("sharded") else None
        return self._run(
            opened.target,
            opened.cfg,
            opened.checkpoint,
            opened.data,
            shard,
            main=shard is not None or is_main_process(),
        )

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
        counter = EvaluationCounter()
        fit_start = time.perf_counter()
        reference, used, fit_evals = self._reference(
            target, cfg, counter, resume, carries_counts=shard is None or shard.rank == 0
        )
        if reference.dim != target.dim:
            raise ConfigurationError(f"reference has dim {reference.dim} but the target has dim {target.dim}")
        session = Session(
            name=self.name,
            target=target,
            cfg=cfg,
            path=GeometricPath(reference, target, counter),
            generator=cfg.generator(),
            needs_grad=any(s.needs_grad for s in self.steps),
            checkpoint=ckpt,
            steps=[type(s).__name__ for s in self.steps],
            options=self.options,
            shard=shard,
            streams=None
            if shard is None
            else ParticleStreams(cfg.seed, cfg.n_particles, shard.start, shard.stop, cfg.device),
            main=main and (shard is None or shard.rank == 0),
            elapsed=time.perf_counter() - fit_start,  # the reference's fit is part of the run (resume: restored)
        )
        state = self._start(session, resume, used, fit_evals)
        loop = Loop(session, self._stage, lambda st: not bool((st.t < 1.0).any()), self.schedule.n_steps, unit="stage")
        state = loop.run(state, desc=f"{self.name} on {target.name}")
        return self._result(session, state, used, fit_evals)

    def _reference(
        self,
        target: Target,
        cfg: RunSettings,
        counter: EvaluationCounter,
        resume: CheckpointData | None,
        carries_counts: bool,
    ) -> tuple[GaussianReference, str, list[int]]:
        """The path's reference, how it was made (``Result.options["reference"]``) and what its fit cost.

        The cost is ``[target evaluations, gradient evaluations]`` (``Result.options["reference_evals"]``;
        they are part of the run's totals but of no stage's). A fitted reference is saved in the
        loop state's ``aux`` and taken from there on resume (not fitted again). Its evaluations go
        to ``counter`` where ``carries_counts`` (on rank 0 of a sharded run, whose ranks all fit
        the same reference: counts are summed over ranks).
        """
        if isinstance(self.reference, GaussianReference):
            return self.reference, "given", [0, 0]
        gaussian = make_reference(target, self.reference_loc, self.reference_scale)
        # "the prior": the target's own where it declares one and no Gaussian was asked for
        prior: GaussianReference = PriorReference(target) if _uses_target_prior(target, self) else gaussian
        if self.reference is None:
            return prior, _prior_name(prior, "prior"), [0, 0]
        if resume is not None:
            saved = resume.state["aux"]["reference"]
            tril = saved.get("scale_tril")
            ref: GaussianReference
            if saved.get("target_prior", False):
                ref = PriorReference(target)
            elif tril is None:
                ref = GaussianReference(target.dim, loc=saved["loc"], scale=saved["scale"])
            else:
                ref = GaussianReference(target.dim, loc=saved["loc"], scale_tril=tril)
            return ref, str(saved.get("used", self.reference)), list(saved.get("evals", [0, 0]))
        fit_counter = EvaluationCounter()
        if self.reference in ("laplace", "auto", "spread"):
            gen = torch.Generator(device=cfg.device).manual_seed(derived_seed(cfg.seed, _LAPLACE_SALT))
            if self.reference == "spread":  # widens a Gaussian: the target's prior only where it keeps it as is
                ref, used = spread_reference(target, gaussian, fit_counter, gen, cfg.dtype)
                ref = prior if ref is gaussian else ref
            elif self.reference == "auto" and not any(s.needs_grad for s in self.steps):
                ref, used = prior, "prior (auto: the steps use no gradients, the Laplace fit would)"
            elif self.reference == "auto":
                ref, used = auto_reference(target, prior, fit_counter, gen, cfg.dtype)
            else:
                fit = fit_laplace(target, prior, fit_counter, gen, dtype=cfg.dtype)
                ref, used = fit.reference, "laplace" if fit.kind == "dense" else f"laplace ({fit.kind})"
        else:
            ref, used = self._pilot(target, cfg, fit_counter), "pilot"
        used = _prior_name(ref, used)
        if carries_counts:
            counter.target_evals += fit_counter.target_evals
            counter.grad_evals += fit_counter.grad_evals
            counter.add_nonfinite(fit_counter.nonfinite)
        return ref, used, [fit_counter.target_evals, fit_counter.grad_evals]

    def _pilot(self, target: Target, cfg: RunSettings, counter: EvaluationCounter) -> GaussianReference:
        """``N(mean, cov)`` of a short run of this pipeline from the prior reference (R x n draws pooled)."""
        n = self.pilot_particles or max(64, cfg.n_particles // 4)
        pilot = Pipeline(
            self.schedule,
            self.steps,
            reference_loc=self.reference_loc,
            reference_scale=self.reference_scale,
            final_resampling="systematic",
            name=f"{self.name}-pilot",
        )
        res = pilot.run(
            target,
            n_particles=n,
            n_replicas=cfg.n_replicas,
            seed=derived_seed(cfg.seed, _PILOT_SALT),
            device=cfg.device,
            dtype=cfg.dtype,
            progress=False,
            distributed=False,
        )
        counter.target_evals += res.n_target_evals
        counter.grad_evals += res.n_grad_evals
        x = res.samples.reshape(-1, target.dim).to(torch.float64)
        mean = x.mean(0)
        cov = torch.atleast_2d(torch.cov(x.T))
        var = torch.diagonal(cov).clamp_min(1e-300)
        tril, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0 or not bool(torch.isfinite(tril).all()):
            warnings.warn("pilot reference: the pilot covariance is singular; using its diagonal", stacklevel=4)
            return GaussianReference(target.dim, loc=mean.cpu(), scale=var.sqrt().cpu())
        return GaussianReference(target.dim, loc=mean.cpu(), scale_tril=tril.cpu())

    def _start(self, session: Session, resume: CheckpointData | None, used: str, fit_evals: list[int]) -> LoopState:
        """The state at t = 0 (R x N draws from the reference, each step's ``init``), or the saved one.

        A fitted reference is kept in ``aux["reference"]`` with how it was made, ``used``, and the
        fit's evaluations (so a checkpoint carries all three).
        """
        aux = _reference_aux(session.path.reference, used, fit_evals) if isinstance(self.reference, str) else {}
        if resume is None:
            particles = initial_particles(
                session.path, session.cfg, session.generator, session.needs_grad, session.streams
            )
            t = torch.zeros(session.cfg.n_replicas, dtype=torch.float64, device=particles.x.device)
            ctx = session.context(t, t, 0)
            states = tuple(s.init(particles, ctx) for s in self.steps)
            return LoopState(k=0, t=t, particles=particles, weighted=particles, step_states=states, aux=aux)
        # Fresh states of the right types from each step's init, on a scratch path and generator
        # (neither the counts nor the random stream see them), poured full of the saved values.
        t = resume.state["t"].to(session.cfg.device)
        template = saved_particles(resume.state["particles"], session.cfg.device, session.shard)
        ctx = session.scratch_context(t, int(resume.state["k"]))
        states = tuple(s.init(template, ctx) for s in self.steps)
        template_state = LoopState(k=0, t=t, particles=template, weighted=template, step_states=states, aux=aux)
        return session.restore(resume, template_state)

    def _stage(self, state: LoopState, session: Session) -> LoopState:
        """One annealing stage from t to t': move, reweight, correct, record."""
        seen = attrs.evolve(session.path.counter)
        particles, t, shard = state.particles, state.t, session.shard
        view = particles if shard is None else _global_view(particles, shard, self.schedule.uses_particles)
        t_next = _checked_times(self.schedule, self.schedule.next_time(state.k, t, view, session.path), t, particles)
        k = state.k + 1
        ctx = session.context(t_next, t, k)
        info: dict[str, Tensor] = {}
        n_tr = len(self.transports)

        # move
        moved, transport_states, increments = apply_steps(
            self.transports, particles, state.step_states[:n_tr], ctx, info
        )
        extra = torch.zeros_like(particles.log_weights)
        for step, inc in zip(self.transports, increments):
            if inc is not None:
                extra = extra + _checked_increment(step, inc, extra)
        # reweight
        inc = session.path.log_weight_increment(particles.evaluation, t, moved.evaluation, t_next) + extra
        if shard is None:
            particles, dlogz = reweight(moved, inc, k, t_next)
            ess = particles.ess()
        else:
            particles, dlogz, full_log_weights = _reweight_sharded(moved, inc, k, t_next, shard)
            ess = ess_of(full_log_weights)
        weighted = _keep_where((t < 1.0) & (t_next == 1.0), particles, state.weighted)
        # correct
        particles, corrector_states, _ = apply_steps(self.correctors, particles, state.step_states[n_tr:], ctx, info)
        # record
        record(session, seen, k, t_next, ess, dlogz, info)
        return LoopState(
            k=k,
            t=t_next,
            particles=particles,
            weighted=weighted,
            step_states=(*transport_states, *corrector_states),
            aux=state.aux,
        )

    def _result(self, session: Session, state: LoopState, reference: str, fit_evals: list[int]) -> Result:
        """Package the final state; ``state.weighted`` is the state right after the last reweighting.

        A sharded run gathers positions and weights of all N particles on every rank.
        """
        particles, weighted, shard, counter = state.particles, state.weighted, session.shard, session.path.counter
        logw, samples = particles.log_weights, particles.x
        weighted_logw, weighted_x = weighted.log_weights, weighted.x
        counts = [counter.target_evals, counter.grad_evals, counter.nonfinite]
        if shard is not None:
            logw, samples = shard.gather(logw, "log weights"), shard.gather(samples, "positions")
            weighted_logw, weighted_x = (
                shard.gather(weighted_logw, "log weights"),
                shard.gather(weighted_x, "positions"),
            )
            counts = shard.sum_ints(counts)
        uniform = (logw == logw[:, :1]).all(-1)
        if not bool(uniform.all()):  # resample only the replicas whose weights are still unequal
            keep = torch.arange(logw.shape[1], device=logw.device).expand_as(logw)
            samples = gather_particles(
                samples, torch.where(uniform[:, None], keep, self.final_scheme(logw, session.generator))
            )
        return Result.from_run(
            session.target,
            session.cfg,
            self.name,
            samples=samples,
            evals=(counts[0], counts[1], counts[2]),
            log_weights=weighted_logw + math.log(weighted_logw.shape[1]) + weighted.log_Z[:, None],
            weighted_samples=weighted_x,
            log_Z_per_replica=particles.log_Z,
            steps=session.stats,
            wall_time=session.wall_time,
            options={**self.options, "reference": reference, "reference_evals": list(fit_evals)},
        )

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, schedule={self.schedule!r}, steps={self.steps!r})"


def _uses_target_prior(target: Target, pipeline: Pipeline) -> bool:
    """Whether "the prior" of ``pipeline``'s path is the target's own (:class:`PriorReference`): the
    target declares one and neither ``reference_loc`` nor ``reference_scale`` asks for a Gaussian."""
    return target.has_prior and pipeline.reference_loc is None and pipeline.reference_scale is None


def _prior_name(reference: GaussianReference, used: str) -> str:
    """``used`` (``"prior ..."``, as the fits word it) as ``"target prior ..."`` for the target's own prior."""
    return f"target {used}" if isinstance(reference, PriorReference) and used.startswith("prior") else used


def _reference_aux(reference: GaussianReference, used: str, evals: list[int]) -> dict[str, Any]:
    """A fitted reference as checkpointable data: ``{"reference": {loc, scale[, scale_tril], used, evals}}``.

    The target's prior is saved as a flag (``target_prior``), and rebuilt from the target on resume.
    """
    saved: dict[str, Any] = {
        "loc": torch.as_tensor(reference.loc, dtype=torch.float64),
        "scale": torch.as_tensor(reference.scale, dtype=torch.float64),
        "used": used,
        "evals": [int(e) for e in evals],
        "target_prior": isinstance(reference, PriorReference),
    }
    if reference.scale_tril is not None:
        saved["scale_tril"] = torch.as_tensor(reference.scale_tril, dtype=torch.float64)
    return {"reference": saved}


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
    return Particles(
        x=x, log_weights=log_w, log_Z=particles.log_Z, evaluation=PathEvaluation(full[..., 0], full[..., 1])
    )


def _checked_times(schedule: Schedule, t_next: Any, t: Tensor, particles: Particles) -> Tensor:
    """The schedule's next times as ``(R,)`` float64; a float applies to every replica."""
    try:
        out = as_times(t_next, particles)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise RunError(f"schedule {schedule!r} returned {t_next!r}; expected one time per replica: {exc}") from None
    if bool(((out < t) | (out > 1) | torch.isnan(out)).any()):
        raise RunError(
            f"schedule {schedule!r} returned times {out.tolist()} after {t.tolist()}; times must increase to 1"
        )
    return out


def _checked_increment(step: Step, increment: Tensor, like: Tensor) -> Tensor:
    if not isinstance(increment, Tensor) or increment.shape != like.shape:
        shape = tuple(increment.shape) if isinstance(increment, Tensor) else type(increment).__name__
        raise RunError(
            f"transport {step!r} returned a log-weight increment of shape {shape}; expected {tuple(like.shape)}"
        )
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
