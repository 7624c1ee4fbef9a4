"""A Gaussian target of any dimension with exact samples and log Z (for tests)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sampler.errors import ConfigurationError
from sampler.targets.base import Target


class Gaussian(Target):
    """Unnormalized ``N(mean, cov)``: ``log_prob(x) = -0.5 (x - mean)^T cov^{-1} (x - mean)``.

    The normalizer is therefore ``log_Z = 0.5 log det(2 pi cov)`` (not 0), which makes it a
    useful check of log Z estimates.

    Args:
        dim: dimension d (taken from ``mean``/``cov`` when given).
        mean: ``(d,)`` or a scalar (default 0).
        cov: ``(d, d)`` symmetric positive definite; or
        scale: a scalar or ``(d,)`` standard deviation for a diagonal covariance (default 1).
    """

    def __init__(self, dim: int = 2, mean=0.0, cov=None, scale=1.0):
        mean_arr = np.asarray(mean.detach().cpu() if isinstance(mean, Tensor) else mean, dtype=np.float64)
        if cov is not None:
            cov_arr = np.asarray(cov.detach().cpu() if isinstance(cov, Tensor) else cov, dtype=np.float64)
            dim = cov_arr.shape[0]
        elif mean_arr.ndim == 1:
            dim = mean_arr.shape[0]
        if not isinstance(dim, int) or dim < 1:
            raise ConfigurationError(f"dim must be a positive integer, got {dim!r}")
        if cov is None:
            scale_arr = np.broadcast_to(np.asarray(scale, dtype=np.float64), (dim,))
            cov_arr = np.diag(scale_arr**2)
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

    def sample(self, n, generator=None, device=None, dtype=None) -> Tensor:
        """``n`` exact draws ``(n, d)``: ``mean + L z`` with ``cov = L L^T``."""
        device = device if device is not None else (generator.device if generator is not None else None)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        return self.constant("mean", z) + z @ self.constant("chol", z).T
