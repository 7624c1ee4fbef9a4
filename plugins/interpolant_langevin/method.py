"""The ``interpolant-langevin`` method: a pipeline of ODE stages, then optional correctors at t = 1."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from sampler.ext import (
    ConfigurationError,
    Corrector,
    Fixed,
    Particles,
    Pipeline,
    Result,
    Schedule,
    StepContext,
    StepOutput,
    check_positive_int,
    corrector,
)
from sampler_plugins.interpolant_langevin.posterior import InnerSampler
from sampler_plugins.interpolant_langevin.transport import InterpolantFlow

__all__ = ["InterpolantPipeline", "AtTarget", "VelocitySettings", "TimeGrid", "ode_times", "build_interpolant_langevin"]

_GRIDS = ("logit", "linear")


class AtTarget(Corrector):
    """Apply a corrector only in the stage that reaches ``t = 1`` (per replica); pass through before.

    The interpolant's particles follow ``p_t``, not the engine's geometric ``pi_t``, so MCMC moves
    at intermediate engine times would be wrong; at ``t = 1`` both are the target. Use it to add a
    few MALA steps on the target after the flow: ``AtTarget(sampler.corrector("mala", n_steps=10))``.
    """

    def __init__(self, inner: Corrector):
        if not isinstance(inner, Corrector):
            raise ConfigurationError(f"AtTarget wraps a sampler.Corrector, got {inner!r}")
        self.inner = inner
        self.needs_grad = inner.needs_grad

    def init(self, particles: Particles, ctx: StepContext) -> Any:
        return self.inner.init(particles, ctx)

    def apply(self, particles: Particles, state: Any, ctx: StepContext) -> StepOutput:
        """The wrapped corrector's step where ``ctx.t == 1``; the particles unchanged elsewhere."""
        done = ctx.t >= 1.0
        if not bool(done.any()):
            return StepOutput(particles, state)
        out = self.inner.apply(particles, state, ctx)
        if bool(done.all()):
            return out
        new = out.particles
        m = done[:, None]
        merged = attrs.evolve(
            new,
            x=torch.where(m[..., None], new.x, particles.x),
            log_weights=torch.where(m, new.log_weights, particles.log_weights),
            evaluation=new.evaluation.where(m.expand_as(new.log_weights), particles.evaluation),
            extras={
                k: torch.where(m.reshape(m.shape + (1,) * (v.ndim - 2)), v, particles.extras[k])
                for k, v in new.extras.items()
            },
        )
        return StepOutput(merged, out.state, out.info)

    def __repr__(self) -> str:
        return f"AtTarget({self.inner!r})"


