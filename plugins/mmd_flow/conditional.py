"""Conditional MMD flow: posterior sampling in a Bayesian inverse problem from joint samples.

Given joint samples ``(x_j, y_j)``, j = 1..M, of prior x forward model (``x_j ~ prior``,
``y_j ~ p(y | x_j)``), the conditional flow (Hagemann, Hertrich et al., ICLR 2024) moves
particles ``(x̃_j, y_j)`` -- the same observations, fresh ``x̃_j`` from a reference -- along the
energy-distance flow on the joint space toward the joint sample, with the ``y`` components held
fixed (only the ``x`` part of the gradient is used). The flow map then preserves ``y``, and when
the joint laws match, ``x̃ | y`` follows the posterior ``p(x | y)`` for (almost) every ``y``.

To sample at a given observation ``y_obs``, the paper trains networks to imitate the flow steps.
Here the flow's own velocity field, the slope of the witness function of (particles, joint
sample) -- defined everywhere, not only at the particles -- carries *passenger* particles
``(z_k, y_obs)``, ``z_k`` from the same reference: they follow the same flow map at ``y_obs``
without acting on it. This is a non-parametric evaluation of the same conditional transport,
accurate where ``y_obs`` is well inside the joint sample (see docs/mmd_flow.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sampler.ext import ConfigurationError, slicing_constant
from sampler_plugins.mmd_flow.directions import draw_directions
from sampler_plugins.mmd_flow.flow import FlowSettings, sample_scale
from sampler_plugins.mmd_flow.sliced import witness_field_1d, witness_slope_1d

__all__ = ["conditional_mmd_flow"]


def conditional_mmd_flow(
    x: Tensor,
    y: Tensor,
    y_obs: Tensor,
    n_samples: int,
    settings: FlowSettings | None = None,
    generator: torch.Generator | None = None,
    reference_loc: Tensor | float | None = None,
    reference_scale: Tensor | float | None = None,
    y_scale: float = 1.0,
    **options,
) -> Tensor:
    """Approximate samples of ``x | y = y_obs`` from joint samples, by a conditional MMD flow.

    Args:
        x: prior draws ``(M, dx)``.
        y: their simulated observations ``(M, dy)`` (same order).
        y_obs: observations to condition on, ``(dy,)`` or ``(B, dy)``.
        n_samples: posterior samples per observation (K).
        settings: :class:`~sampler_plugins.mmd_flow.flow.FlowSettings` (or its fields as
            ``options``); ``scale`` defaults to the RMS standard deviation of the joint sample.
        generator: draws the reference samples and the directions.
        reference_loc, reference_scale: Gaussian reference of the ``x`` part; default the
            prior sample's mean and coordinate standard deviations.
        y_scale: multiplies the ``y`` coordinates in the joint kernel ``-|(x, y_scale y)|``.

    Returns:
        ``(B, K, dx)`` samples (``(K, dx)`` for a single ``y_obs`` of shape ``(dy,)``), in ``x``'s dtype.
    """
    settings = FlowSettings(**options) if settings is None else settings
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ConfigurationError(
            f"x and y must be paired samples (M, dx) and (M, dy), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    y_obs = torch.as_tensor(y_obs)
    single = y_obs.ndim == 1
    if y_obs.ndim not in (1, 2) or y_obs.shape[-1] != y.shape[1] or y_obs.numel() == 0:
        raise ConfigurationError(
            f"y_obs must have shape ({y.shape[1]},) or (B, {y.shape[1]}), got {tuple(y_obs.shape)}"
        )
    obs = y_obs.to(dtype=x.dtype, device=x.device).reshape(-1, y.shape[1])
    if n_samples < 1:
        raise ConfigurationError(f"n_samples must be >= 1, got {n_samples}")
    if not y_scale > 0:
        raise ConfigurationError(f"y_scale must be positive, got {y_scale}")
    m, dx = x.shape
    b_obs = obs.shape[0]
    dev, dt = x.device, x.dtype
    loc = x.mean(0) if reference_loc is None else torch.as_tensor(reference_loc, dtype=dt, device=dev).expand(dx)
    scl = x.std(0) if reference_scale is None else torch.as_tensor(reference_scale, dtype=dt, device=dev).expand(dx)
    draw = generator.device if generator is not None else dev

    def reference(n: int) -> Tensor:
        return loc + scl * torch.randn(n, dx, generator=generator, dtype=dt, device=draw).to(dev)

    target = torch.cat([x, y_scale * y], dim=1)  # (M, D)
    y_part = target[:, dx:]
    particles = reference(m)  # x parts of the ensemble; its y parts are y_part
    passengers = reference(b_obs * n_samples)
    p_obs = (y_scale * obs).repeat_interleave(n_samples, dim=0)  # (B K, dy)
    scale = float(sample_scale(target[None])[0]) if settings.scale is None else settings.scale
    h = settings.step_size * scale
    eps = settings.epsilon * scale
    dim = target.shape[1]
    const = slicing_constant(dim) / settings.n_directions
    v_part = torch.zeros_like(particles)
    v_pass = torch.zeros_like(passengers)
    for k in range(settings.n_iter):
        u = draw_directions(settings.n_directions, dim, settings.scheme, generator, device=dev).to(dt)  # (P, D)
        ux, uy = u[:, :dx], u[:, dx:]
        pt = u @ target.T  # (P, M), rows contiguous for sorting
        pz = ux @ particles.T + uy @ y_part.T  # the ensemble's y parts are the joint sample's
        pq = ux @ passengers.T + uy @ p_obs.T
        slope_z = witness_slope_1d(pz, pt, epsilon=eps)  # (P, M)
        slope_q = witness_field_1d(pq, pz, pt, epsilon=eps)  # (P, B K)
        g_z = const * (slope_z.to(dt).T @ ux)
        g_q = const * (slope_q.to(dt).T @ ux)
        step = h * settings.step_factor(k)
        v_part.mul_(settings.momentum).add_(g_z)
        v_pass.mul_(settings.momentum).add_(g_q)
        particles = particles - step * v_part
        passengers = passengers - step * v_pass
    out = passengers.reshape(b_obs, n_samples, dx)
    return out[0] if single else out
