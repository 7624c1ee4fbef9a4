"""Plugin ``neural_jko``: importance-corrected neural JKO sampling (Hertrich & Gruhlke, ICML 2025).

A generative model over a Gaussian latent: CNF ("neural JKO") layers trained greedily, each one
a JKO step of the reverse KL with a Wasserstein-2 penalty, interleaved with importance
rejection/resampling layers. It gives iid samples together with their normalized log density,
so importance weights give log Z and the ELBO.

Method: ``neural-jko`` (:func:`build_neural_jko`). Model: :class:`NeuralJKOModel` (``sample``,
``log_prob``, ``save``/``load``). Engine steps: :class:`ModelTransport`, :class:`LayerTransport`.
See docs/neural_jko.md.
"""

from __future__ import annotations

import sampler
from sampler_plugins.neural_jko.cnf import CNFLayer
from sampler_plugins.neural_jko.method import NeuralJKO, NeuralJKOResult, build_neural_jko
from sampler_plugins.neural_jko.model import ModelSample, NeuralJKOModel, neural_jko_from_config
from sampler_plugins.neural_jko.rejection import RejectionLayer, fit_log_c
from sampler_plugins.neural_jko.train import PRESETS, NeuralJKOConfig, resolve_config, train_model
from sampler_plugins.neural_jko.transports import LayerTransport, ModelTransport, layer_transports
from sampler_plugins.neural_jko.velocity import VelocityField

__all__ = [
    "CNFLayer",
    "LayerTransport",
    "ModelSample",
    "ModelTransport",
    "NeuralJKO",
    "NeuralJKOConfig",
    "NeuralJKOModel",
    "NeuralJKOResult",
    "PRESETS",
    "RejectionLayer",
    "VelocityField",
    "build_neural_jko",
    "fit_log_c",
    "layer_transports",
    "neural_jko_from_config",
    "resolve_config",
    "train_model",
]


@sampler.hookimpl
def sampler_register(registry) -> None:
    """Register the ``neural-jko`` method and its model (for saved results)."""
    registry.add_method("neural-jko", build_neural_jko)
    registry.add_model("neural-jko", neural_jko_from_config, "trained neural JKO model (spec + weights and buffers)")
