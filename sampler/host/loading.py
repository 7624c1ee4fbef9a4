"""Plugin loading: pluggy manager, entry points loaded one by one, failures reported by name.

The host is created on first use. It registers the core's own components (built-in targets),
then loads every entry point of the ``sampler`` group in isolation: a plugin that fails to
import, has a misspelled hook, or raises in ``sampler_register`` is recorded (name,
distribution, version, error) and skipped, and the rest keep working -- unless strict mode is
on, in which case the failure raises :class:`~sampler.errors.PluginLoadError`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import traceback
from types import ModuleType
from typing import Any

import attrs
import pluggy

from sampler.errors import PluginError, PluginLoadError, UnknownNameError
from sampler.host import builtin_targets, hookspecs
from sampler.host.registry import Registrar, Registry

__all__ = [
    "PluginInfo",
    "PluginHost",
    "host",
    "reset_plugins",
    "register_plugin",
    "unregister_plugin",
    "block_plugin",
    "set_strict_plugins",
]

log = logging.getLogger("sampler.host.loading")

_TRUE = {"1", "true", "yes", "on"}


@attrs.define
class PluginInfo:
    """What is known about one plugin.

    Attributes:
        name: plugin name (the entry point's name, or the name given at registration).
        source: ``"core"``, ``"entry point"`` or ``"runtime"``.
        distribution, version: the installed distribution that provides it (entry points).
        registered: ``{kind: [names]}`` of what it added.
        error: why it failed to load (``None`` if it loaded).
        blocked: whether it was skipped because it is blocked.
    """

    name: str
    source: str
    distribution: str | None = None
    version: str | None = None
    registered: dict[str, list[str]] = attrs.field(factory=dict)
    error: str | None = None
    blocked: bool = False

    @property
    def ok(self) -> bool:
        """Loaded and active."""
        return self.error is None and not self.blocked


def _env_list(name: str) -> set[str]:
    return {p.strip() for p in os.environ.get(name, "").split(",") if p.strip()}


def _describe_exception(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r}){where}"
    if isinstance(exc, KeyboardInterrupt):
        return f"raised KeyboardInterrupt{where} (if you pressed Ctrl-C while plugins loaded, run again)"
    return f"{type(exc).__name__}: {exc}{where}"


class PluginHost:
    """Owns the pluggy manager, the registry and the record of every plugin."""

    def __init__(self, autoload: bool | None = None, strict: bool | None = None, blocked: set[str] | None = None):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.plugins: dict[str, PluginInfo] = {}
        self.strict = os.environ.get("SAMPLER_STRICT_PLUGINS", "").lower() in _TRUE if strict is None else strict
        self.blocked = _env_list("SAMPLER_BLOCK_PLUGINS") | set(blocked or ())
        core = PluginInfo(name="core", source="core", distribution="sampler-engine", version=_own_version())
        self._add(builtin_targets, "core", core)
        if autoload is None:
            autoload = os.environ.get("SAMPLER_DISABLE_PLUGIN_AUTOLOAD", "").lower() not in _TRUE
        if autoload:
            self.load_entry_points()

    # -- loading --------------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Load every entry point of the ``sampler`` group, each in isolation."""
        eps = importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)
        # Built-in plugins first, so a third-party plugin cannot take their names.
        own = lambda e: getattr(getattr(e, "dist", None), "name", None) == "sampler-engine"  # noqa: E731
        for ep in sorted(eps, key=lambda e: (not own(e), e.name)):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                source="entry point",
                distribution=getattr(dist, "name", None),
                version=getattr(dist, "version", None),
            )
            if ep.name in self.plugins:
                other = self.plugins[ep.name]
                if (other.distribution, other.version) != (info.distribution, info.version):
                    log.warning(
                        "plugin name %r of %s %s is already used by %s %s; skipped",
                        ep.name,
                        info.distribution,
                        info.version,
                        other.distribution,
                        other.version,
                    )
                continue
            if ep.name in self.blocked:
                info.blocked = True
                self.plugins[ep.name] = info
                continue
            try:
                obj = ep.load()
            except BaseException as exc:  # noqa: BLE001 -- any import failure must be contained, sys.exit included
                self._fail(info, f"could not import {ep.value!r}: {_describe_exception(exc)}", exc)
                continue
            try:
                self._add(obj, ep.name, info)
            except BaseException as exc:  # noqa: BLE001 -- a broken plugin must not take the others down
                self._fail(info, str(exc) if isinstance(exc, PluginError) else _describe_exception(exc), exc)

    def _fail(self, info: PluginInfo, message: str, exc: BaseException) -> None:
        info.error = message
        self.plugins[info.name] = info
        dist = f" from {info.distribution} {info.version}" if info.distribution else ""
        if self.strict:
            raise PluginLoadError(f"plugin {info.name!r}{dist} failed to load: {message}") from exc
        log.warning("plugin %r%s failed to load and was skipped: %s", info.name, dist, message)

    def _add(self, plugin: Any, name: str, info: PluginInfo) -> None:
        """Register ``plugin`` under ``name`` and run its ``sampler_register`` hook."""
        if name in self.blocked:
            info.blocked = True
            self.plugins[name] = info
            log.warning("plugin %r is blocked and was not registered", name)
            return
        if name in self.plugins and self.plugins[name].ok:
            raise PluginError(f"a plugin named {name!r} is already registered")
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            if isinstance(exc, pluggy.PluginValidationError) and self.pm.get_plugin(name) is not None:
                self.pm.unregister(name=name)  # pluggy keeps the name of a plugin that failed validation
            raise PluginError(f"plugin {name!r} is not a valid sampler plugin: {exc}") from exc
        try:
            self.pm.check_pending()
            _check_hook_names(plugin, name, self.pm)
        except (pluggy.PluginValidationError, PluginError) as exc:
            self.pm.unregister(plugin)
            if isinstance(exc, PluginError):
                raise
            raise PluginError(
                f"plugin {name!r} defines a hook that does not exist (misspelled?): {exc}. "
                "The hooks are listed in sampler.host.hookspecs."
            ) from exc
        registrar = Registrar(name)
        try:
            for impl in self.pm.hook.sampler_register.get_hookimpls():
                if impl.plugin is plugin:
                    impl.function(registry=registrar)
        except BaseException as exc:  # noqa: BLE001 -- sys.exit or KeyboardInterrupt from a plugin is its failure
            self.pm.unregister(plugin)
            raise PluginError(f"plugin {name!r} raised in sampler_register: {_describe_exception(exc)}") from exc
        try:
            self.registry.commit(registrar)
        except PluginError:
            self.pm.unregister(plugin)
            raise
        for entry in registrar.entries:
            info.registered.setdefault(entry.kind, []).append(entry.name)
        self.plugins[name] = info

    def register(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object or module at run time; return its name. Errors raise."""
        name = name or _plugin_name(plugin)
        self._add(plugin, name, PluginInfo(name=name, source="runtime"))
        return name

    def unregister(self, name: str) -> None:
        """Remove a plugin and everything it registered."""
        info = self.plugins.pop(name, None)
        if info is None:
            raise UnknownNameError("plugin", name, self.plugins)
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self.registry.remove_plugin(name)

    def block(self, name: str) -> None:
        """Block a plugin by name: unregister it if loaded and skip it from now on."""
        self.blocked.add(name)
        if name in self.plugins:
            if self.plugins[name].ok:
                self.unregister(name)
            else:
                self.plugins.pop(name)
        self.plugins[name] = PluginInfo(name=name, source="blocked", blocked=True)

    @property
    def failures(self) -> list[PluginInfo]:
        """Plugins that failed to load."""
        return [p for p in self.plugins.values() if p.error is not None]


def _check_hook_names(plugin: Any, name: str, pm: pluggy.PluginManager) -> None:
    """A plugin must implement at least one hook, and every ``sampler_*`` function must be one."""
    hooks = {h.name for h in (pm.get_hookcallers(plugin) or [])}
    loose = [
        attr
        for attr in dir(plugin)
        if attr.startswith("sampler_") and callable(getattr(plugin, attr, None)) and attr not in hooks
    ]
    if loose:
        raise PluginError(
            f"plugin {name!r}: {', '.join(loose)} is not a hook implementation; mark hooks with @sampler.hookimpl "
            "and check the name against sampler.host.hookspecs (e.g. sampler_register)"
        )
    if not hooks:
        raise PluginError(f"plugin {name!r} implements no hook (did you forget @sampler.hookimpl on sampler_register?)")


def _own_version() -> str | None:
    try:
        return importlib.metadata.version("sampler-engine")
    except importlib.metadata.PackageNotFoundError:
        return None


def _plugin_name(plugin: Any) -> str:
    explicit = getattr(plugin, "name", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    return type(plugin).__name__ if not isinstance(plugin, type) else plugin.__name__


_HOST: PluginHost | None = None
_SETTINGS: dict[str, Any] = {}


def host() -> PluginHost:
    """The process-wide plugin host, created (and entry points loaded) on first use."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost(**_SETTINGS)
    return _HOST


def reset_plugins(
    *, autoload: bool | None = None, strict: bool | None = None, blocked: set[str] | None = None
) -> PluginHost:
    """Forget every plugin and load again (entry points included unless ``autoload=False``)."""
    global _HOST
    _SETTINGS.clear()
    _SETTINGS.update(
        {k: v for k, v in (("autoload", autoload), ("strict", strict), ("blocked", blocked)) if v is not None}
    )
    _HOST = None
    return host()


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object or module now and make its components usable by name.

    Returns the plugin's name (``name``, else the object's ``name`` attribute, module name or
    class name). Raises :class:`~sampler.errors.PluginError` if the plugin is malformed or its
    ``sampler_register`` hook raises.
    """
    return host().register(plugin, name)


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered earlier, with everything it added."""
    host().unregister(name)


def block_plugin(name: str) -> None:
    """Block a plugin by name: it is removed if loaded and not loaded again (until :func:`reset_plugins`)."""
    _SETTINGS.setdefault("blocked", set()).add(name)
    if _HOST is not None:
        _HOST.block(name)


def set_strict_plugins(strict: bool = True) -> None:
    """Strict mode: a plugin that fails to load raises :class:`~sampler.errors.PluginLoadError`.

    Takes effect for plugins loaded from now on; call :func:`reset_plugins` to reload all.
    """
    _SETTINGS["strict"] = strict
    if _HOST is not None:
        _HOST.strict = strict