class InterpolantPipeline(Pipeline):
    """A :class:`sampler.Pipeline` whose result carries no log Z and no importance weights.

    The interpolant flow's output density is unknown, so the engine's weights (kept equal) are
    not importance weights: the result has ``log_Z_per_replica = None``, zero ``log_weights``
    and ``kind = "flow"``; ``sampler.summary`` prints ``log Z n/a``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for step in self.transports:
            if isinstance(step, InterpolantFlow):
                step._owned = True

    def run(self, target, **kwargs: Any) -> Result:  # noqa: D102 -- as Pipeline.run
        res = super().run(target, **kwargs)
        return attrs.evolve(
            res,
            log_Z_per_replica=None,
            log_weights=torch.zeros_like(res.log_weights),
            weighted_samples=res.samples,
            kind="flow",
        )

    run.__doc__ = Pipeline.run.__doc__


def ode_times(t0: float, n_ode_steps: int, t_max: float = 0.999, grid: str = "logit") -> list[float]:
    """Engine times ``[0, T0, ..., t_max, 1]``: the initialization stage, then ``n_ode_steps`` ODE steps.

    ``grid="logit"`` spaces the ODE times uniformly in ``log(t / (1 - t))`` (smaller steps near 1,
    where the velocity changes fastest); ``"linear"`` uniformly in t. With ``T0 = 0`` there is
    no initialization stage and the ODE starts at the reference (the first step goes to
    ``min(0.05, t_max)`` on the logit grid).
    """
    return TimeGrid(t0=t0, n_ode_steps=n_ode_steps, t_max=t_max, grid=grid).times()


def _between(a: float, b: float, u: float, grid: str) -> float:
    """The point a fraction ``u`` of the way from ``a`` to ``b``, linearly or in logit space."""
    if u >= 1.0:
        return b
    if grid == "linear":
        return a + (b - a) * u
    lo, hi = math.log(a / (1 - a)), math.log(b / (1 - b))
    return 1 / (1 + math.exp(-(lo + (hi - lo) * u)))


@attrs.frozen
class TimeGrid:
    """The engine times of ``interpolant-langevin``: the ODE grid of :func:`ode_times`, or a schedule replacing it.

    Attributes:
        t0: initialization time T0 in [0, 1) (0: start the ODE at the reference, no initialization).
        n_ode_steps: ODE steps from T0 to 1 (the last one from ``t_max`` to 1).
        t_max: the last time before 1 (``1 - delta``), in ``(t0, 1)``.
        grid: ``"logit"`` or ``"linear"`` spacing of the ODE times.
        schedule: a schedule replacing the grid; the grid options are then neither used nor checked.
    """

    t0: float = 0.3
    n_ode_steps: int = 10
    t_max: float = 0.999
    grid: str = "logit"
    schedule: Schedule | None = None

    def __attrs_post_init__(self) -> None:
        if self.schedule is not None:
            return
        check_positive_int("n_ode_steps", self.n_ode_steps)
        if self.grid not in _GRIDS:
            raise ConfigurationError(f"grid must be one of {', '.join(_GRIDS)}, got {self.grid!r}")
        if not 0 <= self.t0 < 1:
            raise ConfigurationError(f"t0 must lie in [0, 1), got {self.t0!r}")
        if not self.t0 < self.t_max < 1:
            raise ConfigurationError(f"t_max must lie in (t0, 1), got {self.t_max!r}")

    def times(self) -> list[float]:
        """The grid's engine times ``[0, T0, ..., t_max, 1]`` (see :func:`ode_times`)."""
        t0, t_max, grid = self.t0, self.t_max, self.grid
        k = self.n_ode_steps - 1  # ODE times strictly between T0 and 1; the last is t_max
        if k == 0:
            inner: list[float] = []
        elif t0 > 0:  # k points after T0, up to t_max
            u = [(i + 1) / k for i in range(k)]
            inner = [_between(t0, t_max, ui, grid) for ui in u]
        else:  # k points from min(0.05, t_max) to t_max
            u = [i / (k - 1) if k > 1 else 1.0 for i in range(k)]
            inner = [_between(min(0.05, t_max), t_max, ui, grid) for ui in u]
        return [0.0] + ([t0] if t0 > 0 else []) + inner + [1.0]

    def engine_schedule(self) -> Schedule:
        """The pipeline's schedule: :attr:`schedule` if given, else the grid's times."""
        return self.schedule if self.schedule is not None else Fixed(self.times())

    def options(self) -> dict[str, Any]:
        """The grid options as recorded in results (without the schedule)."""
        return attrs.asdict(self, filter=attrs.filters.exclude(attrs.fields(TimeGrid).schedule))


def _non_negative_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: ``value`` is an ``int`` (not a bool) >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{attribute.name} must be a non-negative integer, got {value!r}")


@attrs.frozen
class VelocitySettings:
    """How ``interpolant-langevin`` moves the particles: inner chains, initialization, integration, final MALA.

    The inner-chain options are checked by :class:`InnerSampler` and the flow's by
    :class:`InterpolantFlow` when :meth:`transport` builds them; ``final_mala_steps`` here.

    Attributes:
        n_chains: inner chains per particle.
        inner_steps: inner sweeps per ODE step.
        burn_in: inner sweeps per estimate left out of the average.
        inner_kernel: ``"mala"`` or ``"ula"``.
        inner_step_size: initial dimensionless inner step (adapted per particle; ``None``: default).
        reweight_chains: importance-reweight warm-started chains when the particle or time moves.
        init_weights: importance-weight cold-started chains.
        init_steps: outer Langevin steps at T0.
        init_step_size: dimensionless outer Langevin step.
        init_inner_steps: inner sweeps per outer step.
        finish: ``"sample"`` (a posterior draw at the last step) or ``"mean"`` (the posterior mean).
        integrator: ``"heun"`` or ``"euler"``.
        final_mala_steps: MALA sweeps on the target after the flow (0: none).
    """

    n_chains: int = 8
    inner_steps: int = 4
    burn_in: int = 0
    inner_kernel: str = "mala"
    inner_step_size: float | None = None
    reweight_chains: bool = True
    init_weights: bool = True
    init_steps: int = 100
    init_step_size: float = 0.1
    init_inner_steps: int = 1
    finish: str = "sample"
    integrator: str = "heun"
    final_mala_steps: int = attrs.field(default=20, validator=_non_negative_int)

    def transport(self, t0: float) -> InterpolantFlow:
        """The ``interpolant-flow`` transport with these inner chains (no initialization when ``t0 = 0``)."""
        inner = InnerSampler(
            n_chains=self.n_chains,
            n_steps=self.inner_steps,
            burn_in=self.burn_in,
            kernel=self.inner_kernel,
            step_size=self.inner_step_size,
            reweight=self.reweight_chains,
            init_weights=self.init_weights,
        )
        return InterpolantFlow(
            inner=inner,
            init_steps=self.init_steps if t0 > 0 else 0,
            init_step_size=self.init_step_size,
            init_inner_steps=self.init_inner_steps,
            finish=self.finish,
            integrator=self.integrator,
        )

    def at_target(self, correctors: Sequence[Corrector]) -> list[AtTarget]:
        """The steps after the flow, applied only at t = 1: ``final_mala_steps`` MALA sweeps, then ``correctors``."""
        steps = [AtTarget(corrector("mala", n_steps=self.final_mala_steps))] if self.final_mala_steps > 0 else []
        return steps + [c if isinstance(c, AtTarget) else AtTarget(c) for c in correctors]

    def options(self) -> dict[str, Any]:
        """The options as recorded in results."""
        return attrs.asdict(self)


