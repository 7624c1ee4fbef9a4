"""Annealing schedules: the times ``0 = t_0 < t_1 < ... < t_K = 1``.

Fixed schedules (:class:`Fixed`, :class:`Linear`, :class:`Geometric`, :class:`Power`) know every
time in advance. :class:`Adaptive` picks the next time by bisection so that the conditional ESS
of the incremental weights equals a goal (adaptive tempered SMC).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch

from sampler.errors import ConfigurationError
from sampler.particles import Particles
from sampler.paths import GeometricPath

__all__ = ["Schedule", "Fixed", "Linear", "Geometric", "Power", "Adaptive", "conditional_ess"]


class Schedule(abc.ABC):
    """Decides the next annealing time."""

    #: Number of steps when known in advance (``None`` for adaptive schedules).
    n_steps: int | None = None

    @abc.abstractmethod
    def next_time(self, step: int, t: float, particles: Particles, path: GeometricPath) -> float:
        """The time after ``t`` (the current time, reached after ``step`` steps)."""


class Fixed(Schedule):
    """An explicit, strictly increasing list of times from 0 to 1."""

    def __init__(self, times: Sequence[float]):
        ts = [float(t) for t in times]
        if not all(math.isfinite(t) for t in ts):
            raise ConfigurationError(f"schedule times must be finite, got {_show(ts)}")
        if len(ts) < 2 or ts[0] != 0.0 or ts[-1] != 1.0:
            raise ConfigurationError(f"a schedule must start at 0 and end at 1 with at least two times, got {_show(ts)}")
        if any(b <= a for a, b in zip(ts, ts[1:])):
            raise ConfigurationError(f"schedule times must be strictly increasing, got {_show(ts)}")
        self.times = ts
        self.n_steps = len(ts) - 1

    def next_time(self, step: int, t: float, particles: Particles, path: GeometricPath) -> float:
        return self.times[step + 1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_steps={self.n_steps})"


def _show(ts: Sequence[float]) -> str:
    return str(ts) if len(ts) <= 6 else f"[{ts[0]}, {ts[1]}, ..., {ts[-1]}] ({len(ts)} times)"


def _check_steps(n_steps: int) -> int:
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ConfigurationError(f"n_steps must be a positive integer, got {n_steps!r}")
    return n_steps


class Linear(Fixed):
    """``n_steps`` equal increments: ``t_k = k / K``."""

    def __init__(self, n_steps: int):
        k = _check_steps(n_steps)
        super().__init__([i / k for i in range(k)] + [1.0])


class Power(Fixed):
    """``t_k = (k / K) ** exponent``: small steps near 0 for ``exponent > 1``."""

    def __init__(self, n_steps: int, exponent: float = 4.0):
        k = _check_steps(n_steps)
        if not exponent > 0:
            raise ConfigurationError(f"exponent must be positive, got {exponent!r}")
        super().__init__([(i / k) ** exponent for i in range(k)] + [1.0])


class Geometric(Fixed):
    """``t_0 = 0`` then ``K`` geometrically spaced times from ``t_min`` to 1."""

    def __init__(self, n_steps: int, t_min: float = 1e-4):
        k = _check_steps(n_steps)
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


class Adaptive(Schedule):
    """Next time by bisection so the conditional ESS of the increments is ``target_ess``.

    One time is shared by all replicas: the smallest of the per-replica choices (so every
    replica keeps at least the goal). ``min_step`` bounds the number of steps; ``max_steps``
    stops a run that makes no progress with a clear error.
    """

    def __init__(self, target_ess: float = 0.5, min_step: float = 1e-6, max_steps: int = 10_000, tol: float = 1e-3):
        if not 0 < target_ess < 1:
            raise ConfigurationError(f"target_ess must lie in (0, 1), got {target_ess!r}")
        if not 0 < min_step < 1:
            raise ConfigurationError(f"min_step must lie in (0, 1), got {min_step!r}")
        self.target_ess = float(target_ess)
        self.min_step = float(min_step)
        self.max_steps = int(max_steps)
        self.tol = float(tol)

    def _cess(self, t: float, t_next: float, particles: Particles, path: GeometricPath) -> float:
        ev = particles.evaluation
        inc = path.log_weight_increment(ev, t, ev, t_next)
        return float(conditional_ess(particles.log_weights, inc).min())

    def next_time(self, step: int, t: float, particles: Particles, path: GeometricPath) -> float:
        if step >= self.max_steps:
            raise ConfigurationError(
                f"adaptive schedule reached max_steps={self.max_steps} at t={t:.3g}; "
                "lower target_ess, raise max_steps, or improve the reference"
            )
        if self._cess(t, 1.0, particles, path) >= self.target_ess:
            return 1.0
        lo, hi = t, 1.0
        # Stop at a resolution relative to the step itself, so tiny early steps resolve too.
        while hi - lo > max(self.min_step, self.tol * (hi - t)):
            mid = 0.5 * (lo + hi)
            if self._cess(t, mid, particles, path) >= self.target_ess:
                lo = mid
            else:
                hi = mid
        return min(1.0, max(lo, t + self.min_step))

    def __repr__(self) -> str:
        return f"Adaptive(target_ess={self.target_ess})"
