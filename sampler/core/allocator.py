"""Keep freed tensor memory in the process on the CPU: :func:`tune_cpu_allocator` (glibc's ``malloc``).

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a request above its
mmap threshold (128 KiB at start, raised toward 32 MiB as such blocks are freed) with a fresh
``mmap`` and returns it to the kernel when freed, and it returns freed memory at the top of the
heap above its trim threshold. A run allocates and frees the same (R, N, d) and (R, N, K)
buffers at every operation, so whenever a buffer falls on the wrong side of either threshold,
each operation writes to pages the kernel must fault in and zero first. At N = 20,000 on gmm40
((N, 40) logits, 3.2 MB) that made ``smc``'s gradient rate vary by up to 2x from one process to
the next (docs/benchmarks.md, "Throughput"). Fixing the thresholds at glibc's largest mmap
threshold (32 MiB) and twice that for trimming (what glibc's own adaptation converges to) keeps
such buffers on the heap for reuse; PyTorch's CPU performance guide recommends jemalloc or
tcmalloc for the same reason.

The setting is process-wide and cannot be undone, so the library never applies it by itself:
the ``sampler`` command line does (it owns its process), and a Python program may call
:func:`tune_cpu_allocator` once. Memory the process no longer uses is then returned to the
system less eagerly (up to 64 MiB at the top of the heap).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_cpu_allocator"]

#: glibc's largest mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``): smaller
#: blocks come from the heap.
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap kept rather than returned (twice the mmap threshold, as
#: glibc's dynamic adjustment sets it).
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def tune_cpu_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds (:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`); once per process.

    Returns whether they were set: ``False`` where the C library is not glibc (macOS, Windows,
    musl), which changes nothing. Sampled values are unaffected, only where their memory comes
    from.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 -- present in glibc only
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # the mmap threshold first: setting either one stops glibc adjusting the other
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
