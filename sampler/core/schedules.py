"""Annealing schedules: the times ``0 = t_0 < t_1 < ... < t_K = 1``.

Fixed schedules (:class:`Fixed`, :class:`Linear`, :class:`Geometric`, :class:`Power`) know every
time in advance. :class:`Adaptive` picks the next time by a batched search (multisection) so that
the conditional ESS of the incremental weights equals a goal (adaptive tempered SMC).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sampler.core.particles import Particles
from sampler.core.paths import GeometricPath
from sampler.errors import ConfigurationError, RunError, check_positive_int

__all__ = ["Schedule", "Fixed", "Linear", "Geometric", "Power", "Adaptive", "conditional_ess", "as_times"]


class Schedule(abc.ABC):
    """Decides the next annealing time of every replica.

    Times are per replica: ``t`` is a float64 tensor ``(R,)`` so that replicas stay
    independent runs (an adaptive schedule follows each replica's own particles).
    """

    #: Number of steps when known in advance (``None`` for adaptive schedules).
    n_steps: int | None = None
    #: Whether a sharded run (:mod:`sampler.engine.distributed`) may use it. There the schedule gets
    #: the log weights and cached log densities of all N particles (``Particles.x`` is then a
    #: zero placeholder of shape ``(R, N, d)``: positions are not gathered).
    shardable: bool = False
    #: Whether :meth:`next_time` looks at the particles (if not, a sharded run gathers nothing).
    uses_particles: bool = True

    @abc.abstractmethod
    def next_time(self, step: int, t: Tensor, particles: Particles, path: GeometricPath) -> Tensor:
        """The times ``(R,)`` after ``t`` ``(R,)`` (the current times, reached after ``step`` steps)."""


def as_times(t: float | Tensor, particles: Particles) -> Tensor:
    """Per-replica times ``(R,)`` float64 on the particles' device (a float applies to all)."""
    device = particles.log_weights.device
    return torch.as_tensor(t, dtype=torch.float64, device=device).expand(particles.n_replicas)


class Fixed(Schedule):
    """An explicit, strictly increasing list of times from 0 to 1."""

    shardable = True
    uses_particles = False

    def __init__(self, times: Sequence[float]):
        ts = [float(t) for t in times]
        if not all(math.isfinite(t) for t in ts):
            raise ConfigurationError(f"schedule times must be finite, got {_show(ts)}")
        if len(ts) < 2 or ts[0] != 0.0 or ts[-1] != 1.0:
            raise ConfigurationError(
                f"a schedule must start at 0 and end at 1 with at least two times, got {_show(ts)}"
            )
        if any(b <= a for a, b in zip(ts, ts[1:])):
            raise ConfigurationError(f"schedule times must be strictly increasing, got {_show(ts)}")
        self.times = ts
        self.n_steps = len(ts) - 1

    def next_time(self, step: int, t: Tensor, particles: Particles, path: GeometricPath) -> Tensor:
        return torch.full_like(as_times(t, particles), self.times[step + 1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_steps={self.n_steps})"


def _show(ts: Sequence[float]) -> str:
    return str(ts) if len(ts) <= 6 else f"[{ts[0]}, {ts[1]}, ..., {ts[-1]}] ({len(ts)} times)"


class Linear(Fixed):
    """``n_steps`` equal increments: ``t_k = k / K``."""

    def __init__(self, n_steps: int):
        k = check_positive_int("n_steps", n_steps)
        super().__init__([i / k for i in range(k)] + [1.0])


class Power(Fixed):
    """``t_k = (k / K) ** exponent``: small steps near 0 for ``exponent > 1``."""

    def __init__(self, n_steps: int, exponent: float = 4.0):
        k = check_positive_int("n_steps", n_steps)
        if not exponent > 0:
            raise ConfigurationError(f"exponent must be positive, got {exponent!r}")
        super().__init__([(i / k) ** exponent for i in range(k)] + [1.0])


class Geometric(Fixed):
    """``t_0 = 0`` then ``K`` geometrically spaced times from ``t_min`` to 1."""

    def __init__(self, n_steps: int, t_min: float = 1e-4):
        k = check_positive_int("n_steps", n_steps)
        if not 0 < t_min < 1:
            raise ConfigurationError(f"t_min must lie in (0, 1), got {t_min!r}")
        if k == 1:
            super().__init__([0.0, 1.0])
            return
        ratios = [t_min ** (1 - i / (k - 1)) for i in range(k - 1)]
        super().__init__([0.0] + ratios + [1.0])


def conditional_ess(log_weights: torch.Tensor, log_increments: torch.Tensor) -> torch.Tensor:
    """Conditional ESS (Zhou, Johansen & Aston 2016) in [0, 1], per replica.

    ``(sum_i W_i g_i)^2 / sum_i W_i g_i^2`` for normalized weights ``W`` ``(R, N)`` (given as log
    weights) and incremental weights ``g = exp(log_increments)`` ``(R, N)``.
    """
    a = torch.logsumexp(log_weights + log_increments, -1)
    b = torch.logsumexp(log_weights + 2 * log_increments, -1)
    return torch.nan_to_num(torch.exp(2 * a - b - torch.logsumexp(log_weights, -1)), nan=0.0)


#: Most candidate increments (candidates x particles per replica) :class:`Adaptive` evaluates in
#: one round: 32 candidates up to N = 2048, one (a bisection) from N = 65,536.
SEARCH_BUDGET = 2**16


class Adaptive(Schedule):
    """Next time so the conditional ESS of the increments is ``target_ess``, by multisection.

    Each replica gets its own time, chosen from its own particles, so replicas remain
    independent runs; a replica that reaches t = 1 stays there while the others finish.
    ``min_step`` bounds the number of steps; ``max_steps`` stops a run that makes no progress
    with :class:`~sampler.errors.RunError`.

    The search keeps, per replica, a step ``lo`` known to keep the goal and a step ``hi`` known
    to miss it, and evaluates up to 32 candidate steps between them in one batched call: spaced
    geometrically while the bracket spans more than a factor 2 (steps range over orders of
    magnitude), evenly after. It stops when ``hi - lo <= max(tol * hi, min_step)``, after about
    three rounds at N = 2000 where bisection takes 10-20 (each a round of small operations and
    a host synchronization). Fewer candidates when N is large (:data:`SEARCH_BUDGET`): one
    candidate is a bisection, geometric first. On a geometric path the increment at a fixed
    point is ``(t_new - t) (log target - log ref)``, so every candidate costs one product.
    The conditional ESS falls as the step grows (its log is ``2 K(s) - K(2 s)`` for the
    increments' convex cumulant generating function ``K``), so the first candidate that misses
    the goal bounds the next bracket.
    """

    shardable = True

    def __init__(self, target_ess: float = 0.5, min_step: float = 1e-6, max_steps: int = 10_000, tol: float = 1e-3):
        if not 0 < target_ess < 1:
            raise ConfigurationError(f"target_ess must lie in (0, 1), got {target_ess!r}")
        if not 0 < min_step < 1:
            raise ConfigurationError(f"min_step must lie in (0, 1), got {min_step!r}")
        self.target_ess = float(target_ess)
        self.min_step = float(min_step)
        self.max_steps = check_positive_int("max_steps", max_steps)
        self.tol = float(tol)

    def next_time(self, step: int, t: Tensor, particles: Particles, path: GeometricPath) -> Tensor:
        t = as_times(t, particles)
        if step >= self.max_steps:
            raise RunError(
                f"adaptive schedule reached max_steps={self.max_steps} at t={float(t.min()):.3g}; "
                "lower target_ess, raise max_steps, or improve the reference"
            )
        ev, log_w = particles.evaluation, particles.log_weights
        one = torch.ones_like(t)
        to_one = path.log_weight_increment(ev, t, ev, one)  # (R, N); -inf where a point cannot gain weight
        settled = (t >= 1.0) | (conditional_ess(log_w, to_one) >= self.target_ess)
        room = 1.0 - t
        slope = to_one / torch.clamp(room, min=self.min_step).unsqueeze(-1)
        n_candidates = max(1, min(32, SEARCH_BUDGET // max(log_w.shape[-1], 1)))
        k = torch.arange(1, n_candidates + 1, dtype=t.dtype, device=t.device).unsqueeze(-1)  # (K, 1)
        lo, hi = torch.zeros_like(t), room  # steps: lo keeps the goal, hi misses it
        for _ in range(64):
            open_ = ~settled & (hi - lo > torch.clamp(self.tol * hi, min=self.min_step))
            if not bool(open_.any()):
                break
            steps = _candidates(lo, hi, k, self.min_step)  # (K, R), increasing
            keeps = conditional_ess(log_w, steps.unsqueeze(-1) * slope) >= self.target_ess
            n_keep = torch.cumprod(keeps, 0).sum(0)  # (R,) candidates before the first miss
            last_kept = steps.gather(0, (n_keep - 1).clamp(min=0).unsqueeze(0))[0]
            first_missed = steps.gather(0, n_keep.clamp(max=n_candidates - 1).unsqueeze(0))[0]
            lo = torch.where(open_ & (n_keep > 0), last_kept, lo)
            hi = torch.where(open_ & (n_keep < n_candidates), first_missed, hi)
        return torch.where(settled, one, torch.clamp(t + torch.clamp(lo, min=self.min_step), max=1.0))

    def __repr__(self) -> str:
        return f"Adaptive(target_ess={self.target_ess})"


def _candidates(lo: Tensor, hi: Tensor, k: Tensor, min_step: float) -> Tensor:
    """``K`` increasing steps ``(K, R)`` inside each bracket ``(lo, hi)`` ``(R,)``; ``k`` is ``1..K`` ``(K, 1)``.

    Geometric from ``min_step`` (included: it may miss too) while ``lo`` is 0, geometric between
    the ends while ``hi > 2 lo``, evenly spaced after.
    """
    n = k.shape[0]
    from_zero = lo <= 0
    base = torch.where(from_zero, torch.full_like(lo, min_step), lo)
    geometric = base * (hi / base) ** torch.where(from_zero, (k - 1) / n, k / (n + 1))
    even = lo + (hi - lo) * (k / (n + 1))
    return torch.where(~from_zero & (hi <= 2 * lo), even, geometric)
