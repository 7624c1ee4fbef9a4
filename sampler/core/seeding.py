"""Random state from the run's seed only: network initialization, derived seeds.

Every method must give the same result for the same seed, whatever else ran before in the
process; plugins that build networks use these (through :mod:`sampler.ext`).

``nn.Linear`` (and the ``nn.init`` functions it calls) draws its initial weights from torch's
global CPU generator and takes no generator. :func:`seeded_init` builds modules from a given
seed instead: inside it the global CPU generator is forked (its state is saved, and restored on
exit, so the caller's random stream is exactly as it was) and seeded with ``seed``, and new
tensors are created on the CPU (the default device is overridden), so the initial weights
depend on ``seed`` alone -- not on what ran before, nor on the default device. Move the module
to its device and dtype afterwards.

:func:`derived_seed` turns a run's seed into the seed of one of its independent random uses
(splitmix64 hashing, so nearby run seeds give unrelated streams).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["derived_seed", "seeded_init"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derived_seed(seed: int, *salts: int) -> int:
    """A 63-bit seed derived from ``seed`` and ``salts``: ``h = splitmix64(seed)``, then
    ``h = splitmix64(h ^ salt)`` for each salt, returned as ``h >> 1``."""
    h = _splitmix64(int(seed) & _MASK64)
    for salt in salts:
        h = _splitmix64(h ^ (int(salt) & _MASK64))
    return h >> 1


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build modules inside this block to give them initial weights that depend on ``seed`` only.

    Forks torch's global CPU generator (restored on exit), seeds it with ``seed`` and makes the
    CPU the default device for the block. CUDA generators are neither used nor touched.
    """
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.random.default_generator.manual_seed(int(seed))
        yield
