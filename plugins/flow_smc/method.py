"""The ``flow-smc`` method: adaptive tempered SMC with flow-preconditioned (NeuTra) MCMC moves."""

from __future__ import annotations

from typing import Any, cast

from sampler.ext import Adaptive, ConfigurationError, Pipeline, Schedule, check_positive_int, corrector
from sampler_plugins.flow_smc.latent import FlowPreconditioned

#: How the sweeps of a temperature split between the flow's latent space and the particles' coordinates.
SPLITS = ("adaptive", "fixed")


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
    split: str = "adaptive",
    **neutra_options: Any,
) -> Pipeline:
    """Adaptive tempered SMC whose moves are ``neutra``: the kernel runs in a fitted flow's latent space.

    Each stage reweights to the next temperature (conditional ESS ``target_ess``), resamples,
    fits each replica's RealNVP flow to the particles (warm-started from the last stage), and
    runs ``n_steps + plain_steps`` sweeps of ``kernel``: latent ones, on the density pulled back
    through the flow (:class:`~sampler_plugins.flow_smc.latent.FlowPreconditioned`), and plain
    ones, on the particles themselves as ``smc`` runs them, split as ``split`` says. The same
    path, schedule, reference and estimators as ``smc``; only the moves differ. The defaults
    (10 sweeps) spend ``smc``'s gradients.

    Args:
        kernel: the kernel of both kinds of sweeps (``mala`` or ``hmc``).
        n_steps: latent-space sweeps per temperature (with ``split="adaptive"``: added to
            ``plain_steps`` for the stage's total).
        target_ess: conditional ESS goal of the adaptive schedule.
        scheme: resampling scheme (resampling at every temperature).
        schedule: a fixed schedule instead of the adaptive one.
        reference, reference_loc, reference_scale: the path's reference, as for ``smc``.
        plain_steps: sweeps of ``kernel`` in the particles' own coordinates (as in ``smc``); they
            keep the moves effective where one flow fits π_t poorly (separated modes).
        split: ``"adaptive"`` (default): per replica and temperature, one probe sweep of each
            kind, then the other ``n_steps + plain_steps - 2`` sweeps of the kind whose probe
            moved the particles further, measured in the flow's latent units (``neutra``'s
            ``compare``): a target the flow fits poorly (separated modes) gets ``smc``'s moves,
            one it fits well the flow's. ``"fixed"``: ``n_steps`` latent sweeps, then
            ``plain_steps`` plain ones (0: none), at every temperature.
        mode_jumps: sweeps of the ``imh`` corrector (mode-jumping independence proposals from
            a Gaussian mixture fitted to the particles, as ``smc(mode_jumps=...)``) after the
            other sweeps; 0 (the default) runs none.
        **neutra_options: passed to ``neutra`` (``hidden``, ``n_fit``, ``n_refit``, ``lr``,
            and the kernel's options such as ``step_size`` or ``n_leapfrog``).
    """
    for name, value in (("plain_steps", plain_steps), ("mode_jumps", mode_jumps)):
        if value != 0:
            check_positive_int(name, value)
    if split not in SPLITS:
        raise ConfigurationError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "adaptive":
        if n_steps + plain_steps < 2:
            total = n_steps + plain_steps
            raise ConfigurationError(
                f'split="adaptive" needs n_steps + plain_steps >= 2 (a probe of each kind), got {total}'
            )
        moves = [corrector("neutra", kernel=kernel, n_steps=n_steps + plain_steps, compare=True, **neutra_options)]
    else:
        latent = cast(FlowPreconditioned, corrector("neutra", kernel=kernel, n_steps=n_steps, **neutra_options))
        plain = [corrector(kernel, n_steps=plain_steps, **latent.kernel_options)] if plain_steps else []
        moves = [latent, *plain]
    steps = [
        corrector("resample", scheme=scheme, threshold=1.0),
        *moves,
        *([corrector("imh", n_steps=mode_jumps)] if mode_jumps else []),
    ]
    options = dict(
        kernel=kernel,
        n_steps=n_steps,
        plain_steps=plain_steps,
        split=split,
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
