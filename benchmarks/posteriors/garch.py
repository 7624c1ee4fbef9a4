"""``garch-garch11``: a GARCH(1,1) volatility model of 200 simulated returns, dim 4.

Stan model: ``mu`` real, ``alpha0 > 0``, ``alpha1 ∈ (0, 1)``, ``beta1 ∈ (0, 1 - alpha1)``, flat
(improper) priors; ``sigma[1] = sigma1`` (data) and
``sigma[t]² = alpha0 + alpha1 (y[t-1] - mu)² + beta1 sigma[t-1]²``; ``y ~ normal(mu, sigma)``.
Unconstrained coordinates (Stan's transforms): ``(mu, log alpha0, logit alpha1,
logit(beta1 / (1 - alpha1)))``, with the log-Jacobians of the lower-bound and interval transforms
(the upper bound of ``beta1`` depends on ``alpha1``, as Stan allows). log Z is not computed.

The variance recursion ``s[t] = a[t] + beta1 s[t-1]`` is a linear scan; it is evaluated batched over
particles with ``ceil(log2 T)`` doubling steps (Hillis–Steele) instead of a loop over the 200 times.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from sampler_benchmarks.posteriors.base import Posterior, interval_inverse, interval_transform, normal_lpdf

__all__ = ["Garch11"]


def linear_scan(a: Tensor, b: Tensor) -> Tensor:
    """``s[t] = a[t] + b s[t-1]`` with ``s[-1] = 0``, for ``a`` ``(..., T)`` and ``b`` ``(...)``; returns ``(..., T)``.

    Doubling: after the step with offset k, ``s[t]`` holds ``Σ_{j=0}^{2k-1} b^j a[t-j]``.
    """
    s, power, k = a, b[..., None], 1
    T = a.shape[-1]
    while k < T:
        shifted = torch.cat([torch.zeros_like(s[..., :k]), s[..., :-k]], dim=-1)
        s = s + power * shifted
        power, k = power * power, 2 * k
    return s


class Garch11(Posterior):
    """GARCH(1,1) with flat priors; ``x = (mu, log alpha0, logit alpha1, logit(beta1 / (1 - alpha1)))``, dim 4."""

    posterior_name = reference_name = "garch-garch11"
    data_name = "garch"
    dim = 4
    dim_names = ("mu", "log(alpha0)", "logit(alpha1)", "logit(beta1/(1-alpha1))")

    def __init__(self) -> None:
        super().__init__()
        self.y = self.data["y"].astype(np.float64)  # (T,)
        self.sigma1 = float(self.data["sigma1"])

    def _transform(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(mu, alpha0, alpha1, beta1, log-Jacobian)``, each ``(...)``."""
        mu, log_alpha0 = x[..., 0], x[..., 1]
        alpha1, jac1 = interval_transform(x[..., 2], 0.0, 1.0)
        beta1, jac2 = interval_transform(x[..., 3], 0.0, 1.0 - alpha1)
        return mu, torch.exp(log_alpha0), alpha1, beta1, log_alpha0 + jac1 + jac2

    def log_prob(self, x: Tensor) -> Tensor:
        """Stan's ``target`` (flat priors, the likelihood) plus the log-Jacobian, ``(..., 4)`` -> ``(...)``."""
        mu, alpha0, alpha1, beta1, log_jac = self._transform(x)
        y = self.constant("y", like=x)
        e2 = (y[:-1] - mu[..., None]) ** 2  # (..., T-1): (y[t-1] - mu)^2 for t = 2..T
        a = alpha0[..., None] + alpha1[..., None] * e2
        a = torch.cat([a[..., :1] + beta1[..., None] * self.sigma1**2, a[..., 1:]], dim=-1)
        var = linear_scan(a, beta1)  # sigma[t]^2, t = 2..T
        lp = normal_lpdf(y[0], mu, self.sigma1)  # t = 1, sigma[1] = sigma1
        lp = lp + normal_lpdf(y[1:], mu[..., None], torch.sqrt(var), 0.5 * torch.log(var)).sum(-1)
        return lp + log_jac

    def constrain(self, x: Tensor) -> dict[str, Tensor]:
        """``mu``, ``alpha0``, ``alpha1``, ``beta1``, each ``(...)``."""
        mu, alpha0, alpha1, beta1, _ = self._transform(x)
        return {"mu": mu, "alpha0": alpha0, "alpha1": alpha1, "beta1": beta1}

    def unconstrain(self, params: Mapping[str, Tensor]) -> Tensor:
        """``(mu, log alpha0, logit alpha1, logit(beta1 / (1 - alpha1)))`` ``(..., 4)``."""
        alpha1 = params["alpha1"]
        u = [
            params["mu"],
            torch.log(params["alpha0"]),
            interval_inverse(alpha1, 0.0, 1.0),
            interval_inverse(params["beta1"], 0.0, 1.0 - alpha1),
        ]
        return torch.stack(u, dim=-1)
