"""Importance-weight and between-chain statistics: PSIS Pareto k, R-hat and bulk ESS (ArviZ)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from sampler.io._arviz import arviz, pareto_k

__all__ = ["pareto_k", "rhat_and_ess"]


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
