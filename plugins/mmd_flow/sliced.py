"""Sliced energy-distance gradients and fast negative-distance kernel sums, by sorting.

Notation (docs/mmd_flow.md). Particles ``x`` ``(N, d)`` with weights ``a`` (sum 1), target samples
``y`` ``(M, d)`` with weights ``b`` (sum 1), and the (possibly smoothed) distance ``f``:

    F(x) = sum_{i,j} a_i b_j f(x_i - y_j) - 1/2 sum_{i,k} a_i a_k f(x_i - x_k)

is the energy distance ``ED(x, y)`` of :mod:`sampler.analysis.metrics` up to a constant in ``x`` (for
``f = |.|``; in ``d`` dimensions ``f(v) = |v| = c_d E_ξ |<ξ, v>|``). Its gradient is
``dF/dx_i = a_i ∇φ(x_i)`` with the *witness slope*

    φ'(x_i) = sum_j b_j f'(x_i - y_j) - sum_k a_k f'(x_i - x_k),

the Wasserstein gradient of F that a particle flow follows. In 1D with ``f = |.|``,
``φ'(x_i) = (2 B(x_i) - 1) - (2 A_<(x_i) + a_i - 1)`` where ``B`` is the target mass below
``x_i`` and ``A_<`` the particle mass before ``x_i`` in sorted order -- for equal weights
``(2 #{y_j < x_i} - M) / M - (2 rank_i - N + 1) / N``. One sort of the union of the
projections gives all N slopes as running sums, in O((N + M) log(N + M)) instead of
O(N^2 + N M). Ties are broken by sort order (a subgradient; they have probability zero for
continuous data), so duplicated particles get distinct ranks and are pushed apart. In ``d`` dimensions,
``∇φ(x_i) ≈ (c_d / P) sum_p φ'_p(<ξ_p, x_i>) ξ_p`` over P directions (error O(sqrt(d / P))).

The *smoothed* distance ``f_ε = |.| * u_ε`` with ``u_ε`` uniform on ``[-ε, ε]`` equals
``(t^2 + ε^2) / (2ε)`` for ``|t| < ε`` and ``|t|`` elsewhere: ``f_ε'`` is ``t / ε`` inside and
``sign(t)`` outside, Lipschitz with constant ``1/ε``, so the flow is well defined at ties. Its
sums need the mass and first moment of the points within ``ε`` of each query, which prefix sums
over the sorted points give exactly; the sliced kernel ``-c_d E_ξ f_ε(<ξ, x - y>)`` is radial and
conditionally positive definite like the distance kernel (Rux, Quellmalz and Steidl smooth the
same way, with another mollifier).

All prefix sums are in float64; directions are processed in chunks so memory stays
O((N + M) chunk) whatever P is.
"""

from __future__ import annotations

import math
from typing import overload

import torch
from torch import Tensor

from sampler.ext import ConfigurationError, slicing_constant
from sampler_plugins.mmd_flow.directions import draw_directions

__all__ = [
    "witness_slope_1d",
    "witness_field_1d",
    "sliced_witness_gradient",
    "energy_distance_gradient",
    "exact_witness_gradient",
    "exact_energy_distance_gradient",
    "kernel_sum_1d",
    "energy_kernel_sum",
    "exact_energy_kernel_sum",
    "smoothed_abs",
]

# Elements of one (R, chunk, N + M) block; as in sampler.analysis.metrics, larger is no faster on CPU.
_BLOCK = 1 << 21


# --------------------------------------------------------------------------------------------
# Helpers


def smoothed_abs(t: Tensor, epsilon: float) -> Tensor:
    """``f_ε(t) = |t| * u_ε`` (uniform mollifier on ``[-ε, ε]``); ``|t|`` when ``epsilon`` is 0."""
    if epsilon <= 0:
        return t.abs()
    return torch.where(t.abs() < epsilon, (t * t + epsilon * epsilon) / (2 * epsilon), t.abs())


def _prefix(values: Tensor) -> Tensor:
    """Cumulative sums along the last axis with a leading zero: ``(..., K) -> (..., K + 1)``."""
    out = torch.cumsum(values, dim=-1)
    return torch.cat([torch.zeros_like(out[..., :1]), out], dim=-1)


