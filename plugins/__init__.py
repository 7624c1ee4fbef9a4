"""Built-in plugins of sampler-engine (installed as the import package ``sampler_plugins``).

Each subpackage is a plugin registered through the ``sampler`` entry-point group, exactly like a
third-party plugin; the core never imports them.
"""
