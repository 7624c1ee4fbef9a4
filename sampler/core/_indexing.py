"""Indexing helpers shared by the core modules."""

from __future__ import annotations

import torch
from torch import Tensor


def gather_particles(values: Tensor, indices: Tensor) -> Tensor:
    """Select along the particle axis: ``values`` ``(R, N, ...)``, ``indices`` ``(R, M)`` -> ``(R, M, ...)``."""
    rest = values.shape[2:]
    idx = indices.reshape(indices.shape + (1,) * len(rest)).expand(indices.shape + rest)
    return torch.gather(values, 1, idx)
