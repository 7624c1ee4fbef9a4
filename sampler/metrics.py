"""Sample-quality metrics against exact answers (energy distance, mode coverage, log Z error).

The energy distance follows the benchmark convention (half of Székely's statistic, with
V-statistics): ``E|X - Y| - 0.5 E|X - X'| - 0.5 E|Y - Y'|``, equal to the MMD^2 of the kernel
``-|x - y| / 2``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["energy_distance", "mean_pairwise_distance", "nearest_mode", "mode_fractions", "modes_covered"]


def mean_pairwise_distance(x: Tensor, y: Tensor, chunk: int = 2048) -> Tensor:
    """``mean_{i,j} |x_i - y_j|`` for ``x`` ``(n, d)``, ``y`` ``(m, d)``, in float64, O(n m) in chunks."""
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], chunk):
        total = total + torch.cdist(x[start : start + chunk], y).sum()
    return total / (x.shape[0] * y.shape[0])


def energy_distance(x: Tensor, y: Tensor, chunk: int = 2048) -> float:
    """Exact energy distance (V-statistic, benchmark convention) between samples ``(n, d)`` and ``(m, d)``."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d) samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    xy = mean_pairwise_distance(x, y, chunk)
    xx = mean_pairwise_distance(x, x, chunk)
    yy = mean_pairwise_distance(y, y, chunk)
    return float(xy - 0.5 * xx - 0.5 * yy)


def nearest_mode(x: Tensor, modes: Tensor | np.ndarray) -> Tensor:
    """Index of the nearest mode for each point: ``x`` ``(..., d)``, ``modes`` ``(K, d)`` -> ``(...)``."""
    m = torch.as_tensor(modes, dtype=x.dtype, device=x.device)
    return torch.cdist(x.reshape(-1, x.shape[-1]), m).argmin(-1).reshape(x.shape[:-1])


def mode_fractions(x: Tensor, modes: Tensor | np.ndarray) -> Tensor:
    """Fraction of points nearest to each mode, ``(K,)`` for ``x`` ``(n, d)``."""
    idx = nearest_mode(x, modes).flatten()
    k = len(modes)
    return torch.bincount(idx, minlength=k).to(torch.float64) / idx.numel()


def modes_covered(x: Tensor, modes: Tensor | np.ndarray, min_fraction: float | None = None) -> int:
    """Number of modes holding at least ``min_fraction`` of the points (nearest-mode assignment).

    The default, ``0.1 / K``, asks for a tenth of an equal share, so stray points do not count.
    """
    fractions = mode_fractions(x, modes)
    threshold = 0.1 / len(modes) if min_fraction is None else min_fraction
    return int((fractions >= threshold).sum())
