"""Plain MCMC chains (methods ``mala`` and ``hmc``): R chains x N draws at t = 1.

Warm-up (Stan's, Stan Reference Manual, "HMC algorithm parameters: automatic parameter
tuning"): a fast initial buffer (75 iterations) where only the step size adapts, then slow
windows of 25, 50, 100, ... iterations (the last one stretched to the terminal buffer) at the
end of each of which the metric is set to the regularized covariance of the window's draws,
pooled over the R chains, and the step-size adaptation restarts; a terminal buffer (50) adapts
the step size to the final metric. Step sizes adapt by dual averaging (Hoffman & Gelman 2014):
per chain toward the kernel's target acceptance with ``trajectory="fixed"``; with ``hmc``'s
default ``trajectory="chees"`` one step size for all chains, toward a harmonic-mean acceptance of
0.9, while ChEES adapts the trajectory length (:mod:`sampler_plugins.mcmc.chees`). Short
warm-ups scale the buffers as Stan does (15% / 75% / 10%).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

import attrs
import torch
from torch import Tensor

from sampler.ext import (
    Capabilities,
    Checkpoint,
    CheckpointData,
    ConfigurationError,
    EvaluationCounter,
    GeometricPath,
    Loop,
    LoopState,
    Particles,
    PathEvaluation,
    Result,
    RunSettings,
    Session,
    StepBlock,
    StepContext,
    apply_steps,
    as_target,
    check_positive_int,
    corrector,
    initial_particles,
    make_reference,
    record,
    reopen,
)
from sampler_plugins.mcmc.chees import ChEES, chees_gradient, halton
from sampler_plugins.mcmc.compiled import CompiledStep
from sampler_plugins.mcmc.fused import (
    SEGMENT_ITERATIONS,
    SEGMENTS,
    chees_warmup_segment,
    compiled_loop,
    mark_segment_length,
)
from sampler_plugins.mcmc.kernels import (
    HMC,
    KernelState,
    MetropolisCorrector,
    _step_constants,
    auto_metric,
    dual_averaging_step,
    regularized_metric,
    whiten,
)


class _Tunable(Protocol):
    """A Metropolis corrector (any the chains accept): its step-size tuning aims at ``target_acceptance``."""

    target_acceptance: float


#: Default trajectory-length jitter of ``hmc`` chains with an adapted metric (see :class:`MCMCChains`).
HMC_CHAIN_JITTER = 0.5

#: Trajectory schemes of ``hmc`` chains: ChEES-adapted lengths, or ``n_leapfrog`` steps (with ``jitter``).
TRAJECTORIES = ("chees", "fixed")

#: The harmonic-mean acceptance ChEES chains tune their shared step size to by default. The
#: paper's 0.651 (optimal on Gaussians) leaves the chains short of the centered eight schools'
#: funnel neck and the GP's narrow regions (posteriors suite: 7 of 10 posteriors on every seed
#: at 0.651, all 10 at 0.9, for 1.1-2.5x the gradients; docs/posteriors.md).
CHEES_TARGET_ACCEPTANCE = 0.9

#: Memory of the running posterior-mean estimate ChEES centres at: about 1 / rate iterations.
CHEES_CENTER_RATE = 0.02


class MCMCChains:
    """Run ``n_replicas`` independent chains of a kernel on the target itself.

    Chains start from the target's default reference. During ``n_warmup`` iterations the step
    size of each chain is tuned by dual averaging (Hoffman & Gelman 2014) toward the kernel's
    target acceptance and, with a ``diag`` or ``dense`` metric, the metric is set at the end of
    Stan's windows from the draws of all chains (module docstring); then both are frozen and
    ``n_particles`` draws are kept per chain, one every ``thin`` iterations. The result has
    ``samples`` ``(chains, draws, d)`` and no log Z.

    Args:
        kernel: ``mala`` or ``hmc`` (any registered Metropolis corrector works).
        n_warmup: tuning iterations, discarded.
        thin: keep one draw every ``thin`` iterations.
        reference_loc, reference_scale: where the chains start (default: the target's reference).
        metric: ``"identity"``, ``"diag"``, ``"dense"`` or ``"auto"`` (:func:`auto_metric`:
            dense up to d = 100, diagonal above; ``Result.options["metric_used"]`` says which):
            the mass matrix the warm-up adapts (identity: only the step size adapts). With an
            adapted metric ``hmc`` chains jitter their trajectory lengths by default
            (``jitter=0.5``, :data:`HMC_CHAIN_JITTER`): a fixed length resonates with the
            whitened posterior's period. The default is ``"auto"`` for ``hmc`` chains and
            ``"diag"`` for ``mala`` chains (:func:`build_chains`).
        trajectory: ``"chees"`` (the default for ``hmc``; ``hmc`` only): one step size shared
            by the chains, tuned by dual averaging of the harmonic mean of their acceptance
            probabilities toward 0.9 (``target_acceptance``), and the trajectory length adapted
            by ChEES (:mod:`~sampler_plugins.mcmc.chees`), starting at ``n_leapfrog`` initial
            steps, with at most ``max_leapfrog`` steps per iteration.
            ``"fixed"`` (the only one for other kernels): ``n_leapfrog`` steps (jittered by
            ``jitter``) and per-chain step sizes.
        max_leapfrog: the cap on leapfrog steps per iteration with ``trajectory="chees"``.
        **kernel_options: passed to the kernel (``step_size``, ``target_acceptance``,
            ``n_leapfrog`` and ``jitter`` for HMC).
    """

    #: Chains checkpoint and resume (they do not shard: every process would run all chains); their
    #: draws are sequential, so the CPU thread rule counts only the R current points.
    capabilities = Capabilities(checkpoint=True, sequential_draws=True)

    def __init__(
        self,
        kernel: str = "mala",
        n_warmup: int = 1000,
        thin: int = 1,
        reference_loc=None,
        reference_scale=None,
        metric: str = "diag",
        trajectory: str | None = None,
        max_leapfrog: int = 100,
        **kernel_options: Any,
    ):
        if isinstance(n_warmup, bool) or not isinstance(n_warmup, int) or n_warmup < 0:
            raise ConfigurationError(f"n_warmup must be a non-negative integer, got {n_warmup!r}")
        check_positive_int("thin", thin)
        check_positive_int("max_leapfrog", max_leapfrog)
        if trajectory is None:
            trajectory = "chees" if kernel == "hmc" else "fixed"
        if trajectory not in TRAJECTORIES:
            raise ConfigurationError(f"trajectory must be one of {', '.join(TRAJECTORIES)}, got {trajectory!r}")
        if trajectory == "chees" and kernel != "hmc":
            raise ConfigurationError(f"trajectory='chees' adapts HMC's trajectory length; kernel {kernel!r} has none")
        if trajectory == "chees" and "jitter" in kernel_options:
            raise ConfigurationError(
                "jitter applies to trajectory='fixed'; ChEES jitters each length over (0, T] itself"
            )
        if trajectory == "chees":
            kernel_options.setdefault("target_acceptance", CHEES_TARGET_ACCEPTANCE)
        if kernel == "hmc" and metric != "identity" and trajectory == "fixed":
            # With an adapted metric every direction of a roughly Gaussian posterior has a period
            # near 2 pi in whitened units, and the tuned eps * n_leapfrog can land on it: chains
            # that return to where they started (R-hat 1.1-1.3 on a 3D Gaussian in 8 of 12
            # seeds). Trajectory lengths spread over n_leapfrog * [0.5, 1.5] break the resonance.
            kernel_options.setdefault("jitter", HMC_CHAIN_JITTER)
        self.kernel_name = kernel
        self.kernel_options = kernel_options
        # with "auto" this kernel stands for the kind until a run resolves the metric (_resolved)
        self.kernel = corrector(
            kernel, n_steps=1, adapt=False, metric="diag" if metric == "auto" else metric, **kernel_options
        )
        self.metric = metric
        self.trajectory = trajectory
        self.max_leapfrog = max_leapfrog
        self.n_warmup = n_warmup
        self.thin = thin
        self.windows = warmup_windows(n_warmup) if metric != "identity" else []
        self.reference_loc = reference_loc
        self.reference_scale = reference_scale
        self._fused: CompiledStep | None = None
        self._chees_warmup: CompiledStep | None = None
        self.options = dict(kernel=kernel, n_warmup=n_warmup, thin=thin, metric=metric, **kernel_options)
        if kernel == "hmc":
            self.options.update(trajectory=trajectory, max_leapfrog=max_leapfrog)

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
        opened = reopen(checkpoint, target, [type(self.kernel).__name__], progress, checkpoint_every, self.options)
        return self._run(opened.target, opened.cfg, opened.checkpoint, opened.data)

    def _resolved(self, dim: int) -> MCMCChains:
        """These chains with ``metric="auto"`` resolved for ``dim`` dimensions (options kept as given)."""
        chains = MCMCChains(
            self.kernel_name,
            self.n_warmup,
            self.thin,
            self.reference_loc,
            self.reference_scale,
            metric=auto_metric(dim),
            trajectory=self.trajectory,
            max_leapfrog=self.max_leapfrog,
            **self.kernel_options,
        )
        chains.options = self.options  # checkpoints compare the options as the user gave them
        return chains

    def _run(self, target, cfg: RunSettings, ckpt: Checkpoint | None, resume: CheckpointData | None) -> Result:
        if self.metric == "auto":
            return self._resolved(target.dim)._run(target, cfg, ckpt, resume)
        reference = make_reference(target, self.reference_loc, self.reference_scale)
        session = Session(
            name=self.kernel_name,
            target=target,
            cfg=cfg,
            path=GeometricPath(reference, target, EvaluationCounter()),
            generator=cfg.generator(),
            needs_grad=self.kernel.needs_grad,
            checkpoint=ckpt,
            steps=[type(self.kernel).__name__],
            options=self.options,
        )
        state = self._start(session, resume)
        total = self.n_warmup + cfg.n_particles * self.thin
        segment = self._segment_step() if state.particles.x.device.type == "cpu" else None
        if segment is not None:
            iterate = lambda st, ses: self._segment(st, ses, segment, total)  # noqa: E731
        else:
            iterate = self._iteration
        loop = Loop(session, iterate, lambda st: st.k >= total, total, unit="iteration", annealing=False)
        state = loop.run(state, desc=f"{self.kernel_name} chains on {target.name}")
        draws = state.aux["draws"]
        return Result.from_run(
            target,
            cfg,
            self.kernel_name,
            samples=draws,
            evals=session.path.counter,
            kind="mcmc",
            steps=session.stats,
            wall_time=session.wall_time,
            options={**self.options, "metric_used": self.metric},
        )

    def _start(self, session: Session, resume: CheckpointData | None) -> LoopState:
        """One draw per chain from the reference, the kernel's state and a fresh tuner; or the saved state.

        On resume the fresh state is only the template the saved values are poured into: its
        draw from the reference and its evaluations are replaced by the saved ones.
        """
        cfg = session.cfg
        particles = initial_particles(
            session.path, attrs.evolve(cfg, n_particles=1), session.generator, self.kernel.needs_grad
        )
        one = torch.ones(cfg.n_replicas, dtype=torch.float64, device=particles.x.device)
        kstate = self.kernel.init(particles, session.context(one, one, 0))
        draws = torch.empty(
            cfg.n_replicas, cfg.n_particles, session.target.dim, dtype=cfg.dtype, device=particles.x.device
        )
        target_acceptance = cast(_Tunable, self.kernel).target_acceptance
        aux: dict[str, Any] = {"tuner": DualAveraging.start(kstate.step_size, target_acceptance), "draws": draws}
        if self.windows:
            aux["window"] = WindowMoments.start(particles.x[:, 0], self.metric)
        if self.trajectory == "chees":
            aux["chees"] = ChEES.start(cast(HMC, self.kernel).n_leapfrog * float(kstate.step_size.mean()))
            aux["chees_center"] = particles.x[:, 0].to(torch.float64).mean(0)
        state = LoopState(k=0, t=one, particles=particles, weighted=particles, step_states=(kstate,), aux=aux)
        return state if resume is None else session.restore(resume, state)

    def _iteration(self, state: LoopState, session: Session) -> LoopState:
        """One iteration: the kernel moves (correct), the tuner adapts during warm-up, the draw is kept (record)."""
        seen = attrs.evolve(session.path.counter)
        ctx = session.context(state.t, state.t, state.k + 1)
        info: dict[str, torch.Tensor] = {}
        (kstate,), tuner, draws = state.step_states, state.aux["tuner"], state.aux["draws"]
        it, aux = state.k, dict(state.aux)
        if self.trajectory == "chees":
            particles, tuned = self._chees_transition(state.particles, kstate, ctx, aux, info)
        else:
            particles, _, _ = apply_steps([self.kernel], state.particles, [kstate], ctx, info)
            tuned = info["acceptance"]
        acc = info["acceptance"]
        if it < self.n_warmup - 1:
            tuner = tuner.update(tuned)
            kstate = KernelState(tuner.step_size, kstate.metric)
        elif it == self.n_warmup - 1:  # the last warm-up iteration freezes the averaged step sizes
            kstate = KernelState(tuner.final(), kstate.metric)
        if self.windows:
            x = particles.x[:, 0]
            kstate, tuner, aux["window"] = self._adapt_metric(it, x, x, kstate, tuner, aux["window"])
        kept = it - self.n_warmup
        if kept >= 0 and (kept + 1) % self.thin == 0:
            draws[:, kept // self.thin] = particles.x[:, 0]
        info = {
            **info,
            "acceptance": acc,
            "step_size": kstate.step_size,
            "warmup": torch.full_like(acc, float(it < self.n_warmup)),
        }
        record(session, seen, it + 1, state.t, torch.ones_like(acc), torch.zeros_like(acc), info)
        aux.update(tuner=tuner, draws=draws)
        return attrs.evolve(
            state,
            k=it + 1,
            particles=particles,
            weighted=particles,
            step_states=(kstate,),
            aux=aux,
        )

    def _segment_step(self) -> CompiledStep | None:
        """The compiled segment these chains run in (:mod:`~sampler_plugins.mcmc.fused`), or ``None``.

        Chains fuse their iterations with ``compile=True`` and no per-particle step jitter, for
        HMC and MALA, on the CPU (the caller checks the device: fused loops are not measured on
        GPUs). ChEES chains run each trajectory as a loop of its own length; during warm-up
        :meth:`_segment` runs their own segment, which adapts the length too.
        """
        kernel = cast(MetropolisCorrector, self.kernel)
        kind = "hmc-loop" if self.trajectory == "chees" else kernel.fused_kind()
        if kind is None or not kernel.compile or kernel.step_jitter:
            return None
        if self._fused is None:
            self._fused = compiled_loop(SEGMENTS[kind])
        return None if self._fused.failed else self._fused

    def _segment_end(self, it: int, total: int) -> int:
        """Where the segment starting at iteration ``it`` ends (exclusive).

        At the next window start or end, the end of warm-up, or :data:`SEGMENT_ITERATIONS`
        iterations on: the same ends whether or not a run checkpoints, and after a resume.
        """
        ends = [total, it + SEGMENT_ITERATIONS, self.n_warmup, *(i for w in self.windows for i in w)]
        return min(e for e in ends if e > it)

    def _segment(self, state: LoopState, session: Session, segment: CompiledStep, total: int) -> LoopState:
        """Iterations ``state.k`` to the segment's end in one compiled call, then the host's share.

        The same iterations as :meth:`_iteration` (module :mod:`~sampler_plugins.mcmc.fused`):
        the draws, the tuner, the metric windows (and ChEES's length during warm-up) and the
        statistics of every iteration, with the evaluations each made: one :class:`StepBlock`,
        the :class:`StepStats` rows of :meth:`_iteration` stacked. Falls back to one eager
        iteration if the segment could not be compiled.
        """
        chees = self.trajectory == "chees"
        warming = chees and state.k < self.n_warmup
        if warming:  # ChEES adapts its length: its own segment until warm-up ends
            if self._chees_warmup is None:
                self._chees_warmup = compiled_loop(chees_warmup_segment)
            segment = self._chees_warmup
        if segment.failed:  # compilation failed (warned): on eagerly
            return self._iteration(state, session)
        it = state.k
        end = self._segment_end(it, total)
        k = end - it
        particles, (kstate,), tuner, aux = state.particles, state.step_states, state.aux["tuner"], dict(state.aux)
        x, ev = particles.x, particles.evaluation
        if not ev.has_grad:
            ev = session.path.evaluate(x, grad=True)
        r, d = x.shape[0], x.shape[-1]
        ctx = session.context(state.t, state.t, it + 1)
        drawn_from = session.generator.get_state()  # a failed compilation gives the draws back
        # the segment's random numbers, momenta (noise) then uniforms, in the layout the scan
        # slices (a fresh tensor: a permuted one of one iteration would keep other strides)
        width = max(k, 2)  # one iteration is padded with an inactive one (module fused)
        noise = x.new_zeros((width, r, 1, d))
        noise[:k] = ctx.randn((r, 1, k, d), x.dtype).permute(2, 0, 1, 3)
        u = torch.zeros((width, r, 1), dtype=torch.float64, device=x.device)
        u[:k] = ctx.rand((r, 1, k), torch.float64).permute(2, 0, 1)
        active = torch.arange(width, device=x.device) < k
        adapting = active & (torch.arange(it, it + width, device=x.device) < self.n_warmup - 1)
        tuning = (
            tuner.mu,
            tuner.h_bar,
            kstate.step_size.log(),  # the tuner's during warm-up; the frozen average after it
            tuner.log_eps_bar,
            tuner.mu.new_tensor(float(tuner.m)),
            tuner.mu.new_tensor([tuner.target, tuner.gamma, tuner.t0, tuner.kappa]),
        )
        parts = (ev.log_ref, ev.log_target, ev.grad_ref, ev.grad_target)
        times, log_norm = _step_constants(session.path, state.t, x)
        if warming:
            state_c = aux["chees"]
            iterations = range(it, it + width)
            jitter = tuner.mu.new_tensor([halton(j + 1) for j in iterations])
            rate = tuner.mu.new_tensor([max(1.0 / (j + 1), CHEES_CENTER_RATE) for j in iterations])
            mark_segment_length(noise, u, jitter, rate, adapting, active)
            chees_state = tuner.mu.new_tensor([state_c.log_length, state_c.second_moment, float(state_c.m)])
            chees_inputs = (tuning, chees_state, aux["chees_center"], noise, u, jitter, rate, adapting, active)
            out = segment(session.path, x, parts, *chees_inputs, kstate.metric, times, log_norm, self.max_leapfrog)
        else:
            kernel = cast(MetropolisCorrector, self.kernel)
            if chees:  # the frozen length, jittered per iteration; the loop's graph takes any length
                eps = float(kstate.step_size.mean())
                steps = [aux["chees"].n_leapfrog(j, eps, self.max_leapfrog)[0] for j in range(it, end)]
                longest = 0
            else:
                steps, longest = kernel.sweep_lengths(it + 1, k), kernel.longest_sweep()
            lengths = torch.tensor(steps + [0] * (width - k), dtype=torch.int64, device=x.device)
            mark_segment_length(noise, u, lengths, adapting, active)
            inputs = (tuning, noise, u, lengths, adapting, active)
            out = segment(session.path, x, parts, *inputs, kstate.metric, times, log_norm, longest)
        if out is None:  # compilation failed (warned): this iteration and the next ones eagerly
            session.generator.set_state(drawn_from)
            return self._iteration(state, session)
        x1, ev1 = out[0], PathEvaluation(*out[1:5])
        h_bar, log_eps, log_eps_bar, m = out[5:9]
        if warming:
            chees_out, aux["chees_center"] = out[9], out[10]
            drawn, acceptance, step_size, nonfinite, n_out, length_out = (v[:k] for v in out[11:17])
            steps, lengths_used = n_out.tolist(), length_out.tolist()
            aux["chees"] = ChEES(*(float(v) for v in chees_out[:2]), int(chees_out[2]))
        else:
            drawn, acceptance, step_size, nonfinite = (v[:k] for v in out[9:13])
            lengths_used = [aux["chees"].length if chees else None] * k
        session.path.count(x1, True, nonfinite.sum(), times=sum(steps))
        tuner = attrs.evolve(tuner, h_bar=h_bar, log_eps=log_eps, log_eps_bar=log_eps_bar, m=int(m))
        if it < self.n_warmup - 1:  # the segment adapted the step size
            kstate = KernelState(tuner.step_size, kstate.metric)
        if it < self.n_warmup <= end:  # the last warm-up iteration freezes the averaged step sizes
            kstate = KernelState(tuner.final(), kstate.metric)
            step_size[self.n_warmup - 1 - it] = kstate.step_size
        if self.windows:
            kstate, tuner, aux["window"] = self._adapt_metric(
                end - 1, drawn.reshape(-1, d), drawn[-1], kstate, tuner, aux["window"]
            )
        draws = aux["draws"]
        kept = torch.arange(it, end) - self.n_warmup
        keep = (kept >= 0) & ((kept + 1) % self.thin == 0)
        if bool(keep.any()):
            draws[:, kept[keep] // self.thin] = drawn[keep.to(drawn.device)].transpose(0, 1)
        # one StepBlock: the rows _iteration would record, stacked
        shape = acceptance.shape  # (k, R)
        ones, zeros = acceptance.new_ones(()).expand(shape), acceptance.new_zeros(()).expand(shape)
        warm = torch.arange(it, end, device=acceptance.device) < self.n_warmup
        warmup = warm.to(acceptance.dtype)[:, None].expand(shape)
        info = {"acceptance": acceptance, "step_size": step_size, "warmup": warmup}
        if chees:  # as _chees_transition records
            info.update(
                n_leapfrog=acceptance.new_tensor(steps)[:, None].expand(shape),
                trajectory_length=acceptance.new_tensor(lengths_used)[:, None].expand(shape),
            )
        evals = r * torch.tensor(steps, dtype=torch.int64)
        t = state.t.expand(k, *state.t.shape)
        session.stats.append(StepBlock(it + 1, t, ones, zeros, evals, evals, nonfinite.to(torch.int64), info))
        particles = attrs.evolve(particles, x=x1, evaluation=ev1)
        aux.update(tuner=tuner, draws=draws)
        return attrs.evolve(state, k=end, particles=particles, weighted=particles, step_states=(kstate,), aux=aux)

    def _chees_transition(
        self, particles: Particles, kstate: KernelState, ctx: StepContext, aux: dict[str, Any], info: dict[str, Tensor]
    ) -> tuple[Particles, Tensor]:
        """One HMC transition of every chain with the ChEES length; during warm-up, the ChEES update.

        Returns the moved chains and the acceptance statistic the shared step size tunes on: the
        harmonic mean over the chains of their acceptance probabilities, divergent transitions
        included (BlackJAX leaves them out, which leaves chains that diverge from the start
        stuck: docs/methods.md), expanded to ``(R,)``. Fills ``info`` with the chains'
        ``acceptance``, ``n_leapfrog`` and ``trajectory_length``, and ``aux["chees"]`` and
        ``aux["chees_center"]``.
        """
        kernel, chees, k = cast(HMC, self.kernel), aux["chees"], ctx.step - 1
        x, ev = particles.x, particles.evaluation
        eps = kstate.step_size
        n, h = chees.n_leapfrog(k, float(eps.mean()), self.max_leapfrog)
        options: dict[str, Any] = {"n_leapfrog": n}
        if kstate.metric is not None:
            options["metric"] = kstate.metric
        x1, ev1, log_alpha, prop = kernel.transition(x, ev, kernel.particle_steps(eps, x, ctx), ctx, **options)
        alpha = log_alpha.exp()[:, 0]
        if k < self.n_warmup and prop.momentum is not None:
            # the posterior mean's estimate: a running mean of the chains' positions, pooled (the
            # mean over the last ~50 iterations once there are that many), so that few chains, even
            # one, centre the criterion where the chains' own mean would be noise
            rate = max(1.0 / (k + 1), CHEES_CENTER_RATE)
            center = aux["chees_center"]
            center = center + rate * (x1[:, 0].to(torch.float64).mean(0) - center)
            aux["chees_center"] = center
            z0, z1, zc = (whiten(v, kstate.metric)[:, 0] for v in (x, prop.x, center.to(x.dtype).expand_as(x)))
            grad = chees_gradient(z0, z1, prop.momentum[:, 0], log_alpha[:, 0], h * chees.length, zc[0])
            aux["chees"] = chees.update(float(grad))
        harmonic = 1.0 / (1.0 / alpha.clamp(min=1e-300)).mean()
        info.update(
            acceptance=alpha,
            n_leapfrog=torch.full_like(alpha, float(n)),
            trajectory_length=torch.full_like(alpha, chees.length),
        )
        return attrs.evolve(particles, x=x1, evaluation=ev1), harmonic.expand_as(alpha)

    def _adapt_metric(
        self,
        it: int,
        drawn: torch.Tensor,
        x: torch.Tensor,
        kstate: KernelState,
        tuner: DualAveraging,
        window: WindowMoments,
    ) -> tuple[KernelState, DualAveraging, WindowMoments]:
        """Windowed metric adaptation after iteration ``it`` with chain positions ``x`` ``(R, d)``.

        Inside a window the draws ``drawn`` ``(M, d)`` are accumulated (``x``, or a fused
        segment's iterations, all in the window of ``it``); at its end the metric becomes their
        pooled, regularized covariance, the step sizes restart at the kernel's whitened default
        (dual averaging restarted there), and a fresh window starts at the chains' current mean.
        """
        for start, end in self.windows:
            if start <= it < end:
                window = window.add(drawn)
                if it == end - 1:
                    metric = window.metric(self.metric).to(x.dtype)
                    r = x.shape[0]
                    shape = (r, *metric.shape)
                    kernel = cast(MetropolisCorrector, self.kernel)
                    eps = kernel.default_step_size(1.0, x.shape[-1])
                    step = torch.full((r,), eps, dtype=torch.float64, device=x.device)
                    tuner = DualAveraging.start(step, tuner.target)
                    kstate = KernelState(tuner.step_size, metric.expand(shape).clone())
                    window = WindowMoments.start(x, self.metric)
                break
        return kstate, tuner, window


def warmup_windows(n_warmup: int) -> list[tuple[int, int]]:
    """Stan's slow adaptation windows ``[(start, end), ...]`` (iteration indices, end exclusive).

    Initial buffer 75, first window 25 (doubling), terminal buffer 50; when they do not fit,
    15% / 75% / 10% of ``n_warmup``; no windows below 20 warm-up iterations (as Stan).
    """
    if n_warmup < 20:
        return []
    init, base, term = 75, 25, 50
    if init + base + term > n_warmup:
        init, term = int(0.15 * n_warmup), int(0.1 * n_warmup)
        base = n_warmup - init - term
    windows, start, size, last = [], init, base, n_warmup - term
    while start < last:
        end = start + size
        if end + 2 * size > last:  # the next window would not fit: stretch this one
            end = last
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


@attrs.frozen
class WindowMoments:
    """Running sums of one adaptation window's draws, pooled over chains (float64).

    Attributes:
        count: ``()`` draws so far (chains x iterations).
        shift: ``(d,)`` the chains' mean at the window's start (sums are about it, against
            cancellation when the scales are small next to the location).
        total: ``(d,)`` sum of ``x - shift``.
        squares: ``(d,)`` (diag) or ``(d, d)`` (dense) sum of ``(x - shift)`` squares / outer products.
    """

    count: torch.Tensor
    shift: torch.Tensor
    total: torch.Tensor
    squares: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor, kind: str) -> WindowMoments:
        """An empty window centred at the mean of ``x`` ``(R, d)``."""
        x64 = x.to(torch.float64)
        d = x.shape[-1]
        squares = x64.new_zeros((d,) if kind == "diag" else (d, d))
        return cls(x64.new_zeros(()), x64.mean(0), x64.new_zeros(d), squares)

    def add(self, x: torch.Tensor) -> WindowMoments:
        """The window with the draws ``x`` ``(M, d)`` added (the chains' positions, of one or more iterations)."""
        c = x.to(torch.float64) - self.shift
        sq = (c**2).sum(0) if self.squares.ndim == 1 else c.T @ c
        return WindowMoments(self.count + c.shape[0], self.shift, self.total + c.sum(0), self.squares + sq)

    def metric(self, kind: str) -> torch.Tensor:
        """The regularized metric factor of the window's sample covariance: ``(d,)`` or ``(d, d)``."""
        n = self.count
        mean = self.total / n
        if kind == "diag":
            second = (self.squares - n * mean**2) / (n - 1)
        else:
            second = (self.squares - n * torch.outer(mean, mean)) / (n - 1)
        return regularized_metric(second, n, kind)


@attrs.frozen
class DualAveraging:
    """Dual-averaging step-size tuning per chain (Nesterov; Hoffman & Gelman 2014, Alg. 5), as a frozen state.

    ``update(acceptance)`` returns the next state, whose :attr:`step_size` the next iteration
    uses; ``final()`` the averaged step sizes to freeze after warm-up.

    Attributes:
        mu: ``(R,)`` log of 10x the initial step sizes (the point the iterates shrink toward).
        h_bar: ``(R,)`` running mean of ``target - acceptance``.
        log_eps: ``(R,)`` log step sizes of the next iteration.
        log_eps_bar: ``(R,)`` their weighted running average.
        m: updates so far.
        target, gamma, t0, kappa: the target acceptance and the scheme's constants.
    """

    mu: torch.Tensor
    h_bar: torch.Tensor
    log_eps: torch.Tensor
    log_eps_bar: torch.Tensor
    m: int = 0
    target: float = 0.5
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75

    @classmethod
    def start(cls, step_size: torch.Tensor, target: float) -> DualAveraging:
        """The state before the first update, from the initial step sizes ``(R,)``."""
        return cls(
            mu=torch.log(10 * step_size),
            h_bar=torch.zeros_like(step_size),
            log_eps=torch.log(step_size),
            log_eps_bar=torch.log(step_size),
            target=target,
        )

    @property
    def step_size(self) -> torch.Tensor:
        """The step sizes ``(R,)`` of the next iteration."""
        return self.log_eps.exp()

    def update(self, acceptance: torch.Tensor) -> DualAveraging:
        """The state after one iteration with acceptance ``(R,)``."""
        m = self.m + 1
        h_bar, log_eps, log_eps_bar = dual_averaging_step(
            self.mu, self.h_bar, self.log_eps_bar, acceptance, m, self.target, self.gamma, self.t0, self.kappa
        )
        return attrs.evolve(self, h_bar=h_bar, log_eps=log_eps, log_eps_bar=log_eps_bar, m=m)

    def final(self) -> torch.Tensor:
        """The averaged step sizes ``(R,)`` to keep after warm-up."""
        return self.log_eps_bar.exp()


def build_chains(kernel: str) -> Callable[..., MCMCChains]:
    """A method builder running chains of ``kernel``."""

    def build(**options: Any) -> MCMCChains:
        options.setdefault("metric", "auto" if kernel == "hmc" else "diag")
        return MCMCChains(kernel, **options)

    build.__doc__ = (
        f"{kernel.upper()} chains: R chains x N draws after warm-up (dual-averaging step size, windowed "
        f"metric; default metric {'auto: dense up to d = 100' if kernel == 'hmc' else 'diag'}"
        f"{'; ChEES-adapted trajectory lengths' if kernel == 'hmc' else ''})."
    )
    return build
