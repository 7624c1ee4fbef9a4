"""Build registered components by name: the user's options checked against the factory's signature.

Every public builder (``sampler.method``, ``sampler.corrector``, ``sampler.get_target``,
``sampler.estimator``, ...) goes through :func:`build`, so errors read the same everywhere:
they name the component, the plugin that registered it and the options it accepts.
"""

from __future__ import annotations

import inspect
from typing import Any

from sampler.core.steps import Corrector, Transport
from sampler.errors import ConfigurationError, PluginError, SamplerError
from sampler.host.loading import PluginInfo, host
from sampler.targets.base import Target

__all__ = [
    "build",
    "method",
    "corrector",
    "transport",
    "get_target",
    "list_methods",
    "list_correctors",
    "list_transports",
    "list_targets",
    "list_plugins",
]


def build(kind: str, name: str, options: dict[str, Any]) -> Any:
    """Call a registered factory with the user's options; errors name the component and plugin."""
    entry = host().registry.get(kind, name)
    where = f"{kind} {name!r} (plugin {entry.plugin!r})"
    try:
        signature = inspect.signature(entry.factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        signature = None
    if signature is not None:
        try:
            signature.bind(**options)
        except TypeError as exc:
            accepted = [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            raise ConfigurationError(
                f"{where}: {exc}; its options are: {', '.join(p.name for p in accepted) or 'none'}"
            ) from None
    try:
        return entry.factory(**options)
    except SamplerError as exc:
        if not str(exc).startswith(f"{kind} {name!r}"):
            exc.args = (f"{where}: {exc}", *exc.args[1:])  # keep the type, add where it happened
        raise
    except Exception as exc:
        raise PluginError(f"{where} failed to build: {type(exc).__name__}: {exc}") from exc


def method(name: str, **options: Any) -> Any:
    """Build the runner of a registered method with its options (see :func:`list_methods`)."""
    return build("method", name, options)


def corrector(name: str, **options: Any) -> Corrector:
    """Build a registered corrector, e.g. ``corrector("mala", n_steps=10)``."""
    step = build("corrector", name, options)
    if not isinstance(step, Corrector):
        raise ConfigurationError(f"corrector {name!r} built {type(step).__name__}, which is not a sampler.Corrector")
    return step


def transport(name: str, **options: Any) -> Transport:
    """Build a registered transport by name."""
    step = build("transport", name, options)
    if not isinstance(step, Transport):
        raise ConfigurationError(f"transport {name!r} built {type(step).__name__}, which is not a sampler.Transport")
    return step


def get_target(name: str, **options: Any) -> Target:
    """A registered target by name, e.g. ``get_target("gmm40")`` or ``get_target("gaussian", dim=10)``."""
    return build("target", name, options)


def list_methods() -> list[str]:
    """Names of every registered method."""
    return host().registry.names("method")


def list_correctors() -> list[str]:
    """Names of every registered corrector."""
    return host().registry.names("corrector")


def list_transports() -> list[str]:
    """Names of every registered transport."""
    return host().registry.names("transport")


def list_targets() -> list[str]:
    """Names of every registered target."""
    return host().registry.names("target")


def list_plugins(include_failed: bool = True) -> list[PluginInfo]:
    """Every plugin known: loaded ones with what they registered, and (by default) failures."""
    return [p for p in host().plugins.values() if include_failed or p.ok]
