"""Mode-preserving resampling: every cluster of the particles keeps a floor of offspring.

Along a geometric path the mass of a mode can dip far below its final share at intermediate
temperatures (on ``gmm10-100``, from the target's reference, the farthest mode holds e^-5.8 of
it near t = 0.1; docs/methods.md, "Mode floors"). Plain
resampling then gives such a mode a fraction of a particle in expectation, and once its last
particle is gone no local move brings it back. Here resampling draws the ancestors from a
*balanced* distribution instead of the weights, and the weights keep the difference:

1. the particles are grouped by a Gaussian mixture fitted to their leading principal
   coordinates, each particle counted once whatever its weight
   (:func:`~sampler_plugins.mcmc.mixture.fit_mixture`, full covariances), and labelled with
   its most likely component;
2. cluster k, of weight ``W_k``, gets ``n_k = max(floor, N W_k')`` offspring, where ``W_k'``
   rescales the unfloored clusters' weights so the ``n_k`` sum to N;
3. ancestors are drawn systematically from ``p_i = (n_k / N) (w_i / W_k)`` (clusters contiguous,
   so cluster k gets ``n_k`` offspring to within one), and each offspring of particle i carries
   the weight ``w_i / p_i``, the same ``W_k N / n_k`` for every offspring of one cluster.

Resampling from any ``p`` that is positive wherever ``w`` is, with weights ``w / p``, is
unbiased for every test function: ``E[sum_j (w/p)(a_j) f(x_{a_j}) / N] = sum_i w_i f(x_i)``
(importance resampling; e.g. Fearnhead & Clifford 2003, JRSS B 65(4)). With no cluster below
the floor, ``p = w`` and this is ordinary systematic resampling with equal weights. The
clusters' masses pass through unchanged (each cluster's offspring carry exactly ``W_k``), so
resampling also adds no noise to the relative mass of the modes. What it costs is the weight
spread: the floored clusters' offspring carry small weights, so the ESS after resampling is
about the number of particles outside them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sampler.ext import systematic
from sampler_plugins.mcmc.mixture import fit_mixture

__all__ = ["MAX_CLUSTERS", "balanced_resample", "cluster_labels", "floored_allocation"]

#: At most this many clusters; fewer when N is small (each cluster about 4 floors of particles).
MAX_CLUSTERS = 32

#: Principal coordinates the clusters are fitted in: k groups of points differ in at most k - 1
#: directions, so 12 separate up to 13; full covariances in 12 dimensions stay cheap, and in
#: the whole space the spread within each group would drown the separation between groups.
PRINCIPAL_COMPONENTS = 12


def cluster_labels(x: Tensor, n_clusters: int, generator: torch.Generator) -> Tensor:
    """The most likely component of a Gaussian mixture fitted to the positions: ``(R, N)`` long.

    The mixture is fitted to the particles' leading ``PRINCIPAL_COMPONENTS`` principal
    coordinates (full covariances), every particle counted once whatever its weight, so a
    cluster of a few low-weight particles is seen as the group of points it is. In high
    dimension the distances between points are dominated by the spread within a mode; the
    separation between modes lives in the few directions of largest variance.
    """
    r, n, d = x.shape
    xc = x.to(torch.float64) - x.to(torch.float64).mean(1, keepdim=True)
    q = min(d, n - 1, PRINCIPAL_COMPONENTS)
    if d <= n:  # top eigenvectors of the (R, d, d) covariance
        _, vecs = torch.linalg.eigh(xc.transpose(1, 2) @ xc)
        z = xc @ vecs[..., -q:]
    else:  # of the (R, N, N) Gram matrix: the same coordinates up to scale
        vals, vecs = torch.linalg.eigh(xc @ xc.transpose(1, 2))
        z = vecs[..., -q:] * vals[..., None, -q:].clamp_min(0.0).sqrt()
    uniform = torch.full((r, n), -math.log(n), dtype=torch.float64, device=x.device)
    mix = fit_mixture(z, uniform, n_clusters, generator, covariance="full")
    return mix.log_prob_and_component(z)[1]


def floored_allocation(cluster_weights: Tensor, floor: float, n: int) -> Tensor:
    """Offspring per cluster ``(R, K)`` float64: ``max(floor, share)``, summing to ``n`` per replica.

    ``cluster_weights`` ``(R, K)`` are the clusters' normalized weights; clusters of zero weight
    (and empty ones) get none. The clusters above the floor share what is left in proportion to
    their weights; where the floors alone would exceed ``n``, every live cluster gets an equal
    share.
    """
    alive = cluster_weights > 0
    n_alive = alive.sum(-1, keepdim=True).to(torch.float64)
    floor_t = torch.minimum(torch.full_like(n_alive, float(floor)), n / n_alive)
    floored = torch.zeros_like(alive)
    for _ in range(cluster_weights.shape[-1] + 1):  # each pass floors at least one more cluster, or stops
        free = alive & ~floored
        left = n - floor_t * floored.sum(-1, keepdim=True)
        free_weight = (cluster_weights * free).sum(-1, keepdim=True)
        share = torch.where(free, cluster_weights * left / free_weight.clamp_min(1e-300), 0.0)
        newly = free & (share < floor_t * (1.0 - 1e-9))  # round-off is not below the floor
        if not bool(newly.any()):
            break
        floored = floored | newly
    return torch.where(floored, floor_t, share)


def balanced_resample(
    x: Tensor, log_weights: Tensor, floor: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Ancestors ``(R, N)``, their new normalized log weights ``(R, N)`` and the floored share ``(R,)``.

    ``x`` ``(R, N, d)`` positions, ``log_weights`` ``(R, N)`` normalized; ``floor`` offspring
    at least per cluster (see the module docstring). The floored share is the fraction of the N
    offspring that went to clusters held at the floor (0 where the floor changed nothing).
    """
    r, n, _ = x.shape
    k = max(1, min(MAX_CLUSTERS, int(n // (4 * floor))))
    labels = cluster_labels(x, k, generator)
    log_w = log_weights.to(torch.float64)
    w = torch.softmax(log_w, -1)
    cluster_w = torch.zeros(r, k, dtype=torch.float64, device=x.device).scatter_add_(1, labels, w)
    alloc = floored_allocation(cluster_w, floor, n)  # (R, K)
    # p_i = (n_k / N) (w_i / W_k); log p_i - log w_i is the same for every particle of cluster k.
    shift = (alloc / n).log() - cluster_w.log()  # -inf/nan only for dead clusters, which own no weight
    shift = torch.where(alloc > 0, shift, 0.0)
    log_p = log_w + torch.gather(shift, 1, labels)
    order = torch.argsort(labels, dim=-1, stable=True)  # clusters contiguous: counts within one of n_k
    ancestors = torch.gather(order, 1, systematic(torch.gather(log_p, 1, order), generator))
    new_log_w = torch.gather(log_w - log_p, 1, ancestors)
    new_log_w = torch.where(torch.isfinite(new_log_w), new_log_w, -math.inf)
    floored_share = (alloc * (alloc > cluster_w * n * (1.0 + 1e-9))).sum(-1) / n
    return ancestors, torch.log_softmax(new_log_w, -1), floored_share
