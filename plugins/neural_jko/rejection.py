"""The importance rejection/resampling layer (Hertrich & Gruhlke, Thm 4.2).

Input: ``X ~ mu`` (density ``p``, known ``e = -log p``). With ``lq(x) = e(x) + log q(x)`` (``q``
the unnormalized target) the layer keeps ``X`` with probability
``alpha(x) = min(1, exp(lq(x) - log c))`` and otherwise replaces it by *one* fresh draw ``X'``
from ``mu`` (the model truncated before this layer; never a repeat-until-accept loop). The
output density is

    p_new(x) = p(x) (alpha(x) + r_bar),     r_bar = E_mu[1 - alpha],

so ``e_new(x) = e(x) - log(alpha(x) + r_bar) = e(x) - log(1 - r(x) + r_bar)``, and
``KL(p_new | target) <= KL(p | target)``. ``r_bar`` is estimated once, on the layer's training
set, and stored; ``log c`` is chosen by bisection so that the rejection rate on that set is
``rate`` (0.2 by default).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from sampler.ext import ConfigurationError

__all__ = ["RejectionLayer", "fit_log_c", "rejection_rate"]

#: Sums a float64 or int64 tensor over the ranks of a data-parallel run (``sampler.engine.distributed.all_reduce_sum``).
Reduce = Callable[[Tensor], Tensor]


def rejection_rate(lq: Tensor, log_c: float) -> Tensor:
    """Mean of ``1 - min(1, exp(lq - log_c))`` over ``lq`` ``(n,)`` (float64 scalar)."""
    return _rejections(lq, log_c) / lq.numel()


def _rejections(lq: Tensor, log_c: float) -> Tensor:
    """Sum of ``1 - min(1, exp(lq - log_c))`` over ``lq`` ``(n,)``."""
    return (1.0 - torch.exp(torch.clamp(lq - log_c, max=0.0))).sum()


def _no_reduce(values: Tensor) -> Tensor:
    return values


def fit_log_c(lq: Tensor, rate: float, tol: float = 1e-4, max_iter: int = 200, reduce: Reduce | None = None) -> float:
    """``log c`` such that the mean rejection rate over ``lq`` ``(n,)`` is ``rate``, by bisection.

    The rate increases with ``log c`` (0 at ``min lq``, -> 1 as ``log c -> inf``). The bracket
    starts at ``mean(lq)`` and widens by ``log(2) * it`` until it contains the goal; bisection
    stops when the rate is within ``tol`` of it (the paper's procedure).

    With ``reduce`` (data-parallel training: ``lq`` is this rank's share of the training set),
    the mean and every rate are computed from sums over all ranks, so each rank takes the same
    bisection steps and returns the same ``log c`` (one ``all_reduce`` per evaluated rate).
    """
    if not 0.0 < rate < 1.0:
        raise ConfigurationError(f"rejection rate must be in (0, 1), got {rate!r}")
    reduce = reduce or _no_reduce
    lq = lq.detach().to(torch.float64)
    finite = lq[torch.isfinite(lq)]
    counts = torch.tensor([finite.numel(), lq.numel()], dtype=torch.float64, device=lq.device)
    sums = reduce(torch.cat([finite.sum().reshape(1), counts]))  # (3,): sum of finite lq, their count, all
    n_finite, n_total = float(sums[1]), float(sums[2])
    if n_finite == 0:
        raise ConfigurationError("rejection layer: every training point has zero target density (log q = -inf)")
    # -inf entries (zero target density) are always rejected; they enter the rate as 1.
    return _bisect(
        lambda log_c: float(reduce(_rejections(lq, log_c))) / n_total, float(sums[0]) / n_finite, rate, tol, max_iter
    )


def _bisect(rate_at: Callable[[float], float], start: float, rate: float, tol: float, max_iter: int) -> float:
    """Widen a bracket around ``start`` until it holds ``rate``, then bisect (see :func:`fit_log_c`)."""
    lo = hi = start
    it = 1
    while rate_at(lo) > rate and it < max_iter:
        lo -= math.log(2.0) * it
        it += 1
    it = 1
    while rate_at(hi) < rate and it < max_iter:
        hi += math.log(2.0) * it
        it += 1
    mid = 0.5 * (lo + hi)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        r = rate_at(mid)
        if abs(r - rate) < tol:
            break
        if r < rate:
            lo = mid
        else:
            hi = mid
    return mid


class RejectionLayer(nn.Module):
    """One importance rejection layer: buffers ``log_c`` and ``r_bar`` (set by :meth:`fit`).

    Args:
        rate: the rejection rate ``log c`` is tuned to on the training set.
    """

    kind = "rejection"
    log_c: Tensor  # float64 buffers and an int64 one (declared for the type checker)
    r_bar: Tensor
    n_fit: Tensor

    def __init__(self, rate: float = 0.2):
        super().__init__()
        self.rate = float(rate)
        self.register_buffer("log_c", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("r_bar", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("n_fit", torch.tensor(0, dtype=torch.int64))

    def extra_repr(self) -> str:
        return (
            f"rate={self.rate}, log_c={float(self.log_c):.4g}, r_bar={float(self.r_bar):.4f}, n_fit={int(self.n_fit)}"
        )

    @torch.no_grad()
    def fit(self, lq: Tensor, reduce: Reduce | None = None) -> None:
        """Choose ``log c`` for the training set's ``lq = e + log q`` ``(n,)`` and store ``r_bar``.

        With ``reduce`` (data-parallel training, ``lq`` this rank's share), ``log c``, ``r_bar``
        and ``n_fit`` are those of the union of all ranks' shares, the same on every rank.
        """
        reduce = reduce or _no_reduce
        lq64 = lq.detach().to(torch.float64)
        log_c = fit_log_c(lq64, self.rate, reduce=reduce)
        n_total = int(reduce(torch.tensor(lq.numel(), dtype=torch.int64, device=lq.device)))
        self.log_c.fill_(log_c)
        self.r_bar.fill_(float(reduce(_rejections(lq64, log_c))) / n_total)
        self.n_fit.fill_(n_total)

    def log_alpha(self, lq: Tensor) -> Tensor:
        """``log alpha = min(0, lq - log c)`` (float64, same shape as ``lq``)."""
        return torch.clamp(lq.to(torch.float64) - self.log_c, max=0.0)

    def log_density_factor(self, lq: Tensor) -> Tensor:
        """``log(alpha(x) + r_bar)``: ``e_new = e - log_density_factor(lq(x))`` (float64)."""
        return torch.log(torch.exp(self.log_alpha(lq)) + self.r_bar)
