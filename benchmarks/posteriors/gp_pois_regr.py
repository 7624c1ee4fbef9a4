"""``gp_pois_regr-gp_pois_regr``: a latent Gaussian process with Poisson counts (11 points), dim 13.

Stan model: ``rho ~ gamma(25, 4)``, ``alpha ~ normal(0, 2)`` (both ``real<lower=0>``),
``f_tilde ~ normal(0, 1)``, ``f = cholesky(K) f_tilde`` with
``K[i, j] = alpha² exp(-(x[i] - x[j])² / (2 rho²)) + 1e-10 δ[i, j]`` (``gp_exp_quad_cov`` plus
Stan's jitter), and ``k ~ poisson_log(f)``. Unconstrained coordinates:
``(log rho, log alpha, f_tilde[1..11])``; the reference (and :meth:`constrain`) reports
``rho, alpha, f[1..11]``. log Z is not computed (``None``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from sampler_benchmarks.posteriors.base import Posterior, gamma_lpdf, normal_lpdf, poisson_log_lpmf

__all__ = ["GPPoissonRegression"]

JITTER = 1e-10


class GPPoissonRegression(Posterior):
    """Poisson regression on a latent GP (squared-exponential kernel, non-centered); dim 13.

    The 11 x 11 covariance and its Cholesky factor are computed in float64 whatever ``x``'s
    dtype (with Stan's 1e-10 jitter a float32 Cholesky fails for typical ``rho``), and ``f`` is
    cast back. Where the Cholesky fails in float64 too (far-off ``rho`` or ``alpha``) the log
    density is ``-inf``.
    """

    posterior_name = reference_name = "gp_pois_regr-gp_pois_regr"
    data_name = "gp_pois_regr"

    def __init__(self) -> None:
        super().__init__()
        x = self.data["x"].astype(np.float64)
        self.n = len(x)
        self.dim = self.n + 2
        self.dim_names = ("log(rho)", "log(alpha)", *(f"f_tilde[{i}]" for i in range(1, self.n + 1)))
        self.sq_dist = (x[:, None] - x[None, :]) ** 2  # (n, n)
        self.eye = np.eye(self.n)
        self.k = self.data["k"].astype(np.float64)  # (n,) counts

    def cholesky(self, log_rho: Tensor, log_alpha: Tensor) -> tuple[Tensor, Tensor]:
        """``(L (..., n, n), ok (...))``: the float64 Cholesky factor of K and where it succeeded.

        Where it failed, ``L`` is the identity (so gradients stay finite) and ``ok`` is False.
        Both factorizations are ``cholesky_ex``: the second never fails, and ``cholesky``'s error
        check does not compile inside a fused loop's ``scan`` (torch 2.13; docs/methods.md,
        "Compiled steps").
        """
        lr, la = log_rho.to(torch.float64), log_alpha.to(torch.float64)
        sq, eye = self.constant("sq_dist", like=lr), self.constant("eye", like=lr)
        cov = torch.exp(2 * la)[..., None, None] * torch.exp(-0.5 * sq * torch.exp(-2 * lr)[..., None, None])
        cov = cov + JITTER * eye
        _, info = torch.linalg.cholesky_ex(cov.detach())
        ok = info == 0
        cov = torch.where(ok[..., None, None], cov, eye.expand_as(cov))
        return torch.linalg.cholesky_ex(cov)[0], ok

    def log_prob(self, x: Tensor) -> Tensor:
        """Stan's ``target`` plus ``log rho + log alpha``, ``(..., 13)`` -> ``(...)``."""
        log_rho, log_alpha, f_tilde = x[..., 0], x[..., 1], x[..., 2:]
        L, ok = self.cholesky(log_rho, log_alpha)
        f = (L @ f_tilde.to(torch.float64)[..., None])[..., 0].to(x.dtype)
        lp = gamma_lpdf(log_rho, 25.0, 4.0) + log_rho
        lp = lp + normal_lpdf(torch.exp(log_alpha), 0.0, 2.0) + log_alpha
        lp = lp + normal_lpdf(f_tilde, 0.0, 1.0).sum(-1)
        lp = lp + poisson_log_lpmf(self.constant("k", like=x), f).sum(-1)
        return torch.where(ok, lp, torch.full_like(lp, -torch.inf))

    def constrain(self, x: Tensor) -> dict[str, Tensor]:
        """``rho``, ``alpha`` and ``f[1..11] = L f_tilde``, each ``(...)``."""
        L, _ = self.cholesky(x[..., 0], x[..., 1])
        f = (L @ x[..., 2:].to(torch.float64)[..., None])[..., 0].to(x.dtype)
        params = {"rho": torch.exp(x[..., 0]), "alpha": torch.exp(x[..., 1])}
        params.update({f"f[{i + 1}]": f[..., i] for i in range(self.n)})
        return params

    def unconstrain(self, params: Mapping[str, Tensor]) -> Tensor:
        """``(log rho, log alpha, L⁻¹ f)`` ``(..., 13)``."""
        log_rho, log_alpha = torch.log(params["rho"]), torch.log(params["alpha"])
        f = torch.stack([params[f"f[{i}]"] for i in range(1, self.n + 1)], dim=-1)
        L, _ = self.cholesky(log_rho, log_alpha)
        f_tilde = torch.linalg.solve_triangular(L, f.to(torch.float64)[..., None], upper=False)[..., 0]
        return torch.cat([log_rho[..., None], log_alpha[..., None], f_tilde.to(f.dtype)], dim=-1)
