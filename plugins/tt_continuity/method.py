"""The ``tt-smc`` method: the engine's adaptive tempered SMC plus the TT continuity-equation flow."""

from __future__ import annotations

from typing import Any

from sampler import Pipeline, corrector
from sampler.errors import ConfigurationError
from sampler.schedules import Adaptive, Schedule

from sampler_plugins.tt_continuity.transport import TTFlow

__all__ = ["build_tt_smc", "TT_OPTIONS"]

#: Options of :class:`TTFlow` that ``tt-smc`` passes through.
TT_OPTIONS = (
    "basis",
    "n_basis",
    "rank",
    "adaptive_rank",
    "target_residual",
    "round_eps",
    "ema",
    "n_sweeps",
    "ridge",
    "fit_constant",
    "box_width",
    "window",
    "flow_scale",
    "flow_until",
    "min_jacobian",
    "warm_start",
)

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
    basis: str = "legendre",
    n_basis: int = 6,
    rank: int = 4,
    adaptive_rank: bool = True,
    target_residual: float = 0.05,
    round_eps: float = 1e-3,
    ema: float = 0.5,
    n_sweeps: int = 2,
    ridge: float = 1e-6,
    fit_constant: bool = True,
    box_width: float = 4.0,
    window: float = 0.25,
    flow_scale: float = 1.0,
    flow_until: float = 1.0,
    min_jacobian: float = 0.5,
    warm_start: bool = False,
    **kernel_options: Any,
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
        schedule: a fixed :mod:`sampler.schedules` schedule instead of the adaptive one.
        reference_loc, reference_scale: override the target's default Gaussian reference.
        basis, n_basis, rank, adaptive_rank, target_residual, round_eps, ema, n_sweeps,
            ridge, fit_constant, box_width, window, flow_scale, flow_until, min_jacobian, warm_start: the TT
            flow's options (see :class:`~sampler_plugins.tt_continuity.TTFlow`).
        **kernel_options: passed to the kernel (``step_size``, ``target_acceptance``, ...).
    """
    if kernel not in _KERNELS:
        raise ConfigurationError(f"kernel must be one of {', '.join(_KERNELS)}, got {kernel!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ConfigurationError(f"n_steps must be a non-negative integer, got {n_steps!r}")
    tt = dict(
        basis=basis,
        n_basis=n_basis,
        rank=rank,
        adaptive_rank=adaptive_rank,
        target_residual=target_residual,
        round_eps=round_eps,
        ema=ema,
        n_sweeps=n_sweeps,
        ridge=ridge,
        fit_constant=fit_constant,
        box_width=box_width,
        window=window,
        flow_scale=flow_scale,
        flow_until=flow_until,
        min_jacobian=min_jacobian,
        warm_start=warm_start,
    )
    steps = [TTFlow(**tt), corrector("resample", scheme=scheme, threshold=resample_threshold)]
    if n_steps > 0:
        steps.append(corrector(kernel, n_steps=n_steps, **kernel_options))
    options = dict(
        kernel=kernel, n_steps=n_steps, target_ess=target_ess, resample_threshold=resample_threshold, scheme=scheme, **tt, **kernel_options
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
