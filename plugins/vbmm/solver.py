"""Generic Variable Bregman Majorization-Minimization (VBMM) for separable Bregman functions.

Problem: minimize ``F = f + g`` where ``f`` is smooth and convex on an open set ``D`` (here the
positive orthant) and ``g`` is an optional separable box constraint ``lower <= x <= upper``.

Given the iterate ``x^l``, a *Bregman family* picks a separable Legendre function
``h_l(x) = sum_k h_{l,k}(x_k)`` that majorizes ``f`` around ``x^l``::

    f(x) <= f(x^l) + <grad f(x^l), x - x^l> + D_{h_l}(x, x^l)    for every x in D,

with ``D_h(x, y) = h(x) - h(y) - <h'(y), x - y>``. The next iterate minimizes the majorant plus
``g``; because ``h_l`` is separable, this is one 1-D strictly convex problem per coordinate::

    h_l'(x_k^{l+1}) = h_l'(x_k^l) - d_k f(x^l)   (then clipped to [lower_k, upper_k]).

Each 1-D equation is solved in closed form where the family has one, otherwise by the
safeguarded (bracketed) Newton method :func:`solve_increasing`. A fixed family gives the Bregman
proximal gradient method (BPG, step 1 when ``h - f`` is convex); a family that adapts ``h_l`` to
the iterate gives VBMM (Martin, Pesquet, Steidl, Ben Ayed 2025). Every update decreases ``F``
monotonically whenever the majorization holds.

All tensors are batched over independent problems: ``x`` has shape ``(B, K)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs
import torch
from torch import Tensor

from sampler.ext import ConfigurationError

__all__ = [
    "SeparableBregman",
    "BregmanFamily",
    "FixedFamily",
    "VBMMResult",
    "solve_increasing",
    "bregman_divergence",
    "majorization_gap",
    "vbmm",
]


def solve_increasing(
    fun: Callable[[Tensor], tuple[Tensor, Tensor]],
    x0: Tensor,
    *,
    rtol: float = 1e-13,
    max_iter: int = 100,
) -> Tensor:
    """Root of strictly increasing functions on ``(0, inf)``, elementwise, by safeguarded Newton.

    ``fun(x) -> (phi(x), phi'(x))`` acts elementwise on ``x`` of any shape; ``phi`` must be
    strictly increasing with a root in ``(0, inf)``. A bracket ``[lo, hi]`` (``lo = 0``,
    ``hi = inf`` at the start) is kept from the signs of ``phi``; a Newton step that leaves it is
    replaced by bisection, so the iteration always converges (quadratically near the root).
    Stops when every relative Newton step is below ``rtol`` (the next step would be ~rtol^2) or after
    ``max_iter`` steps.
    """
    x = x0.clone()
    lo = torch.zeros_like(x)
    hi = torch.full_like(x, math.inf)
    for _ in range(max_iter):
        value, slope = fun(x)
        lo = torch.where(value < 0, x, lo)
        hi = torch.where(value > 0, x, hi)
        cand = x - value / slope
        outside = ~((cand >= lo) & (cand <= hi))  # also catches NaN; a step rounding to 0 is inside
        if bool(outside.any()):
            # a Newton step leaves the bracket only toward a finite end; bisect instead
            mid = torch.where(hi < math.inf, 0.5 * (lo + hi), 2.0 * x)
            cand = torch.where(outside & (value != 0), mid, cand)
        cand = torch.where(value == 0, x, cand)
        done = (cand - x).abs() <= rtol * x
        x = cand
        if bool(done.all()):
            break
    return x


@runtime_checkable
class SeparableBregman(Protocol):
    """A separable Legendre function ``h(x) = sum_k h_k(x_k)`` on the positive orthant.

    Shapes: ``x`` ``(B, K)``; every method acts coordinate-wise and returns ``(B, K)``.
    """

    def value(self, x: Tensor) -> Tensor:
        """``h_k(x_k)`` per coordinate (sum over the last axis gives ``h(x)``)."""
        ...

    def grad(self, x: Tensor) -> Tensor:
        """``h_k'(x_k)``."""
        ...

    def solve(self, target: Tensor, x_init: Tensor) -> Tensor:
        """``x`` with ``h_k'(x_k) = target_k`` (``x_init``: a starting guess, e.g. the iterate)."""
        ...


@runtime_checkable
class BregmanFamily(Protocol):
    """Chooses the Bregman function ``h_l`` of iteration ``l`` from the iterate and the gradient."""

    def at(self, x: Tensor, grad: Tensor) -> SeparableBregman:
        """The separable ``h_l`` majorizing ``f`` around ``x`` ``(B, K)`` (``grad``: ``grad f(x)``)."""
        ...


@attrs.frozen
class FixedFamily:
    """The same Bregman function at every iteration: VBMM reduces to BPG with step 1."""

    h: SeparableBregman

    def at(self, x: Tensor, grad: Tensor) -> SeparableBregman:
        """Always ``h``."""
        return self.h


def bregman_divergence(h: SeparableBregman, x: Tensor, y: Tensor) -> Tensor:
    """``D_h(x, y) = h(x) - h(y) - <h'(y), x - y>`` summed over the last axis: ``(B, K) -> (B,)``."""
    return (h.value(x) - h.value(y) - h.grad(y) * (x - y)).sum(-1)


def majorization_gap(
    objective: Callable[[Tensor], Tensor],
    gradient: Callable[[Tensor], Tensor],
    h: SeparableBregman,
    y: Tensor,
    x: Tensor,
) -> Tensor:
    """Majorant minus objective at ``x``: ``f(y) + <grad f(y), x - y> + D_h(x, y) - f(x)`` ``(B,)``.

    Non-negative (up to rounding) for every ``x`` exactly when ``h`` majorizes ``f`` around ``y``.
    ``y`` and ``x`` are ``(B, K)``; ``x`` may carry extra leading axes of test points
    ``(M, B, K)`` (``y`` broadcasts), giving ``(M, B)``.
    """
    return objective(y) + (gradient(y) * (x - y)).sum(-1) + bregman_divergence(h, x, y) - objective(x)


@attrs.frozen(eq=False)
class VBMMResult:
    """Output of :func:`vbmm`.

    Attributes:
        x: ``(B, K)`` the last iterate.
        objective: ``(B,)`` ``F`` at ``x``.
        n_iter: ``(B,)`` int64 iterations each problem took (until it converged).
        converged: ``(B,)`` bool: both stopping criteria met.
        history: objective values ``(n_iter_max + 1, B)`` if recorded (``record=True``), else None.
        iterates: the iterates ``(n_iter_max + 1, B, K)`` if ``record_iterates=True``, else None.
    """

    x: Tensor
    objective: Tensor
    n_iter: Tensor
    converged: Tensor
    history: Tensor | None = None
    iterates: Tensor | None = None


def vbmm(
    objective: Callable[[Tensor], Tensor],
    gradient: Callable[[Tensor], Tensor],
    family: BregmanFamily,
    x0: Tensor,
    *,
    lower: float | Tensor | None = None,
    upper: float | Tensor | None = None,
    max_iter: int = 10_000,
    xtol: float = 1e-10,
    gtol: float = 1e-10,
    record: bool = False,
    record_iterates: bool = False,
    callback: Callable[[int, Tensor], bool | None] | None = None,
) -> VBMMResult:
    """Minimize ``objective + indicator[lower, upper]`` by VBMM with the given Bregman family.

    Args:
        objective: ``f`` ``(B, K) -> (B,)``.
        gradient: ``grad f`` ``(B, K) -> (B, K)``.
        family: picks ``h_l`` at every iterate (:class:`FixedFamily` gives BPG).
        x0: ``(B, K)`` starting point inside the domain.
        lower, upper: optional box (the non-smooth term ``g``); the 1-D majorant minimizer is
            clipped to it, which is exact because each 1-D majorant is strictly convex.
        max_iter: iteration limit.
        xtol, gtol: a problem has converged when the largest relative change of ``x`` is below
            ``xtol`` and the largest projected-gradient entry is below ``gtol`` (both are
            needed: slow MM iterations can take tiny steps far from the optimum).
        record: keep the objective of every iterate.
        record_iterates: keep every iterate (for checking the majorization afterwards).
        callback: ``callback(l, x)`` after each iteration; returning ``True`` stops.
    """
    if x0.ndim != 2:
        raise ConfigurationError(f"x0 must have shape (B, K), got {tuple(x0.shape)}")
    x = x0.clone()
    b = x.shape[0]
    n_iter = torch.zeros(b, dtype=torch.int64, device=x.device)
    converged = torch.zeros(b, dtype=torch.bool, device=x.device)
    fx = objective(x)
    history = [fx] if record else None
    iterates = [x] if record_iterates else None
    g = gradient(x)
    for it in range(max_iter):
        h = family.at(x, g)
        new = h.solve(h.grad(x) - g, x)
        if lower is not None or upper is not None:
            new = _clip(new, lower, upper)
        new = torch.where(converged[:, None], x, new)
        fnew = objective(new)
        step = ((new - x).abs() / x).amax(-1)
        g = gradient(new)
        pg = _projected_gradient(g, new, lower, upper).abs().amax(-1)
        n_iter = n_iter + (~converged).to(torch.int64)
        converged = converged | ((step <= xtol) & (pg <= gtol))
        x, fx = new, fnew
        if history is not None:
            history.append(fx)
        if iterates is not None:
            iterates.append(x)
        if bool(converged.all()) or (callback is not None and callback(it + 1, x)):
            break
    return VBMMResult(
        x=x,
        objective=fx,
        n_iter=n_iter,
        converged=converged,
        history=torch.stack(history) if history is not None else None,
        iterates=torch.stack(iterates) if iterates is not None else None,
    )


def _clip(x: Tensor, lower: float | Tensor | None, upper: float | Tensor | None) -> Tensor:
    if lower is not None:
        x = torch.maximum(x, torch.as_tensor(lower, dtype=x.dtype, device=x.device))
    if upper is not None:
        x = torch.minimum(x, torch.as_tensor(upper, dtype=x.dtype, device=x.device))
    return x


def _projected_gradient(g: Tensor, x: Tensor, lower, upper) -> Tensor:
    """Gradient with the entries that push against an active bound set to zero."""
    if lower is not None:
        at_lower = x <= torch.as_tensor(lower, dtype=x.dtype, device=x.device)
        g = torch.where(at_lower & (g > 0), torch.zeros_like(g), g)
    if upper is not None:
        at_upper = x >= torch.as_tensor(upper, dtype=x.dtype, device=x.device)
        g = torch.where(at_upper & (g < 0), torch.zeros_like(g), g)
    return g
