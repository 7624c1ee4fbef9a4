"""Plugin ``mmd_flow``: sliced MMD particle flows with the negative-distance (Riesz r = 1) kernel.

Everything rests on one fact: for ``K(x, y) = -|x - y|`` the MMD equals its sliced version up to
``c_d`` (:func:`sampler.analysis.metrics.slicing_constant`), and in 1D its gradient and kernel sums follow
from sorting, in O((N + M) log(N + M)) per direction instead of O(N^2 + N M).

* :mod:`~sampler_plugins.mmd_flow.sliced`: witness slopes (energy-distance gradients) by
  sorting, fast kernel sums ``sum_n w_n K(x_n, y_m)``, exact O(N^2) references, the smoothed
  distance kernel.
* :mod:`~sampler_plugins.mmd_flow.directions`: iid, orthogonal and QMC (distance-optimized)
  slicing directions.
* :mod:`~sampler_plugins.mmd_flow.flow`: the (momentum) particle flow.
* Corrector ``mmd-deweight`` (:class:`MMDDeweight`): equally weighted particles without
  duplicates, an alternative to resampling.
* Method ``mmd-flow`` (:func:`build_mmd_flow`): generative flow from the reference to target
  samples (a data set, a weighted particle set, or a source method's output).
* :func:`conditional_mmd_flow`: posterior samples from joint prior x forward-model samples.
"""

from __future__ import annotations

import sampler
from sampler_plugins.mmd_flow.conditional import conditional_mmd_flow
from sampler_plugins.mmd_flow.deweight import MMDDeweight, deweight
from sampler_plugins.mmd_flow.directions import distance_design, draw_directions
from sampler_plugins.mmd_flow.flow import FlowResult, FlowSettings, mmd_flow
from sampler_plugins.mmd_flow.method import MMDFlowMethod, build_mmd_flow
from sampler_plugins.mmd_flow.sliced import (
    energy_distance_gradient,
    energy_kernel_sum,
    exact_energy_distance_gradient,
    exact_energy_kernel_sum,
    exact_witness_gradient,
    sliced_witness_gradient,
    witness_slope_1d,
)

__all__ = [
    "FlowResult",
    "FlowSettings",
    "MMDDeweight",
    "MMDFlowMethod",
    "build_mmd_flow",
    "conditional_mmd_flow",
    "deweight",
    "distance_design",
    "draw_directions",
    "energy_distance_gradient",
    "energy_kernel_sum",
    "exact_energy_distance_gradient",
    "exact_energy_kernel_sum",
    "exact_witness_gradient",
    "mmd_flow",
    "sliced_witness_gradient",
    "witness_slope_1d",
]


@sampler.hookimpl
def sampler_register(registry) -> None:
    """Register the ``mmd-deweight`` corrector and the ``mmd-flow`` method."""
    registry.add_corrector("mmd-deweight", MMDDeweight)
    registry.add_method("mmd-flow", build_mmd_flow)
