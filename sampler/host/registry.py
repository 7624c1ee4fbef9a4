"""The registry of named components (methods, correctors, transports, targets, estimators, models).

Plugins add to it through a :class:`Registrar` handed to their ``sampler_register`` hook; the
registrar records what each plugin added, so ``sampler plugins`` can say who registered what
and a plugin that fails half-way leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from sampler.errors import ConfigurationError, DuplicateNameError, UnknownNameError

__all__ = ["KINDS", "Entry", "Registrar", "Registry"]

#: The kinds of component a plugin can register.
KINDS = ("method", "corrector", "transport", "target", "estimator", "model")


@attrs.frozen
class Entry:
    """One registered component.

    Attributes:
        kind: one of :data:`KINDS`.
        name: the name users type.
        factory: called with the user's keyword options to build the component.
        plugin: name of the plugin that registered it.
        description: one line (the factory's docstring summary unless given).
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str = ""


def _summary(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registrar:
    """What a plugin's ``sampler_register`` hook receives: ``add_*`` methods, recorded per plugin."""

    def __init__(self, plugin: str):
        self.plugin = plugin
        self.entries: list[Entry] = []

    def _add(self, kind: str, name: str, factory: Callable[..., Any], description: str | None) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"plugin {self.plugin!r}: a {kind} name must be a non-empty string, got {name!r}")
        if not callable(factory):
            raise ConfigurationError(
                f"plugin {self.plugin!r}: {kind} {name!r} needs a callable factory, got {factory!r}"
            )
        if any(e.kind == kind and e.name == name for e in self.entries):
            raise DuplicateNameError(f"plugin {self.plugin!r} registers {kind} {name!r} twice")
        self.entries.append(Entry(kind, name, factory, self.plugin, description or _summary(factory)))

    def add_method(self, name: str, builder: Callable[..., Any], description: str | None = None) -> None:
        """Register a sampling method: ``builder(**options)`` returns a runner with ``run(target, ...)``."""
        self._add("method", name, builder, description)

    def add_corrector(self, name: str, factory: Callable[..., Any], description: str | None = None) -> None:
        """Register a corrector: ``factory(**options)`` returns a :class:`sampler.Corrector`."""
        self._add("corrector", name, factory, description)

    def add_transport(self, name: str, factory: Callable[..., Any], description: str | None = None) -> None:
        """Register a transport: ``factory(**options)`` returns a :class:`sampler.Transport`."""
        self._add("transport", name, factory, description)

    def add_target(self, name: str, factory: Callable[..., Any], description: str | None = None) -> None:
        """Register a target: ``factory(**options)`` returns a :class:`sampler.Target`."""
        self._add("target", name, factory, description)

    def add_estimator(self, name: str, factory: Callable[..., Any], description: str | None = None) -> None:
        """Register an estimator: ``factory(**options)`` returns an object with ``fit(data)``."""
        self._add("estimator", name, factory, description)

    def add_model(self, name: str, factory: Callable[..., Any], description: str | None = None) -> None:
        """Register a trainable model type, so saved results can rebuild it.

        ``factory(**config)`` returns an untrained model from the JSON config the model reports
        through ``model_config()``; its weights are then loaded with ``load_state_dict``
        (see :mod:`sampler.io.persistence`).
        """
        self._add("model", name, factory, description)


class Registry:
    """All registered components, by kind and name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def commit(self, registrar: Registrar) -> None:
        """Add everything a plugin registered, or nothing if a name is already taken."""
        for e in registrar.entries:
            taken = self._entries[e.kind].get(e.name)
            if taken is not None:
                raise DuplicateNameError(
                    f"plugin {e.plugin!r} registers {e.kind} {e.name!r}, already registered by plugin {taken.plugin!r}"
                )
        for e in registrar.entries:
            self._entries[e.kind][e.name] = e

    def remove_plugin(self, plugin: str) -> None:
        """Forget every component registered by ``plugin``."""
        for table in self._entries.values():
            for name in [n for n, e in table.items() if e.plugin == plugin]:
                del table[name]

    def get(self, kind: str, name: str) -> Entry:
        """The entry of ``kind`` called ``name``; :class:`UnknownNameError` with suggestions if absent."""
        try:
            return self._entries[kind][name]
        except KeyError:
            raise UnknownNameError(kind, name, self._entries[kind]) from None

    def names(self, kind: str) -> list[str]:
        """Sorted names of every registered component of ``kind``."""
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[Entry]:
        """Registered entries, of one kind or all."""
        kinds = KINDS if kind is None else (kind,)
        return [e for k in kinds for _, e in sorted(self._entries[k].items())]
