"""The ``resample`` corrector: ESS-triggered resampling, decided per replica."""

from __future__ import annotations

import math

import torch

from sampler.ext import ConfigurationError, Corrector, Particles, StepContext, StepOutput, get_scheme
from sampler.ext import ess as _ess
from sampler_plugins.mcmc.balanced import balanced_resample


class Resample(Corrector):
    """Resample a replica when its normalized ESS falls below ``threshold``.

    Args:
        scheme: ``systematic`` (default), ``stratified``, ``residual`` or ``multinomial``.
        threshold: ESS fraction in (0, 1] below which a replica is resampled; 1 resamples
            whenever the weights are not all equal.
        final: at t = 1, resample whenever the weights are not all equal, so the moves that
            follow act on an equally weighted set and the final samples carry no duplicates
            from a last resampling (default True).
        mode_floor: 0 (default) resamples in proportion to the weights. m > 0 keeps at least m
            offspring in every cluster of the particles (a Gaussian mixture fitted to their
            positions), the clusters' masses carried by unequal weights
            (:mod:`~sampler_plugins.mcmc.balanced`), so a mode whose tempered mass dips on the
            path keeps particles; always systematic, not at t = 1 (there the weights are
            equalized as usual), and not shardable.

    Reports ``resampled`` ``(R,)`` (1 where the replica was resampled); with ``mode_floor``,
    also ``floored`` ``(R,)``, the share of the offspring that went to clusters held at the
    floor. Log Z is unchanged.
    """

    def __init__(self, scheme: str = "systematic", threshold: float = 0.5, final: bool = True, mode_floor: int = 0):
        if not 0 < threshold <= 1:
            raise ConfigurationError(f"resampling threshold must lie in (0, 1], got {threshold!r}")
        if isinstance(mode_floor, bool) or not isinstance(mode_floor, int) or mode_floor < 0:
            raise ConfigurationError(f"mode_floor must be an int >= 0 (offspring per cluster), got {mode_floor!r}")
        self.scheme = scheme
        self.threshold = float(threshold)
        self.final = final
        self.mode_floor = mode_floor
        self._resample = get_scheme(scheme)

    @property
    def shardable(self) -> bool:  # type: ignore[override]
        """Proportional resampling works on shards; the balanced one fits all particles at once."""
        return self.mode_floor == 0

    def apply(self, particles: Particles, state: None, ctx: StepContext) -> StepOutput:
        log_w = ctx.global_log_weights(particles)  # (R, N): the same on every rank of a sharded run
        ess = _ess(log_w)
        uniform = (log_w == log_w[:, :1]).all(-1)
        at_end = ctx.t == 1.0
        due = ((ess < self.threshold) | (at_end & self.final)) & ~uniform
        info = {"resampled": due.to(torch.float64)}
        if self.mode_floor:
            info["floored"] = torch.zeros_like(info["resampled"])
        if not bool(due.any()):
            return StepOutput(particles, state, info)
        n = log_w.shape[1]
        keep = torch.arange(n, device=due.device).expand(particles.n_replicas, n)
        idx = self._resample(log_w, ctx.generator)
        new_log_w = torch.full_like(log_w, -math.log(n))
        balance = due & ~at_end if self.mode_floor else None
        if balance is not None and bool(balance.any()):
            b_idx, b_log_w, floored = balanced_resample(particles.x, log_w, self.mode_floor, ctx.generator)
            idx = torch.where(balance[:, None], b_idx, idx)
            new_log_w = torch.where(balance[:, None], b_log_w, new_log_w)
            info["floored"] = torch.where(balance, floored, 0.0)
        idx = torch.where(due[:, None], idx, keep)
        log_w = torch.where(due[:, None], new_log_w, log_w)
        return StepOutput(ctx.select(particles, idx, log_w), state, info)
