"""Sample-quality metrics against exact answers: energy distance, MMD, ESS, log Z and mode errors.

Energy distance convention (docs/benchmarks.md, "Metrics"): half of Székely's statistic, with
V-statistics,

    ED(X, Y) = E|X - Y| - 0.5 E|X - X'| - 0.5 E|Y - Y'|,

equal to the MMD^2 of the kernel ``-|x - y| / 2``. :func:`energy_distance` computes it exactly in
O(N M) (the reference); :func:`sliced_energy_distance` computes the benchmark's sliced estimate in
O((N + M) log(N + M)) per direction. The two are linked by two identities:

* in 1D, for empirical measures, ``ED = ∫ (F_X(t) - F_Y(t))^2 dt`` (the Cramér integral);
* ``E_ξ |<ξ, v>| = |v| / c_d`` for ξ uniform on the sphere S^{d-1}, with
  ``c_d = √π Γ((d+1)/2) / Γ(d/2)`` (:func:`slicing_constant`);

so ``ED_d(X, Y) = c_d E_ξ ED_1(<ξ, X>, <ξ, Y>)`` exactly, and averaging over P random directions
is an unbiased estimate of the exact V-statistic. All accumulations are in float64, on the
device of the inputs.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from sampler.analysis.stats import pareto_k
from sampler.core.particles import ess as _kish_ess

__all__ = [
    "energy_distance",
    "mean_pairwise_distance",
    "sliced_energy_distance",
    "projected_energy_distances",
    "random_directions",
    "slicing_constant",
    "exact_floor",
    "mmd_gaussian",
    "median_heuristic",
    "kish_ess",
    "log_Z_error",
    "pareto_k",
    "nearest_mode",
    "mode_fractions",
    "modes_covered",
    "mode_weight_error",
]

# Elements of one (chunk, N + M) block of the sliced computation: about 2M (16 MiB per float64
# buffer, a handful of buffers alive at a time). Larger blocks are no faster on CPU.
_SLICE_BLOCK = 1 << 21


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d) samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("empty sample")


def _normalized_weights(weights: Tensor | None, n: int, like: Tensor) -> Tensor | None:
    """Nonnegative weights ``(n,)`` as float64 on ``like``'s device, normalized to sum 1 (or None)."""
    if weights is None:
        return None
    w = torch.as_tensor(weights).to(device=like.device, dtype=torch.float64).flatten()
    if w.numel() != n:
        raise ValueError(f"expected {n} weights, got {w.numel()}")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be finite, nonnegative and not all zero")
    return w / w.sum()


# --------------------------------------------------------------------------------------------
# Exact energy distance (reference)


def mean_pairwise_distance(
    x: Tensor, y: Tensor, chunk: int = 2048, x_weights: Tensor | None = None, y_weights: Tensor | None = None
) -> Tensor:
    """``sum_{i,j} a_i b_j |x_i - y_j|`` for ``x`` ``(n, d)``, ``y`` ``(m, d)``, float64, O(n m) in chunks.

    ``a`` and ``b`` are the normalized weights (uniform ``1/n``, ``1/m`` by default, i.e. the
    plain mean over all pairs, diagonal included when ``x is y``). Returns a 0-dim tensor.
    """
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    a = _normalized_weights(x_weights, x.shape[0], x)
    b = _normalized_weights(y_weights, y.shape[0], y)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], chunk):
        dist = torch.cdist(x[start : start + chunk], y)  # (chunk, m)
        if b is not None:
            dist = dist @ b  # (chunk,)
        else:
            dist = dist.sum(-1)
        total = total + (dist.sum() if a is None else dist @ a[start : start + chunk])
    if a is None:
        total = total / x.shape[0]
    if b is None:
        total = total / y.shape[0]
    return total


def energy_distance(x: Tensor, y: Tensor, chunk: int = 2048, weights: Tensor | None = None) -> float:
    """Exact energy distance (V-statistic, benchmark convention) between samples ``(n, d)`` and ``(m, d)``.

    ``E|X - Y| - 0.5 E|X - X'| - 0.5 E|Y - Y'|`` over all pairs (diagonal included), O(n m + n^2
    + m^2) distances in chunks of ``chunk`` rows. ``weights`` ``(n,)``: optional nonnegative
    weights of ``x`` (normalized here); ``y`` is equally weighted. This is the reference that
    :func:`sliced_energy_distance` estimates.
    """
    _check_pair(x, y)
    xy = mean_pairwise_distance(x, y, chunk, x_weights=weights)
    xx = mean_pairwise_distance(x, x, chunk, x_weights=weights, y_weights=weights)
    yy = mean_pairwise_distance(y, y, chunk)
    return float(xy - 0.5 * xx - 0.5 * yy)


