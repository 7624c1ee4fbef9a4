"""How many CPU threads torch's operators use during a run (intra-op parallelism).

Sampling runs many small operations: at R x N x d of a few thousand to a hundred thousand
numbers, splitting each one over threads gains little when the cores are idle, and loses badly
when another process shares them -- every operation then waits at a barrier for a thread that
is not scheduled (measured: the default ``sampler run`` took 26 s instead of 4 s beside two busy
processes on 2 cores, docs/benchmarks.md, "Throughput"). The default policy, ``"auto"``, runs small
problems on one thread and large ones on the cores not already busy (by the 1-minute load
average), never more than torch's own setting. Only CPU runs are affected; the previous setting
is restored when the run ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from sampler.errors import ConfigurationError

__all__ = ["SMALL_RUN", "Threads", "choose_threads", "cpu_threads"]

#: ``"auto"``, a positive number of threads, or ``None`` to leave torch's setting alone.
Threads = int | str | None

#: Runs with at most this many coordinates in all (R x N x d) use one thread under ``"auto"``.
SMALL_RUN = 1 << 17


def _available_cores() -> int:
    """Cores this process may run on, less those the 1-minute load average says are busy."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, round(cores - busy))


def choose_threads(threads: Threads, size: int, device: torch.device) -> int | None:
    """The number of threads a run of ``size`` coordinates on ``device`` uses; ``None``: unchanged.

    Raises:
        ConfigurationError: ``threads`` is neither ``"auto"``, ``None`` nor a positive integer.
    """
    if threads is None:
        return None
    if isinstance(threads, str):
        if threads != "auto":
            raise ConfigurationError(f"threads must be 'auto', None or a positive integer, got {threads!r}")
        if device.type != "cpu":
            return None
        return 1 if size <= SMALL_RUN else min(torch.get_num_threads(), _available_cores())
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigurationError(f"threads must be 'auto', None or a positive integer, got {threads!r}")
    return threads


@contextlib.contextmanager
def cpu_threads(threads: Threads, size: int, device: torch.device) -> Iterator[int]:
    """Run the body with :func:`choose_threads`'s number of intra-op threads; yields the number in use."""
    chosen = choose_threads(threads, size, device)
    before = torch.get_num_threads()
    if chosen is None or chosen == before:
        yield before
        return
    torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        torch.set_num_threads(before)
