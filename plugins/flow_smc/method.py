"""The ``flow-smc`` method: adaptive tempered SMC with flow-preconditioned (NeuTra) MCMC moves."""

from __future__ import annotations

from typing import Any

from sampler.ext import Adaptive, Pipeline, Schedule, check_positive_int, corrector


def build_flow_smc(
    kernel: str = "mala",
    n_steps: int = 5,
    target_ess: float = 0.9,
    scheme: str = "systematic",
    schedule: Schedule | None = None,
    reference: str = "auto",
    reference_loc=None,
    reference_scale=None,
    plain_steps: int = 5,
    mode_jumps: int = 0,
    **neutra_options: Any,
) -> Pipeline:
    """Adaptive tempered SMC whose moves are ``neutra``: the kernel runs in a fitted flow's latent space.

    Each stage reweights to the next temperature (conditional ESS ``target_ess``), resamples,
    fits each replica's RealNVP flow to the particles (warm-started from the last stage), runs
    ``n_steps`` sweeps of ``kernel`` on the density pulled back through the flow
    (:class:`~sampler_plugins.flow_smc.latent.FlowPreconditioned`), then ``plain_steps`` sweeps
    of ``kernel`` on the particles themselves. The same path, schedule, reference and estimators
    as ``smc``; only the moves differ. The defaults (5 + 5 sweeps) spend ``smc``'s gradients.

    Args:
        kernel: the kernel of both kinds of sweeps (``mala`` or ``hmc``).
        n_steps: its latent-space sweeps per temperature.
        target_ess: conditional ESS goal of the adaptive schedule.
        scheme: resampling scheme (resampling at every temperature).
        schedule: a fixed schedule instead of the adaptive one.
        reference, reference_loc, reference_scale: the path's reference, as for ``smc``.
        plain_steps: sweeps of ``kernel`` in the particles' own coordinates (as in ``smc``) after
            the latent sweeps; they keep the moves effective where one flow fits π_t
            poorly (separated modes); 0 runs none.
        mode_jumps: sweeps of the ``imh`` corrector (mode-jumping independence proposals from
            a Gaussian mixture fitted to the particles, as ``smc(mode_jumps=...)``) after the
            other sweeps; 0 (the default) runs none.
        **neutra_options: passed to ``neutra`` (``hidden``, ``n_fit``, ``n_refit``, ``lr``,
            and the kernel's options such as ``step_size`` or ``n_leapfrog``).
    """
    for name, value in (("plain_steps", plain_steps), ("mode_jumps", mode_jumps)):
        if value != 0:
            check_positive_int(name, value)
    steps = [
        corrector("resample", scheme=scheme, threshold=1.0),
        corrector("neutra", kernel=kernel, n_steps=n_steps, **neutra_options),
        *([corrector(kernel, n_steps=plain_steps)] if plain_steps else []),
        *([corrector("imh", n_steps=mode_jumps)] if mode_jumps else []),
    ]
    options = dict(
        kernel=kernel,
        n_steps=n_steps,
        plain_steps=plain_steps,
        target_ess=target_ess,
        scheme=scheme,
        reference=reference,
    )
    if mode_jumps:
        options["mode_jumps"] = mode_jumps
    return Pipeline(
        schedule=schedule if schedule is not None else Adaptive(target_ess=target_ess),
        steps=steps,
        reference=reference,
        reference_loc=reference_loc,
        reference_scale=reference_scale,
        final_resampling=scheme,
        name="flow-smc",
        options={**options, **neutra_options},
    )
