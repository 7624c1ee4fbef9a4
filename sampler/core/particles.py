"""Particle state: R independent replicas of N weighted particles in R^d, as one batch."""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import torch
from torch import Tensor

from sampler.core._indexing import gather_particles
from sampler.core.paths import PathEvaluation

__all__ = ["Particles", "log_ess", "ess", "random_halves"]


def _extras_converter(value: Mapping[str, Tensor] | None) -> Mapping[str, Tensor]:
    return dict(value or {})


@attrs.frozen
class Particles:
    """Immutable state of a batched particle system.

    Attributes:
        x: positions ``(R, N, d)`` in the run's dtype and device.
        log_weights: normalized log weights ``(R, N)`` in float64 (``logsumexp`` over N is 0).
        log_Z: running log normalizer estimate per replica ``(R,)`` float64.
        evaluation: cached reference/target evaluations at ``x`` (see :class:`PathEvaluation`).
        extras: per-particle data of plugins, each ``(R, N, ...)``; reordered on resampling.

    Make the next state with :func:`attrs.evolve`.
    """

    x: Tensor
    log_weights: Tensor
    log_Z: Tensor
    evaluation: PathEvaluation
    extras: Mapping[str, Tensor] = attrs.field(factory=dict, converter=_extras_converter)

    def __attrs_post_init__(self) -> None:
        if self.x.ndim != 3:
            raise ValueError(f"particle positions must have shape (R, N, d), got {tuple(self.x.shape)}")
        r, n = self.x.shape[:2]
        if tuple(self.log_weights.shape) != (r, n) or self.log_weights.dtype != torch.float64:
            raise ValueError(
                f"log_weights must be float64 of shape {(r, n)}, "
                f"got {self.log_weights.dtype} {tuple(self.log_weights.shape)}"
            )
        if tuple(self.log_Z.shape) != (r,) or self.log_Z.dtype != torch.float64:
            raise ValueError(f"log_Z must be float64 of shape ({r},), got {self.log_Z.dtype} {tuple(self.log_Z.shape)}")

    @property
    def n_replicas(self) -> int:
        """R, the number of independent replicas."""
        return self.x.shape[0]

    @property
    def n_particles(self) -> int:
        """N, the number of particles per replica."""
        return self.x.shape[1]

    @property
    def dim(self) -> int:
        """d, the dimension."""
        return self.x.shape[2]

    def ess(self) -> Tensor:
        """Normalized Kish effective sample size per replica, ``(R,)`` in [0, 1]."""
        return ess(self.log_weights)

    def gather(self, indices: Tensor) -> Particles:
        """Particles at ``indices`` ``(R, M)`` (ancestor indices per replica; M = N usually), equally weighted."""
        x = gather_particles(self.x, indices)
        extras = {k: gather_particles(v, indices) for k, v in self.extras.items()}
        m = indices.shape[1]
        uniform = torch.full((self.n_replicas, m), -math.log(m), dtype=torch.float64, device=self.log_weights.device)
        return attrs.evolve(self, x=x, log_weights=uniform, evaluation=self.evaluation.gather(indices), extras=extras)


def log_ess(log_weights: Tensor) -> Tensor:
    """Log of the normalized Kish ESS ``(sum w)^2 / (N sum w^2)`` over the last axis."""
    n = log_weights.shape[-1]
    return 2 * torch.logsumexp(log_weights, -1) - torch.logsumexp(2 * log_weights, -1) - math.log(n)


def ess(log_weights: Tensor) -> Tensor:
    """Normalized Kish effective sample size in [0, 1] over the last axis (0 if all weights are 0)."""
    return torch.nan_to_num(log_ess(log_weights).exp(), nan=0.0)


def random_halves(x: Tensor, generator: torch.Generator, groups: Tensor | None = None) -> Tensor:
    """A random split of each replica's particles ``x`` ``(R, N, d)``: ``(R, N)`` bool, True for half A.

    Each particle goes to A by a fair coin, except that particles of one group share one coin:
    ``groups`` ``(R, N)`` integer labels in ``[0, N)`` (e.g. the ancestor each descends from) or,
    without them, identical positions (the copies resampling leaves). A step fitted to one half
    and applied to the other then never uses a copy, or a relative, of the particle it moves.
    Identical positions have identical projections on a random direction; after sorting by it
    they form runs, and each run gets one coin.
    """
    r, n, d = x.shape
    if groups is not None:
        coins = torch.rand((r, n), generator=generator, dtype=torch.float64, device=x.device) < 0.5
        return torch.gather(coins, 1, groups.to(device=x.device, dtype=torch.long))
    direction = torch.randn(d, generator=generator, dtype=torch.float64, device=x.device)
    v = x.to(torch.float64) @ direction
    v_sorted, order = v.sort(-1)
    starts = torch.ones_like(v_sorted, dtype=torch.bool)
    starts[:, 1:] = v_sorted[:, 1:] != v_sorted[:, :-1]
    run = starts.long().cumsum(-1) - 1  # (R, N) run index of each sorted particle
    coins = torch.rand((r, n), generator=generator, dtype=torch.float64, device=x.device) < 0.5
    return torch.empty_like(coins).scatter_(1, order, torch.gather(coins, 1, run))
