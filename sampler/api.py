"""The user-facing entry points: sample, build components by name, list what is registered."""

from __future__ import annotations

import inspect
import os
from typing import Any

import attrs
import torch

from sampler.checkpoint import Checkpoint, build_metadata, read_checkpoint
from sampler.errors import ConfigurationError, PluginError, SamplerError
from sampler.plugins import PluginInfo, host
from sampler.result import Result
from sampler.steps import Corrector, Transport
from sampler.targets.base import Target

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_TARGET",
    "sample",
    "resume",
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

#: Method used when none is named (``sampler run``, :func:`sample`).
DEFAULT_METHOD = "smc"
#: Target ``sampler run`` samples when none is named.
DEFAULT_TARGET = "gmm40"


def _build(kind: str, name: str, options: dict[str, Any]) -> Any:
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
    return _build("method", name, options)


def corrector(name: str, **options: Any) -> Corrector:
    """Build a registered corrector, e.g. ``corrector("mala", n_steps=10)``."""
    step = _build("corrector", name, options)
    if not isinstance(step, Corrector):
        raise ConfigurationError(f"corrector {name!r} built {type(step).__name__}, which is not a sampler.Corrector")
    return step


def transport(name: str, **options: Any) -> Transport:
    """Build a registered transport by name."""
    step = _build("transport", name, options)
    if not isinstance(step, Transport):
        raise ConfigurationError(f"transport {name!r} built {type(step).__name__}, which is not a sampler.Transport")
    return step


def get_target(name: str, **options: Any) -> Target:
    """A registered target by name, e.g. ``get_target("gmm40")`` or ``get_target("gaussian", dim=10)``."""
    return _build("target", name, options)


def sample(
    target: Target | str,
    method: str = DEFAULT_METHOD,
    *,
    n_particles: int = 2000,
    n_replicas: int = 4,
    seed: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    distributed: bool | None = None,
    **options: Any,
) -> Result:
    """Sample ``target`` with a registered method and return a :class:`~sampler.result.Result`.

    Args:
        target: a :class:`~sampler.targets.Target` or the name of a registered one.
        method: a registered method name (``sampler.list_methods()``); default ``"smc"``.
        n_particles: N particles per replica (draws per chain for MCMC methods).
        n_replicas: R independent replicas (chains), run as one batch.
        seed: makes the run repeatable (drawn at random and stored in the result if omitted).
        device: where to run (default: torch's default device).
        dtype: the precision of positions (default: torch's default dtype).
        progress: progress bar; ``None`` shows it only on a terminal.
        checkpoint: a file where the run saves its state when interrupted (Ctrl-C raises
            :class:`~sampler.errors.Interrupted` after saving) and, with ``checkpoint_every=K``,
            after every K stages; :func:`resume` continues from it.
        distributed: shard the particles across the ranks of the ``torch.distributed`` process
            group (see :meth:`sampler.Pipeline.run` and :mod:`sampler.distributed`); ``None``
            lets a method that supports it decide (sharded when a group is initialized).
        **options: passed to the method's builder (e.g. ``n_steps=10`` MCMC moves per stage).
    """
    tgt = get_target(target) if isinstance(target, str) else target
    runner = _build("method", method, options)
    extra: dict[str, Any] = {}
    if checkpoint is not None or checkpoint_every is not None:
        if "checkpoint" not in inspect.signature(runner.run).parameters:
            raise ConfigurationError(f"method {method!r} does not support checkpoints")
        ckpt = Checkpoint.create(checkpoint, checkpoint_every)
        if ckpt is not None:
            ckpt = attrs.evolve(ckpt, metadata={**ckpt.metadata, **build_metadata(method, options)})
        extra = {"checkpoint": ckpt}
    if distributed is not None:
        if "distributed" not in inspect.signature(runner.run).parameters:
            if distributed:
                raise ConfigurationError(f"method {method!r} cannot shard its particles across processes (distributed=True)")
        else:
            extra["distributed"] = distributed
    return runner.run(
        tgt, n_particles=n_particles, n_replicas=n_replicas, seed=seed, device=device, dtype=dtype, progress=progress, **extra
    )


def resume(
    checkpoint: str | os.PathLike,
    target: Target | None = None,
    *,
    progress: bool | None = None,
    checkpoint_every: int | None = None,
) -> Result:
    """Continue a run saved by ``sample(..., checkpoint=...)``; same seed, same result.

    The method is rebuilt by name with the options recorded in the checkpoint, and the target
    by its registered name unless ``target`` is given (a user-defined target must be passed
    again: a checkpoint holds data, never code). Settings (N, R, seed, device, dtype) come
    from the checkpoint.
    """
    data = read_checkpoint(checkpoint)
    run = data.run
    build = run.get("metadata", {}).get("build")
    if build is None:
        raise ConfigurationError(
            f"{str(checkpoint)!r} was written by a runner called directly (or with options that are not JSON); "
            "resume it with that runner's .resume(path, target)"
        )
    if target is None:
        if run["target"] not in list_targets():
            raise ConfigurationError(
                f"the run sampled {run['target']!r}, which is not a registered target; pass it: resume(path, target=...)"
            )
        target = get_target(run["target"])
        if target.dim != run["dim"]:
            raise ConfigurationError(
                f"the run sampled {run['target']!r} in d={run['dim']}, but get_target({run['target']!r}) has d={target.dim}; "
                "pass the target: resume(path, target=...)"
            )
    runner = _build("method", build["method"], dict(build["options"]))
    if not hasattr(runner, "resume"):
        raise ConfigurationError(f"method {build['method']!r} cannot resume from a checkpoint")
    return runner.resume(checkpoint, target, progress=progress, checkpoint_every=checkpoint_every)


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
