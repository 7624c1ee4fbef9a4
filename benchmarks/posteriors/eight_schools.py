"""The eight schools (Rubin 1981), centered and non-centered, with their exact log Z and their prior.

Both models have ``mu ~ normal(0, 5)``, ``tau ~ cauchy(0, 5)`` on τ > 0, and
``y[j] ~ normal(theta[j], sigma[j])``; the centered model has ``theta[j] ~ normal(mu, tau)``, the
non-centered one ``theta_trans[j] ~ normal(0, 1)`` and ``theta = mu + tau theta_trans``. They are
the same posterior over ``(theta, mu, tau)`` and share posteriordb's reference draws (the
non-centered ones). Unconstrained coordinates: ``(theta[1..8], mu, log tau)`` (centered) and
``(theta_trans[1..8], mu, log tau)`` (non-centered); the centered one is the funnel.

**Exact log Z** (the same for both: each model's θ-density is normalized): θ integrates out to
``y[j] ~ normal(mu, sqrt(sigma[j]² + tau²))``, then μ to ``y ~ N(0, D + 25 · 1 1ᵀ)`` with
``D = diag(sigma² + tau²)`` (determinant lemma and Sherman–Morrison), and ``log tau`` by quadrature.

**The prior** (``prior_sample``, ``prior_log_prob``): both models declare it, so ``smc`` starts
its path at the prior and tempers the likelihood alone (:class:`sampler.PriorReference`). The
centered model's prior is itself the funnel, so its draws fill the posterior's neck from the start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from sampler_benchmarks.posteriors.base import LOG_2PI, Posterior, cauchy_lpdf, log_quad_1d, normal_lpdf

__all__ = ["EightSchoolsCentered", "EightSchoolsNoncentered"]

MU_SCALE = 5.0
TAU_SCALE = 5.0


class _EightSchools(Posterior):
    data_name = "eight_schools"
    reference_name = "eight_schools-eight_schools_noncentered"
    dim = 10

    def __init__(self) -> None:
        super().__init__()
        self.y = self.data["y"].astype(np.float64)  # (8,)
        self.sigma = self.data["sigma"].astype(np.float64)  # (8,)
        self.J = int(self.data["J"])
        self.log_Z = log_quad_1d(self.log_integrand)

    def _priors(self, mu: Tensor, log_tau: Tensor) -> Tensor:
        """``normal_lpdf(mu | 0, 5) + cauchy_lpdf(tau | 0, 5) + log tau`` (Jacobian), ``(...)``."""
        return normal_lpdf(mu, 0.0, MU_SCALE) + cauchy_lpdf(torch.exp(log_tau), 0.0, TAU_SCALE) + log_tau

    def prior_sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """``n`` prior draws ``(n, 10)`` on this model's unconstrained coordinates.

        ``mu ~ normal(0, 5)``, ``tau`` half-Cauchy(0, 5) (``5 |e1 / e2|``, a ratio of standard
        normals) and eight standard normals ``e``, which :meth:`_group` turns into the model's
        group coordinates.
        """
        device = self.sample_device(generator, None)
        dtype = dtype or torch.get_default_dtype()
        e = torch.randn(n, self.J + 3, generator=generator, device=device, dtype=dtype)
        mu = MU_SCALE * e[:, self.J]
        log_tau = math.log(TAU_SCALE) + e[:, self.J + 1].abs().log() - e[:, self.J + 2].abs().log()
        return torch.cat([self._group(e[:, : self.J], mu, log_tau), mu[:, None], log_tau[:, None]], dim=-1)

    def _group(self, e: Tensor, mu: Tensor, log_tau: Tensor) -> Tensor:
        """The group coordinates ``(n, 8)`` of prior draws from standard normals ``e``."""
        raise NotImplementedError

    def _log_prior_group(self, x: Tensor) -> Tensor:
        """The prior's log density of the group coordinates given ``mu`` and ``log tau``, ``(...)``."""
        raise NotImplementedError

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """The prior's normalized log density on the unconstrained coordinates, ``(..., 10)`` -> ``(...)``.

        Stan's prior terms (``log_prob`` without the likelihood) plus ``log 2``, which normalizes
        ``cauchy(0, 5)`` on τ > 0.
        """
        return self._log_prior_group(x) + self._priors(x[..., 8], x[..., 9]) + math.log(2.0)

    def log_integrand(self, s: np.ndarray) -> np.ndarray:
        """``log ∫∫ exp(log_prob) dθ dμ`` at ``log tau = s`` (NumPy, vectorized over ``s``)."""
        s = np.asarray(s, dtype=np.float64)[..., None]
        tau2 = np.exp(2.0 * s)
        d = self.sigma**2 + tau2  # (..., J) variances of y given mu, tau
        w = (1.0 / d).sum(-1)
        logdet = np.log(d).sum(-1) + np.log1p(MU_SCALE**2 * w)
        quad = (self.y**2 / d).sum(-1) - MU_SCALE**2 * ((self.y / d).sum(-1)) ** 2 / (1.0 + MU_SCALE**2 * w)
        s = s[..., 0]
        log_prior_tau = -math.log(math.pi * TAU_SCALE) - np.log1p(np.exp(2.0 * s) / TAU_SCALE**2) + s
        return log_prior_tau - 0.5 * self.J * LOG_2PI - 0.5 * logdet - 0.5 * quad


