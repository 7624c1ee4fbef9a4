"""Tensor-product bases on a box: 1D Fourier or Legendre functions, windowed and H²-orthonormal.

A functional tensor train represents ``Phi(x) = sum_k C[k_1, ..., k_d] phi_{k_1}(x_1) ... phi_{k_d}(x_d)``
with one family of ``n`` univariate functions per coordinate. Here each coordinate ``j`` gets a
box ``[a_j, b_j]`` (per replica) and the functions

    phi_k(x) = T^{-1} [ chi(u) psi_k(u) ],     u = (x - a) / (b - a) in [0, 1],

where ``psi_k`` is the k-th reference function on [0, 1] (Fourier ``1, cos 2 pi u, sin 2 pi u,
cos 4 pi u, ...`` or Legendre ``P_k(2u - 1)``), ``chi`` is a C² window equal to 1 on the inner
part of the box and falling to 0 (with two derivatives) over a margin at each side, and ``T`` is
the Cholesky factor of the Gram matrix of the windowed functions in the H²([a, b]) inner product
``<f, g> = int f g + f' g' + f'' g'' dx``. So the basis is H²-orthonormal on its box and
vanishes outside it: a field ``grad Phi`` built on it is C¹ on R^d, bounded, and zero outside
the box (particles there are not moved). The Frobenius norm of a coefficient tensor is the
(mixed) H² norm of the function, which makes ridge regularization and TT-SVD rounding tolerances
statements about H² norms.
"""

from __future__ import annotations

import functools
import math

import attrs
import numpy as np
import torch
from torch import Tensor

from sampler.ext import ConfigurationError

__all__ = ["BASES", "BasisValues", "TensorBasis", "reference_functions", "window"]

#: Names of the univariate reference families.
BASES = ("fourier", "legendre")


