"""Particle flows of the sliced energy distance (MMD with the negative-distance kernel).

Particles ``x`` descend ``F(x) = ED(x, y)`` toward target samples ``y`` (weighted or not) by
heavy-ball gradient descent on the Wasserstein gradient ``∇φ`` (the witness slope of
:mod:`~sampler_plugins.mmd_flow.sliced`), with fresh slicing directions at every iteration:

    v <- momentum * v + ∇φ(x),        x <- x - h * v,

where ``h = step_size * scale`` and ``scale`` is a length of the target sample (its RMS
coordinate standard deviation unless given), so ``step_size`` is dimensionless. ``∇φ`` has
norm at most 2, so a step moves a particle by at most ``2 h / (1 - momentum)``. The step size is
held for the first part of the run and then decays geometrically to ``final_step_size`` (as a
fraction of the first), which lets the particles settle on the fine structure.

This is the flow of Hertrich et al. ("Generative sliced MMD flows with Riesz kernels",
ICLR 2024): ``x <- x - step N grad F`` with momentum, ``N grad_{x_i} F = ∇φ(x_i)`` for equal
weights. It moves samples, it has no density: the flowed particles carry no importance weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import torch
from torch import Tensor

from sampler.ext import ConfigurationError, check_positive_int, projected_energy_distances, slicing_constant
from sampler_plugins.mmd_flow.directions import check_scheme, draw_directions
from sampler_plugins.mmd_flow.sliced import _as_batched, _weights, sliced_witness_gradient

__all__ = ["FlowSettings", "FlowResult", "mmd_flow", "sample_scale"]


@attrs.frozen
class FlowSettings:
    """Options of :func:`mmd_flow` (validated).

    Attributes:
        n_iter: gradient steps.
        step_size: ``h / scale`` (dimensionless).
        momentum: heavy-ball coefficient in [0, 1).
        n_directions: slicing directions per step (P).
        scheme: ``"iid"``, ``"orthogonal"`` or ``"qmc"`` directions (redrawn every step).
        epsilon: smoothing width of the distance kernel, as a fraction of ``scale`` (0: the
            plain distance kernel).
        decay_start: fraction of ``n_iter`` after which the step size starts to decay.
        final_step_size: step size at the last iteration as a fraction of ``step_size``.
        scale: the length unit of ``h`` and ``epsilon``; None: the RMS coordinate standard
            deviation of the (weighted) target sample, per replica.
    """

    n_iter: int = 500
    step_size: float = 1.0
    momentum: float = 0.8
    n_directions: int = 64
    scheme: str = "qmc"
    epsilon: float = 0.0
    decay_start: float = 0.5
    final_step_size: float = 0.05
    scale: float | None = None

    def __attrs_post_init__(self) -> None:
        check_positive_int("n_iter", self.n_iter)
        check_positive_int("n_directions", self.n_directions)
        check_scheme(self.scheme)
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ConfigurationError(f"step_size must be positive, got {self.step_size!r}")
        if not 0 <= self.momentum < 1:
            raise ConfigurationError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if not (self.epsilon >= 0 and math.isfinite(self.epsilon)):
            raise ConfigurationError(f"epsilon must be >= 0, got {self.epsilon!r}")
        if not 0 <= self.decay_start <= 1:
            raise ConfigurationError(f"decay_start must lie in [0, 1], got {self.decay_start!r}")
        if not 0 < self.final_step_size <= 1:
            raise ConfigurationError(f"final_step_size must lie in (0, 1], got {self.final_step_size!r}")
        if self.scale is not None and not (self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigurationError(f"scale must be positive, got {self.scale!r}")

    def step_factor(self, k: int) -> float:
        """Multiplier of the step size at iteration ``k`` (0-based): 1, then geometric decay."""
        start = int(self.decay_start * self.n_iter)
        if k < start or self.n_iter - start <= 1:
            return 1.0
        return self.final_step_size ** ((k - start) / (self.n_iter - start - 1))


@attrs.frozen
class FlowResult:
    """Outcome of :func:`mmd_flow`.

    Attributes:
        x: flowed particles ``(R, N, d)`` in the input's dtype.
        iterations: iterations at which the energy distance was recorded ``(K,)`` int64.
        energy_distance: sliced energy distance to the target sample at those iterations
            ``(K, R)`` float64 (estimated on the step's own directions; empty unless recorded).
        scale: the length unit used per replica ``(R,)`` float64.
    """

    x: Tensor
    iterations: Tensor
    energy_distance: Tensor
    scale: Tensor


def sample_scale(y: Tensor, weights: Tensor | None = None) -> Tensor:
    """RMS coordinate standard deviation of a (weighted) sample ``(R, M, d)`` -> ``(R,)`` float64.

    ``sqrt(mean_k Var(y_k))``; 1 where the sample is a single point.
    """
    y64 = y.to(torch.float64)
    if weights is None:
        w = torch.full(y.shape[:2], 1.0 / y.shape[1], dtype=torch.float64, device=y.device)
    else:
        w = weights
    mean = torch.einsum("rm,rmd->rd", w, y64)
    var = torch.einsum("rm,rmd->rd", w, (y64 - mean[:, None]) ** 2).mean(-1)
    s = var.sqrt()
    return torch.where(s > 0, s, torch.ones_like(s))


def mmd_flow(
    x0: Tensor,
    y: Tensor,
    y_weights: Tensor | None = None,
    settings: FlowSettings | None = None,
    generator: torch.Generator | None = None,
    record_every: int = 0,
    callback: Callable[[int, Tensor], None] | None = None,
    **options,
) -> FlowResult:
    """Flow particles ``x0`` toward the (weighted) sample ``y`` by descending the sliced energy distance.

    Args:
        x0: initial particles ``(N, d)`` or ``(R, N, d)`` (equally weighted).
        y: target samples ``(M, d)`` or ``(R, M, d)``.
        y_weights: nonnegative weights ``(M,)`` or ``(R, M)`` of ``y`` (normalized here).
        settings: a :class:`FlowSettings`; or pass its fields as keyword ``options``.
        generator: draws the slicing directions (the global RNG if None).
        record_every: record the sliced energy distance every this many iterations (0: never);
            it costs one more sort per direction at those iterations.
        callback: called as ``callback(k, x)`` after each iteration (for progress bars).

    Returns:
        a :class:`FlowResult` with the particles ``(R, N, d)``.
    """
    if settings is None:
        settings = FlowSettings(**options)
    elif options:
        settings = attrs.evolve(settings, **options)
    x = _as_batched(x0, "x0")
    y3 = _as_batched(y, "y").to(device=x.device, dtype=x.dtype)
    if x.shape[-1] != y3.shape[-1]:
        raise ConfigurationError(f"x0 and y must have the same dimension, got {x.shape[-1]} and {y3.shape[-1]}")
    r = max(x.shape[0], y3.shape[0])
    x = x.expand(r, *x.shape[1:]).clone()
    y3 = y3.expand(r, *y3.shape[1:])
    b = _weights(y_weights, (r, y3.shape[1]), x, "y_weights")
    scale = (
        sample_scale(y3, b)
        if settings.scale is None
        else torch.full((r,), settings.scale, dtype=torch.float64, device=x.device)
    )
    # The smoothing width must be one number per call of the 1D routines: use the replicas' mean.
    eps = settings.epsilon * float(scale.mean())
    h0 = (settings.step_size * scale).to(x.dtype)[:, None, None]
    d = x.shape[-1]
    velocity = torch.zeros_like(x)
    iters, eds = [], []
    for k in range(settings.n_iter):
        dirs = draw_directions(settings.n_directions, d, settings.scheme, generator, device=x.device)
        if record_every and k % record_every == 0:
            iters.append(k)
            eds.append(_sliced_ed(x, y3, b, dirs))
        grad = sliced_witness_gradient(x, y3, None, b, epsilon=eps, directions=dirs)
        velocity.mul_(settings.momentum).add_(grad)
        x.sub_(h0 * settings.step_factor(k) * velocity)
        if callback is not None:
            callback(k, x)
    if record_every:
        dirs = draw_directions(settings.n_directions, d, settings.scheme, generator, device=x.device)
        iters.append(settings.n_iter)
        eds.append(_sliced_ed(x, y3, b, dirs))
    ed = torch.stack(eds) if eds else torch.zeros(0, r, dtype=torch.float64, device=x.device)
    return FlowResult(x=x, iterations=torch.tensor(iters, dtype=torch.int64), energy_distance=ed, scale=scale)


def _sliced_ed(x: Tensor, y: Tensor, b: Tensor | None, dirs: Tensor) -> Tensor:
    """Sliced energy distance per replica ``(R,)`` on the given directions."""
    c = slicing_constant(x.shape[-1])
    out = [
        c * projected_energy_distances(y[i], x[i], dirs, weights=None if b is None else b[i]).mean()
        for i in range(x.shape[0])
    ]
    return torch.stack(out)