def _as_batched(x: Tensor, name: str) -> Tensor:
    if x.ndim == 2:
        return x.unsqueeze(0)
    if x.ndim == 3:
        return x
    raise ConfigurationError(f"{name} must have shape (n, d) or (R, n, d), got {tuple(x.shape)}")


@overload
def _weights(w: Tensor, shape: tuple[int, int], like: Tensor, name: str, normalize: bool = True) -> Tensor: ...
@overload
def _weights(w: None, shape: tuple[int, int], like: Tensor, name: str, normalize: bool = True) -> None: ...
def _weights(
    w: Tensor | None, shape: tuple[int, int], like: Tensor, name: str, normalize: bool = True
) -> Tensor | None:
    """Weights ``(R, n)`` float64 (broadcast from ``(n,)``), normalized per row, or None."""
    if w is None:
        return None
    w = torch.as_tensor(w).to(device=like.device, dtype=torch.float64)
    if w.ndim == 1:
        w = w.unsqueeze(0)
    if w.ndim != 2 or w.shape[-1] != shape[1] or w.shape[0] not in (1, shape[0]):
        raise ConfigurationError(
            f"{name} must have shape ({shape[1]},) or ({shape[0]}, {shape[1]}), got {tuple(w.shape)}"
        )
    w = w.expand(shape)
    if not bool(torch.isfinite(w).all()):
        raise ConfigurationError(f"{name} must be finite")
    if normalize:
        if bool((w < 0).any()) or bool((w.sum(-1) <= 0).any()):
            raise ConfigurationError(f"{name} must be nonnegative and not all zero")
        w = w / w.sum(-1, keepdim=True)
    return w


