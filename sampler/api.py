"""The user-facing entry points: sample and resume (builders and listings come from :mod:`sampler.host.building`)."""

from __future__ import annotations

import os
from typing import Any, cast

import attrs
import torch

# Importing plotting and persistence registers Result.plot, to_arviz and save (sampler.core.result's
# providers): results of sample() and resume() have them wherever this module was imported from.
from sampler.analysis import plotting as _plotting  # noqa: F401
from sampler.core.result import Result
from sampler.core.runner import Resumable, Runner, capabilities_of
from sampler.core.settings import _checked_device
from sampler.core.threads import Threads, cpu_threads
from sampler.defaults import DEFAULT_METHOD, DEFAULT_TARGET
from sampler.errors import ConfigurationError
from sampler.host.building import build, get_target, list_targets
from sampler.io import persistence as _persistence  # noqa: F401
from sampler.io.checkpoint import Checkpoint, build_metadata, read_checkpoint
from sampler.targets.base import Target

__all__ = ["DEFAULT_METHOD", "DEFAULT_TARGET", "sample", "resume"]


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
    threads: Threads = "auto",
    **options: Any,
) -> Result:
    """Sample ``target`` with a registered method and return a :class:`~sampler.core.result.Result`.

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
            group (see :meth:`sampler.Pipeline.run` and :mod:`sampler.engine.distributed`); ``None``
            lets a method that supports it decide (sharded when a group is initialized).
        threads: CPU threads torch uses during the run: ``"auto"`` (one for tiny problems,
            else the cores no other process keeps busy; see :mod:`sampler.core.threads`), a number, or
            ``None`` to leave torch's setting as it is.
        **options: passed to the method's builder (e.g. ``n_steps=10`` MCMC moves per stage).
    """
    tgt = get_target(target) if isinstance(target, str) else target
    runner = _runner(method, options)
    can = capabilities_of(runner)
    extra: dict[str, Any] = {}
    if checkpoint is not None or checkpoint_every is not None:
        if not can.checkpoint:
            raise ConfigurationError(f"method {method!r} does not support checkpoints")
        ckpt = Checkpoint.create(checkpoint, checkpoint_every)
        if ckpt is not None:
            ckpt = attrs.evolve(ckpt, metadata={**ckpt.metadata, **build_metadata(method, options)})
        extra = {"checkpoint": ckpt}
    if distributed is not None:
        if can.distributed:
            extra["distributed"] = distributed
        elif distributed:
            raise ConfigurationError(
                f"method {method!r} cannot shard its particles across processes (distributed=True)"
            )
    with cpu_threads(
        threads, can.thread_size(n_particles, n_replicas, getattr(tgt, "dim", 0)), _checked_device(device)
    ):
        return runner.run(
            tgt,
            n_particles=n_particles,
            n_replicas=n_replicas,
            seed=seed,
            device=device,
            dtype=dtype,
            progress=progress,
            **extra,
        )


def _runner(name: str, options: dict[str, Any]) -> Runner:
    """Build the method ``name``; its builder must return a :class:`~sampler.Runner`."""
    if not isinstance(name, str):
        raise ConfigurationError(
            f"method must be the name of a registered method (sampler.list_methods()), got {type(name).__name__}; "
            "run a Pipeline or another Runner with its own .run(target, n_particles=...)"
        )
    runner = build("method", name, options)
    if not callable(getattr(runner, "run", None)):
        raise ConfigurationError(f"method {name!r} built {type(runner).__name__}, which has no run(target, ...) method")
    return runner


def resume(
    checkpoint: str | os.PathLike,
    target: Target | None = None,
    *,
    progress: bool | None = None,
    checkpoint_every: int | None = None,
    threads: Threads = "auto",
) -> Result:
    """Continue a run saved by ``sample(..., checkpoint=...)``; same seed, same result.

    The method is rebuilt by name with the options recorded in the checkpoint, and the target
    by its registered name unless ``target`` is given (a user-defined target must be passed
    again: a checkpoint holds data, never code). Settings (N, R, seed, device, dtype) come
    from the checkpoint; ``threads`` as in :func:`sample`.
    """
    data = read_checkpoint(checkpoint)
    run = data.run
    recorded = run.get("metadata", {}).get("build")
    if recorded is None:
        raise ConfigurationError(
            f"{str(checkpoint)!r} was written by a runner called directly (or with options that are not JSON); "
            "resume it with that runner's .resume(path, target)"
        )
    if target is None:
        if run["target"] not in list_targets():
            raise ConfigurationError(
                f"the run sampled {run['target']!r}, which is not a registered target; "
                "pass it: resume(path, target=...)"
            )
        target = get_target(run["target"])
        if target.dim != run["dim"]:
            raise ConfigurationError(
                f"the run sampled {run['target']!r} in d={run['dim']}, but get_target({run['target']!r}) "
                f"has d={target.dim}; pass the target: resume(path, target=...)"
            )
    runner = _runner(recorded["method"], dict(recorded["options"]))
    can = capabilities_of(runner)
    if not can.checkpoint:
        raise ConfigurationError(f"method {recorded['method']!r} cannot resume from a checkpoint")
    size = can.thread_size(run.get("n_particles"), run.get("n_replicas"), run.get("dim"))
    with cpu_threads(threads, size, _checked_device(run.get("device"))):
        return cast(Resumable, runner).resume(checkpoint, target, progress=progress, checkpoint_every=checkpoint_every)
