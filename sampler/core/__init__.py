"""The core data types: particles, paths, steps, schedules, resampling schemes and results.

This layer imports only :mod:`sampler.errors` and :mod:`sampler.targets`; everything else in
the package builds on it (docs/concepts.md, "Layers").
"""