def build_interpolant_langevin(
    t0: float = 0.3,
    n_ode_steps: int = 10,
    t_max: float = 0.999,
    grid: str = "logit",
    n_chains: int = 8,
    inner_steps: int = 4,
    burn_in: int = 0,
    inner_kernel: str = "mala",
    inner_step_size: float | None = None,
    reweight_chains: bool = True,
    init_weights: bool = True,
    init_steps: int = 100,
    init_step_size: float = 0.1,
    init_inner_steps: int = 1,
    finish: str = "sample",
    integrator: str = "heun",
    final_mala_steps: int = 20,
    schedule: Schedule | None = None,
    correctors: Sequence[Corrector] = (),
    reference_loc: Any = None,
    reference_scale: Any = None,
) -> InterpolantPipeline:
    """Training-free sampling along the linear stochastic interpolant (Duan, Jiao, Steidl et al. 2026).

    Particles start as draws of the reference ``N(mu, sigma^2)`` (the target's default reference
    unless overridden), are brought to ``p_{T0}`` by Langevin dynamics with an estimated score,
    then follow the probability-flow ODE to ``t = 1`` with the velocity estimated per particle by
    inner Langevin chains on the endpoint posterior. Gives samples only: ``log_Z`` is ``None``.

    Cost per particle (gradient evaluations): ``n_chains * (init_steps * init_inner_steps + 1 +
    n_ode_steps * inner_steps)`` plus one per stage for the particles themselves when a final
    MALA corrector is used, plus ``final_mala_steps``.

    The options are checked and grouped by :class:`TimeGrid` (``t0``, ``n_ode_steps``, ``t_max``,
    ``grid``, ``schedule``) and :class:`VelocitySettings` (the inner chains, the initialization,
    ``finish``, ``integrator`` and ``final_mala_steps``).

    Args:
        t0: initialization time T0 in [0, 1) (0: start the ODE at the reference, no initialization).
        n_ode_steps: Euler steps from T0 to 1 (the last one from ``t_max`` to 1).
        t_max: the last time before 1 (``1 - delta``).
        grid: ``"logit"`` or ``"linear"`` spacing of the ODE times (see :func:`ode_times`).
        n_chains: inner chains per particle.
        inner_steps: inner sweeps per ODE step.
        burn_in: inner sweeps per estimate left out of the average.
        inner_kernel: ``"mala"`` or ``"ula"``.
        inner_step_size: initial dimensionless inner step (adapted per particle).
        reweight_chains: importance-reweight warm-started chains when the particle or time moves.
        init_weights: importance-weight cold-started chains (see :class:`InnerSampler`).
        init_steps: outer Langevin steps at T0.
        init_step_size: dimensionless outer Langevin step.
        init_inner_steps: inner sweeps per outer step.
        finish: ``"sample"`` (a posterior draw at the last step) or ``"mean"`` (the posterior mean).
        integrator: ``"heun"`` or ``"euler"`` (see :class:`InterpolantFlow`).
        final_mala_steps: MALA sweeps on the target after the flow (0: none).
        schedule: a schedule replacing the ODE time grid (its first time after 0 is T0 when
            ``init_steps > 0``).
        correctors: further correctors, applied only at t = 1 (wrapped in :class:`AtTarget`).
        reference_loc, reference_scale: override the target's default reference (the law of X0).
    """
    flow = VelocitySettings(
        n_chains=n_chains,
        inner_steps=inner_steps,
        burn_in=burn_in,
        inner_kernel=inner_kernel,
        inner_step_size=inner_step_size,
        reweight_chains=reweight_chains,
        init_weights=init_weights,
        init_steps=init_steps,
        init_step_size=init_step_size,
        init_inner_steps=init_inner_steps,
        finish=finish,
        integrator=integrator,
        final_mala_steps=final_mala_steps,
    )
    transport = flow.transport(t0)
    times = TimeGrid(t0=t0, n_ode_steps=n_ode_steps, t_max=t_max, grid=grid, schedule=schedule)
    return InterpolantPipeline(
        schedule=times.engine_schedule(),
        steps=[transport, *flow.at_target(correctors)],
        reference_loc=reference_loc,
        reference_scale=reference_scale,
        name="interpolant-langevin",
        options={**times.options(), **flow.options()},
    )
