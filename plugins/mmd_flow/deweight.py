"""``mmd-deweight``: replace a weighted particle set by an equally weighted one, without duplicates.

Multinomial or systematic resampling turns weighted particles into equally weighted ones by
copying: low-weight particles die and heavy ones are duplicated, so the set holds fewer distinct
points. MMD deweighting instead starts N equally weighted particles at the N weighted points
and lets them flow (:func:`~sampler_plugins.mmd_flow.flow.mmd_flow`) toward the *weighted*
empirical measure: particles drift from low-weight into high-weight regions until the equally
weighted set has a small energy distance to the weighted one. All N particles stay distinct.

As with resampling, log Z is unchanged and the weights become uniform. Unlike resampling the
result is not an unbiased random replacement but a deterministic-given-directions quantization
of the weighted measure; in an SMC run this is a consistent approximation (its error is the
energy distance the flow leaves, reported as ``deweight_ed``) rather than an unbiased one.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from sampler.ext import ConfigurationError, Corrector, Particles, StepContext, StepOutput
from sampler_plugins.mmd_flow.flow import FlowSettings, mmd_flow

__all__ = ["deweight", "MMDDeweight", "DEWEIGHT_DEFAULTS"]

#: Flow options of deweighting: a short local flow from the weighted points themselves.
DEWEIGHT_DEFAULTS = dict(
    n_iter=100, step_size=1.0, momentum=0.8, n_directions=64, scheme="qmc", decay_start=0.5, final_step_size=0.05
)


def deweight(
    x: Tensor,
    log_weights: Tensor,
    generator: torch.Generator | None = None,
    record_every: int = 0,
    **options,
):
    """Equally weighted particles approximating the weighted set ``(x, exp(log_weights))``.

    ``x`` ``(N, d)`` or ``(R, N, d)``, ``log_weights`` ``(N,)`` or ``(R, N)`` (unnormalized; -inf
    allowed). Flows N particles started at ``x`` toward the weighted measure (options of
    :class:`~sampler_plugins.mmd_flow.flow.FlowSettings`, defaults :data:`DEWEIGHT_DEFAULTS`).
    Returns the :class:`~sampler_plugins.mmd_flow.flow.FlowResult` (``.x`` is ``(R, N, d)``).
    """
    lw = torch.as_tensor(log_weights).to(torch.float64)
    if lw.ndim == 1:
        lw = lw.unsqueeze(0)
    if lw.ndim != 2 or lw.shape[-1] != x.shape[-2]:
        raise ConfigurationError(
            f"log_weights must have shape (N,) or (R, N) matching x {tuple(x.shape)}, got {tuple(lw.shape)}"
        )
    if bool((~torch.isfinite(torch.logsumexp(lw, -1))).any()):
        raise ConfigurationError("every weight of some replica is zero or not finite")
    w = torch.softmax(lw.nan_to_num(nan=-math.inf), dim=-1)
    opts = {**DEWEIGHT_DEFAULTS, **options}
    return mmd_flow(x, x, w, generator=generator, record_every=record_every, **opts)


class MMDDeweight(Corrector):
    """Replace weighted particles by equally weighted ones that minimize the MMD to them.

    A drop-in alternative to the ``resample`` corrector: when a replica's normalized ESS falls
    below ``threshold`` (and always at t = 1 when ``final``), its N particles flow from their
    own positions to the weighted empirical measure (:func:`deweight`), so no particle is
    duplicated. The moved particles are evaluated again (N target evaluations per deweighted
    replica; gradients too when the run needs them). Log Z is unchanged. Per-particle
    ``extras`` stay with the particle that moved.

    Args:
        threshold: ESS fraction in (0, 1] below which a replica is deweighted.
        final: deweight at t = 1 whenever the weights are unequal.
        n_iter, step_size, momentum, n_directions, scheme, epsilon, decay_start,
        final_step_size, scale: flow options (:class:`~sampler_plugins.mmd_flow.flow.FlowSettings`;
            defaults :data:`DEWEIGHT_DEFAULTS`).

    Reports ``resampled`` ``(R,)`` (1 where the replica was deweighted) and ``deweight_ed``
    ``(R,)``, the sliced energy distance between the new and the weighted set (NaN elsewhere).
    """

    def __init__(self, threshold: float = 0.5, final: bool = True, **flow_options):
        if not 0 < threshold <= 1:
            raise ConfigurationError(f"deweighting threshold must lie in (0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        self.final = final
        self.flow = FlowSettings(**{**DEWEIGHT_DEFAULTS, **flow_options})

    def apply(self, particles: Particles, state: None, ctx: StepContext) -> StepOutput:
        logw = particles.log_weights
        uniform = (logw == logw[:, :1]).all(-1)
        at_end = (ctx.t == 1.0) if self.final else torch.zeros_like(uniform)
        due = ((particles.ess() < self.threshold) | at_end) & ~uniform
        nan = torch.full(due.shape, math.nan, dtype=torch.float64, device=due.device)
        if not bool(due.any()):
            return StepOutput(particles, state, {"resampled": due.to(torch.float64), "deweight_ed": nan})
        idx = due.nonzero().flatten()
        res = mmd_flow(
            particles.x[idx],
            particles.x[idx],
            torch.softmax(logw[idx], -1),
            self.flow,
            ctx.generator,
            record_every=self.flow.n_iter,
        )
        new_x = particles.x.clone()
        new_x[idx] = res.x
        ev_new = ctx.path.evaluate(res.x, grad=ctx.needs_grad)
        evaluation = _scatter_evaluation(particles.evaluation, ev_new, idx)
        log_w = logw.clone()
        log_w[idx] = -math.log(particles.n_particles)
        ed = nan.clone()
        ed[idx] = res.energy_distance[-1]
        new = attrs.evolve(particles, x=new_x, log_weights=log_w, evaluation=evaluation)
        return StepOutput(new, state, {"resampled": due.to(torch.float64), "deweight_ed": ed})


def _scatter_evaluation(old, new, idx: Tensor):
    """``old`` with the replicas ``idx`` replaced by ``new`` (evaluated on those replicas only)."""

    def put(a: Tensor | None, b: Tensor | None) -> Tensor | None:
        if a is None or b is None:  # gradients are cached for every replica or for none
            return None
        out = a.clone()
        out[idx] = b
        return out

    return attrs.evolve(
        old,
        log_ref=put(old.log_ref, new.log_ref),
        log_target=put(old.log_target, new.log_target),
        grad_ref=put(old.grad_ref, new.grad_ref),
        grad_target=put(old.grad_target, new.grad_target),
    )