class EightSchoolsCentered(_EightSchools):
    """``eight_schools-eight_schools_centered``: ``theta ~ normal(mu, tau)``; x = (theta[1..8], mu, log tau), dim 10."""

    posterior_name = "eight_schools-eight_schools_centered"
    dim_names = (*(f"theta[{j}]" for j in range(1, 9)), "mu", "log(tau)")

    def log_prob(self, x: Tensor) -> Tensor:
        """Stan's ``target`` plus ``log tau``, ``(..., 10)`` -> ``(...)``."""
        theta, mu, log_tau = x[..., :8], x[..., 8], x[..., 9]
        tau = torch.exp(log_tau)
        lp = normal_lpdf(theta, mu[..., None], tau[..., None], log_tau[..., None]).sum(-1)
        lp = lp + normal_lpdf(self.constant("y", like=x), theta, self.constant("sigma", like=x)).sum(-1)
        return lp + self._priors(mu, log_tau)

    def _group(self, e: Tensor, mu: Tensor, log_tau: Tensor) -> Tensor:
        """``theta = mu + tau e``."""
        return mu[:, None] + torch.exp(log_tau)[:, None] * e

    def _log_prior_group(self, x: Tensor) -> Tensor:
        """``sum_j normal_lpdf(theta[j] | mu, tau)``."""
        mu, log_tau = x[..., 8:9], x[..., 9:10]
        return normal_lpdf(x[..., :8], mu, torch.exp(log_tau), log_tau).sum(-1)

    def constrain(self, x: Tensor) -> dict[str, Tensor]:
        """``theta[1..8]``, ``mu``, ``tau = exp(x[..., 9])``, each ``(...)``."""
        params = {f"theta[{j + 1}]": x[..., j] for j in range(8)}
        params.update(mu=x[..., 8], tau=torch.exp(x[..., 9]))
        return params

    def unconstrain(self, params: Mapping[str, Tensor]) -> Tensor:
        """``(theta, mu, log tau)`` ``(..., 10)``."""
        theta = [params[f"theta[{j}]"] for j in range(1, 9)]
        return torch.stack([*theta, params["mu"], torch.log(params["tau"])], dim=-1)


class EightSchoolsNoncentered(_EightSchools):
    """``eight_schools-eight_schools_noncentered``: ``theta = mu + tau theta_trans``; dim 10.

    x = (theta_trans[1..8], mu, log tau).
    """

    posterior_name = "eight_schools-eight_schools_noncentered"
    dim_names = (*(f"theta_trans[{j}]" for j in range(1, 9)), "mu", "log(tau)")

    def log_prob(self, x: Tensor) -> Tensor:
        """Stan's ``target`` plus ``log tau``, ``(..., 10)`` -> ``(...)``."""
        z, mu, log_tau = x[..., :8], x[..., 8], x[..., 9]
        theta = z * torch.exp(log_tau)[..., None] + mu[..., None]
        lp = normal_lpdf(z, 0.0, 1.0).sum(-1)
        lp = lp + normal_lpdf(self.constant("y", like=x), theta, self.constant("sigma", like=x)).sum(-1)
        return lp + self._priors(mu, log_tau)

    def _group(self, e: Tensor, mu: Tensor, log_tau: Tensor) -> Tensor:
        """``theta_trans = e``."""
        return e

    def _log_prior_group(self, x: Tensor) -> Tensor:
        """``sum_j normal_lpdf(theta_trans[j] | 0, 1)``."""
        return normal_lpdf(x[..., :8], 0.0, 1.0).sum(-1)

    def constrain(self, x: Tensor) -> dict[str, Tensor]:
        """``theta[j] = mu + tau theta_trans[j]``, ``mu``, ``tau``, each ``(...)``."""
        tau = torch.exp(x[..., 9])
        params = {f"theta[{j + 1}]": x[..., 8] + tau * x[..., j] for j in range(8)}
        params.update(mu=x[..., 8], tau=tau)
        return params

    def unconstrain(self, params: Mapping[str, Tensor]) -> Tensor:
        """``((theta - mu) / tau, mu, log tau)`` ``(..., 10)``."""
        mu, tau = params["mu"], params["tau"]
        z = [(params[f"theta[{j}]"] - mu) / tau for j in range(1, 9)]
        return torch.stack([*z, mu, torch.log(tau)], dim=-1)
