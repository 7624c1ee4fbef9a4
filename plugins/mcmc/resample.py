"""The ``resample`` corrector: ESS-triggered resampling, decided per replica."""

from __future__ import annotations

import math

import torch

from sampler.ext import ConfigurationError, Corrector, Particles, StepContext, StepOutput, get_scheme
from sampler.ext import ess as _ess


class Resample(Corrector):
    """Resample a replica when its normalized ESS falls below ``threshold``.

    Args:
        scheme: ``systematic`` (default), ``stratified``, ``residual`` or ``multinomial``.
        threshold: ESS fraction in (0, 1] below which a replica is resampled; 1 resamples
            whenever the weights are not all equal.
        final: at t = 1, resample whenever the weights are not all equal, so the moves that
            follow act on an equally weighted set and the final samples carry no duplicates
            from a last resampling (default True).

    Reports ``resampled`` ``(R,)`` (1 where the replica was resampled). Log Z is unchanged.
    """

    def __init__(self, scheme: str = "systematic", threshold: float = 0.5, final: bool = True):
        if not 0 < threshold <= 1:
            raise ConfigurationError(f"resampling threshold must lie in (0, 1], got {threshold!r}")
        self.scheme = scheme
        self.threshold = float(threshold)
        self.final = final
        self._resample = get_scheme(scheme)

    shardable = True

    def apply(self, particles: Particles, state: None, ctx: StepContext) -> StepOutput:
        log_w = ctx.global_log_weights(particles)  # (R, N): the same on every rank of a sharded run
        ess = _ess(log_w)
        uniform = (log_w == log_w[:, :1]).all(-1)
        at_end = (ctx.t == 1.0) if self.final else torch.zeros_like(uniform)
        due = ((ess < self.threshold) | at_end) & ~uniform
        if not bool(due.any()):
            return StepOutput(particles, state, {"resampled": due.to(torch.float64)})
        n = log_w.shape[1]
        keep = torch.arange(n, device=due.device).expand(particles.n_replicas, n)
        idx = torch.where(due[:, None], self._resample(log_w, ctx.generator), keep)
        log_w = torch.where(due[:, None], torch.full_like(log_w, -math.log(n)), log_w)
        return StepOutput(ctx.select(particles, idx, log_w), state, {"resampled": due.to(torch.float64)})
