"""Gaussian linear regressions of posteriordb, with their exact log Z.

Every model here is ``y ~ normal(X β, σ)`` with a flat or ``normal(0, s)`` prior on each
coefficient and a flat, half-normal or half-Cauchy prior on ``σ`` (``real<lower=0>``):

========================  ====  ==============================  ===========  =================
posterior                 dim   X (columns)                     prior on β   prior on σ
========================  ====  ==============================  ===========  =================
sblrc-blr, sblri-blr      6     the data's 100 x 5 ``X``         normal(0,10) normal(0,10)
kidiq-kidscore_momiq      3     1, mom_iq                       flat         cauchy(0,2.5)
earnings-earn_height      3     1, height                       flat         flat
mesquite-logmesquite      8     1, log diam1, log diam2, log    flat         flat
                                canopy_height, log total_height,
                                log density, group (y: log weight)
arK-arK                   7     1, y[t-1], ..., y[t-5]           normal(0,10) cauchy(0,2.5)
                                (t = 6..200; y: y[t])
========================  ====  ==============================  ===========  =================

The unconstrained coordinates are ``(β, log σ)``. The likelihood ``Σ_i normal_lpdf(y_i | x_i β, σ)``
is evaluated through the exact identity ``Σ (y - Xβ)² = RSS(β̂) + ‖Lᵀ(β - β̂)‖²`` (``β̂`` the
least-squares fit, ``X'X = L Lᵀ``): O(p²) per particle and free of float32 cancellation; the tests
compare it with the plain residual sum.

**Exact log Z.** Given σ the coefficients integrate out in closed form — flat prior:
``∫ Π N(y_i | x_i β, σ) dβ = (2πσ²)^(-(n-p)/2) |X'X|^(-1/2) exp(-RSS(β̂) / 2σ²)``; prior
``normal(0, s)``: ``N(y | 0, σ² I + s² X X')``, by the Woodbury identity and the determinant lemma
on the eigenvalues of ``X'X`` — and the remaining integral over ``log σ`` is done by adaptive
quadrature (:func:`~sampler_benchmarks.posteriors.base.log_quad_1d`, relative error ~1e-12).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from sampler_benchmarks.posteriors.base import LOG_2PI, Posterior, cauchy_lpdf, log_quad_1d, normal_lpdf

__all__ = ["LinearRegression", "SblrcBlr", "SblriBlr", "KidiqMomiq", "EarnHeight", "LogMesquite", "ArK"]


class LinearRegression(Posterior):
    """``y ~ normal(X β, σ)``, ``β`` flat or ``normal(0, coef_prior_scale)``, ``σ`` flat, half-normal or half-Cauchy.

    Subclasses set ``coef_names`` (posteriordb's names of β, in column order),
    ``coef_prior_scale`` (``None``: Stan's improper flat prior) and ``sigma_prior``
    (``None``: flat; ``("normal", s)`` or ``("cauchy", s)``: that full density on σ > 0), and
    build ``(X (n, p), y (n,))`` from ``self.data`` in :meth:`design`.

    The unconstrained point is ``x = (β_1, ..., β_p, log σ)``, ``dim = p + 1``.
    """

    coef_names: tuple[str, ...]
    coef_prior_scale: float | None = None
    sigma_prior: tuple[str, float] | None = None

    def __init__(self) -> None:
        super().__init__()
        X, y = self.design()
        n, p = X.shape
        self.n_obs, self.n_coef = n, p
        self.dim = p + 1
        self.dim_names = (*self.coef_names, "log(sigma)")
        self.X, self.y = X, y
        self.gram = X.T @ X  # (p, p)
        self.beta_hat = np.linalg.solve(self.gram, X.T @ y)  # (p,) least squares
        self.rss_hat = float(np.sum((y - X @ self.beta_hat) ** 2))
        self.gram_chol = np.linalg.cholesky(self.gram)  # (p, p) lower, X'X = L L^T
        self.log_Z = self.exact_log_Z()

    def design(self) -> tuple[np.ndarray, np.ndarray]:
        """The design matrix ``(n, p)`` and response ``(n,)`` (float64) from ``self.data``."""
        raise NotImplementedError

    # -- density ----------------------------------------------------------------------------------

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(β, σ | y) + log σ`` (Jacobian of σ = exp(x[..., -1])) up to log Z; ``(..., dim)`` -> ``(...)``."""
        beta, log_sigma = x[..., :-1], x[..., -1]
        sigma = torch.exp(log_sigma)
        d = beta - self.constant("beta_hat", like=x)
        rss = self.rss_hat + ((d @ self.constant("gram_chol", like=x)) ** 2).sum(-1)
        lp = -0.5 * self.n_obs * LOG_2PI - self.n_obs * log_sigma - 0.5 * rss / sigma**2  # likelihood
        lp = lp + log_sigma  # Jacobian
        return lp + self._log_prior(beta, sigma)

    def _log_prior(self, beta: Tensor, sigma: Tensor) -> Tensor | float:
        """The priors of the coefficients and of σ (0 where flat), ``(...)``."""
        lp: Tensor | float = 0.0
        if self.coef_prior_scale is not None:
            lp = normal_lpdf(beta, 0.0, self.coef_prior_scale).sum(-1)
        if self.sigma_prior is not None:
            kind, scale = self.sigma_prior
            lp = lp + (normal_lpdf(sigma, 0.0, scale) if kind == "normal" else cauchy_lpdf(sigma, 0.0, scale))
        return lp

    def log_prob_direct(self, x: Tensor) -> Tensor:
        """:meth:`log_prob` with the plain residual sum ``Σ (y - Xβ)²`` (for the tests), ``(..., dim)`` -> ``(...)``."""
        beta, log_sigma = x[..., :-1], x[..., -1]
        mean = beta @ self.constant("X", like=x).T  # (..., n)
        sigma = torch.exp(log_sigma)
        lp = normal_lpdf(self.constant("y", like=x), mean, sigma[..., None], log_sigma[..., None]).sum(-1)
        lp = lp + log_sigma
        return lp + self._log_prior(beta, sigma)

    # -- parameters -------------------------------------------------------------------------------

    def constrain(self, x: Tensor) -> dict[str, Tensor]:
        """``{coef name: β_j, "sigma": exp(x[..., -1])}``, each ``(...)``."""
        params = {name: x[..., j] for j, name in enumerate(self.coef_names)}
        params["sigma"] = torch.exp(x[..., -1])
        return params

    def unconstrain(self, params: Mapping[str, Tensor]) -> Tensor:
        """``(β, log σ)`` ``(..., dim)`` from the constrained parameters."""
        return torch.stack([*(params[n] for n in self.coef_names), torch.log(params["sigma"])], dim=-1)

    # -- exact normalizer -------------------------------------------------------------------------

    def log_integrand(self, s: np.ndarray) -> np.ndarray:
        """``log ∫ exp(log_prob(β, s)) dβ`` at ``log σ = s`` (NumPy, vectorized over ``s``)."""
        n, p = self.n_obs, self.n_coef
        s = np.asarray(s, dtype=np.float64)
        sigma2 = np.exp(2.0 * s)
        out = s.copy()  # Jacobian
        if self.sigma_prior is not None:
            kind, scale = self.sigma_prior
            sigma = np.exp(s)
            if kind == "normal":
                out += -0.5 * (sigma / scale) ** 2 - math.log(scale) - 0.5 * LOG_2PI
            else:
                out += -math.log(math.pi * scale) - np.log1p((sigma / scale) ** 2)
        if self.coef_prior_scale is None:
            _, logdet = np.linalg.slogdet(self.gram)
            return out - 0.5 * (n - p) * LOG_2PI - (n - p) * s - 0.5 * logdet - 0.5 * self.rss_hat / sigma2
        # N(y | 0, σ² I + s0² X X'): eigenvalues mu of X'X, c = V' X'y, lam = σ²/s0².
        mu, V = np.linalg.eigh(self.gram)
        c2 = (V.T @ (self.X.T @ self.y)) ** 2
        lam = sigma2[..., None] / self.coef_prior_scale**2
        logdet = 2.0 * n * s + np.log1p(mu / lam).sum(-1)
        quad = (self.rss_hat + (c2 * lam / (mu * (mu + lam))).sum(-1)) / sigma2
        return out - 0.5 * n * LOG_2PI - 0.5 * logdet - 0.5 * quad

    def exact_log_Z(self) -> float:
        """``log ∫∫ exp(log_prob) dβ d(log σ)``: β in closed form, log σ by quadrature."""
        return log_quad_1d(self.log_integrand)


class _Blr(LinearRegression):
    """posteriordb's ``blr``: ``beta ~ normal(0, 10)``, ``sigma ~ normal(0, 10)``, ``y ~ normal(X beta, sigma)``."""

    data_name = "sblrc"
    coef_names = tuple(f"beta[{j}]" for j in range(1, 6))
    coef_prior_scale = 10.0
    sigma_prior = ("normal", 10.0)

    def design(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data["X"].astype(np.float64), self.data["y"].astype(np.float64)


class SblrcBlr(_Blr):
    """``sblrc-blr``: 100 simulated observations, 5 coefficients correlated (0.8) in the posterior; dim 6."""

    posterior_name = reference_name = "sblrc-blr"
    data_name = "sblrc"


class SblriBlr(_Blr):
    """``sblri-blr``: 100 simulated observations, 5 coefficients independent in the posterior; dim 6."""

    posterior_name = reference_name = "sblri-blr"
    data_name = "sblri"


class KidiqMomiq(LinearRegression):
    """``kidiq-kidscore_momiq`` (ARM ch. 3): ``kid_score ~ normal(beta[1] + beta[2] mom_iq, sigma)``; dim 3.

    Flat prior on ``beta``, ``sigma ~ cauchy(0, 2.5)``. ``mom_iq`` is not centred (mean ~100),
    so intercept and slope are correlated about -0.99: a ridge.
    """

    posterior_name = reference_name = "kidiq-kidscore_momiq"
    data_name = "kidiq"
    coef_names = ("beta[1]", "beta[2]")
    sigma_prior = ("cauchy", 2.5)

    def design(self) -> tuple[np.ndarray, np.ndarray]:
        iq = self.data["mom_iq"].astype(np.float64)
        return np.stack([np.ones_like(iq), iq], 1), self.data["kid_score"].astype(np.float64)


class EarnHeight(LinearRegression):
    """``earnings-earn_height`` (ARM ch. 4): ``earn ~ normal(beta[1] + beta[2] height, sigma)``; dim 3.

    Flat priors on everything. Earnings in dollars (σ ≈ 19,000, β₁ ≈ -61,000 ± 9,700) and an
    uncentred height: a ridge far from the origin, at a scale 10⁴ times the default reference.
    """

    posterior_name = reference_name = "earnings-earn_height"
    data_name = "earnings"
    coef_names = ("beta[1]", "beta[2]")

    def design(self) -> tuple[np.ndarray, np.ndarray]:
        h = self.data["height"].astype(np.float64)
        return np.stack([np.ones_like(h), h], 1), self.data["earn"].astype(np.float64)


class LogMesquite(LinearRegression):
    """``mesquite-logmesquite`` (ARM ch. 4): log leaf weight on six log-sizes and the group; dim 8, flat priors."""

    posterior_name = reference_name = "mesquite-logmesquite"
    data_name = "mesquite"
    coef_names = tuple(f"beta[{j}]" for j in range(1, 8))

    def design(self) -> tuple[np.ndarray, np.ndarray]:
        d = {k: v.astype(np.float64) for k, v in self.data.items() if k != "source"}
        cols = [np.log(d[k]) for k in ("diam1", "diam2", "canopy_height", "total_height", "density")]
        X = np.stack([np.ones_like(d["weight"]), *cols, d["group"]], 1)
        return X, np.log(d["weight"])


class ArK(LinearRegression):
    """``arK-arK``: an AR(5) model, ``y[t] ~ normal(alpha + Σ_k beta[k] y[t-k], sigma)`` for t = 6..200; dim 7.

    ``alpha, beta ~ normal(0, 10)``, ``sigma ~ cauchy(0, 2.5)``; the likelihood conditions on the
    first K = 5 observations as Stan's loop does, so the model is a linear regression on lags.
    """

    posterior_name = reference_name = "arK-arK"
    data_name = "arK"
    coef_names = ("alpha", *(f"beta[{k}]" for k in range(1, 6)))
    coef_prior_scale = 10.0
    sigma_prior = ("cauchy", 2.5)

    def design(self) -> tuple[np.ndarray, np.ndarray]:
        y = self.data["y"].astype(np.float64)
        K, T = int(self.data["K"]), int(self.data["T"])
        lags = [y[K - k : T - k] for k in range(1, K + 1)]  # column k: y[t-k] for t = K+1..T (1-based)
        return np.stack([np.ones(T - K), *lags], 1), y[K:]
