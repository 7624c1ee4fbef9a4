"""Import ArviZ lazily and quietly (0.2x warns about its coming refactor on import); PSIS Pareto k."""

from __future__ import annotations

import functools
import warnings
from types import ModuleType

import numpy as np
import torch


@functools.cache
def arviz() -> ModuleType:
    """The ``arviz`` module, imported on first use with its refactor notice silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
        import arviz as az
    return az


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