def reference_functions(kind: str, n: int, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``n`` reference functions of ``kind`` on [0, 1] and their u-derivatives.

    Args:
        kind: ``"fourier"`` (``1, cos(2 pi u), sin(2 pi u), cos(4 pi u), ...``) or ``"legendre"``
            (``P_k(2u - 1)``, k < n).
        n: number of functions.
        u: points ``(...)``.

    Returns:
        values, first and second derivatives, each ``(..., n)``.
    """
    if kind == "fourier":
        freq = torch.arange(1, n // 2 + 1, dtype=u.dtype, device=u.device)
        w = 2 * math.pi * freq
        arg = u[..., None] * w
        c, s = torch.cos(arg), torch.sin(arg)
        one = torch.ones_like(u)[..., None]
        zero = torch.zeros_like(one)
        # interleave cos/sin: 1, c1, s1, c2, s2, ...
        v = torch.cat([one, torch.stack([c, s], -1).flatten(-2)], -1)[..., :n]
        d1 = torch.cat([zero, torch.stack([-w * s, w * c], -1).flatten(-2)], -1)[..., :n]
        d2 = torch.cat([zero, torch.stack([-(w**2) * c, -(w**2) * s], -1).flatten(-2)], -1)[..., :n]
        return v, d1, d2
    if kind == "legendre":
        z = 2 * u - 1
        # P_k and its z-derivatives by the three-term recurrence and its derivatives:
        # (k+1) P_{k+1} = (2k+1) z P_k - k P_{k-1}
        ps, dps, ddps = [torch.ones_like(z)], [torch.zeros_like(z)], [torch.zeros_like(z)]
        if n > 1:
            ps.append(z)
            dps.append(torch.ones_like(z))
            ddps.append(torch.zeros_like(z))
        for k in range(1, n - 1):
            p = ((2 * k + 1) * z * ps[k] - k * ps[k - 1]) / (k + 1)
            dp = ((2 * k + 1) * (ps[k] + z * dps[k]) - k * dps[k - 1]) / (k + 1)
            ddp = ((2 * k + 1) * (2 * dps[k] + z * ddps[k]) - k * ddps[k - 1]) / (k + 1)
            ps.append(p)
            dps.append(dp)
            ddps.append(ddp)
        # chain rule dz/du = 2
        return torch.stack(ps, -1), 2 * torch.stack(dps, -1), 4 * torch.stack(ddps, -1)
    raise ConfigurationError(f"basis must be one of {', '.join(BASES)}, got {kind!r}")


def _smoothstep(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``S(z) = 6z^5 - 15z^4 + 10z^3`` on [0, 1] (clamped outside) and its derivatives (C² at 0 and 1)."""
    inside = (z > 0) & (z < 1)
    zc = z.clamp(0, 1)
    s = zc**3 * (10 - 15 * zc + 6 * zc**2)
    ds = torch.where(inside, 30 * zc**2 * (zc - 1) ** 2, torch.zeros_like(zc))
    dds = torch.where(inside, 60 * zc * (2 * zc - 1) * (zc - 1), torch.zeros_like(zc))
    return s, ds, dds


def window(u: Tensor, margin: float) -> tuple[Tensor, Tensor, Tensor]:
    """C² window on [0, 1]: 1 on ``[margin, 1 - margin]``, 0 outside [0, 1]; value and u-derivatives ``(...)``."""
    if margin <= 0:
        inside = ((u >= 0) & (u <= 1)).to(u.dtype)
        return inside, torch.zeros_like(u), torch.zeros_like(u)
    sl, dsl, ddsl = _smoothstep(u / margin)
    sr, dsr, ddsr = _smoothstep((1 - u) / margin)
    # the two ramps do not overlap (margin < 1/2): chi = S_left * S_right
    chi = sl * sr
    d1 = dsl / margin * sr - sl * dsr / margin
    d2 = ddsl / margin**2 * sr - 2 * dsl * dsr / margin**2 + sl * ddsr / margin**2
    return chi, d1, d2


def _windowed(kind: str, n: int, margin: float, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Windowed reference functions ``chi psi_k`` and their u-derivatives, ``(..., n)``."""
    v, d1, d2 = reference_functions(kind, n, u)
    c, c1, c2 = window(u, margin)
    c, c1, c2 = c[..., None], c1[..., None], c2[..., None]
    return c * v, c1 * v + c * d1, c2 * v + 2 * c1 * d1 + c * d2


@functools.lru_cache(maxsize=64)
def _reference_grams(kind: str, n: int, margin: float, n_quad: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gram matrices on u in [0, 1] of the windowed functions, their first and second derivatives.

    Composite Gauss-Legendre quadrature on the window's three pieces (the window is a piecewise
    polynomial, smooth on each piece), exact up to rounding for these n.
    """
    nodes, weights = np.polynomial.legendre.leggauss(n_quad)
    breaks = [0.0, margin, 1.0 - margin, 1.0] if margin > 0 else [0.0, 1.0]
    us, ws = [], []
    for lo, hi in zip(breaks, breaks[1:]):
        us.append(lo + (hi - lo) * (nodes + 1) / 2)
        ws.append(weights * (hi - lo) / 2)
    u = torch.as_tensor(np.concatenate(us), dtype=torch.float64)
    w = torch.as_tensor(np.concatenate(ws), dtype=torch.float64)
    v, d1, d2 = _windowed(kind, n, margin, u)
    gram = lambda f: (f * w[:, None]).T @ f  # noqa: E731
    return gram(v).numpy(), gram(d1).numpy(), gram(d2).numpy()


@attrs.frozen
class BasisValues:
    """The basis functions at particle positions, per coordinate.

    Attributes:
        values: ``(R, N, d, n)`` -- ``phi_k(x_j)``.
        d1: ``(R, N, d, n)`` -- ``phi_k'(x_j)``.
        d2: ``(R, N, d, n)`` -- ``phi_k''(x_j)``.
        inside: ``(R, N)`` bool -- the particle lies in the inner box of every coordinate (window 1).
        in_box: ``(R, N)`` bool -- the particle lies in the (outer) box of every coordinate.
    """

    values: Tensor
    d1: Tensor
    d2: Tensor
    inside: Tensor
    in_box: Tensor


@attrs.frozen
class TensorBasis:
    """A windowed, H²-orthonormal univariate basis per coordinate on per-replica boxes.

    Attributes:
        kind: ``"fourier"`` or ``"legendre"``.
        n: functions per coordinate.
        lower, upper: the outer box ``(R, d)`` float64 (the basis vanishes outside).
        margin: width of the window's ramps as a fraction of the outer box, in ``[0, 1/2)``.
    """

    kind: str
    n: int
    lower: Tensor
    upper: Tensor
    margin: float

    @classmethod
    def around(cls, kind: str, n: int, center: Tensor, half_width: Tensor, window_fraction: float) -> TensorBasis:
        """The basis whose inner box (window = 1) is ``center +- half_width`` ``(R, d)``.

        The window ramps over ``window_fraction`` times the inner width on each side.
        """
        if kind not in BASES:
            raise ConfigurationError(f"basis must be one of {', '.join(BASES)}, got {kind!r}")
        pad = window_fraction * 2 * half_width
        margin = window_fraction / (1 + 2 * window_fraction)
        return cls(kind, n, center - half_width - pad, center + half_width + pad, margin)

    @property
    def width(self) -> Tensor:
        """Outer box lengths ``(R, d)``."""
        return self.upper - self.lower

    def _orthonormalizer(self) -> Tensor:
        """``T^{-1}`` ``(R, d, n, n)`` with ``T T^t`` the H² Gram matrix of the windowed functions on each box."""
        g0, g1, g2 = (
            torch.as_tensor(g, dtype=self.lower.dtype, device=self.lower.device)
            for g in _reference_grams(self.kind, self.n, self.margin)
        )
        length = self.width[..., None, None]
        # x = a + L u: int f^2 dx = L G0, int f'^2 dx = G1 / L, int f''^2 dx = G2 / L^3
        gram = length * g0 + g1 / length + g2 / length**3
        chol = torch.linalg.cholesky(gram)
        eye = torch.eye(self.n, dtype=gram.dtype, device=gram.device).expand_as(gram)
        return torch.linalg.solve_triangular(chol, eye, upper=False)

    def evaluate(self, x: Tensor) -> BasisValues:
        """The orthonormal basis and its x-derivatives at ``x`` ``(R, N, d)`` (float64)."""
        x = x.to(self.lower.dtype)
        length = self.width[:, None, :]
        u = (x - self.lower[:, None, :]) / length
        v, d1, d2 = _windowed(self.kind, self.n, self.margin, u)
        d1 = d1 / length[..., None]
        d2 = d2 / length[..., None] ** 2
        tinv = self._orthonormalizer()  # (R, d, n, n)
        mix = lambda f: torch.einsum("rdkl,rndl->rndk", tinv, f)  # noqa: E731
        in_box = ((u >= 0) & (u <= 1)).all(-1)
        inside = ((u >= self.margin) & (u <= 1 - self.margin)).all(-1)
        return BasisValues(mix(v), mix(d1), mix(d2), inside, in_box)