# --------------------------------------------------------------------------------------------
# Sliced energy distance


def slicing_constant(d: int) -> float:
    """``c_d = √π Γ((d+1)/2) / Γ(d/2)``, so that ``E_ξ |<ξ, v>| = |v| / c_d`` for ξ ~ Unif(S^{d-1}).

    ``c_1 = 1``, ``c_2 = π/2``, ``c_3 = 2``; ``c_d ~ sqrt(π d / 2)`` for large ``d``.
    """
    if d < 1:
        raise ValueError(f"dimension must be >= 1, got {d}")
    return math.exp(0.5 * math.log(math.pi) + math.lgamma((d + 1) / 2) - math.lgamma(d / 2))


def random_directions(
    n: int,
    d: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` iid directions uniform on the sphere S^{d-1}, ``(n, d)`` float64 on ``device``.

    Drawn on the generator's device (normalized Gaussians), then moved to ``device``, so a given
    CPU generator gives the same directions whatever device the samples live on.
    """
    draw_device = generator.device if generator is not None else device
    g = torch.randn(n, d, generator=generator, dtype=torch.float64, device=draw_device)
    g = g / g.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return g.to(device) if device is not None else g


def _cramer_1d(px: Tensor, py: Tensor, wx: Tensor | None) -> Tensor:
    """Exact ``∫ (F_X - F_Y)^2 dt`` of 1D empirical measures, row by row.

    ``px`` ``(P, N)``, ``py`` ``(P, M)`` float64 projections; ``wx`` ``(N,)`` normalized weights of
    ``x`` or None (uniform). Sorts the union ``(P, N + M)``; between consecutive sorted points
    ``F_X - F_Y`` is constant, equal to its value at the left point (cumulative counts). Ties
    give zero-width intervals, so their order does not matter. Returns ``(P,)``.
    """
    n, m = px.shape[1], py.shape[1]
    z, order = torch.sort(torch.cat([px, py], dim=1), dim=1)
    gaps = torch.diff(z, dim=1)  # (P, N + M - 1)
    del z
    if wx is None:
        # Cumulative counts: after k + 1 sorted points, c of them from x and k + 1 - c from y,
        # so F_X - F_Y = c / n - (k + 1 - c) / m = c (1/n + 1/m) - (k + 1) / m.
        cx = torch.cumsum(order[:, :-1] < n, dim=1, dtype=torch.int32)
        del order
        k1 = torch.arange(1, n + m, device=gaps.device, dtype=torch.float64)
        diff = cx.to(torch.float64).mul_(1.0 / n + 1.0 / m).sub_(k1 / m)
    else:
        mass = torch.cat([wx, torch.full((m,), -1.0 / m, dtype=torch.float64, device=wx.device)])
        diff = torch.cumsum(mass[order[:, :-1]], dim=1)
        del order
    return diff.square_().mul_(gaps).sum(dim=1)


def projected_energy_distances(
    x: Tensor,
    y: Tensor,
    directions: Tensor,
    weights: Tensor | None = None,
    chunk: int | None = None,
) -> Tensor:
    """1D energy distances (Cramér integrals) of the projections on each direction, ``(P,)`` float64.

    ``x`` ``(n, d)``, ``y`` ``(m, d)``, ``directions`` ``(P, d)`` (unit vectors), ``weights`` ``(n,)``
    optional nonnegative weights of ``x``. Directions are processed ``chunk`` at a time, so memory
    is O((n + m) chunk); the default keeps a block near 2M elements. Multiply the mean by
    :func:`slicing_constant` to get the sliced energy distance.
    """
    _check_pair(x, y)
    n, m = x.shape[0], y.shape[0]
    x64 = x.detach().to(torch.float64)
    y64 = y.detach().to(torch.float64)
    dirs = directions.detach().to(device=x64.device, dtype=torch.float64)
    wx = _normalized_weights(weights, n, x64)
    if chunk is None:
        chunk = max(1, _SLICE_BLOCK // (n + m))
    out = []
    for start in range(0, dirs.shape[0], chunk):
        u = dirs[start : start + chunk]  # (c, d)
        out.append(_cramer_1d(u @ x64.T, u @ y64.T, wx))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=x64.device)


def sliced_energy_distance(
    x: Tensor,
    y: Tensor,
    n_directions: int = 1000,
    generator: torch.Generator | None = None,
    chunk: int | None = None,
    weights: Tensor | None = None,
    return_stderr: bool = False,
) -> float | tuple[float, float]:
    """Sliced energy distance (docs/benchmarks.md, "Metrics") between ``x`` ``(n, d)`` and ``y`` ``(m, d)``.

    For ``n_directions`` iid directions ξ uniform on S^{d-1} (from ``generator``; the global RNG
    if None), project both samples, sort the union and compute the exact 1D Cramér integral
    ``∫ (F_X - F_Y)^2`` of the two empirical measures, average over directions and multiply by
    :func:`slicing_constant` ``c_d``. O((n + m) log(n + m)) per direction, directions batched
    ``chunk`` at a time (memory O((n + m) chunk)). Sizes may differ; ``weights`` ``(n,)`` are
    optional nonnegative weights of ``x`` (normalized here).

    The estimate is unbiased, over the random directions, for the exact V-statistic
    :func:`energy_distance` (in d = 1 it equals it exactly). With ``return_stderr`` it returns
    ``(estimate, stderr)``, the standard error of the direction average,
    ``c_d sd_ξ / sqrt(P)`` (NaN for one direction; 0 in d = 1).
    """
    _check_pair(x, y)
    if n_directions < 1:
        raise ValueError(f"n_directions must be >= 1, got {n_directions}")
    d = x.shape[1]
    dirs = random_directions(n_directions, d, generator, device=x.device)
    per_dir = projected_energy_distances(x, y, dirs, weights=weights, chunk=chunk)
    c = slicing_constant(d)
    value = c * float(per_dir.mean())
    if not return_stderr:
        return value
    se = c * float(per_dir.std()) / math.sqrt(n_directions) if n_directions > 1 else math.nan
    return value, se


def exact_floor(
    target: Any,
    n: int,
    generator: torch.Generator | None = None,
    n_directions: int = 1000,
    chunk: int | None = None,
) -> float:
    """The exact-vs-exact floor: sliced energy distance between two independent exact samples.

    Draws ``target.sample(n, generator)`` twice (the target's exact sampler) and compares them
    with :func:`sliced_energy_distance` (same ``generator`` for the directions). This is the
    value a perfect sampler scores at sample size ``n`` (the "sampling error" column of the
    published tables); report it next to any energy distance at the same ``n``.
    """
    x = target.sample(n, generator=generator)
    y = target.sample(n, generator=generator)
    return cast(float, sliced_energy_distance(x, y, n_directions=n_directions, generator=generator, chunk=chunk))


# --------------------------------------------------------------------------------------------
# MMD


def median_heuristic(
    x: Tensor, y: Tensor | None = None, max_points: int = 2000, generator: torch.Generator | None = None
) -> float:
    """Median pairwise Euclidean distance (``i < j``) of the pooled sample ``x`` ``(n, d)`` ∪ ``y`` ``(m, d)``.

    The lower middle value for an even number of pairs (as ``torch.median``), computed on a
    random subsample of at most ``max_points`` pooled points (drawn without replacement with
    ``generator``, the global RNG if None). Returns 1.0 if all points coincide.
    """
    z = x.detach().to(torch.float64)
    if y is not None:
        z = torch.cat([z, y.detach().to(device=z.device, dtype=torch.float64)])
    if z.shape[0] > max_points:
        draw_device = generator.device if generator is not None else "cpu"
        idx = torch.randperm(z.shape[0], generator=generator, device=draw_device)[:max_points]
        z = z[idx.to(z.device)]
    if z.shape[0] < 2:
        return 1.0
    dist = torch.cdist(z, z)
    i, j = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    med = float(dist[i, j].median())
    return med if med > 0 else 1.0


def _mean_gaussian_kernel(x: Tensor, y: Tensor, h: float, chunk: int) -> Tensor:
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], chunk):
        d2 = torch.cdist(x[start : start + chunk], y).square()
        total = total + torch.exp(-d2 / (2 * h * h)).sum()
    return total / (x.shape[0] * y.shape[0])


def mmd_gaussian(
    x: Tensor,
    y: Tensor,
    bandwidth: float | None = None,
    generator: torch.Generator | None = None,
    chunk: int = 2048,
    max_median_points: int = 2000,
) -> float:
    """Squared MMD with the Gaussian kernel ``k(u, v) = exp(-|u - v|^2 / (2 h^2))``, biased V-statistic.

    ``x`` ``(n, d)``, ``y`` ``(m, d)``: ``mean k(x, x') + mean k(y, y') - 2 mean k(x, y)`` over all
    pairs, diagonals included (so it is >= 0 and exactly 0 for identical samples; its bias is
    O(1/n + 1/m)). ``h = bandwidth``, or by default the median heuristic: the median pairwise
    distance of the pooled sample (:func:`median_heuristic`, a subsample of at most
    ``max_median_points`` drawn with ``generator``). O((n + m)^2) kernel values in chunks, float64.
    """
    _check_pair(x, y)
    x64 = x.detach().to(torch.float64)
    y64 = y.detach().to(device=x64.device, dtype=torch.float64)
    h = float(bandwidth) if bandwidth is not None else median_heuristic(x64, y64, max_median_points, generator)
    if not h > 0:
        raise ValueError(f"bandwidth must be positive, got {h}")
    kxx = _mean_gaussian_kernel(x64, x64, h, chunk)
    kyy = _mean_gaussian_kernel(y64, y64, h, chunk)
    kxy = _mean_gaussian_kernel(x64, y64, h, chunk)
    return float(kxx + kyy - 2 * kxy)


# --------------------------------------------------------------------------------------------
# Weights and log Z


def kish_ess(log_weights: Tensor) -> Tensor:
    """Normalized Kish ESS ``(sum w)^2 / (N sum w^2)`` in [0, 1] over the last axis, float64.

    ``log_weights`` ``(..., N)`` (unnormalized) -> ``(...)``; 0 where all weights are 0.
    Same as :func:`sampler.core.particles.ess`, computed in float64.
    """
    return _kish_ess(torch.as_tensor(log_weights).to(torch.float64))


def log_Z_error(estimate: float | Tensor, exact: float | Tensor) -> float | Tensor:
    """Absolute log normalizer error ``|estimate - exact|``.

    A float for scalar inputs (numbers, 0-dim tensors); for array inputs such as per-replica
    estimates ``(R,)`` a float64 tensor of the broadcast shape.
    """
    if np.ndim(estimate) > 0 or np.ndim(exact) > 0:
        est = torch.as_tensor(estimate).to(torch.float64)
        ex = torch.as_tensor(exact).to(device=est.device, dtype=torch.float64)
        return (est - ex).abs()
    return abs(float(estimate) - float(exact))


# --------------------------------------------------------------------------------------------
# Modes


def nearest_mode(x: Tensor, modes: Tensor | np.ndarray) -> Tensor:
    """Index of the nearest mode for each point: ``x`` ``(..., d)``, ``modes`` ``(K, d)`` -> ``(...)``."""
    m = torch.as_tensor(modes, dtype=x.dtype, device=x.device)
    return torch.cdist(x.reshape(-1, x.shape[-1]), m).argmin(-1).reshape(x.shape[:-1])


def mode_fractions(x: Tensor, modes: Tensor | np.ndarray) -> Tensor:
    """Fraction of points nearest to each mode, ``(K,)`` float64 for ``x`` ``(n, d)``."""
    idx = nearest_mode(x, modes).flatten()
    k = len(modes)
    return torch.bincount(idx, minlength=k).to(torch.float64) / idx.numel()


def modes_covered(x: Tensor, modes: Tensor | np.ndarray, min_fraction: float | None = None) -> int:
    """Number of modes holding at least ``min_fraction`` of the points (nearest-mode assignment).

    The default, ``0.1 / K``, asks for a tenth of an equal share, so stray points do not count.
    """
    fractions = mode_fractions(x, modes)
    threshold = 0.1 / len(modes) if min_fraction is None else min_fraction
    return int((fractions >= threshold).sum())


def mode_weight_error(x: Tensor, modes: Tensor | np.ndarray, weights: Tensor | np.ndarray | None = None) -> float:
    """Mode-weight error ``sum_k (fraction_k - w_k)^2`` (the "mode MSE" of docs/benchmarks.md).

    ``x`` ``(n, d)`` samples, each assigned to its nearest mode of ``modes`` ``(K, d)``;
    ``weights`` ``(K,)`` are the true mode weights (normalized here; equal, ``1/K``, by default).
    """
    fractions = mode_fractions(x, modes)
    k = fractions.numel()
    if weights is None:
        w = torch.full((k,), 1.0 / k, dtype=torch.float64, device=fractions.device)
    else:
        w = torch.as_tensor(weights).to(device=fractions.device, dtype=torch.float64).flatten()
        if w.numel() != k:
            raise ValueError(f"expected {k} mode weights, got {w.numel()}")
        w = w / w.sum()
    return float((fractions - w).square().sum())
