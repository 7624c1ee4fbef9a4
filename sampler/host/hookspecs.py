"""The plugin hooks of sampler-engine (pluggy project name ``"sampler"``).

A plugin is any object or module with functions marked ``@sampler.hookimpl`` whose names match
the hooks below. Built-in plugins and third-party plugins are found the same way: through the
``sampler`` entry-point group of an installed distribution, e.g. in ``pyproject.toml``::

    [project.entry-points.sampler]
    my_plugin = "my_package.sampler_plugin"

or at run time with :func:`sampler.register_plugin`. Misspelled hook names and wrong argument
names are errors, not silently ignored hooks.

Environment variables:

* ``SAMPLER_DISABLE_PLUGIN_AUTOLOAD=1`` -- do not load entry points (only the core and plugins
  registered at run time);
* ``SAMPLER_BLOCK_PLUGINS=name1,name2`` -- skip these plugins (also :func:`sampler.block_plugin`);
* ``SAMPLER_STRICT_PLUGINS=1`` -- a plugin that fails to load raises instead of being reported
  and skipped (also :func:`sampler.set_strict_plugins`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from sampler.host.registry import Registrar

PROJECT_NAME = "sampler"
ENTRY_POINT_GROUP = "sampler"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def sampler_register(registry: Registrar) -> None:
    """Register the plugin's components by name.

    ``registry`` offers ``add_method(name, builder)``, ``add_corrector(name, factory)``,
    ``add_transport(name, factory)``, ``add_target(name, factory)``,
    ``add_estimator(name, factory)`` and ``add_model(name, factory)`` (trainable models that
    saved results rebuild); each factory is called with the user's keyword options.
    A method's builder returns a runner with ``run(target, *, n_particles, n_replicas, seed,
    device, dtype, progress) -> Result`` (a :class:`sampler.Pipeline`, for instance).

    Called once per plugin when it is registered. If it raises, nothing it added is kept, the
    plugin is reported as failed, and the other plugins keep working.
    """
