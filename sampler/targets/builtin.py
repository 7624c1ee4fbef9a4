"""Registers the core's built-in targets through the same hook a plugin uses."""

from __future__ import annotations

from sampler.hookspecs import hookimpl
from sampler.registry import Registrar
from sampler.targets import GMM40, DoubleWell, Gaussian


@hookimpl
def sampler_register(registry: Registrar) -> None:
    """Add ``gaussian``, ``double-well`` and ``gmm40``."""
    registry.add_target("gaussian", Gaussian)
    registry.add_target("double-well", DoubleWell)
    registry.add_target("gmm40", GMM40)
