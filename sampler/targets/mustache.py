"""The 2D "mustache" (Schnauzbart) target of the neural JKO sampling papers."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sampler.targets.base import Target

#: Covariance of the Gaussian that is pulled back.
_SIGMA = np.array([[1.0, 0.9], [0.9, 1.0]])


class Mustache(Target):
    """A correlated Gaussian pulled back through a volume-preserving bend (d = 2, normalized).

    Definition: ``pi(x) = N(T(x); 0, Sigma)`` with ``Sigma = [[1, 0.9], [0.9, 1]]`` and
    ``T(x1, x2) = (x1, x2 - (x1^2 - 1)^2)``. ``det grad T = 1``, so ``pi`` is normalized
    (``log_Z = 0``)::

        log pi(x) = -0.5 T(x)^T Sigma^-1 T(x) - log(2 pi sqrt(det Sigma)),   det Sigma = 0.19.

    Exact samples: ``z ~ N(0, Sigma)``, ``x = T^-1(z) = (z1, z2 + (z1^2 - 1)^2)``.

    Provenance: the "mustache" of Vidal, Lopez-Sanchez, Hertrich & Steidl, *Importance corrected
    neural JKO sampling* (and of the WFR-JKO paper); their code writes the sampler as ``-T(z)``
    with the symmetry of ``N(0, Sigma)``, which is the same law.

    Reference hint: the moment-matched (mass-covering) diagonal Gaussian, ``loc = (0, 2)`` and
    ``scale = (1, sqrt(57))``. Exactly: ``x1 ~ N(0, 1)``; ``x2 = z2 + (z1^2 - 1)^2`` has mean
    ``E(z1^2 - 1)^2 = 2`` and variance ``1 + Var((z1^2 - 1)^2) = 1 + (60 - 4) = 57`` (``z2`` and
    ``(z1^2 - 1)^2`` are uncorrelated by symmetry). The x2 tail is heavier than Gaussian (it grows
    like ``x1^4``), which no Gaussian reference matches: along a geometric path from this one the
    far arm (|x1| > 2.5, 1.4% of the mass) gains its mass only in the last temperatures, where
    local MCMC moves cannot carry particles along it, and ``smc`` leaves it empty
    (docs/methods.md, "Where the path cannot carry the mass").
    """

    dim = 2
    log_Z = 0.0
    reference_loc = np.array([0.0, 2.0])
    reference_scale = np.array([1.0, math.sqrt(57.0)])

    def __init__(self) -> None:
        self.sigma = _SIGMA.copy()
        self.precision = np.linalg.inv(_SIGMA)
        self.chol = np.linalg.cholesky(_SIGMA)
        self._log_norm = -math.log(2 * math.pi * math.sqrt(np.linalg.det(_SIGMA)))

    @property
    def name(self) -> str:
        return "mustache"

    @staticmethod
    def transform(x: Tensor) -> Tensor:
        """``T(x) = (x1, x2 - (x1^2 - 1)^2)``, shape ``(..., 2)``."""
        x1, x2 = x[..., 0], x[..., 1]
        return torch.stack([x1, x2 - (x1**2 - 1) ** 2], dim=-1)

    def log_prob(self, x: Tensor) -> Tensor:
        y = self.transform(x)
        return -0.5 * ((y @ self.constant("precision", x)) * y).sum(-1) + self._log_norm

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Log density and its analytic gradient ``J_T(x)^T (-Sigma^-1 T(x))``."""
        y = self.transform(x)
        gy = -(y @ self.constant("precision", x))  # gradient in y = T(x) (precision is symmetric)
        lp = 0.5 * (gy * y).sum(-1) + self._log_norm
        x1 = x[..., 0]
        dy2_dx1 = -4 * x1 * (x1**2 - 1)
        grad = torch.stack([gy[..., 0] + gy[..., 1] * dy2_dx1, gy[..., 1]], dim=-1)
        return lp, grad

    def grad_log_prob(self, x: Tensor) -> Tensor:
        return self.log_prob_and_grad(x)[1]

    def sample(self, n, generator=None, device=None, dtype=None) -> Tensor:
        """``n`` exact draws ``(n, 2)``: ``z = L e ~ N(0, Sigma)``, then ``(z1, z2 + (z1^2 - 1)^2)``."""
        device = self.sample_device(generator, device)
        e = torch.randn(n, 2, generator=generator, device=device, dtype=dtype)
        z = e @ self.constant("chol", e).T
        z1, z2 = z[:, 0], z[:, 1]
        return torch.stack([z1, z2 + (z1**2 - 1) ** 2], dim=-1)
