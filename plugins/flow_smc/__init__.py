"""Plugin ``flow_smc``: tempered SMC whose MCMC moves run in the latent space of fitted flows.

Corrector: ``neutra`` (a gradient kernel run in the latent space of a per-replica RealNVP flow
fitted to the weighted particles at every stage). Method: ``flow-smc`` (adaptive tempered SMC
with ``neutra`` moves).
"""

from __future__ import annotations

import sampler
from sampler_plugins.flow_smc.flow import CouplingFlow, fit_flow
from sampler_plugins.flow_smc.latent import FlowPreconditioned, LatentPath
from sampler_plugins.flow_smc.method import build_flow_smc

__all__ = ["CouplingFlow", "fit_flow", "FlowPreconditioned", "LatentPath", "build_flow_smc"]


@sampler.hookimpl
def sampler_register(registry) -> None:
    """Register the ``neutra`` corrector and the ``flow-smc`` method."""
    registry.add_corrector("neutra", FlowPreconditioned)
    registry.add_method("flow-smc", build_flow_smc)
