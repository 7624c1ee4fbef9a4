"""sampler-engine: sample unnormalized Boltzmann densities and estimate their normalizer.

Quick start::

    import sampler

    class DoubleWell(sampler.BoltzmannTarget):
        dim = 2
        def energy(self, x):                      # x: (..., 2) -> (...)
            return (x[..., 0] ** 2 - 1) ** 2 + 0.5 * x[..., 1] ** 2

    res = sampler.sample(DoubleWell(), method="smc", n_particles=4096, n_replicas=4, seed=0)
    print(sampler.summary(res))

Every sampling method comes from a plugin (``sampler.list_plugins()``); see
:mod:`sampler.host.hookspecs` to write one.
"""

import sys

from sampler import errors, targets
from sampler._version import __version__
from sampler.analysis import diagnostics, metrics, plotting
from sampler.analysis.diagnostics import Summary, summary
from sampler.analysis.estimators import Estimator, estimate, estimator, list_estimators
from sampler.api import DEFAULT_METHOD, DEFAULT_TARGET, resume, sample
from sampler.core import paths, resampling, schedules
from sampler.core.particles import Particles
from sampler.core.paths import GaussianReference, GeometricPath, PathEvaluation
from sampler.core.result import Result, StepStats
from sampler.core.runner import Capabilities, Runner
from sampler.core.settings import RunSettings
from sampler.core.steps import Corrector, Step, StepContext, StepOutput, Transport
from sampler.engine import distributed
from sampler.engine.pipeline import Pipeline, make_reference, reweight
from sampler.errors import SamplerError
from sampler.host import hookspecs
from sampler.host import loading as plugins
from sampler.host.building import (
    corrector,
    get_target,
    list_correctors,
    list_methods,
    list_plugins,
    list_targets,
    list_transports,
    method,
    transport,
)
from sampler.host.hookspecs import hookimpl, hookspec
from sampler.host.loading import block_plugin, register_plugin, reset_plugins, set_strict_plugins, unregister_plugin
from sampler.io.persistence import load_result as load
from sampler.targets.base import BoltzmannTarget, Target, target
from sampler.targets.model import Model, Param, model

# The short module names users import (``from sampler.schedules import Adaptive``) stay valid
# whatever layer a module lives in (docs/concepts.md, "Layers").
for _name, _module in {
    "diagnostics": diagnostics,
    "distributed": distributed,
    "hookspecs": hookspecs,
    "metrics": metrics,
    "paths": paths,
    "plotting": plotting,
    "plugins": plugins,
    "resampling": resampling,
    "schedules": schedules,
}.items():
    sys.modules.setdefault(f"{__name__}.{_name}", _module)
del _name, _module

__all__ = [
    "BoltzmannTarget",
    "Capabilities",
    "Corrector",
    "DEFAULT_METHOD",
    "DEFAULT_TARGET",
    "Estimator",
    "GaussianReference",
    "GeometricPath",
    "Particles",
    "PathEvaluation",
    "Runner",
    "Model",
    "Param",
    "Pipeline",
    "Result",
    "RunSettings",
    "SamplerError",
    "Step",
    "StepContext",
    "StepOutput",
    "StepStats",
    "Summary",
    "Target",
    "Transport",
    "block_plugin",
    "corrector",
    "diagnostics",
    "distributed",
    "errors",
    "estimate",
    "estimator",
    "get_target",
    "hookimpl",
    "hookspec",
    "hookspecs",
    "list_correctors",
    "list_estimators",
    "list_methods",
    "list_plugins",
    "list_targets",
    "list_transports",
    "load",
    "make_reference",
    "method",
    "metrics",
    "model",
    "paths",
    "plugins",
    "register_plugin",
    "resampling",
    "reset_plugins",
    "resume",
    "reweight",
    "sample",
    "schedules",
    "set_strict_plugins",
    "summary",
    "targets",
    "target",
    "transport",
    "__version__",
    "unregister_plugin",
]
