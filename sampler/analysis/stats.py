"""Importance-weight and between-chain statistics: PSIS Pareto k, rank-normalized R-hat and bulk ESS.

R-hat and bulk ESS are those of Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021),
"Rank-normalization, folding, and localization: an improved R-hat for assessing convergence of
MCMC" (Bayesian Analysis 16(2)), as Stan and ArviZ compute them:

- **split**: each chain's first and last ``n // 2`` draws count as two chains;
- **rank-normalize**: pooled over all split chains, each value is replaced by
  ``Φ⁻¹((r - 3/8) / (S + 1/4))``, ``r`` its average rank among the ``S`` values (Blom's offset);
- **R-hat** ``= sqrt((B / W + n - 1) / n)`` (``B`` n times the variance of the chain means, ``W``
  the mean within-chain variance, ``n`` draws per split chain), the larger of the rank-normalized
  values' and those of the folded values ``|x - median|``;
- **bulk ESS** ``= S / τ`` on the rank-normalized split chains, ``τ = -1 + 2 Σ ρ_t`` summed by
  Geyer's initial monotone sequence over the FFT autocorrelations (combined across chains as in
  Stan), and ``τ >= 1 / log10(S)``.

Written here, vectorized over coordinates in torch, rather than called from ArviZ, whose import
(matplotlib, xarray, scipy.stats: 1.5 s) would otherwise be most of ``sampler run``'s start-up.
``tests/test_psis_and_rhat.py`` checks both against ArviZ to 1e-9.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from sampler.core.psis import pareto_k

__all__ = ["pareto_k", "rhat_and_ess"]


def rhat_and_ess(samples: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalized split R-hat and bulk ESS per coordinate, from ``(chains, draws, d)``.

    Returns two ``(d,)`` float64 arrays. R-hat is NaN with fewer than 2 chains; both are NaN with
    fewer than 4 draws per chain, and for a coordinate with a NaN value.
    """
    x = samples.detach().to("cpu", torch.float64)
    n_chains, n_draws, d = x.shape
    nan = np.full(d, np.nan)
    if n_draws < 4:
        return nan, nan.copy()
    half = n_draws // 2
    split = torch.cat([x[:, :half], x[:, n_draws - half :]])  # (2C, half, d)
    bad = torch.isnan(x).flatten(0, 1).any(0)
    split = torch.where(bad, 0.0, split)
    z, median = _rank_normalize(split)
    ess = _ess(z)
    if n_chains >= 2:
        folded, _ = _rank_normalize((split - median).abs())
        rhat = torch.maximum(_rhat(z), _rhat(folded))
    else:
        rhat = torch.full((d,), torch.nan, dtype=torch.float64, device=x.device)
    rhat[bad], ess[bad] = torch.nan, torch.nan
    return rhat.numpy(), ess.numpy()


def _rank_normalize(x: Tensor) -> tuple[Tensor, Tensor]:
    """Normal scores of the pooled average ranks of ``x`` ``(C, n, d)``, and the pooled median ``(d,)``."""
    pooled = x.flatten(0, 1).T.contiguous()  # (d, S)
    s = pooled.shape[1]
    ordered = pooled.sort(dim=1).values
    below = torch.searchsorted(ordered, pooled, right=False)
    upto = torch.searchsorted(ordered, pooled, right=True)
    rank = (below + upto + 1).to(torch.float64) / 2  # 1-based, ties averaged
    z = torch.special.ndtri((rank - 0.375) / (s + 0.25))
    median = (ordered[:, (s - 1) // 2] + ordered[:, s // 2]) / 2
    return z.T.reshape(x.shape), median


def _rhat(x: Tensor) -> Tensor:
    """The (non-split) potential scale reduction of ``x`` ``(C, n, d)`` per coordinate."""
    n = x.shape[1]
    between = n * x.mean(1).var(0)
    within = x.var(1).mean(0)
    return ((between / within + n - 1) / n).sqrt()


def _ess(x: Tensor) -> Tensor:
    """Effective sample size of ``x`` ``(C, n, d)`` per coordinate, Geyer's initial monotone sequence."""
    n_chains, n, d = x.shape
    size = n_chains * n
    centred = x - x.mean(1, keepdim=True)
    spectrum = torch.fft.rfft(centred, n=2 * n, dim=1)
    acov = torch.fft.irfft(spectrum * spectrum.conj(), n=2 * n, dim=1)[:, :n] / n  # (C, n, d)
    mean_acov = acov.mean(0)  # (n, d)
    mean_var = mean_acov[0] * n / (n - 1)  # the mean within-chain variance W
    var_plus = mean_acov[0] + (x.mean(1).var(0) if n_chains > 1 else 0.0)  # (n - 1) / n W + B / n
    rho = 1 - (mean_var - mean_acov) / var_plus
    rho[0] = 1.0
    # Pairs Γ_j = ρ_2j + ρ_2j+1, j = 0..j_max; the sum stops at the first Γ_J <= 0 (or j_max).
    j_max = max(0, (n - 3) // 2)
    pairs = rho[: 2 * j_max + 2].reshape(j_max + 1, 2, d).sum(1)  # (j_max + 1, d)
    stops = ~(pairs > 0)
    last = torch.where(stops.any(0), stops.to(torch.int64).argmax(0), j_max)  # J
    monotone = pairs.cummin(0).values
    coords = torch.arange(d, device=x.device)
    taken = torch.arange(j_max + 1, device=x.device)[:, None] < last
    tail_rho = rho[2 * last, coords]
    tail_pair = pairs[last, coords]
    tail = torch.where((tail_rho > 0) | ((last >= 1) & (tail_pair >= 0)), tail_rho, 0.0)
    tau = -1 + 2 * torch.where(taken, monotone, 0.0).sum(0) + tail
    tau = torch.clamp(tau, min=1 / np.log10(size))
    ess = size / tau
    constant = (x.amax((0, 1)) - x.amin((0, 1))) < np.finfo(float).resolution
    return torch.where(constant, float(size), ess)
