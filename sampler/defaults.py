"""What ``sampler.sample`` and ``sampler run`` use when not told: plain values, importable without torch."""

__all__ = ["DEFAULT_METHOD", "DEFAULT_TARGET"]

#: Method used when none is named (``sampler run``, :func:`sampler.sample`).
DEFAULT_METHOD = "smc"
#: Target ``sampler run`` samples when none is named.
DEFAULT_TARGET = "gmm40"
