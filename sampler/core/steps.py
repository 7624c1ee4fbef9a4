"""The step contract shared by every Transport and Corrector.

One annealing stage from ``t_from`` to ``t`` runs, in this order (as in AFT/CRAFT):

1. **transports** move particles from pi_{t_from} toward pi_t and return the log-weight
   increment their move implies beyond the change of density (``log |det J|`` for a
   deterministic map, the backward/forward kernel log-ratio for a stochastic layer);
2. the **engine reweights**: ``log pi_t(x') - log pi_{t_from}(x) + increment``, and updates log Z;
3. **correctors** act at pi_t: MCMC moves that leave it invariant (increment 0) or resampling.

Every step has ``init(particles, ctx) -> state`` and ``apply(particles, state, ctx) ->
StepOutput``; state is whatever the step adapts over a run (step sizes per replica, say). The
engine alone owns reweighting, resampling bookkeeping and log Z.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor

from sampler.core.particles import Particles
from sampler.core.paths import GeometricPath

if TYPE_CHECKING:
    from sampler.engine.distributed import ParticleStreams, Shard

__all__ = ["StepContext", "StepOutput", "Step", "Transport", "Corrector"]


@attrs.frozen
class StepContext:
    """What a step may use besides the particles.

    Attributes:
        path: the annealing path (evaluates and counts target calls).
        t: per-replica times ``(R,)`` float64 of the densities pi_t the step moves toward
            (transports) or preserves (correctors); pass it to ``path.log_prob(ev, t)``.
        t_from: the previous times ``(R,)`` (equal to ``t`` for a plain MCMC run).
        step: index of the stage (1 for the first move away from t = 0).
        generator: the run's random generator (on the particles' device).
        needs_grad: whether cached evaluations must carry gradients (some step uses them); a
            transport that moves particles returns evaluations with gradients when it is true.
        shard: in a sharded run (:mod:`sampler.engine.distributed`), this rank's share of the particle
            axis: particles have shape ``(R, N_local, ...)`` and anything over all N particles
            goes through the helpers below. ``None`` in an ordinary run.
        streams: in a sharded run, the per-particle random streams (keyed by the global particle
            index, so the result does not depend on the number of ranks).

    A step that declares ``shardable = True`` draws per-particle noise with :meth:`randn` and
    :meth:`rand`, averages over particles with :meth:`mean_probability`, reads global weights
    with :meth:`global_log_weights` and resamples with :meth:`select`; in an ordinary run these
    are exactly the plain torch calls on ``generator`` and the local tensors.
    """

    path: GeometricPath
    t: Tensor
    t_from: Tensor
    step: int
    generator: torch.Generator
    needs_grad: bool = False
    shard: Shard | None = None
    streams: ParticleStreams | None = None

    def randn(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
        """Standard normal draws of ``shape = (R, N_local, *tail)``, one row per particle."""
        if self.streams is not None:
            return self.streams.randn(shape, dtype)
        return torch.randn(tuple(shape), generator=self.generator, device=device or self.generator.device, dtype=dtype)

    def rand(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
        """Uniform draws on [0, 1) of ``shape = (R, N_local, *tail)``, one row per particle."""
        if self.streams is not None:
            return self.streams.rand(shape, dtype)
        return torch.rand(tuple(shape), generator=self.generator, device=device or self.generator.device, dtype=dtype)

    def mean_probability(self, values: Tensor) -> Tensor:
        """Mean over the particle axis of probabilities ``(R, N_local)`` -> ``(R,)`` (over all N when sharded)."""
        if self.shard is not None:
            return self.shard.mean_probability(values)
        return values.mean(-1)

    def global_log_weights(self, particles: Particles) -> Tensor:
        """The normalized log weights of all N particles, ``(R, N)`` float64."""
        if self.shard is not None:
            return self.shard.gather(particles.log_weights, "log weights", keep=True)
        return particles.log_weights

    def select(self, particles: Particles, ancestors: Tensor, log_weights: Tensor) -> Particles:
        """Particles after resampling: global ``ancestors`` ``(R, N)``, new global ``log_weights`` ``(R, N)``.

        Returns this rank's share (all particles in an ordinary run).
        """
        if self.shard is None:
            return attrs.evolve(particles.gather(ancestors), log_weights=log_weights)
        local = self.shard.local(log_weights)
        self.shard.remember(local, log_weights)
        return attrs.evolve(self.shard.select(particles, ancestors), log_weights=local)


@attrs.frozen
class StepOutput:
    """Result of one step.

    Attributes:
        particles: the new state (cached evaluations must match the new positions).
        state: the step's adapted state, passed to its next ``apply``.
        info: statistics to record, e.g. ``acceptance`` ``(R,)`` or ``step_size`` ``(R,)``.
        log_weight_increment: transports only: ``(R, N)`` float64 beyond the density change.
    """

    particles: Particles
    state: Any = None
    info: Mapping[str, Tensor | float] = attrs.field(factory=dict)
    log_weight_increment: Tensor | None = None


class Step(abc.ABC):
    """Common base of transports and correctors."""

    #: Whether the step needs cached gradients of the path at the particles.
    needs_grad: bool = False
    #: Whether the step works on a shard of the particles (see :class:`StepContext`): a sharded
    #: run refuses steps that leave this False.
    shardable: bool = False

    def init(self, particles: Particles, ctx: StepContext) -> Any:
        """Initial adapted state (``None`` by default)."""
        return None

    @abc.abstractmethod
    def apply(self, particles: Particles, state: Any, ctx: StepContext) -> StepOutput:
        """Carry out the step."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Transport(Step):
    """Moves particles from pi_{t_from} toward pi_t and reports ``log_weight_increment``.

    A trainable transport may also implement ``fit(particles, ctx)``.
    """


class Corrector(Step):
    """Leaves pi_t invariant (MCMC; no weight change) or rebalances weights (resampling)."""
