"""Many independent copies of the 2D double well (FAB's "many well")."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from sampler.errors import ConfigurationError
from sampler.targets.base import BoltzmannTarget
from sampler.targets.double_well import DoubleWell, _marginal_cdf_table, _quartic, inverse_cdf


class ManyWell(BoltzmannTarget):
    """``n_wells`` (default 16) independent 2D double wells: d = 32, unnormalized.

    Coordinates come in pairs ``x = (a_1, b_1, a_2, b_2, ..., a_16, b_16)`` and::

        U(x) = sum_k a_k^4 - 6 a_k^2 - 0.5 a_k + 0.5 b_k^2,     density exp(-beta U(x)),

    i.e. each pair is the ``double-well`` target (:class:`DoubleWell`). ``log_Z`` is ``n_wells``
    times the double well's (quadrature), ~164.696 for 16 wells at ``beta = 1``. Exact samples:
    every ``a_k`` by inverse CDF of the double well's tabulated 1D marginal (the same table and
    interpolation as :class:`DoubleWell`), every ``b_k ~ N(0, 1/beta)``.

    Provenance: the 32-dimensional "many well" of Midgley et al., *Flow annealed importance
    sampling bootstrap* (FAB, ICLR 2023), whose ``ManyWellEnergy`` sums the double well over
    consecutive coordinate pairs as here.

    Modes: ``2^n_wells`` (65,536), one per sign pattern of the ``a`` coordinates; each well is in
    its deeper ``a > 0`` mode with probability ``w = positive_mode_weight()`` (~0.844),
    independently, so a pattern with ``m`` positive wells has probability ``w^m (1 - w)^(16 - m)``
    (from 0.066% for all-positive down to ~1e-13). Counting visited patterns is therefore not a
    useful coverage measure; :meth:`mode_signs` gives the pattern of samples, and coverage is
    measured by the per-well frequency of ``a_k > 0`` against ``w`` and by the number of positive
    wells per sample against ``Binomial(n_wells, w)``.

    Reference hint: the moment-matched (mass-covering) diagonal Gaussian, from the exact marginal:
    ``a_k``: mean ~1.19, std ~1.24 (both wells within 2.4 std); ``b_k``: mean 0, std ``1/sqrt(beta)``.
    """

    def __init__(self, n_wells: int = 16, beta: float = 1.0) -> None:
        if isinstance(n_wells, bool) or not isinstance(n_wells, int) or n_wells < 1:
            raise ConfigurationError(f"n_wells must be a positive integer, got {n_wells!r}")
        self.well = DoubleWell(beta)  # validates beta; one pair's log Z and mode weight
        self.beta = self.well.beta
        self.n_wells = n_wells
        self.dim = 2 * n_wells
        self.log_Z = n_wells * float(self.well.log_Z)  # type: ignore[arg-type]  # DoubleWell always knows it
        self.grid, self.cdf = _marginal_cdf_table(self.beta)
        mean_a, std_a = _marginal_moments(self.beta)
        self.reference_loc = np.tile([mean_a, 0.0], n_wells)
        self.reference_scale = np.tile([std_a, 1.0 / math.sqrt(self.beta)], n_wells)

    @property
    def name(self) -> str:
        return "manywell" if self.n_wells == 16 else f"manywell-{self.n_wells}"

    def energy(self, x: Tensor) -> Tensor:
        a, b = x[..., 0::2], x[..., 1::2]
        a2 = a * a  # products, not powers: torch's CPU pow is ~25x slower for the exponent 4
        return (a2 * (a2 - 6.0) - 0.5 * a + 0.5 * (b * b)).sum(-1)

    def grad_log_prob(self, x: Tensor) -> Tensor:
        a, b = x[..., 0::2], x[..., 1::2]
        grad = torch.stack([a * (4.0 * (a * a) - 12.0) - 0.5, b], dim=-1).flatten(-2)
        return -self.beta * grad

    def positive_mode_weight(self) -> float:
        """Probability that one well is in its deeper mode, ``P(a_k > 0)`` (quadrature)."""
        return self.well.positive_mode_weight()

    def mode_signs(self, x: Tensor) -> Tensor:
        """The mode of each sample: ``a_k > 0`` per well, a boolean tensor ``(..., n_wells)``."""
        return x[..., 0::2] > 0

    def sample(self, n, generator=None, device=None, dtype=None) -> Tensor:
        """``n`` exact draws ``(n, 2 n_wells)``."""
        device = self.sample_device(generator, device)
        dtype = dtype or torch.get_default_dtype()
        u = torch.rand(n, self.n_wells, generator=generator, device=device, dtype=torch.float64)
        a = inverse_cdf(u, self.constant("grid", u), self.constant("cdf", u))
        b = torch.randn(n, self.n_wells, generator=generator, device=device, dtype=torch.float64) / math.sqrt(self.beta)
        return torch.stack([a, b], dim=-1).reshape(n, self.dim).to(dtype)


@functools.cache
def _marginal_moments(beta: float) -> tuple[float, float]:
    """Mean and standard deviation of ``a`` under ``exp(-beta (a^4 - 6a^2 - 0.5a))`` (trapezoid, fine grid)."""
    grid, _ = _marginal_cdf_table(beta)
    logp = -beta * _quartic(grid)
    p = np.exp(logp - logp.max())
    w = np.full(grid.shape, grid[1] - grid[0])  # trapezoid weights on the uniform grid
    w[[0, -1]] *= 0.5
    mass = (w * p).sum()
    mean = (w * grid * p).sum() / mass
    var = (w * (grid - mean) ** 2 * p).sum() / mass
    return float(mean), float(math.sqrt(var))
