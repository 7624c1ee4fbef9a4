"""Exceptions raised by sampler-engine.

Every error the library raises on purpose is a :class:`SamplerError`, so a caller can catch the
whole family with one ``except``. Each subclass names one kind of problem; messages say what was
wrong, where, and (where there is one) what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SamplerError(Exception):
    """Base class of every error raised on purpose by sampler-engine."""


class ConfigurationError(SamplerError, ValueError):
    """An argument or option is invalid (raised before any work is done)."""


class TargetError(SamplerError):
    """A target returned something unusable: wrong shape, wrong dtype, not a tensor."""


class RunError(SamplerError):
    """A run cannot continue (e.g. an adaptive schedule that makes no progress)."""


class NonFiniteError(RunError):
    """Every particle of a replica has a NaN/+inf (or zero) density, so no weight is left."""


class DistributedError(RunError):
    """A sharded run lost its peers: a collective failed or timed out (another rank raised,
    stopped or fell behind by more than the process group's timeout), or the ranks disagree."""


class PersistenceError(SamplerError):
    """A saved result, model or checkpoint cannot be written or read (corrupt, unsafe, wrong version)."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (or SIGTERM) after saving a checkpoint.

    ``checkpoint`` says where, ``step`` how far: the number of completed iterations, each a
    ``unit`` (``"stage"`` of an annealing run, ``"iteration"`` of MCMC chains). A subclass of
    :class:`KeyboardInterrupt`, so code that lets Ctrl-C through keeps doing so.
    """

    def __init__(self, message: str, checkpoint: str, step: int, unit: str = "stage"):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.step = step
        self.unit = unit


class UnknownNameError(SamplerError, KeyError):
    """A method, corrector, transport, target or plugin name is not registered.

    The message lists the closest registered names.
    """

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        close = difflib.get_close_matches(name, self.known, n=3, cutoff=0.5)
        msg = f"unknown {kind} {name!r}."
        if close:
            msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        if self.known:
            msg += f" Registered {kind}s: " + ", ".join(self.known) + "."
        else:
            msg += f" No {kind}s are registered."
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return str(self.args[0])


class PluginError(SamplerError):
    """A plugin is malformed (misspelled hook, bad signature) or raised while registering."""


class PluginLoadError(PluginError):
    """A plugin could not be loaded (raised in strict mode; otherwise reported and skipped)."""


class DuplicateNameError(PluginError):
    """Two plugins registered the same name for the same kind of component."""


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive ``int`` (not a bool); else raise :class:`ConfigurationError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value
