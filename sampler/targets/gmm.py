"""Gaussian mixtures with isotropic components, and the ``gmm40`` benchmark target."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sampler.errors import ConfigurationError
from sampler.targets.base import Target

#: softplus(1), the per-coordinate standard deviation of FAB's GMM40 components.
FAB_GMM40_STD = math.log1p(math.e)


class GaussianMixture(Target):
    """Equal-weight mixture of ``N(means[k], std^2 I)``, normalized (``log_Z = 0``).

    Args:
        means: ``(K, d)`` component means (the modes, used for coverage metrics).
        std: per-coordinate standard deviation shared by all components.
        name: display name.
    """

    log_Z = 0.0

    def __init__(self, means, std: float, name: str = "gmm"):
        means = np.asarray(means.detach().cpu() if isinstance(means, Tensor) else means, dtype=np.float64)
        if means.ndim != 2 or means.shape[0] < 1:
            raise ConfigurationError(f"means must have shape (K, d), got {means.shape}")
        if not std > 0:
            raise ConfigurationError(f"std must be positive, got {std!r}")
        self.means = means
        self.std = float(std)
        self.dim = means.shape[1]
        self._name = name
        spread = means.std(axis=0).max() if means.shape[0] > 1 else 0.0
        self.reference_loc = means.mean(axis=0)
        self.reference_scale = float(math.hypot(spread, self.std))

    @property
    def name(self) -> str:
        return self._name

    @property
    def modes(self) -> np.ndarray:
        """The component means ``(K, d)``."""
        return self.means

    def _component_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component log densities up to the shared constant ``(..., K)``, and the means."""
        means = self.constant("means", x)
        sq = ((x[..., None, :] - means) ** 2).sum(-1)
        return -0.5 * sq / self.std**2, means

    def _log_norm(self) -> float:
        k, d = self.means.shape
        return -d * (math.log(self.std) + 0.5 * math.log(2 * math.pi)) - math.log(k)

    def log_prob(self, x: Tensor) -> Tensor:
        logits, _ = self._component_logits(x)
        return torch.logsumexp(logits, dim=-1) + self._log_norm()

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Log density and its analytic gradient ``sum_k r_k(x) (mu_k - x) / std^2`` (r: responsibilities)."""
        logits, means = self._component_logits(x)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        resp = torch.exp(logits - lse)
        return lse[..., 0] + self._log_norm(), (resp @ means - x) / self.std**2

    def grad_log_prob(self, x: Tensor) -> Tensor:
        return self.log_prob_and_grad(x)[1]

    def sample(self, n, generator=None, device=None, dtype=None) -> Tensor:
        """``n`` exact draws ``(n, d)``: a uniform component, then its Gaussian."""
        device = self.sample_device(generator, device)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        k = torch.randint(self.means.shape[0], (n,), generator=generator, device=z.device)
        return self.constant("means", z)[k] + self.std * z


class GMM40(GaussianMixture):
    """40 equal-weight 2D Gaussians with std softplus(1) ~ 1.3133 (FAB's GMM40 convention).

    Means are uniform on [-40, 40]^2, drawn exactly as FAB does: a CPU generator seeded with
    ``seed`` (default 0), ``(torch.rand(40, 2) - 0.5) * 80`` in float32. Normalized: ``log_Z = 0``.
    The default reference is centred on the means with their spread as scale.
    """

    def __init__(self, seed: int = 0, n_modes: int = 40, dim: int = 2, loc_scaling: float = 40.0):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        means = (torch.rand(n_modes, dim, generator=gen, device="cpu", dtype=torch.float32) - 0.5) * 2 * loc_scaling
        super().__init__(means.double().numpy(), FAB_GMM40_STD, name="gmm40")
