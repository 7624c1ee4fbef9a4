"""The runner contract: what a method's builder returns, and what it declares it can do.

A method plugin registers a builder (``registry.add_method(name, build)``); ``build(**options)``
returns a :class:`Runner`. :func:`sampler.sample` calls ``runner.run(target, n_particles=...,
n_replicas=..., seed=..., device=..., dtype=..., progress=...)`` and passes the optional
arguments only to runners whose :class:`Capabilities` declare them, so a runner never has its
signature probed.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import attrs
import torch

from sampler.core.result import Result
from sampler.targets.base import Target

__all__ = ["Capabilities", "Runner", "Resumable", "capabilities_of"]


@attrs.frozen
class Capabilities:
    """What a runner supports beyond a plain ``run``.

    Attributes:
        checkpoint: ``run(..., checkpoint=path_or_Checkpoint, checkpoint_every=K)`` saves its
            state (every K stages and on Ctrl-C), and ``resume(checkpoint, target, *,
            progress=None, checkpoint_every=None)`` continues to the uninterrupted result.
        distributed: ``run(..., distributed=None|True|False)`` shards the particles across the
            ranks of a ``torch.distributed`` process group (:mod:`sampler.distributed`).
        sequential_draws: each replica's ``n_particles`` draws are made one after another (MCMC
            chains), so only ``n_replicas`` points move at once: the run's size for the CPU
            thread rule (:func:`~sampler.core.threads.choose_threads`) is ``n_replicas x dim``.
    """

    checkpoint: bool = False
    distributed: bool = False
    sequential_draws: bool = False

    def thread_size(self, n_particles: object, n_replicas: object, dim: object) -> int:
        """The coordinates that move at once, ``R x N x d`` (``R x d`` with :attr:`sequential_draws`);
        0 where a count is not an integer (the runner says what is wrong)."""
        counts = (n_replicas, dim) if self.sequential_draws else (n_particles, n_replicas, dim)
        size = 1
        for c in counts:
            if isinstance(c, bool) or not isinstance(c, int):
                return 0
            size *= c
        return size


@runtime_checkable
class Runner(Protocol):
    """What a method builder returns: ``run`` returns a :class:`~sampler.Result`.

    ``samples`` of the result are ``(n_replicas, n_particles, dim)``. A runner declares the
    optional arguments it accepts in :attr:`capabilities` (default: none).
    """

    capabilities: Capabilities

    def run(
        self,
        target: Target,
        *,
        n_particles: int,
        n_replicas: int = ...,
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        progress: bool | None = None,
    ) -> Result:
        """Sample ``target`` with R replicas of N particles."""
        ...


@runtime_checkable
class Resumable(Runner, Protocol):
    """A runner whose :class:`Capabilities` declare ``checkpoint``: it also resumes."""

    def resume(
        self,
        checkpoint: Any,
        target: Target,
        *,
        progress: bool | None = None,
        checkpoint_every: int | None = None,
    ) -> Result:
        """Continue the run saved in ``checkpoint`` (a path or a read checkpoint) to the uninterrupted result."""
        ...


def capabilities_of(runner: Any) -> Capabilities:
    """The runner's declared :class:`Capabilities` (none declared: a plain ``run`` only)."""
    caps = getattr(runner, "capabilities", None)
    return caps if isinstance(caps, Capabilities) else Capabilities()
