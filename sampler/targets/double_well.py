"""The 2D double well of the stochastic-normalizing-flow paper (Wu, Köhler & Noé 2020)."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from sampler.errors import ConfigurationError
from sampler.targets.base import BoltzmannTarget

#: Integration range of the 1D marginal; its density is below e^-150 outside.
_A_RANGE = (-6.0, 6.0)


def _quartic(a):
    return a**4 - 6 * a**2 - 0.5 * a


def _marginal_mass(beta: float, lo: float, hi: float, points: list[float]) -> tuple[float, float]:
    """``int_lo^hi exp(-beta (a^4 - 6a^2 - 0.5a)) da`` as (value / e^shift, shift), by quadrature."""
    from scipy import integrate  # imported here: scipy costs ~0.3 s of every start-up otherwise

    shift = float(-beta * _quartic(np.array([1.7526]))[0])  # the exponent's maximum, at the deeper mode
    f = lambda a: math.exp(-beta * _quartic(a) - shift)  # noqa: E731
    value, _ = integrate.quad(f, lo, hi, points=points, limit=200, epsabs=0, epsrel=1e-13)
    return value, shift


@functools.cache
def _marginal_log_norm(beta: float) -> float:
    """``log int exp(-beta (a^4 - 6a^2 - 0.5a)) da`` by adaptive quadrature (split at the modes)."""
    value, shift = _marginal_mass(beta, *_A_RANGE, [-1.71, 0.0, 1.75])
    return math.log(value) + shift


@functools.cache
def _marginal_cdf_table(beta: float, n: int = 200_001) -> tuple[np.ndarray, np.ndarray]:
    """Grid and CDF of the first coordinate's marginal (trapezoid rule, float64)."""
    grid = np.linspace(*_A_RANGE, n)
    logp = -beta * _quartic(grid)
    p = np.exp(logp - logp.max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(grid))])
    return grid, cdf / cdf[-1]


def inverse_cdf(u: Tensor, grid: Tensor, cdf: Tensor) -> Tensor:
    """Invert a tabulated CDF by linear interpolation: ``F^-1(u)`` for ``u`` of any shape.

    ``grid`` and ``cdf`` are 1D (increasing, ``cdf`` from 0 to 1) on ``u``'s device and dtype, e.g.
    the table of :func:`_marginal_cdf_table` fetched with ``Target.constant``.
    """
    i = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.numel() - 1)
    lo, hi = cdf[i - 1], cdf[i]
    frac = ((u - lo) / (hi - lo).clamp_min(1e-300)).clamp(0, 1)
    return grid[i - 1] + frac * (grid[i] - grid[i - 1])


class DoubleWell(BoltzmannTarget):
    """``U(x) = x1^4 - 6 x1^2 - 0.5 x1 + 0.5 x2^2`` on R^2, density ``exp(-beta U)`` (unnormalized).

    Two modes near ``x1 = +1.75`` (deeper, weight ~0.844 at beta = 1) and ``x1 = -1.71``;
    ``x2 ~ N(0, 1/beta)``. ``log_Z = log int exp(-beta (a^4 - 6a^2 - 0.5a)) da + 0.5 log(2 pi / beta)``
    by quadrature, ~10.2935 at beta = 1. Exact samples: inverse CDF of the first coordinate's
    marginal on a fine grid (200,001 points on [-6, 6]), then the Gaussian ``x2``.
    """

    dim = 2
    reference_scale = 2.0

    def __init__(self, beta: float = 1.0) -> None:
        if not (math.isfinite(beta) and beta > 0):
            raise ConfigurationError(f"beta must be positive and finite, got {beta!r}")
        self.beta = float(beta)
        self.log_Z = _marginal_log_norm(self.beta) + 0.5 * math.log(2 * math.pi / self.beta)
        self.grid, self.cdf = _marginal_cdf_table(self.beta)

    @property
    def name(self) -> str:
        return "double-well"

    def energy(self, x: Tensor) -> Tensor:
        a, b = x[..., 0], x[..., 1]
        a2 = a * a  # products, not powers: torch's CPU pow is ~25x slower for the exponent 4
        return a2 * (a2 - 6.0) - 0.5 * a + 0.5 * (b * b)

    def grad_log_prob(self, x: Tensor) -> Tensor:
        a, b = x[..., 0], x[..., 1]
        return -self.beta * torch.stack([a * (4.0 * (a * a) - 12.0) - 0.5, b], dim=-1)

    def positive_mode_weight(self) -> float:
        """Exact probability that ``x1 > 0`` (by quadrature)."""
        pos, _ = _marginal_mass(self.beta, 0.0, _A_RANGE[1], [1.75])
        neg, _ = _marginal_mass(self.beta, _A_RANGE[0], 0.0, [-1.71])
        return pos / (pos + neg)

    def sample(self, n, generator=None, device=None, dtype=None) -> Tensor:
        """``n`` exact draws ``(n, 2)``."""
        device = self.sample_device(generator, device)
        dtype = dtype or torch.get_default_dtype()
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        a = inverse_cdf(u, self.constant("grid", u), self.constant("cdf", u))
        b = torch.randn(n, generator=generator, device=device, dtype=torch.float64) / math.sqrt(self.beta)
        return torch.stack([a, b], dim=-1).to(dtype)
