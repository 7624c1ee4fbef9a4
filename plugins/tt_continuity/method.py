"""The ``tt-smc`` method: the engine's adaptive tempered SMC plus the TT continuity-equation flow."""

from __future__ import annotations

import inspect
from typing import Any

from sampler.ext import Adaptive, ConfigurationError, Pipeline, Schedule, corrector
from sampler_plugins.tt_continuity.transport import TTFlow

__all__ = ["build_tt_smc", "TT_OPTIONS"]

#: Options of :class:`TTFlow` that ``tt-smc`` passes through, with their defaults.
TT_OPTIONS: dict[str, Any] = {
    name: p.default for name, p in inspect.signature(TTFlow.__init__).parameters.items() if name != "self"
}

_KERNELS = ("mala", "hmc", "rwmh", "ula")


def build_tt_smc(
    kernel: str = "mala",
    n_steps: int = 5,
    target_ess: float = 0.9,
    resample_threshold: float = 1.0,
    scheme: str = "systematic",
    schedule: Schedule | None = None,
    reference_loc=None,
    reference_scale=None,
    **options: Any,
) -> Pipeline:
    """Adaptive tempered SMC whose stages start with a TT flow step (Hagemann et al. 2024).

    Each stage ``t -> t'`` (``t'`` from the adaptive schedule, conditional ESS ``target_ess``, as in
    ``smc``): the ``tt-flow`` transport fits ``v_t = grad Phi_t`` to the continuity equation at the
    particles (ALS on a functional tensor train) and moves them by ``(t' - t) v_t``; the engine
    reweights with ``pi_t'(T x) |det grad T| / pi_t(x)``; then ESS-triggered resampling and
    ``n_steps`` sweeps of the MCMC ``kernel`` at pi_t' -- the same correctors as ``smc``.

    Args:
        kernel: MCMC corrector (``mala``, ``hmc``, ``rwmh``, ``ula``).
        n_steps: MCMC sweeps per stage; 0 runs the flow and resampling only.
        target_ess: conditional ESS goal of the adaptive schedule (ignored with ``schedule``).
            The schedule looks at the particles before the flow, so it picks the same kind of
            temperatures as ``smc``; the flow shows in the ESS after reweighting.
        resample_threshold: ESS fraction below which a replica is resampled (1: every stage).
        scheme: resampling scheme.
        schedule: a fixed :mod:`sampler.core.schedules` schedule instead of the adaptive one.
        reference_loc, reference_scale: override the target's default Gaussian reference.
        **options: the TT flow's options (:data:`TT_OPTIONS`: ``basis``, ``n_basis``, ``rank``,
            ``adaptive_rank``, ``target_residual``, ``round_eps``, ``ema``, ``n_sweeps``,
            ``ridge``, ``fit_constant``, ``box_width``, ``window``, ``flow_scale``,
            ``flow_until``, ``min_jacobian``, ``warm_start``, ``cross_fit``; see
            :class:`~sampler_plugins.tt_continuity.TTFlow`); the others go to the kernel
            (``step_size``, ``target_acceptance``, ...).
    """
    if kernel not in _KERNELS:
        raise ConfigurationError(f"kernel must be one of {', '.join(_KERNELS)}, got {kernel!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ConfigurationError(f"n_steps must be a non-negative integer, got {n_steps!r}")
    tt = {**TT_OPTIONS, **{k: options.pop(k) for k in list(options) if k in TT_OPTIONS}}
    kernel_options = options
    steps = [TTFlow(**tt), corrector("resample", scheme=scheme, threshold=resample_threshold)]
    if n_steps > 0:
        steps.append(corrector(kernel, n_steps=n_steps, **kernel_options))
    options = dict(
        kernel=kernel,
        n_steps=n_steps,
        target_ess=target_ess,
        resample_threshold=resample_threshold,
        scheme=scheme,
        **tt,
        **kernel_options,
    )
    return Pipeline(
        schedule=schedule if schedule is not None else Adaptive(target_ess=target_ess),
        steps=steps,
        reference_loc=reference_loc,
        reference_scale=reference_scale,
        final_resampling=scheme,
        name="tt-smc",
        options=options,
    )
