"""Validated run arguments shared by every runner: N, R, seed, device, dtype, progress."""

from __future__ import annotations

import secrets
from typing import Any

import attrs
import torch

from sampler.errors import ConfigurationError, TargetError, check_positive_int
from sampler.targets.base import Target

__all__ = ["RunSettings", "check_target", "MAX_SEED"]

#: Seeds are 64-bit: torch generators take integers in [0, 2**64).
MAX_SEED = 1 << 64


@attrs.frozen
class RunSettings:
    """Validated run arguments shared by every runner (pipelines, MCMC chains).

    Attributes:
        n_particles: N per replica (draws per chain for MCMC).
        n_replicas: R independent replicas (chains).
        seed: the seed used (drawn at random and recorded when not given).
        device, dtype: where and in what precision positions live.
        progress: ``None`` shows a bar on a terminal only; ``True``/``False`` force it.
    """

    n_particles: int
    n_replicas: int
    seed: int
    device: torch.device
    dtype: torch.dtype
    progress: bool | None

    @classmethod
    def create(
        cls,
        target: Target,
        n_particles: int,
        n_replicas: int = 1,
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        progress: bool | None = None,
    ) -> RunSettings:
        """Check the arguments before any work; raise :class:`ConfigurationError` if bad."""
        check_target(target)
        check_positive_int("n_particles", n_particles)
        check_positive_int("n_replicas", n_replicas)
        if seed is None:
            seed = secrets.randbits(62)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
            raise ConfigurationError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        if progress is not None and not isinstance(progress, bool):
            raise ConfigurationError(f"progress must be True, False or None, got {progress!r}")
        return cls(n_particles, n_replicas, seed, _checked_device(device), _checked_dtype(dtype), progress)

    def generator(self) -> torch.Generator:
        """A fresh generator on the run's device, seeded with :attr:`seed`."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed)
        return gen


def _checked_device(device: Any) -> torch.device:
    """``device`` as a :class:`torch.device` this machine can run on (default: torch's default device)."""
    if device is None:
        return _default_device()
    if not isinstance(device, (str, torch.device)):
        raise ConfigurationError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("this torch build or machine has no CUDA device")
        torch.Generator(device=dev)
    except RuntimeError as exc:
        raise ConfigurationError(f"device {device!r} cannot be used: {exc}") from None
    return dev


def _checked_dtype(dtype: Any) -> torch.dtype:
    """``dtype`` (a torch dtype or its name) as a floating :class:`torch.dtype` (default: torch's default)."""
    if dtype is None:
        return torch.get_default_dtype()
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) and dtype.isidentifier() else dtype
    if not isinstance(resolved, torch.dtype):
        raise ConfigurationError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'float64'")
    if not resolved.is_floating_point:
        raise ConfigurationError(f"dtype must be a floating dtype, got {resolved}")
    return resolved


def _default_device() -> torch.device:
    get = getattr(torch, "get_default_device", None)
    return get() if get is not None else torch.empty(0).device


def check_target(target: Any) -> None:
    """Raise :class:`TargetError` unless ``target`` looks like a :class:`Target`."""
    if not callable(getattr(target, "log_prob", None)):
        raise TargetError(
            f"{target!r} is not a target: it has no log_prob(x) method (see sampler.Target and sampler.target)"
        )
    dim = getattr(target, "dim", None)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise TargetError(f"target {getattr(target, 'name', target)!r} must have a positive integer dim, got {dim!r}")
