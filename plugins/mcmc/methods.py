"""The annealing methods of the ``mcmc`` plugin: ``smc`` and ``ais``."""

from __future__ import annotations

from typing import Any

from sampler.ext import (
    Adaptive,
    ConfigurationError,
    Geometric,
    Linear,
    Pipeline,
    Power,
    Schedule,
    check_positive_int,
    corrector,
)

_KERNELS = ("mala", "hmc", "rwmh", "ula")


def _check_kernel(kernel: str) -> None:
    if kernel not in _KERNELS:
        raise ConfigurationError(f"kernel must be one of {', '.join(_KERNELS)}, got {kernel!r}")


def _kernel(kernel: str, n_steps: int, kernel_options: dict[str, Any]):
    _check_kernel(kernel)
    return corrector(kernel, n_steps=n_steps, **kernel_options)


def build_smc(
    kernel: str = "mala",
    n_steps: int | None = None,
    target_ess: float = 0.9,
    resample_threshold: float = 1.0,
    scheme: str = "systematic",
    schedule: Schedule | None = None,
    reference: str = "auto",
    reference_loc=None,
    reference_scale=None,
    pilot_particles: int | None = None,
    mode_jumps: int = 0,
    mode_floor: int = 0,
    waste_free: int = 0,
    **kernel_options: Any,
) -> Pipeline:
    """Adaptive tempered SMC with MCMC moves (MALA by default) and ESS-triggered resampling.

    Each stage reweights to the next temperature (chosen so the conditional ESS is
    ``target_ess``), resamples when the ESS falls below ``resample_threshold``, then runs
    ``n_steps`` MCMC sweeps.

    Args:
        kernel: MCMC corrector (``mala``, ``hmc``, ``rwmh``, ``ula``).
        n_steps: MCMC sweeps per temperature (default 10; not with ``waste_free``).
        target_ess: conditional ESS goal of the adaptive schedule (ignored if ``schedule`` is
            given). 0.9 rather than the common 0.5: on multimodal targets, more and gentler
            temperatures gave mode weights closer to exact at the same cost (docs/methods.md).
        resample_threshold: ESS fraction that triggers resampling; the default 1 resamples at
            every temperature (the schedule already holds the ESS at ``target_ess``), which
            keeps the MCMC moves working on an equally weighted set.
        scheme: resampling scheme.
        schedule: a fixed :mod:`sampler.core.schedules` schedule instead of the adaptive one.
        reference: ``"auto"`` (default: the Laplace approximation ``N(MAP, H^{-1})`` if the
            target has d <= 100 and a single maximum from 8 L-BFGS starts, the prior misses the
            fit's scale by more than 100x, its mode by more than 10 sds or 10 nats of
            information, and the fit covers the target, Pareto k <= 0.7 (else the fit widened
            2x, if that covers it); the prior reference otherwise, e.g. on every
            multimodal target), ``"prior"`` (the target's hints or
            ``reference_loc``/``reference_scale``), ``"laplace"`` (always the Laplace fit),
            ``"pilot"`` (moments of a short run) or ``"spread"`` (the prior widened so that the
            maxima L-BFGS finds keep their shares along the path: for far-apart modes of
            comparable weight, e.g. ``gmm10-d``); see :class:`~sampler.Pipeline`. What was used,
            and why, is in ``Result.options["reference"]`` and the summary.
        reference_loc, reference_scale: override the target's default Gaussian reference (and
            where the Laplace fit starts and the pilot run begins).
        pilot_particles: particles per replica of the pilot run (``reference="pilot"``).
        mode_jumps: sweeps of the ``imh`` corrector (independence Metropolis-Hastings from a
            Gaussian mixture fitted to the particles) per temperature, after the kernel's
            sweeps (which have moved resampled copies apart); 0 (the default) runs none. Each costs one target
            evaluation per particle and re-equilibrates the mass between the modes found.
        mode_floor: m > 0 resamples so that every cluster of the particles (a Gaussian mixture
            fitted to their positions) keeps at least m offspring, the clusters' masses carried
            in their weights (the ``resample`` corrector's ``mode_floor``): a mode whose mass
            dips on the path keeps particles, and resampling adds no noise to the modes'
            masses. 0 (the default) resamples in proportion to the weights.
        waste_free: P >= 2 runs waste-free SMC (Dau & Chopin 2022; the ``waste-free``
            corrector): at each temperature ``ceil(N / P)`` resampled ancestors run P - 1 sweeps
            each and all their states are the N new particles, about N kernel sweeps per
            temperature instead of ``n_steps * N``. 0 (the default) runs standard SMC.
            ``resample_threshold`` and ``scheme`` do not apply (the ancestors are always resampled,
            systematically).
        **kernel_options: passed to the kernel (``metric``, ``step_size``, ``target_acceptance``,
            ``n_leapfrog`` and ``jitter`` for HMC, ...).
    """
    if mode_jumps != 0:
        check_positive_int("mode_jumps", mode_jumps)
    if waste_free != 0:
        if n_steps is not None:
            raise ConfigurationError("waste_free sets the sweeps per temperature: give waste_free or n_steps, not both")
        if mode_floor:
            raise ConfigurationError("waste_free resamples its own ancestors: give waste_free or mode_floor, not both")
        _check_kernel(kernel)
        moves = [corrector("waste-free", kernel=kernel, chain_length=waste_free, **kernel_options)]
    else:
        n_steps = 10 if n_steps is None else n_steps
        moves = [
            corrector("resample", scheme=scheme, threshold=resample_threshold, mode_floor=mode_floor),
            _kernel(kernel, n_steps, kernel_options),
        ]
    steps = list(moves)
    if mode_jumps:  # with floors, the jumps keep each cluster's particles and move its mass in the weights
        steps.append(corrector("imh", n_steps=mode_jumps, balanced=bool(mode_floor)))
    options = dict(
        kernel=kernel,
        **({"waste_free": waste_free} if waste_free else {"n_steps": n_steps}),
        target_ess=target_ess,
        resample_threshold=resample_threshold,
        scheme=scheme,
        reference=reference,
        **({} if pilot_particles is None else {"pilot_particles": pilot_particles}),
        **({"mode_jumps": mode_jumps} if mode_jumps else {}),
        **({"mode_floor": mode_floor} if mode_floor else {}),
        **kernel_options,
    )
    return Pipeline(
        schedule=schedule if schedule is not None else Adaptive(target_ess=target_ess),
        steps=steps,
        reference=reference,
        reference_loc=reference_loc,
        reference_scale=reference_scale,
        pilot_particles=pilot_particles,
        final_resampling=scheme,
        name="smc",
        options=options,
    )


