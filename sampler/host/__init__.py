"""The plugin host: hook specifications, the registry, isolated plugin loading, building by name."""
