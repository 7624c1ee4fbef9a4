"""Plugin ``mcmc``: standard MCMC kernels, resampling, and the SMC/AIS/MCMC methods built on them.

Correctors: ``ula``, ``mala``, ``hmc``, ``rwmh`` (each adapts its step size per replica toward a
target acceptance rate during annealing), ``imh`` (mode-jumping independence Metropolis-Hastings
from a Gaussian mixture fitted to the particles), ``resample`` (ESS-triggered, any scheme) and
``waste-free`` (waste-free SMC moves: chains from a few resampled ancestors, every state kept).
Methods: ``smc`` (adaptive tempered SMC with MALA moves), ``ais`` (fixed schedule, no
resampling), ``mala`` and ``hmc`` (plain MCMC chains: R chains x N draws).
"""

from __future__ import annotations

import sampler
from sampler_plugins.mcmc.chains import MCMCChains, build_chains
from sampler_plugins.mcmc.independence import IndependenceMH
from sampler_plugins.mcmc.kernels import HMC, MALA, RWMH, ULA, MetropolisCorrector
from sampler_plugins.mcmc.methods import build_ais, build_smc
from sampler_plugins.mcmc.resample import Resample
from sampler_plugins.mcmc.waste_free import WasteFree

__all__ = [
    "ULA",
    "MALA",
    "HMC",
    "RWMH",
    "MetropolisCorrector",
    "IndependenceMH",
    "Resample",
    "WasteFree",
    "MCMCChains",
    "build_smc",
    "build_ais",
]


@sampler.hookimpl
def sampler_register(registry) -> None:
    """Register the kernels, resampling, and the smc/ais/mala/hmc methods."""
    registry.add_corrector("ula", ULA)
    registry.add_corrector("mala", MALA)
    registry.add_corrector("hmc", HMC)
    registry.add_corrector("rwmh", RWMH)
    registry.add_corrector("imh", IndependenceMH)
    registry.add_corrector("resample", Resample)
    registry.add_corrector("waste-free", WasteFree)
    registry.add_method("smc", build_smc)
    registry.add_method("ais", build_ais)
    registry.add_method("mala", build_chains("mala"), "MALA chains: R chains x N draws after warm-up")
    registry.add_method("hmc", build_chains("hmc"), "HMC chains: R chains x N draws after warm-up")
