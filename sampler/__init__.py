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
:mod:`sampler.hookspecs` to write one.
"""

from sampler import errors, paths, plugins, resampling, schedules
from sampler.api import (
    DEFAULT_METHOD,
    DEFAULT_TARGET,
    corrector,
    get_target,
    list_correctors,
    list_methods,
    list_plugins,
    list_targets,
    list_transports,
    method,
    resume,
    sample,
    transport,
)
from sampler.diagnostics import Summary, summary
from sampler.engine import Pipeline, RunSettings, make_reference, reweight
from sampler.errors import SamplerError
from sampler.estimators import Estimator, estimate, estimator, list_estimators
from sampler.hookspecs import hookimpl, hookspec
from sampler.particles import Particles
from sampler.paths import GaussianReference, GeometricPath, PathEvaluation
from sampler.persistence import load_result as load
from sampler.plugins import block_plugin, register_plugin, reset_plugins, set_strict_plugins, unregister_plugin
from sampler.result import Result, StepStats
from sampler.steps import Corrector, Step, StepContext, StepOutput, Transport
from sampler.targets.base import BoltzmannTarget, Target, target

__version__ = "0.1.0"

__all__ = [
    "BoltzmannTarget",
    "Corrector",
    "DEFAULT_METHOD",
    "DEFAULT_TARGET",
    "Estimator",
    "GaussianReference",
    "GeometricPath",
    "Particles",
    "PathEvaluation",
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
    "errors",
    "estimate",
    "estimator",
    "get_target",
    "hookimpl",
    "hookspec",
    "list_correctors",
    "list_estimators",
    "list_methods",
    "list_plugins",
    "list_targets",
    "list_transports",
    "load",
    "make_reference",
    "method",
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
    "target",
    "transport",
    "unregister_plugin",
]
