"""``reference="spread"``: the prior widened until no mode found starves on the annealing path.

Along the geometric path from a reference ``N(mu_0, s^2 I)`` to a target with Gaussian modes
``N(m_j, sigma^2 I)``, mode j holds at time t a share of the tempered mass proportional to
``w_j^t exp(-c(t) |m_j - mu_0|^2)`` with ``c(t) = t (1 - t) / (2 ((1 - t) sigma^2 + t s^2))``
(docs/methods.md, "Mode floors"): a mode farther from the reference's centre than another loses
share at intermediate t and regains it only near t = 1. Since ``max_t c(t) = 1 / (2 (sigma + s)^2)``,
mode j's share relative to mode i's dips by at most ``(r_j^2 - r_i^2) / (2 (sigma + s)^2)`` nats,
``r = |m - mu_0|``. From the target's own moment-matched reference this bound is 5-8 nats on the
``gmm10-d`` mixtures (d = 50-200), enough that N = 2000 particles keep none of the farthest
mode and no local move brings it back.

This reference bounds the dip directly. L-BFGS from ``SPREAD_STARTS`` draws from the prior
(:func:`~sampler.core.laplace.find_maxima`: gradients only, any dimension, 11-17 gradient
evaluations per start on the ``gmm10-d`` mixtures) finds maxima; in the prior's standardized coordinates
they lie at squared distances ``r_j^2`` from its centre, and widening the prior ``a`` times with
``a = sqrt((max r^2 - min r^2) / (2 SPREAD_MAX_DIP))`` keeps the dip between any two of them
below :data:`SPREAD_MAX_DIP` nats, whatever their width ``sigma`` (which only shrinks it). The
centre stays; where the maxima are equally far (or there is one), the prior is kept as it is.
Modes the starts miss are protected only as far as they lie within the spread of those found:
the more starts, the fuller the spread (on ``gmm10-100``, 8 starts found 8 of the 10 modes, whose
range of ``r^2`` was 72% of the full one; 32 starts found the full range on each seed tried).

A wider start costs a longer path (more temperatures), and it is not always better: on a
product of asymmetric double wells (``manywell``), whose joint maxima differ in how many wells
sit on the far side, the widening is large and the energy distance grew with it (docs/methods.md,
"Spread reference"). So this is an option, not the default. Every evaluation of the search
counts in the run's totals.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sampler.core.laplace import find_maxima
from sampler.core.paths import EvaluationCounter, GaussianReference
from sampler.targets.base import Target

__all__ = ["spread_reference", "spread_widening", "SPREAD_MAX_DIP", "SPREAD_STARTS"]

#: The most, in nats, that the share of one maximum found may dip relative to another's on the path.
SPREAD_MAX_DIP = 1.0
#: L-BFGS starts of the search for maxima, drawn from the prior.
SPREAD_STARTS = 32


def spread_reference(
    target: Target,
    prior: GaussianReference,
    counter: EvaluationCounter,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> tuple[GaussianReference, str]:
    """The prior, widened :func:`spread_widening` times over the maxima found from it, and what was
    decided, in words (as recorded in ``Result.options["reference"]``).

    Args:
        target: the target.
        prior: the prior reference (where the search's starts come from).
        counter: where the search's evaluations are counted.
        generator: draws the starts (on the device the search runs on).
        dtype: the dtype the target is evaluated in.
    """
    maxima = find_maxima(target, prior, counter, generator, n_starts=SPREAD_STARTS, dtype=dtype)
    widen = spread_widening(prior, maxima)
    found = f"{maxima.shape[0]} of {SPREAD_STARTS} starts ended at a maximum"
    if widen == 1.0:
        return prior, f"prior (spread: {found}, all about equally far from its centre)"
    why = f"{found}; their shares dip at most {SPREAD_MAX_DIP:g} nat"
    return prior.widened(widen), f"prior widened {widen:.3g}x (spread: {why})"


def spread_widening(prior: GaussianReference, maxima: Tensor) -> float:
    """The factor (at least 1) on ``prior``'s standard deviations that keeps the dip between the
    shares of any two of the ``maxima`` ``(M, d)`` below :data:`SPREAD_MAX_DIP` nats (module docstring)."""
    if maxima.shape[0] < 2:
        return 1.0
    r2 = -2.0 * prior.log_kernel(maxima.to(torch.float64))  # |L^-1 (m - loc)|^2, diagonal or dense
    return max(1.0, math.sqrt(float(r2.max() - r2.min()) / (2 * SPREAD_MAX_DIP)))