_FIXED = {"linear": Linear, "geometric": Geometric, "power": Power}


def build_ais(
    kernel: str = "mala",
    n_steps: int = 1,
    n_temps: int = 200,
    schedule: str | Schedule = "power",
    reference: str = "prior",
    reference_loc=None,
    reference_scale=None,
    pilot_particles: int | None = None,
    **kernel_options: Any,
) -> Pipeline:
    """Annealed importance sampling: a fixed schedule, MCMC sweeps, no resampling.

    ``n_temps`` temperatures with ``n_steps`` sweeps at each; the Z estimate of each replica
    is unbiased.

    Args:
        kernel: MCMC corrector (``mala``, ``hmc``, ``rwmh``, ``ula``).
        n_steps: MCMC sweeps per temperature.
        n_temps: number of annealing steps.
        schedule: ``"power"`` (t = (k/K)^4), ``"linear"``, ``"geometric"``, or a Schedule.
        reference: ``"prior"``, ``"laplace"``, ``"pilot"`` or ``"spread"`` (as for ``smc``).
        reference_loc, reference_scale: override the target's default Gaussian reference.
        pilot_particles: particles per replica of the pilot run (``reference="pilot"``).
    """
    check_positive_int("n_temps", n_temps)
    if isinstance(schedule, str):
        if schedule not in _FIXED:
            raise ConfigurationError(f"schedule must be one of {', '.join(_FIXED)} or a Schedule, got {schedule!r}")
        fixed: Schedule = _FIXED[schedule](n_temps)
    else:
        fixed = schedule
    options = dict(kernel=kernel, n_steps=n_steps, n_temps=n_temps, reference=reference, **kernel_options)
    if pilot_particles is not None:
        options["pilot_particles"] = pilot_particles
    return Pipeline(
        schedule=fixed,
        steps=[_kernel(kernel, n_steps, kernel_options)],
        reference=reference,
        reference_loc=reference_loc,
        reference_scale=reference_scale,
        pilot_particles=pilot_particles,
        name="ais",
        options=options,
    )
