"""Plugin ``tt_continuity``: a tensor-train continuity-equation flow inside SMC (Hagemann et al. 2024).

Transport ``tt-flow``: fits a velocity ``v_t = grad Phi_t`` to the continuity equation of the
geometric (energy-linear) path at the particles -- ``Phi_t`` a functional tensor train over a
windowed H²-orthonormal Legendre or Fourier basis, fitted by ALS with TT-SVD rank control -- and
moves the particles by an Euler step, returning the exact log-determinant of the step's Jacobian.
Method ``tt-smc``: the engine's adaptive tempered SMC (resampling and MALA moves, as ``smc``)
with the TT flow at the start of every stage.
"""

from __future__ import annotations

import sampler
from sampler_plugins.tt_continuity.als import ALSResult, fit_potential
from sampler_plugins.tt_continuity.basis import TensorBasis
from sampler_plugins.tt_continuity.ftt import FunctionalTT
from sampler_plugins.tt_continuity.method import build_tt_smc
from sampler_plugins.tt_continuity.transport import FlowMove, TTFlow, TTFlowState, flow_map

__all__ = [
    "ALSResult",
    "FlowMove",
    "FunctionalTT",
    "TTFlow",
    "TTFlowState",
    "TensorBasis",
    "build_tt_smc",
    "fit_potential",
    "flow_map",
]


@sampler.hookimpl
def sampler_register(registry) -> None:
    """Register the ``tt-flow`` transport and the ``tt-smc`` method."""
    registry.add_transport("tt-flow", TTFlow)
    registry.add_method("tt-smc", build_tt_smc)
