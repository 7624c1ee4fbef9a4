"""Importance-weight and between-chain statistics: PSIS Pareto k, R-hat and bulk ESS (ArviZ)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from sampler.io._arviz import arviz

__all__ = ["pareto_k", "rhat_and_ess"]


def pareto_k(log_weights: torch.Tensor) -> np.ndarray:
    """PSIS Pareto shape ``k`` of the importance weights, per replica ``(R,)`` (ArviZ's psislw).

    ``k < 0.5``: reliable; ``0.5 <= k < 0.7``: usable; ``k >= 0.7``: the weights' tail is too
    heavy for the estimates to be trusted. NaN where the weights are all equal.
    """
    lw = log_weights.detach().to("cpu", torch.float64).numpy()
    if lw.shape[-1] < 10 or np.all(lw == lw[..., :1]):
        return np.full(lw.shape[:-1], np.nan)
    lw = np.where(np.isfinite(lw), lw, -1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, k = arviz().psislw(lw)
    return np.atleast_1d(np.asarray(k, dtype=np.float64))


def rhat_and_ess(samples: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalized split R-hat and bulk ESS per coordinate, from ``(chains, draws, d)``."""
    x = samples.detach().to("cpu", torch.float64).numpy()
    az = arviz()
    if x.shape[0] < 2 and x.shape[1] < 4:
        nan = np.full(x.shape[-1], np.nan)
        return nan, nan
    data = az.convert_to_dataset({"x": x})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rh = az.rhat(data)["x"].values
        es = az.ess(data, method="bulk")["x"].values
    return np.asarray(rh, dtype=np.float64), np.asarray(es, dtype=np.float64)
