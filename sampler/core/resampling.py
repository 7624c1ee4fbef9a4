"""Resampling schemes: ``(log_weights (R, N), generator) -> ancestor indices (R, N)``.

Each scheme draws N offspring per replica with expected counts ``N * W_i`` (W the normalized
weights); they differ in variance (multinomial > residual, stratified >= systematic in practice).
All replicas are resampled in one batch; nothing loops over particles.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sampler.errors import UnknownNameError

__all__ = ["multinomial", "systematic", "stratified", "residual", "SCHEMES", "get_scheme"]

Scheme = Callable[[Tensor, torch.Generator], Tensor]


def _normalized(log_weights: Tensor) -> Tensor:
    return torch.softmax(log_weights.to(torch.float64), dim=-1)


def _inverse_cdf(weights: Tensor, uniforms: Tensor) -> Tensor:
    """Indices i with cdf[i-1] <= u < cdf[i], for sorted ``uniforms`` ``(R, M)`` in [0, 1)."""
    cdf = torch.cumsum(weights, dim=-1)
    cdf[..., -1] = 1.0  # guard against round-off: the last bucket closes the interval
    idx = torch.searchsorted(cdf, uniforms.contiguous(), right=True)
    return idx.clamp_(max=weights.shape[-1] - 1)


def multinomial(log_weights: Tensor, generator: torch.Generator) -> Tensor:
    """N iid draws from the categorical distribution of the weights."""
    n = log_weights.shape[-1]
    return torch.multinomial(_normalized(log_weights), n, replacement=True, generator=generator)


def systematic(log_weights: Tensor, generator: torch.Generator, n_out: int | None = None) -> Tensor:
    """One uniform per replica, shifted by 1/M: ``u_j = (U + j) / M``, M = ``n_out`` (default N).

    Returns ``(R, M)`` ancestor indices with expected counts ``M * W_i``.
    """
    r, n = log_weights.shape
    m = n if n_out is None else n_out
    w = _normalized(log_weights)
    u = torch.rand(r, 1, generator=generator, device=w.device, dtype=w.dtype)
    grid = torch.arange(m, device=w.device, dtype=w.dtype)
    return _inverse_cdf(w, (grid + u) / m)


def stratified(log_weights: Tensor, generator: torch.Generator) -> Tensor:
    """One uniform per stratum: ``u_j = (U_j + j) / N``."""
    r, n = log_weights.shape
    w = _normalized(log_weights)
    u = torch.rand(r, n, generator=generator, device=w.device, dtype=w.dtype)
    grid = torch.arange(n, device=w.device, dtype=w.dtype)
    return _inverse_cdf(w, (grid + u) / n)


def residual(log_weights: Tensor, generator: torch.Generator) -> Tensor:
    """``floor(N W_i)`` deterministic copies, the remainder drawn multinomially from the residuals."""
    r, n = log_weights.shape
    w = _normalized(log_weights)
    counts = torch.floor(n * w)
    n_left = n - counts.sum(-1, keepdim=True)  # (R, 1), between 0 and N - 1
    resid = n * w - counts
    mass = resid.sum(-1, keepdim=True)
    probs = torch.where(mass > 0, resid / mass.clamp_min(1e-300), torch.full_like(resid, 1.0 / n))
    draws = torch.multinomial(probs, n, replacement=True, generator=generator)  # (R, N)
    keep = torch.arange(n, device=w.device, dtype=w.dtype)[None, :] < n_left
    counts = counts.scatter_add(1, draws, keep.to(counts.dtype))
    # Offspring j goes to the particle whose cumulative count first exceeds j.
    cum = torch.cumsum(counts, -1)
    grid = torch.arange(n, device=w.device, dtype=cum.dtype).expand(r, n).contiguous()
    return torch.searchsorted(cum, grid, right=True).clamp_(max=n - 1)


SCHEMES: dict[str, Scheme] = {
    "multinomial": multinomial,
    "systematic": systematic,
    "stratified": stratified,
    "residual": residual,
}


def get_scheme(name: str) -> Scheme:
    """The resampling function registered as ``name``."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise UnknownNameError("resampling scheme", name, SCHEMES) from None
