"""Validated run arguments shared by every runner: N, R, seed, device, dtype, progress."""

from __future__ import annotations

import secrets
from typing import Any

import attrs
import torch

from sampler.errors import ConfigurationError, TargetError, check_positive_int
from sampler.targets.base import Target

__all__ = ["RunSettings", "check_target"]


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
        elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigurationError(f"seed must be a non-negative integer, got {seed!r}")
        try:
            dev = torch.device(device) if device is not None else _default_device()
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("this torch build or machine has no CUDA device")
            torch.Generator(device=dev)
        except RuntimeError as exc:
            raise ConfigurationError(f"device {device!r} cannot be used: {exc}") from None
        if isinstance(dtype, str):
            resolved = getattr(torch, dtype, None)
            if not isinstance(resolved, torch.dtype):
                raise ConfigurationError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'float64'")
            dtype = resolved
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise ConfigurationError(f"dtype must be a floating dtype, got {dtype}")
        return cls(n_particles, n_replicas, seed, dev, dtype, progress)

    def generator(self) -> torch.Generator:
        """A fresh generator on the run's device, seeded with :attr:`seed`."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed)
        return gen


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
