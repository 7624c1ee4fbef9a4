"""Neal's funnel."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sampler.errors import ConfigurationError
from sampler.targets.base import Target

_LOG_2PI = math.log(2 * math.pi)


class Funnel(Target):
    """Neal's funnel in ``dim`` dimensions (default 10), normalized (``log_Z = 0``).

    Definition: ``v = x1 ~ N(0, 9)`` (std 3) and, given ``v``, ``x2, ..., xd`` iid ``N(0, e^v)``::

        log pi(x) = -v^2 / 18 - 0.5 log(2 pi 9) - 0.5 e^-v sum_{i>=2} x_i^2
                    - (d - 1) v / 2 - (d - 1) log(2 pi) / 2.

    Exact samples: ``v = 3 z1``, ``x_i = e^(v / 2) z_i`` with ``z ~ N(0, I)``.

    Provenance: Neal, *Slice sampling* (Ann. Statist. 2003), in the parameterization of the
    importance-corrected neural JKO paper (its ``U`` of section "Funnel", d = 10) and of FAB.

    Reference hint: the moment-matched (mass-covering) diagonal Gaussian, ``loc = 0`` and
    ``scale = (3, e^2.25, ..., e^2.25)``: ``Var x1 = 9`` and ``Var x_i = E e^v = e^4.5`` for
    ``i >= 2`` (std ~9.49). The mouth of the funnel (large ``v``) makes that variance; most of the
    mass has ``|x_i| < 3``, and the neck (``v << 0``) is narrow under any Gaussian reference.
    """

    log_Z = 0.0

    def __init__(self, dim: int = 10) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ConfigurationError(f"dim must be an integer >= 2, got {dim!r}")
        self.dim = dim
        self.reference_loc = 0.0
        self.reference_scale = np.array([3.0] + [math.exp(2.25)] * (dim - 1))
        self._const = -0.5 * math.log(9.0) - 0.5 * dim * _LOG_2PI

    @property
    def name(self) -> str:
        return "funnel" if self.dim == 10 else f"funnel-{self.dim}"

    def log_prob(self, x: Tensor) -> Tensor:
        v, rest = x[..., 0], x[..., 1:]
        return -(v**2) / 18 - 0.5 * torch.exp(-v) * (rest**2).sum(-1) - 0.5 * (self.dim - 1) * v + self._const

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Log density and its analytic gradient."""
        v, rest = x[..., 0], x[..., 1:]
        inv = torch.exp(-v)
        half_sq = 0.5 * inv * (rest**2).sum(-1)
        lp = -(v**2) / 18 - half_sq - 0.5 * (self.dim - 1) * v + self._const
        dv = -v / 9 + half_sq - 0.5 * (self.dim - 1)
        return lp, torch.cat([dv[..., None], -inv[..., None] * rest], dim=-1)

    def grad_log_prob(self, x: Tensor) -> Tensor:
        return self.log_prob_and_grad(x)[1]

    def sample(self, n, generator=None, device=None, dtype=None) -> Tensor:
        """``n`` exact draws ``(n, dim)``."""
        device = self.sample_device(generator, device)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        v = 3 * z[:, :1]
        return torch.cat([v, torch.exp(0.5 * v) * z[:, 1:]], dim=-1)
