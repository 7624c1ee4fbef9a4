"""Estimators: models fitted to sampler output, registered by plugins (``registry.add_estimator``).

An estimator is built by name with its options and fitted to data::

    fit = sampler.estimate("dirichlet-vbmm", fractions)   # fractions: (n, K) on the simplex
    fit.alpha, fit.concentration

The core ships no estimator; plugins register them (the ``vbmm`` plugin registers
``dirichlet-vbmm``). ``sampler.list_estimators()`` lists what is available.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from sampler.errors import ConfigurationError
from sampler.host.building import build
from sampler.host.loading import host

__all__ = ["Estimator", "estimate", "estimator", "list_estimators"]


@runtime_checkable
class Estimator(Protocol):
    """What an estimator factory builds: an object whose ``fit(data)`` returns the fitted model.

    The type of ``data`` and of the fit is the estimator's own contract (documented by the
    plugin); the core only builds the estimator by name and calls ``fit``.
    """

    def fit(self, data: Any) -> Any:
        """Fit the model to ``data`` and return the fit."""
        ...


def estimator(name: str, **options: Any) -> Estimator:
    """Build a registered estimator with its options (unknown names: error with close matches)."""
    est = build("estimator", name, options)
    if not isinstance(est, Estimator):
        raise ConfigurationError(f"estimator {name!r} built {type(est).__name__}, which has no fit(data) method")
    return est


def estimate(name: str, data: Any, **options: Any) -> Any:
    """Fit the registered estimator ``name`` to ``data``: ``estimator(name, **options).fit(data)``."""
    return estimator(name, **options).fit(data)


def list_estimators() -> list[str]:
    """Names of every registered estimator."""
    return host().registry.names("estimator")
