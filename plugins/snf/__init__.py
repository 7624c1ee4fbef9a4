"""Plugin ``snf``: stochastic normalizing flows (Wu, Köhler & Noé 2020) and conditional SNFs for
Bayesian inverse problems (Hagemann, Hertrich & Steidl 2022).

Layers (each a step of the engine's contract, usable in any ``sampler.Pipeline``):
:class:`CouplingBlock` (RealNVP, transport, ``ΔS = log|det J|``), :class:`LangevinLayer`
(unadjusted Langevin, transport, ``ΔS`` from the forward/backward Gaussian kernels) and
:class:`MetropolisLayer` (random-walk/MALA, corrector). :class:`SNF` stacks them into stages along
the geometric path; :func:`fit` trains it (reverse KL, forward KL or a mix; its hyper-parameters
are a :class:`TrainingSettings`); ``SNF.pipeline`` runs it in the engine. :class:`ConditionalSNF`
and :class:`LinearGaussianProblem` cover inverse problems.

Registered: method ``snf``; transport ``snf-langevin``; corrector ``snf-metropolis``.
"""

from __future__ import annotations

import sampler
from sampler_plugins.snf.flow import SNF, PathSample, SNFCorrector, SNFTransport, Stage, snf_from_config
from sampler_plugins.snf.inverse import ConditionalSNF, InverseProblem, LinearGaussianProblem, PosteriorTarget
from sampler_plugins.snf.layers import AffineCoupling, CouplingBlock, ElementwiseAffine, LangevinLayer, MetropolisLayer
from sampler_plugins.snf.method import SNFMethod, build_snf
from sampler_plugins.snf.paths import DifferentiablePath
from sampler_plugins.snf.training import TrainingLog, TrainingSettings, fit

__all__ = [
    "AffineCoupling",
    "ConditionalSNF",
    "CouplingBlock",
    "DifferentiablePath",
    "ElementwiseAffine",
    "InverseProblem",
    "LangevinLayer",
    "LinearGaussianProblem",
    "MetropolisLayer",
    "PathSample",
    "PosteriorTarget",
    "SNF",
    "SNFCorrector",
    "SNFMethod",
    "SNFTransport",
    "Stage",
    "TrainingLog",
    "TrainingSettings",
    "build_snf",
    "fit",
    "snf_from_config",
]


@sampler.hookimpl
def sampler_register(registry) -> None:
    """Register the ``snf`` method, the ``snf-langevin`` transport and the ``snf-metropolis`` corrector."""
    registry.add_method(
        "snf",
        build_snf,
        "Stochastic normalizing flow: RealNVP couplings + Langevin + Metropolis layers, trained by reverse KL, "
        "with exact path weights.",
    )
    registry.add_model("snf", snf_from_config, "trained stochastic normalizing flow (SNF.model_config + weights)")
    registry.add_transport(
        "snf-langevin", LangevinLayer, "SNF unadjusted Langevin layer: moves at pi_t, increment = path-weight ΔS"
    )
    registry.add_corrector(
        "snf-metropolis", MetropolisLayer, "SNF Metropolis layer (random walk or MALA) at pi_t, fixed step size"
    )
