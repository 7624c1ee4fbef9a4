"""Mode-weight uncertainty of a sampler: a Dirichlet fitted to per-replica mode fractions.

For a mixture target, each replica's particles split among the modes in proportions that lie
on the simplex. Fitting a Dirichlet to those proportions across the R replicas gives their
mean and a concentration ``alpha_0``: ``var(fraction_k) = m_k (1 - m_k) / (alpha_0 + 1)``, so a
large ``alpha_0`` means the replicas reproduce the weights closely, and ``alpha_0 ~ N`` is what
independent exact draws would give (multinomial noise alone).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from sampler.ext import ConfigurationError, nearest_mode
from sampler_plugins.vbmm.dirichlet import DirichletFit, fit_dirichlet

__all__ = ["mode_fractions_per_replica", "mode_weight_dirichlet"]


def mode_fractions_per_replica(samples: Tensor, modes: Tensor | np.ndarray, pseudocount: float = 0.5) -> Tensor:
    """Smoothed fraction of each replica's particles nearest to each mode, ``(R, K)`` float64.

    ``samples`` ``(R, N, d)``; ``modes`` ``(K, d)``. A replica that misses a mode would give a
    zero fraction and an infinite ``log``; the counts get ``pseudocount`` added
    (``(count + c) / (N + c K)``, Jeffreys' 1/2 by default), which keeps them on the open simplex.
    """
    if samples.ndim != 3:
        raise ConfigurationError(f"samples must have shape (R, N, d), got {tuple(samples.shape)}")
    if not pseudocount > 0:
        raise ConfigurationError(f"pseudocount must be positive, got {pseudocount!r}")
    k = len(modes)
    idx = nearest_mode(samples, modes)  # (R, N)
    counts = torch.zeros(samples.shape[0], k, dtype=torch.float64, device=samples.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return (counts + pseudocount) / (samples.shape[1] + pseudocount * k)


def mode_weight_dirichlet(result: Any, modes: Tensor | np.ndarray | None = None, **options: Any) -> DirichletFit:
    """Dirichlet fit (by VBMM) of the per-replica mode fractions of ``result``.

    Args:
        result: a :class:`sampler.Result` (its ``samples`` ``(R, N, d)`` are used) or a tensor
            ``(R, N, d)``; needs ``R >= 2`` replicas.
        modes: ``(K, d)`` mode locations (e.g. ``target.modes``); ``K >= 2``.
        **options: for :func:`~sampler_plugins.vbmm.dirichlet.fit_dirichlet`, plus ``pseudocount``
            for :func:`mode_fractions_per_replica`. The solver defaults to ``"newton"``: mode
            fractions are highly concentrated (``alpha_0 ~ N``), where every majorization-
            minimization scheme, VBMM included, needs thousands of iterations and Newton a few.

    Returns:
        the fit: ``alpha`` ``(K,)``, ``concentration`` (``alpha_0``), ``mean`` (average weights).
    """
    samples = result.samples if hasattr(result, "samples") else torch.as_tensor(result)
    if modes is None:
        raise ConfigurationError("mode_weight_dirichlet needs the target's modes (K, d)")
    if samples.shape[0] < 2:
        raise ConfigurationError(f"mode weights across replicas need at least 2 replicas, got {samples.shape[0]}")
    if len(modes) < 2:
        raise ConfigurationError(f"a Dirichlet over mode weights needs at least 2 modes, got {len(modes)}")
    pseudocount = options.pop("pseudocount", 0.5)
    options.setdefault("solver", "newton")
    fractions = mode_fractions_per_replica(samples.detach(), modes, pseudocount)
    return fit_dirichlet(fractions, **options)
