"""A Gaussian target of any dimension with exact samples and log Z (for tests)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sampler.errors import ConfigurationError
from sampler.targets.base import Target


def _array(value, label: str) -> np.ndarray:
    arr = np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ConfigurationError(f"{label} must be finite")
    return arr


class Gaussian(Target):
    """Unnormalized ``N(mean, cov)``: ``log_prob(x) = -0.5 (x - mean)^T cov^{-1} (x - mean)``.

    The normalizer is therefore ``log_Z = 0.5 log det(2 pi cov)`` (not 0), which makes it a
    useful check of log Z estimates.

    Args:
        dim: dimension d (default: from ``mean``, ``cov`` or ``scale``, else 2); all that are
            given must agree.
        mean: ``(d,)`` or a scalar (default 0).
        cov: ``(d, d)`` symmetric positive definite; or
        scale: a scalar or ``(d,)`` standard deviation for a diagonal covariance (default 1).
    """

    def __init__(self, dim: int | None = None, mean=0.0, cov=None, scale=1.0):
        mean_arr = _array(mean, "mean")
        scale_arr = _array(scale, "scale")
        cov_arr = None if cov is None else _array(cov, "cov")
        sizes = {
            "dim": dim,
            "mean": mean_arr.shape[0] if mean_arr.ndim == 1 else None,
            "cov": cov_arr.shape[0] if cov_arr is not None and cov_arr.ndim >= 1 else None,
            "scale": scale_arr.shape[0] if scale_arr.ndim == 1 and cov is None else None,
        }
        given = {k: v for k, v in sizes.items() if v is not None}
        if len(set(given.values())) > 1:
            raise ConfigurationError(f"inconsistent dimensions: {given}")
        dim = next(iter(given.values()), 2)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigurationError(f"dim must be a positive integer, got {dim!r}")
        if mean_arr.ndim > 1 or scale_arr.ndim > 1:
            raise ConfigurationError("mean and scale must be scalars or vectors")
        if cov_arr is None:
            if not (np.isfinite(scale_arr).all() and (scale_arr > 0).all()):
                raise ConfigurationError(f"scale must be positive and finite, got {scale!r}")
            cov_arr = np.diag(np.broadcast_to(scale_arr, (dim,)) ** 2)
        if cov_arr.shape != (dim, dim) or not np.allclose(cov_arr, cov_arr.T):
            raise ConfigurationError(f"cov must be a symmetric ({dim}, {dim}) matrix, got shape {cov_arr.shape}")
        try:
            chol = np.linalg.cholesky(cov_arr)
        except np.linalg.LinAlgError:
            raise ConfigurationError("cov must be positive definite") from None
        self.dim = dim
        self.mean = np.broadcast_to(mean_arr, (dim,)).copy()
        self.cov = cov_arr
        self.chol = chol
        self.precision = np.linalg.inv(cov_arr)
        self.log_Z = float(0.5 * dim * math.log(2 * math.pi) + np.log(np.diag(chol)).sum())

    @property
    def name(self) -> str:
        return f"gaussian-{self.dim}"

    def log_prob(self, x: Tensor) -> Tensor:
        diff = x - self.constant("mean", x)
        return -0.5 * (diff @ self.constant("precision", x) * diff).sum(-1)

    def grad_log_prob(self, x: Tensor) -> Tensor:
        return -(x - self.constant("mean", x)) @ self.constant("precision", x)

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both from one product ``(x - mean) @ precision`` (one matrix product instead of two)."""
        diff = x - self.constant("mean", x)
        scaled = diff @ self.constant("precision", x)
        return -0.5 * (scaled * diff).sum(-1), -scaled

    def sample(self, n, generator=None, device=None, dtype=None) -> Tensor:
        """``n`` exact draws ``(n, d)``: ``mean + L z`` with ``cov = L L^T``."""
        device = self.sample_device(generator, device)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        return self.constant("mean", z) + z @ self.constant("chol", z).T
