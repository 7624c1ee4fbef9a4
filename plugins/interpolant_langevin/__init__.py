"""Plugin ``interpolant_langevin``: training-free sampling along the linear stochastic interpolant.

Method ``interpolant-langevin`` (Duan, Jiao, Steidl et al. 2026, "Sampling via stochastic
interpolants by Langevin-based velocity and initialization estimation in flow ODEs"): the
probability-flow ODE of ``X_t = (1 - t) X0 + t X1`` with its velocity ``u(t, x) = (E[X1 | X_t = x] - x) / (1 - t)``
estimated per particle by inner Langevin chains, started at ``p_{T0}`` by Langevin dynamics with
the estimated score. Samples only: the result has ``log_Z = None``.

Public pieces: :class:`InterpolantFlow` (transport ``interpolant-flow``), :class:`AtTarget`
(a corrector applied only at t = 1), :class:`InterpolantPipeline`, the method's settings
:class:`TimeGrid` and :class:`VelocitySettings`, and the estimators
:func:`estimate_posterior`, :func:`velocity`, :func:`score` (usable on their own).
"""

from __future__ import annotations

import sampler
from sampler_plugins.interpolant_langevin.method import (
    AtTarget,
    InterpolantPipeline,
    TimeGrid,
    VelocitySettings,
    build_interpolant_langevin,
    ode_times,
)
from sampler_plugins.interpolant_langevin.posterior import (
    InnerSampler,
    PosteriorChains,
    PosteriorEstimate,
    estimate_posterior,
    init_chains,
    move_chains,
    run_chains,
    score,
    velocity,
)
from sampler_plugins.interpolant_langevin.transport import InterpolantFlow

__all__ = [
    "AtTarget",
    "VelocitySettings",
    "InnerSampler",
    "InterpolantFlow",
    "InterpolantPipeline",
    "PosteriorChains",
    "PosteriorEstimate",
    "TimeGrid",
    "build_interpolant_langevin",
    "estimate_posterior",
    "init_chains",
    "move_chains",
    "ode_times",
    "run_chains",
    "score",
    "velocity",
]


def _build_flow(inner: InnerSampler | None = None, **options) -> InterpolantFlow:
    """The ``interpolant-flow`` transport (options as :class:`InterpolantFlow`)."""
    return InterpolantFlow(inner=inner, **options)


@sampler.hookimpl
def sampler_register(registry) -> None:
    """Register the ``interpolant-langevin`` method and the ``interpolant-flow`` transport."""
    registry.add_method(
        "interpolant-langevin",
        build_interpolant_langevin,
        "stochastic-interpolant flow ODE with Langevin-estimated velocity and initialization (samples, no log Z)",
    )
    registry.add_transport("interpolant-flow", _build_flow)
