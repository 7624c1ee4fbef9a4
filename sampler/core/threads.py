"""How many CPU threads torch's operators use during a run (intra-op parallelism).

Sampling runs many small operations. Splitting each one over threads gains when the cores are
idle and the run is not tiny, and loses badly when another process shares the cores -- every
operation then waits at a barrier for a thread that is not scheduled (measured: the default
``sampler run`` took 26 s instead of 4 s beside two busy processes on 2 cores, docs/benchmarks.md,
"Throughput"). The default policy, ``"auto"``, runs tiny problems on one thread and the others on
the cores that no other process keeps busy, never more than torch's own setting, and follows the
machine's load during the run (:func:`follow_load`). Only CPU runs are affected; the previous
setting is restored when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import attrs
import torch

from sampler.errors import ConfigurationError

__all__ = ["SMALL_RUN", "Threads", "busy_elsewhere", "choose_threads", "cpu_threads", "follow_load"]

#: ``"auto"``, a positive number of threads, or ``None`` to leave torch's setting alone.
Threads = int | str | None

#: Runs with at most this many coordinates moving at once (R x N x d; R x d for chains, whose
#: draws are sequential: :attr:`~sampler.core.runner.Capabilities.sequential_draws`) use one
#: thread under ``"auto"``:
#: below it a second thread gained nothing on idle cores (0.8-1.0x at 500-2,000 coordinates,
#: 1.0-1.4x from 4,000; docs/benchmarks.md, "Throughput").
SMALL_RUN = 1 << 11


#: Readings of the runnable threads :func:`busy_elsewhere` takes, and the seconds between them.
BUSY_SAMPLES, BUSY_SAMPLE_GAP = 3, 5e-4

#: During an ``"auto"`` run, :func:`follow_load` chooses the threads again at most this often (s).
RECHECK_SECONDS = 1.0


def _available_cores() -> int:
    """Cores this process may run on, less those other processes keep busy (:func:`busy_elsewhere`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, round(cores - busy_elsewhere()))


def busy_elsewhere() -> float:
    """How many threads of other processes want a core now.

    On Linux: the threads runnable now (``/proc/loadavg``), less this process's own
    (``/proc/self/task``), so a process does not see its own work, or its thread pool spinning
    after the previous run, as a competitor; the least of :data:`BUSY_SAMPLES` readings
    :data:`BUSY_SAMPLE_GAP` s apart, so a process that runs for a moment (a shell command, a pipe
    waking up) does not count, while a busy one, runnable all the time, does. Elsewhere: the
    1-minute load average (which lags by a minute and counts this process too). Both count the
    whole machine, not only the cores this process may use.
    """
    try:
        counts = []
        for i in range(BUSY_SAMPLES):
            if i:
                time.sleep(BUSY_SAMPLE_GAP)
            counts.append(max(0, _machine_runnable_threads() - _own_runnable_threads()))
        return float(min(counts))
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def _machine_runnable_threads() -> int:
    """The machine's threads in state ``R`` now, this one included (``/proc/loadavg``, 4th field)."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[0])


def _own_runnable_threads() -> int:
    """This process's threads in state ``R`` (running or runnable), from ``/proc/self/task``."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        count += stat[stat.rindex(")") + 2] == "R"  # the state follows the name, which may hold ")"
    return count


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


@attrs.define
class _AutoRun:
    """An ``"auto"`` run in progress: the most threads it may use and when it last chose (monotonic s)."""

    cap: int
    checked: float = attrs.field(factory=time.monotonic)


#: The ``"auto"`` runs in progress in this process, innermost last (:func:`follow_load`).
_ACTIVE: list[_AutoRun] = []


@contextlib.contextmanager
def cpu_threads(threads: Threads, size: int, device: torch.device) -> Iterator[int]:
    """Run the body with :func:`choose_threads`'s number of intra-op threads; yields the number at the start.

    Under ``"auto"`` (beyond :data:`SMALL_RUN`) the body's :func:`follow_load` calls choose again
    as other processes start or stop. Torch's setting is restored at the end.
    """
    chosen = choose_threads(threads, size, device)
    before = torch.get_num_threads()
    follows = threads == "auto" and chosen is not None and size > SMALL_RUN
    if chosen is None or (chosen == before and not follows):
        yield before
        return
    torch.set_num_threads(chosen)
    if follows:
        _ACTIVE.append(_AutoRun(before))
    try:
        yield chosen
    finally:
        if follows:
            _ACTIVE.pop()
        torch.set_num_threads(before)


def follow_load() -> None:
    """Inside an ``"auto"`` run, choose its threads again once :data:`RECHECK_SECONDS` have passed.

    The engine calls it at every stage or iteration, so a run that started on idle cores drops to
    the cores left when another process starts competing (two threads on two shared cores run
    2-10x slower than one) and takes them back when it stops. Outside such a run it does nothing.
    """
    if not _ACTIVE:
        return
    run = _ACTIVE[-1]
    now = time.monotonic()
    if now - run.checked < RECHECK_SECONDS:
        return
    run.checked = now
    wanted = max(1, min(run.cap, _available_cores()))
    if wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)