def _chunk(r: int, n: int, p: int, chunk: int | None) -> int:
    if chunk is not None:
        if chunk < 1:
            raise ConfigurationError(f"chunk must be >= 1, got {chunk}")
        return chunk
    return max(1, min(p, _BLOCK // max(1, r * n)))


def _check_epsilon(epsilon: float) -> None:
    if epsilon < 0 or not math.isfinite(epsilon):
        raise ConfigurationError(f"epsilon must be a finite number >= 0, got {epsilon!r}")


def _directions(
    directions: Tensor | None,
    n_directions: int,
    d: int,
    scheme: str,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """The given ``directions`` ``(P, d)`` (checked), or ``n_directions`` drawn by ``scheme``."""
    if directions is None:
        return draw_directions(n_directions, d, scheme, generator, device=device)
    if directions.ndim != 2 or directions.shape[1] != d:
        raise ConfigurationError(f"directions must have shape (P, {d}), got {tuple(directions.shape)}")
    return directions


def _check_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x3, y3 = _as_batched(x, "x"), _as_batched(y, "y")
    if x3.shape[-1] != y3.shape[-1]:
        raise ConfigurationError(f"x and y must have the same dimension, got {x3.shape[-1]} and {y3.shape[-1]}")
    if y3.shape[0] not in (1, x3.shape[0]) and x3.shape[0] != 1:
        raise ConfigurationError(f"x has {x3.shape[0]} replicas but y has {y3.shape[0]}")
    if x3.shape[1] == 0 or y3.shape[1] == 0:
        raise ConfigurationError("empty point set")
    return x3, y3


# --------------------------------------------------------------------------------------------
# 1D: witness slopes by sorting


def _slope_union_1d(px: Tensor, py: Tensor, a: Tensor | None, b: Tensor | None) -> Tensor:
    """Witness slopes for ``f = |.|`` from one sort of the union of ``px`` and ``py``.

    In sorted order, the target mass below a particle and the particle mass before it are
    running sums; ties are broken by sort order (a valid subgradient; measure zero for
    continuous data). Returns float64 ``(..., N)`` in the particles' order.
    """
    n, m = px.shape[-1], py.shape[-1]
    order = torch.sort(torch.cat([py, px], dim=-1), dim=-1).indices
    is_x = order >= m
    if a is None and b is None:
        x_before = torch.cumsum(is_x, dim=-1, dtype=torch.int64)  # particles up to and including k
        k = torch.arange(1, n + m + 1, device=px.device)
        rank = (x_before - 1).to(torch.float64)
        y_below = (k - x_before).to(torch.float64)
        slope = (2.0 * y_below - m) / m - (2.0 * rank - (n - 1)) / n
    else:
        aa = torch.full(px.shape, 1.0 / n, dtype=torch.float64, device=px.device) if a is None else a.expand(px.shape)
        bb = torch.full(py.shape, 1.0 / m, dtype=torch.float64, device=px.device) if b is None else b.expand(py.shape)
        w = torch.gather(torch.cat([bb, aa], dim=-1), -1, order)
        zero = torch.zeros((), dtype=torch.float64, device=px.device)
        y_below = torch.cumsum(torch.where(is_x, zero, w), dim=-1)
        a_before = torch.cumsum(torch.where(is_x, w, zero), dim=-1) - w
        slope = (2.0 * y_below - 1.0) - (2.0 * a_before + w - 1.0)
    lead = px.shape[:-1]
    idx = (order - m).masked_select(is_x).view(*lead, n)
    return torch.empty(px.shape, dtype=torch.float64, device=px.device).scatter_(
        -1, idx, slope.masked_select(is_x).view(*lead, n)
    )


def _smoothed_attraction_1d(q: Tensor, pts: Tensor, w: Tensor | None, epsilon: float) -> Tensor:
    """``sum_j w_j f_ε'(q - pts_j)`` for queries ``q`` ``(..., N)`` and points ``pts`` ``(..., M)``.

    ``w`` ``(..., M)`` normalized weights or None (uniform). The mass below ``q - ε``, minus the
    mass from ``q + ε`` on, plus ``(q W - sum w p) / ε`` over the window in between, from
    prefix sums over the sorted points. Float64.
    """
    sp, order = torch.sort(pts, dim=-1)
    q = q.contiguous()
    if w is None:
        ws = torch.full(sp.shape, 1.0 / sp.shape[-1], dtype=torch.float64, device=sp.device)
    else:
        ws = torch.gather(w.expand(pts.shape), -1, order)
    cw, cy = _prefix(ws), _prefix(sp.to(torch.float64) * ws)
    i1 = torch.searchsorted(sp, q - epsilon, side="left")
    i2 = torch.searchsorted(sp, q + epsilon, side="left")
    w1, w2 = torch.gather(cw, -1, i1), torch.gather(cw, -1, i2)
    win_first = torch.gather(cy, -1, i2) - torch.gather(cy, -1, i1)
    return w1 - (cw[..., -1:] - w2) + (q.to(torch.float64) * (w2 - w1) - win_first) / epsilon


def witness_slope_1d(
    px: Tensor,
    py: Tensor,
    x_weights: Tensor | None = None,
    y_weights: Tensor | None = None,
    epsilon: float = 0.0,
) -> Tensor:
    """Witness slopes ``φ'(x_i)`` of 1D point sets, float64 ``(..., N)``.

    ``px`` ``(..., N)`` particle positions, ``py`` ``(..., M)`` target positions (leading axes
    broadcast), weights ``(..., N)`` / ``(..., M)`` normalized (None: uniform). ``φ'(x_i) =
    sum_j b_j f'(x_i - y_j) - sum_k a_k f'(x_i - x_k)``; the gradient of
    ``F = ED(x, y) + const`` with respect to ``x_i`` is ``a_i φ'(x_i)``. With ``epsilon = 0`` and
    uniform weights this is ``(2 #{y < x_i} - M) / M - (2 rank_i - N + 1) / N``.
    O((N + M) log(N + M)).
    """
    lead = torch.broadcast_shapes(px.shape[:-1], py.shape[:-1])
    px = px.expand(*lead, px.shape[-1])
    py = py.expand(*lead, py.shape[-1])
    if epsilon <= 0:
        return _slope_union_1d(px, py, x_weights, y_weights)
    return _smoothed_attraction_1d(px, py, y_weights, epsilon) - _smoothed_attraction_1d(px, px, x_weights, epsilon)


def witness_field_1d(
    q: Tensor,
    px: Tensor,
    py: Tensor,
    x_weights: Tensor | None = None,
    y_weights: Tensor | None = None,
    epsilon: float = 0.0,
) -> Tensor:
    """The witness slope of the pair (particles ``px``, targets ``py``) at arbitrary queries ``q``.

    ``sum_j b_j f'(q_l - y_j) - sum_k a_k f'(q_l - x_k)`` for ``q`` ``(..., L)``, float64
    ``(..., L)``; with ``f = |.|`` this is ``2 (B(q) - A(q))`` with ties counted half
    (``sign(0) = 0``), by binary search in the sorted sets. The queries do not act on the field:
    they are passengers carried by the flow of the particles (used by the conditional flow).
    """
    lead = torch.broadcast_shapes(q.shape[:-1], px.shape[:-1], py.shape[:-1])
    q = q.expand(*lead, q.shape[-1]).contiguous()
    px = px.expand(*lead, px.shape[-1])
    py = py.expand(*lead, py.shape[-1])
    if epsilon > 0:
        return _smoothed_attraction_1d(q, py, y_weights, epsilon) - _smoothed_attraction_1d(q, px, x_weights, epsilon)

    def below(pts: Tensor, w: Tensor | None) -> Tensor:
        sp, order = torch.sort(pts, dim=-1)
        if w is None:
            cw = torch.arange(sp.shape[-1] + 1, device=sp.device, dtype=torch.float64).div_(sp.shape[-1])
            cw = cw.expand(*sp.shape[:-1], -1)
        else:
            cw = _prefix(torch.gather(w.expand(pts.shape), -1, order))
        lo = torch.gather(cw, -1, torch.searchsorted(sp, q, side="left"))
        hi = torch.gather(cw, -1, torch.searchsorted(sp, q, side="right"))
        return 0.5 * (lo + hi)

    return 2.0 * (below(py, y_weights) - below(px, x_weights))


# --------------------------------------------------------------------------------------------
# d dimensions


def sliced_witness_gradient(
    x: Tensor,
    y: Tensor,
    x_weights: Tensor | None = None,
    y_weights: Tensor | None = None,
    n_directions: int = 256,
    scheme: str = "iid",
    epsilon: float = 0.0,
    generator: torch.Generator | None = None,
    directions: Tensor | None = None,
    chunk: int | None = None,
) -> Tensor:
    """Sliced ``∇φ(x_i) = (c_d / P) sum_p φ'_p(<ξ_p, x_i>) ξ_p``, ``(R, N, d)`` in ``x``'s dtype.

    ``x`` ``(N, d)`` or ``(R, N, d)`` particles with weights ``(N,)``/``(R, N)`` (default uniform),
    ``y`` ``(M, d)`` or ``(R, M, d)`` target samples with weights (default uniform). The P
    directions are ``directions`` ``(P, d)`` if given, else drawn by
    :func:`~sampler_plugins.mmd_flow.directions.draw_directions` (``scheme``, ``generator``).
    This is the particle-flow velocity (up to sign): the Wasserstein gradient of the energy
    distance. Cost O(P (N + M) (d + log(N + M))), memory O(R (N + M) chunk).
    """
    x3, y3 = _check_pair(x, y)
    r = max(x3.shape[0], y3.shape[0])
    n, m, d = x3.shape[1], y3.shape[1], x3.shape[2]
    a = _weights(x_weights, (r, n), x3, "x_weights")
    b = _weights(y_weights, (r, m), x3, "y_weights")
    _check_epsilon(epsilon)
    directions = _directions(directions, n_directions, d, scheme, generator, x3.device)
    p = directions.shape[0]
    u_all = directions.to(device=x3.device, dtype=x3.dtype)
    c = _chunk(r, n + m, p, chunk)
    grad = torch.zeros(r, n, d, dtype=x3.dtype, device=x3.device)
    a3 = None if a is None else a[:, None, :]
    b3 = None if b is None else b[:, None, :]
    for start in range(0, p, c):
        u = u_all[start : start + c]  # (c, d)
        px = torch.matmul(u, x3.transpose(1, 2))  # (r, c, n), rows contiguous for sorting
        py = torch.matmul(u, y3.transpose(1, 2))
        slope = witness_slope_1d(px, py, a3, b3, epsilon)  # (r, c, n)
        grad += torch.einsum("rcn,cd->rnd", slope.to(x3.dtype), u)
    return grad * (slicing_constant(d) / p)


def energy_distance_gradient(
    x: Tensor,
    y: Tensor,
    x_weights: Tensor | None = None,
    y_weights: Tensor | None = None,
    **options,
) -> Tensor:
    """Gradient of the (sliced) energy distance ``ED(x, y)`` with respect to ``x``, ``(R, N, d)``.

    ``a_i ∇φ(x_i)`` with ``∇φ`` from :func:`sliced_witness_gradient` (options as there); the
    energy distance is :func:`sampler.analysis.metrics.energy_distance`'s convention. Exact in 1D.
    """
    x3 = _as_batched(x, "x")
    g = sliced_witness_gradient(x, y, x_weights, y_weights, **options)
    a = _weights(x_weights, (g.shape[0], x3.shape[1]), x3, "x_weights")
    scale = (
        torch.full((1, x3.shape[1], 1), 1.0 / x3.shape[1], dtype=g.dtype, device=g.device)
        if a is None
        else a[..., None].to(g.dtype)
    )
    return g * scale


def _exact_attraction(q: Tensor, pts: Tensor, w: Tensor | None, chunk: int) -> Tensor:
    """``sum_j w_j (q_i - p_j) / |q_i - p_j|`` (0 where they coincide), ``q`` ``(N, d)``, float64."""
    q64, p64 = q.to(torch.float64), pts.to(torch.float64)
    w64 = torch.full((p64.shape[0],), 1.0 / p64.shape[0], dtype=torch.float64, device=q.device) if w is None else w
    out = []
    for start in range(0, q64.shape[0], chunk):
        qc = q64[start : start + chunk]
        dist = torch.cdist(qc, p64)
        inv = torch.where(dist > 0, 1.0 / dist.clamp_min(1e-300), torch.zeros_like(dist)) * w64
        out.append(qc * inv.sum(-1, keepdim=True) - inv @ p64)
    return torch.cat(out)


def exact_witness_gradient(
    x: Tensor, y: Tensor, x_weights: Tensor | None = None, y_weights: Tensor | None = None, chunk: int = 1024
) -> Tensor:
    """Exact ``∇φ(x_i) = sum_j b_j e(x_i - y_j) - sum_k a_k e(x_i - x_k)``, ``e(v) = v / |v|``.

    O(N (N + M) d) distances in chunks, float64, ``x`` ``(N, d)``, ``y`` ``(M, d)`` -> ``(N, d)``;
    the reference for :func:`sliced_witness_gradient` (``e(0) = 0``, so coinciding particles do
    not repel: the rank convention differs only at ties).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ConfigurationError(f"expected (N, d) and (M, d) point sets, got {tuple(x.shape)} and {tuple(y.shape)}")
    a = _weights(x_weights, (1, x.shape[0]), x, "x_weights")
    b = _weights(y_weights, (1, y.shape[0]), x, "y_weights")
    att = _exact_attraction(x, y, None if b is None else b[0], chunk)
    rep = _exact_attraction(x, x, None if a is None else a[0], chunk)
    return att - rep


def exact_energy_distance_gradient(
    x: Tensor, y: Tensor, x_weights: Tensor | None = None, y_weights: Tensor | None = None, chunk: int = 1024
) -> Tensor:
    """Exact gradient of ``ED(x, y)`` with respect to ``x`` ``(N, d)``: ``a_i`` times :func:`exact_witness_gradient`."""
    g = exact_witness_gradient(x, y, x_weights, y_weights, chunk)
    a = _weights(x_weights, (1, x.shape[0]), x, "x_weights")
    return g / x.shape[0] if a is None else g * a[0, :, None]


# --------------------------------------------------------------------------------------------
# Fast kernel sums


def kernel_sum_1d(q: Tensor, pts: Tensor, w: Tensor | None = None, epsilon: float = 0.0) -> Tensor:
    """``s_i = sum_j w_j f_ε(q_i - p_j)`` in 1D, float64 ``(..., N)``, by sorting and prefix sums.

    ``q`` ``(..., N)`` queries, ``pts`` ``(..., M)`` points, ``w`` ``(..., M)`` real weights
    (None: all 1). Exact (up to rounding): below a query ``sum w (q - p) = q W_< - T_<``, above it
    ``T_> - q W_>``, and within ``ε`` (smoothed kernel) ``sum w ((q - p)^2 + ε^2) / (2ε)`` from
    the prefix sums of ``w``, ``w p``, ``w p^2``. Positions are centred per row first, to keep
    the prefix sums well conditioned. O((N + M) log M).
    """
    lead = torch.broadcast_shapes(q.shape[:-1], pts.shape[:-1])
    q = q.expand(*lead, q.shape[-1]).to(torch.float64)
    pts = pts.expand(*lead, pts.shape[-1]).to(torch.float64)
    centre = pts.mean(-1, keepdim=True)
    q, pts = q - centre, pts - centre
    sp, order = torch.sort(pts, dim=-1)
    ws = (
        torch.ones_like(sp)
        if w is None
        else torch.gather(torch.as_tensor(w, dtype=torch.float64, device=pts.device).expand_as(pts), -1, order)
    )
    cw, ct = _prefix(ws), _prefix(ws * sp)
    total_w, total_t = cw[..., -1:], ct[..., -1:]
    if epsilon <= 0:
        i = torch.searchsorted(sp, q, side="left")
        wl, tl = torch.gather(cw, -1, i), torch.gather(ct, -1, i)
        return q * wl - tl + (total_t - tl) - q * (total_w - wl)
    cq = _prefix(ws * sp * sp)
    i1 = torch.searchsorted(sp, q - epsilon, side="left")
    i2 = torch.searchsorted(sp, q + epsilon, side="left")
    w1, t1, w2, t2 = (torch.gather(c, -1, i) for c, i in ((cw, i1), (ct, i1), (cw, i2), (ct, i2)))
    q_win = torch.gather(cq, -1, i2) - torch.gather(cq, -1, i1)
    below = q * w1 - t1
    above = (total_t - t2) - q * (total_w - w2)
    w_win, t_win = w2 - w1, t2 - t1
    inside = (q_win - 2 * q * t_win + q * q * w_win + epsilon * epsilon * w_win) / (2 * epsilon)
    return below + above + inside


def energy_kernel_sum(
    x: Tensor,
    y: Tensor,
    weights: Tensor | None = None,
    n_directions: int = 256,
    scheme: str = "iid",
    epsilon: float = 0.0,
    generator: torch.Generator | None = None,
    directions: Tensor | None = None,
    chunk: int | None = None,
) -> Tensor:
    """Fast sums ``s_m = sum_n w_n K(x_n, y_m)`` of the negative-distance kernel, ``(M,)`` float64.

    ``K(x, y) = -|x - y|`` (``epsilon = 0``) or its smoothed version ``-c_d E_ξ f_ε(<ξ, x - y>)``,
    estimated by slicing: ``-(c_d / P) sum_p`` of 1D sums (:func:`kernel_sum_1d`) over P
    directions (``scheme``/``generator``, or ``directions`` ``(P, d)``). ``x`` ``(N, d)`` sources,
    ``y`` ``(M, d)`` targets, ``weights`` ``(N,)`` real (default all 1). Unbiased over the
    directions, exact in d = 1; O(P (N + M) (d + log N)) instead of O(N M d), memory
    O((N + M) chunk).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ConfigurationError(
            f"expected (N, d) sources and (M, d) targets, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    _check_epsilon(epsilon)
    n, d = x.shape
    w = None
    if weights is not None:
        w = _weights(weights, (1, n), x, "weights", normalize=False)[0]
    directions = _directions(directions, n_directions, d, scheme, generator, x.device)
    p = directions.shape[0]
    u_all = directions.to(device=x.device, dtype=torch.float64)
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    c = _chunk(1, n + y.shape[0], p, chunk)
    total = torch.zeros(y.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, p, c):
        u = u_all[start : start + c]
        total += kernel_sum_1d(u @ y64.T, u @ x64.T, w, epsilon).sum(0)
    return -total * (slicing_constant(d) / p)


def exact_energy_kernel_sum(x: Tensor, y: Tensor, weights: Tensor | None = None, chunk: int = 1024) -> Tensor:
    """Brute-force ``s_m = -sum_n w_n |x_n - y_m|``, ``(M,)`` float64, O(N M d) in chunks."""
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    w = (
        torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        if weights is None
        else torch.as_tensor(weights, dtype=torch.float64, device=x.device)
    )
    return torch.cat([-(torch.cdist(y64[s : s + chunk], x64) @ w) for s in range(0, y64.shape[0], chunk)])
