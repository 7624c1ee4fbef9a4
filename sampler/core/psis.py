"""PSIS Pareto shape ``k`` of importance weights (Vehtari et al. 2024), without importing ArviZ.

The diagnostic of Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed importance
sampling" (JMLR 25(72)): fit a generalized Pareto distribution to the largest ``M`` weights,
``M = ceil(min(S / 5, 3 sqrt(S)))`` of ``S``, by the empirical-Bayes estimate of Zhang & Stephens
(2009), "A new and efficient estimation method for the generalized Pareto distribution"
(Technometrics 51(3)), with the weakly informative prior on ``k`` the paper adds (10 pseudo
observations at 0.5). The shape ``k`` says how heavy the weights' tail is: below 0.5 reliable,
0.5 to 0.7 usable, above 0.7 not to be trusted.

This is ArviZ's ``psislw`` (``reff = 1``) computing ``k`` only, written against the paper so that
the summary and ``reference="auto"`` need not import ArviZ (1.5 s of ``sampler run``'s start-up:
it imports matplotlib and xarray). ``tests/test_psis_and_rhat.py`` checks it against ArviZ to
1e-9.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["pareto_k"]

#: Prior on the fitted ``b`` grid's spread (Zhang & Stephens' 3) and the pseudo-count of the
#: prior on ``k`` centred at 0.5 (Vehtari et al.'s 10).
_PRIOR_BS = 3.0
_PRIOR_K = 10.0


def pareto_k(log_weights: torch.Tensor) -> np.ndarray:
    """PSIS Pareto shape ``k`` of the importance weights, per leading index: ``(..., S)`` → ``(...)``.

    ``k < 0.5``: reliable; ``0.5 <= k < 0.7``: usable; ``k >= 0.7``: the weights' tail is too
    heavy for the estimates to be trusted. Non-finite log weights count as weight 0. NaN where
    there are fewer than 10 weights or all are equal; ``inf`` where the tail has 4 or fewer
    distinct positive weights (nothing to fit).
    """
    lw = log_weights.detach().to("cpu", torch.float64).numpy()
    if lw.shape[-1] < 10 or np.all(lw == lw[..., :1]):
        return np.full(lw.shape[:-1], np.nan)
    lw = np.where(np.isfinite(lw), lw, -1e300)
    rows = lw.reshape(-1, lw.shape[-1])
    with np.errstate(all="ignore"):
        k = np.array([_tail_shape(row) for row in rows])
    return np.atleast_1d(k.reshape(lw.shape[:-1]))


def _tail_shape(log_weights: np.ndarray) -> float:
    """``k`` for one row of ``S`` log weights: the GPD fit to the weights above the cutoff."""
    n = log_weights.shape[0]
    x = np.sort(log_weights - log_weights.max())
    n_tail = int(np.ceil(min(n / 5.0, 3.0 * np.sqrt(n))))
    cutoff = max(x[-n_tail - 1], np.log(np.finfo(float).tiny))
    tail = x[x > cutoff]
    if tail.shape[0] <= 4:
        return float("inf")
    return _gpd_shape(np.exp(tail) - np.exp(cutoff))


def _gpd_shape(y: np.ndarray) -> float:
    """Zhang & Stephens' posterior-mean GPD shape for sorted exceedances ``y`` ``(n,)``, prior on ``k`` added."""
    n = y.shape[0]
    m = 30 + int(np.sqrt(n))
    # The grid of b = -k / sigma: quantile-spaced about 1 / (3 * first quartile), shifted by 1 / max.
    b = 1.0 - np.sqrt(m / (np.arange(1, m + 1, dtype=float) - 0.5))
    b = b / (_PRIOR_BS * y[int(n / 4 + 0.5) - 1]) + 1.0 / y[-1]
    k = np.log1p(-b[:, None] * y).mean(axis=1)
    profile = n * (np.log(-(b / k)) - k - 1.0)  # the profile log likelihood of each b
    weights = 1.0 / np.exp(profile - profile[:, None]).sum(axis=1)
    keep = weights >= 10 * np.finfo(float).eps
    b, weights = b[keep], weights[keep] / weights[keep].sum()
    k_post = np.log1p(-(b * weights).sum() * y).mean()
    return float((n * k_post + _PRIOR_K * 0.5) / (n + _PRIOR_K))
