"""``reference="auto"``: the Laplace approximation where it describes the target, the prior elsewhere.

Starting the annealing path at ``N(MAP, H^{-1})`` instead of the prior reference whitens the
problem for the MCMC moves: on ill-conditioned unimodal posteriors (tight regressions, ridges)
this is what makes tempered SMC right (docs/posteriors.md). On a multimodal target it is wrong:
the path would start at one mode, where the adaptive schedule cannot see the others. And where
the prior is already on the target's scale it costs accuracy: the path from the Laplace fit is
shorter (fewer temperatures, so fewer MCMC sweeps), and on a curved target such as ``mustache``
the energy distance grew five-fold (docs/methods.md). So the Laplace fit
(:func:`~sampler.core.laplace.fit_laplace`, L-BFGS from 8 starts: the prior's centre and 7 draws
from it) is used only if it passes four checks, in this order:

1. **dimension** ``d <= AUTO_MAX_DIM``: a dense reference costs ``O(d^2)`` per particle and
   evaluation, which above a hundred dimensions outweighs what it saves;
2. **one maximum**: the fit has a positive definite Hessian and no start ended at another
   maximum (:attr:`~sampler.core.laplace.LaplaceFit.other_maxima`);
3. **the prior is off**: in the prior's standardized coordinates some direction of the Laplace
   Gaussian has a standard deviation outside ``[1 / AUTO_SCALE_RATIO, AUTO_SCALE_RATIO]``
   (the singular values of ``diag(1 / prior scale) chol(H^{-1})``), or the mode lies more than
   ``AUTO_FAR`` prior standard deviations from the prior's centre (a mismatch that one scalar
   step size cannot bridge), or the Laplace Gaussian holds more than ``AUTO_MIN_KL`` nats of
   information beyond the prior, ``KL(Laplace || prior)``: the path from the prior is then long
   (on the log mesquite regression and the GARCH, 16–29 nats, it cost 7–9 times the gradients of
   the path from the fit), while where the Laplace start lost accuracy, on the curved ``mustache``,
   it is 2.4 nats;
4. **coverage**: ``AUTO_CHECK_DRAWS`` draws from the fitted Gaussian, importance-weighted to the
   target, have a PSIS Pareto shape ``k <= AUTO_MAX_PARETO_K`` (Vehtari et al. 2024, "Pareto
   smoothed importance sampling": above 0.7 the Gaussian misses mass the target has, as at the
   neck of a funnel). Where the fit fails this, the same check runs on the fit widened
   ``AUTO_WIDEN`` times (its standard deviations doubled), and the path starts there if that
   passes: a wider proposal is the textbook remedy for importance weights whose tails the
   proposal's are too light for (defensive importance sampling, Hesterberg 1995), and a
   skewed posterior such as the GARCH's (k 0.67-0.91 for the fit, 0.12 widened) is covered by
   it, while one the fit misses in shape rather than in width (the GP Poisson regression: k
   0.81-0.93, widened 1.6-1.7; a funnel) fails again.

Otherwise the path starts at the prior reference, and the reason is recorded. A pipeline none of
whose steps uses gradients keeps the prior without a fit (:class:`~sampler.Pipeline`). The check of
modes is only as good as the starts: the 7 random ones all miss a basin that holds a fraction
``p`` of the prior's mass with probability ``(1 - p)^7`` (0.48 for p = 0.1, 0.13 for p = 0.25),
so a target with a minor mode away from the prior's centre is safer with ``reference="prior"``.
Every evaluation (the fit and the check's draws) counts in the run's totals.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from sampler.core.laplace import N_STARTS, fit_laplace
from sampler.core.paths import EvaluationCounter, GaussianReference, GeometricPath
from sampler.core.psis import pareto_k
from sampler.targets.base import Target

__all__ = [
    "auto_reference",
    "AUTO_MAX_DIM",
    "AUTO_SCALE_RATIO",
    "AUTO_FAR",
    "AUTO_MIN_KL",
    "AUTO_MAX_PARETO_K",
    "AUTO_CHECK_DRAWS",
    "AUTO_WIDEN",
]

#: Above this dimension ``"auto"`` keeps the prior reference.
AUTO_MAX_DIM = 100
#: The scale mismatch (a factor on standard deviations) beyond which the prior counts as off.
AUTO_SCALE_RATIO = 100.0
#: The distance of the mode from the prior's centre, in prior standard deviations, beyond which
#: the prior counts as off.
AUTO_FAR = 10.0
#: The information of the Laplace Gaussian beyond the prior, ``KL(Laplace || prior)`` in nats,
#: above which the prior counts as off.
AUTO_MIN_KL = 10.0
#: The largest Pareto k of the coverage check that keeps the Laplace reference.
AUTO_MAX_PARETO_K = 0.7
#: Draws from the Laplace Gaussian in the coverage check (target evaluations, no gradients). The
#: estimate of k is noisy, as it rests on the largest weights: from 1,000 draws, the GP Poisson
#: regression's k (whose Laplace start fails) ranged 0.59–1.13 over 10 seeds; from 10,000,
#: 0.83–1.02 over 6.
AUTO_CHECK_DRAWS = 10_000
#: The factor on the fit's standard deviations of the second coverage check.
AUTO_WIDEN = 2.0


def auto_reference(
    target: Target,
    prior: GaussianReference,
    counter: EvaluationCounter,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> tuple[GaussianReference, str]:
    """The reference ``"auto"`` picks (module docstring) and what was decided, in words.

    Args:
        target: the target.
        prior: the prior reference (the fallback, and where the fit's starts come from).
        counter: where the fit's and the check's evaluations are counted.
        generator: draws the starts and the check's draws (on the device the fit runs on).
        dtype: the dtype the target is evaluated in.

    Returns:
        ``(reference, used)``: ``used`` is ``"laplace (auto: ...)"`` (the fit, or the widened
        fit, as the reason then says) or ``"prior (auto: ...)"`` with the reason, as recorded in
        ``Result.options["reference"]``.
    """
    d = target.dim
    if d > AUTO_MAX_DIM:
        return prior, f"prior (auto: d = {d} > {AUTO_MAX_DIM})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fit's fallbacks are reported as the reason below
        fit = fit_laplace(target, prior, counter, generator, dtype=dtype)
    if fit.kind != "dense":
        why = "no finite maximum" if fit.kind == "failed" else "the Hessian at the maximum is not positive definite"
        return prior, f"prior (auto: {why})"
    if fit.other_maxima:
        return prior, f"prior (auto: {fit.other_maxima + 1} maxima found from {N_STARTS} starts, multimodal)"
    ratios, distance, kl = _mismatch(prior, fit.reference, generator.device)
    mismatch = (
        f"sd ratios {ratios[0]:.2g}-{ratios[1]:.2g} of the prior's, mode {distance:.3g} prior sds away, "
        f"KL(Laplace, prior) {kl:.3g} nats"
    )
    scale_ok = 1 / AUTO_SCALE_RATIO <= ratios[0] and ratios[1] <= AUTO_SCALE_RATIO
    if scale_ok and distance <= AUTO_FAR and kl <= AUTO_MIN_KL:
        return prior, f"prior (auto: the prior is on the target's scale: {mismatch})"
    k = _coverage(target, fit.reference, counter, generator, dtype)
    if k <= AUTO_MAX_PARETO_K:
        return fit.reference, f"laplace (auto: one maximum, {mismatch}, Pareto k {k:.2f})"
    wide = fit.reference.widened(AUTO_WIDEN)
    k_wide = _coverage(target, wide, counter, generator, dtype)
    why = f"Pareto k {k:.2f}, widened {AUTO_WIDEN:g}x: k {k_wide:.2f}"
    if k_wide <= AUTO_MAX_PARETO_K:
        return wide, f"laplace (auto: one maximum, {mismatch}, {why})"
    return prior, f"prior (auto: the Laplace Gaussian misses target mass, {why})"


def _mismatch(
    prior: GaussianReference, fit: GaussianReference, device: torch.device
) -> tuple[tuple[float, float], float, float]:
    """How far ``fit`` is from ``prior``: its extreme sd ratios over directions, its centre's distance
    in prior sds, and ``KL(fit || prior)`` in nats."""

    def f64(value) -> Tensor:
        return torch.as_tensor(value, dtype=torch.float64, device=device)

    scale = f64(prior.scale).expand(fit.dim)
    whitened = f64(fit.scale_tril) / scale[:, None]  # the fit's Cholesky factor in prior units
    ratios = torch.linalg.svdvals(whitened)
    offset = (f64(fit.loc) - f64(prior.loc)) / scale
    # KL(N(m1, L L^T) || N(m0, S^2)) = (tr + |offset|^2 - d) / 2 - log det(S^{-1} L)
    kl = 0.5 * (whitened.square().sum() + offset.square().sum() - fit.dim) - whitened.diagonal().abs().log().sum()
    return (float(ratios.min()), float(ratios.max())), float(offset.norm()), float(kl)


def _coverage(
    target: Target, fit: GaussianReference, counter: EvaluationCounter, generator: torch.Generator, dtype: torch.dtype
) -> float:
    """PSIS Pareto k of the target's importance weights on draws from ``fit``.

    ``inf`` if no weight is finite, ``-inf`` if all are equal (the fit is the target).
    """
    path = GeometricPath(fit, target, counter)
    x = fit.sample((AUTO_CHECK_DRAWS,), generator, dtype)
    ev = path.evaluate(x)
    log_w = ev.log_target - ev.log_ref
    if not bool(torch.isfinite(log_w).any()):
        return math.inf
    k = float(pareto_k(log_w)[0])
    return -math.inf if math.isnan(k) else k
