"""Slicing directions on the sphere S^{d-1}: iid, random orthogonal frames, and QMC designs.

Every sliced quantity here is an average over directions ξ of a 1D quantity, with ξ uniform on
the sphere (``E_ξ |<ξ, v>| = |v| / c_d``, :func:`sampler.analysis.metrics.slicing_constant`). Three ways
to draw P directions, all with each direction marginally uniform (so every sliced estimate stays
unbiased):

* ``"iid"``: independent uniform directions (:func:`sampler.analysis.metrics.random_directions`); the
  error of a sliced average decays like ``sqrt(d / P)``.
* ``"orthogonal"``: blocks of ``d`` orthonormal directions (rows of Haar-random orthogonal
  matrices); directions within a block are negatively dependent, which cancels part of the
  error (an exact identity for quadratic integrands).
* ``"qmc"``: a well-spread design, computed once per ``(P, d)`` and cached, that maximizes the
  sum of pairwise distances of the symmetrized set ``{±ξ_p}`` (QMC slicing of Hertrich, Jahn and
  Quellmalz, "distance" directions), then turned by one Haar-random rotation per draw. Falls back
  to ``"orthogonal"`` above :data:`QMC_MAX_DIM` dimensions, where a rotation costs too much.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from sampler.ext import ConfigurationError, random_directions

__all__ = ["SCHEMES", "QMC_MAX_DIM", "draw_directions", "haar_orthogonal", "distance_design", "design_energy"]

#: Direction schemes accepted by :func:`draw_directions`.
SCHEMES = ("iid", "orthogonal", "qmc")
#: Above this dimension ``"qmc"`` falls back to ``"orthogonal"`` (a d x d rotation per draw).
QMC_MAX_DIM = 200
#: Largest optimized design; more ``"qmc"`` directions are drawn as several rotated designs.
QMC_BLOCK = 512


def check_scheme(scheme: str) -> str:
    """Return ``scheme`` if it is one of :data:`SCHEMES`; else raise :class:`ConfigurationError`."""
    if scheme not in SCHEMES:
        raise ConfigurationError(f"direction scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    return scheme


def haar_orthogonal(
    k: int, d: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """``k`` Haar-random orthogonal matrices ``(k, d, d)`` float64 (QR of Gaussians, signs fixed).

    Drawn on the generator's device, returned on ``device``.
    """
    draw_device = generator.device if generator is not None else device
    g = torch.randn(k, d, d, generator=generator, dtype=torch.float64, device=draw_device)
    q, r = torch.linalg.qr(g)
    # Multiplying column j by sign(r_jj) makes the distribution exactly Haar (Mezzadri 2007).
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return q.to(device) if device is not None else q


def design_energy(directions: Tensor) -> float:
    """Mean pairwise distance of the symmetrized set ``{±ξ_p}`` ``(P, d)``, over pairs ``p != q``.

    The quantity :func:`distance_design` maximizes (larger is better spread); its maximum over
    designs is the energy-distance optimum against the uniform measure on the sphere.
    """
    u = directions.to(torch.float64)
    p = u.shape[0]
    dm = torch.cdist(u, u)
    dp = torch.cdist(u, -u)
    off = ~torch.eye(p, dtype=torch.bool, device=u.device)
    return float((dm[off].sum() + dp[off].sum()) / (2 * p * (p - 1)))


@functools.lru_cache(maxsize=64)
def _design_cpu(n: int, d: int, n_iter: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = random_directions(n, d, gen)
    if n == 1 or d == 1:
        return u
    lr = 1.0
    decay = math.exp(math.log(1e-3) / n_iter)  # lr from 1 down to 1e-3
    for _ in range(n_iter):
        # Gradient of sum_{p != q} |u_p - u_q| + |u_p + u_q| with respect to u_p, as matrix
        # products (memory O(n^2)): sum_q (u_p -+ u_q) / |u_p -+ u_q|. The p = q terms are
        # radial (no tangential component), so they are left in.
        wm = 1.0 / torch.cdist(u, u).clamp_min(1e-12)
        wm.fill_diagonal_(0.0)
        wp = 1.0 / torch.cdist(u, -u).clamp_min(1e-12)
        grad = u * (wm.sum(1) + wp.sum(1))[:, None] - wm @ u + wp @ u
        grad = grad / (2 * (n - 1))
        # Ascent along the tangent space, then back onto the sphere.
        grad = grad - (grad * u).sum(-1, keepdim=True) * u
        u = u + lr * grad
        u = u / u.norm(dim=-1, keepdim=True)
        lr *= decay
    return u


def distance_design(n: int, d: int, n_iter: int = 300, seed: int = 0) -> Tensor:
    """A well-spread design of ``n`` directions in ``R^d``, ``(n, d)`` float64 on the CPU.

    Projected gradient ascent (in float64, ``n_iter`` iterations, step decaying from 1 to 1e-3)
    of the sum of pairwise distances of the symmetrized set ``{±ξ_p}`` -- equivalently, descent
    of its energy distance to the uniform measure on the sphere -- from ``n`` iid directions
    drawn with ``seed``. Computed once per argument tuple and cached for the process (memory
    O(n^2 d) per iteration: keep ``n`` to a few thousand).
    """
    if n < 1 or d < 1:
        raise ConfigurationError(f"a design needs n >= 1 directions in d >= 1 dimensions, got n={n}, d={d}")
    return _design_cpu(int(n), int(d), int(n_iter), int(seed)).clone()


def draw_directions(
    n: int,
    d: int,
    scheme: str = "iid",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` unit directions ``(n, d)`` float64 on ``device``, each marginally uniform on S^{d-1}.

    ``scheme`` is ``"iid"``, ``"orthogonal"`` (``ceil(n / d)`` Haar frames, the last one cut)
    or ``"qmc"`` (the cached :func:`distance_design` under a fresh Haar rotation; ``"orthogonal"``
    above :data:`QMC_MAX_DIM` dimensions). Random draws use ``generator`` (the global RNG if None).
    """
    check_scheme(scheme)
    if n < 1:
        raise ConfigurationError(f"the number of directions must be >= 1, got {n}")
    if scheme == "qmc" and d > QMC_MAX_DIM:
        scheme = "orthogonal"
    if scheme == "iid" or d == 1:
        return random_directions(n, d, generator, device=device)
    if scheme == "orthogonal":
        frames = haar_orthogonal(-(-n // d), d, generator, device)
        return frames.reshape(-1, d)[:n]
    # Designs of at most QMC_BLOCK directions (the optimization costs O(n^2) per iteration);
    # a larger n is made of equal blocks, each under its own rotation.
    blocks = -(-n // QMC_BLOCK)
    size = -(-n // blocks)
    rots = haar_orthogonal(blocks, d, generator, device)
    design = distance_design(size, d).to(device=rots.device)
    return (design @ rots.transpose(1, 2)).reshape(-1, d)[:n]
