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

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from sampler._version import __version__

# The package imports lazily (PEP 562): ``import sampler`` costs milliseconds, and torch and the
# layers below load on the first attribute used (``sampler.sample``), so ``sampler --help`` and
# tools that only inspect the package start without torch (docs/concepts.md, "Layers").

#: Public name -> (module, attribute in it); the modules themselves map to ``None``.
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "errors": ("sampler.errors", None),
    "targets": ("sampler.targets", None),
    "diagnostics": ("sampler.analysis.diagnostics", None),
    "metrics": ("sampler.analysis.metrics", None),
    "plotting": ("sampler.analysis.plotting", None),
    "paths": ("sampler.core.paths", None),
    "resampling": ("sampler.core.resampling", None),
    "schedules": ("sampler.core.schedules", None),
    "distributed": ("sampler.engine.distributed", None),
    "hookspecs": ("sampler.host.hookspecs", None),
    "plugins": ("sampler.host.loading", None),
    "load": ("sampler.io.persistence", "load_result"),
}
for _module, _names in {
    "sampler.analysis.diagnostics": ("Summary", "summary"),
    "sampler.analysis.estimators": ("Estimator", "estimate", "estimator", "list_estimators"),
    "sampler.api": ("DEFAULT_METHOD", "DEFAULT_TARGET", "resume", "sample"),
    "sampler.core.allocator": ("tune_cpu_allocator",),
    "sampler.core.particles": ("Particles",),
    "sampler.core.paths": ("GaussianReference", "GeometricPath", "PathEvaluation"),
    "sampler.core.prior_reference": ("PriorReference",),
    "sampler.core.result": ("Result", "StepStats"),
    "sampler.core.runner": ("Capabilities", "Runner"),
    "sampler.core.settings": ("RunSettings",),
    "sampler.core.steps": ("Corrector", "Step", "StepContext", "StepOutput", "Transport"),
    "sampler.engine.pipeline": ("Pipeline", "make_reference", "reweight"),
    "sampler.errors": ("SamplerError",),
    "sampler.host.building": (
        "corrector",
        "get_target",
        "list_correctors",
        "list_methods",
        "list_plugins",
        "list_targets",
        "list_transports",
        "method",
        "transport",
    ),
    "sampler.host.hookspecs": ("hookimpl", "hookspec"),
    "sampler.host.loading": (
        "block_plugin",
        "register_plugin",
        "reset_plugins",
        "set_strict_plugins",
        "unregister_plugin",
    ),
    "sampler.targets.base": ("BoltzmannTarget", "Target", "target"),
    "sampler.targets.model": ("Model", "Param", "model"),
}.items():
    _EXPORTS.update({_name: (_module, _name) for _name in _names})
del _module, _names

#: The short module names users import (``from sampler.schedules import Adaptive``) stay valid
#: whatever layer a module lives in (docs/concepts.md, "Layers"): ``sampler.schedules`` is the
#: module object ``sampler.core.schedules`` itself.
_ALIASES = {
    f"{__name__}.{name}": _EXPORTS[name][0]
    for name in (
        "diagnostics",
        "distributed",
        "hookspecs",
        "metrics",
        "paths",
        "plotting",
        "plugins",
        "resampling",
        "schedules",
    )
}


def _load() -> None:
    """Import the public API and bind every name of :data:`_EXPORTS`: what ``import sampler`` did
    eagerly before it was lazy, so the package behaves as it did once any name is used (the
    modules that provide ``Result.save``, ``to_arviz`` and ``plot`` are among them)."""
    for name, (module_name, attribute) in _EXPORTS.items():
        module = importlib.import_module(module_name)
        globals()[name] = module if attribute is None else getattr(module, attribute)


def __getattr__(name: str) -> Any:
    """The first use of a public name (or of a subpackage such as ``sampler.core``) loads the API."""
    if name in _EXPORTS:
        _load()
        return globals()[name]
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        _load()
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``sampler.schedules`` and the other short names as the modules they alias."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname in _ALIASES else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(_ALIASES[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system has set the alias's spec on the real module: give it back its own
        if module.__spec__ is not None and module.__spec__.name in self._specs:
            module.__spec__ = self._specs.pop(module.__spec__.name)


if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
    sys.meta_path.append(_AliasFinder())

if TYPE_CHECKING:  # what type checkers and the API docs see
    from sampler import errors, targets
    from sampler.analysis import diagnostics, metrics
    from sampler.analysis import plotting as plotting
    from sampler.analysis.diagnostics import Summary, summary
    from sampler.analysis.estimators import Estimator, estimate, estimator, list_estimators
    from sampler.api import DEFAULT_METHOD, DEFAULT_TARGET, resume, sample
    from sampler.core import paths, resampling, schedules
    from sampler.core.allocator import tune_cpu_allocator
    from sampler.core.particles import Particles
    from sampler.core.paths import GaussianReference, GeometricPath, PathEvaluation
    from sampler.core.prior_reference import PriorReference
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
    "PriorReference",
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
    "tune_cpu_allocator",
    "__version__",
    "unregister_plugin",
]
