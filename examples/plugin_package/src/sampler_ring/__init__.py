"""sampler-ring: an example plugin package (a ring target and the ``rw-smc`` method).

Installed with pip, it is found through its entry point (group ``sampler``); the hook below
registers its components by name.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import sampler

__all__ = ["Ring", "build_rw_smc", "sampler_register"]


class Ring(sampler.BoltzmannTarget):
    """A ring of radius ``radius`` and width ``width`` in 2D: ``U(x) = (|x| - r)^2 / (2 s^2)``.

    In polar coordinates the radius has density proportional to ``rho exp(-(rho - r)^2 / 2s^2)``
    and the angle is uniform, so both log Z and exact samples are available.
    """

    dim = 2
    reference_scale = 2.0

    def __init__(self, radius: float = 3.0, width: float = 0.3):
        if radius <= 0 or width <= 0:
            raise sampler.errors.ConfigurationError(f"radius and width must be positive, got {radius}, {width}")
        self.radius, self.width = float(radius), float(width)
        r, s = self.radius, self.width
        # Z = 2 pi * int_0^inf rho exp(-(rho - r)^2 / 2 s^2) d rho
        z = (
            2
            * math.pi
            * (
                s**2 * math.exp(-(r**2) / (2 * s**2))
                + r * s * math.sqrt(math.pi / 2) * (1 + math.erf(r / (s * math.sqrt(2))))
            )
        )
        self.log_Z = math.log(z)

    @property
    def name(self) -> str:
        return "ring"

    def energy(self, x: Tensor) -> Tensor:
        """``(|x| - r)^2 / (2 s^2)`` for ``x`` ``(..., 2)``."""
        return (x.norm(dim=-1) - self.radius) ** 2 / (2 * self.width**2)

    def sample(self, n: int, generator: torch.Generator, device=None, dtype=torch.float64) -> Tensor:
        """``n`` exact samples ``(n, 2)``: radius by rejection from N(r, s^2) (weight rho), uniform angle."""
        device = device or generator.device
        out = torch.empty(0, dtype=dtype, device=device)
        bound = self.radius + 8 * self.width
        while out.numel() < n:
            rho = self.radius + self.width * torch.randn(2 * n, generator=generator, device=device, dtype=dtype)
            u = torch.rand(2 * n, generator=generator, device=device, dtype=dtype)
            out = torch.cat([out, rho[(rho > 0) & (u * bound < rho)]])
        rho = out[:n]
        angle = 2 * math.pi * torch.rand(n, generator=generator, device=device, dtype=dtype)
        return torch.stack([rho * angle.cos(), rho * angle.sin()], -1)


def build_rw_smc(n_steps: int = 10, target_ess: float = 0.9, scale: float = 0.5) -> sampler.Pipeline:
    """Adaptive tempered SMC with random-walk Metropolis moves (``n_steps`` per temperature)."""
    return sampler.Pipeline(
        schedule=sampler.schedules.Adaptive(target_ess=target_ess),
        steps=[
            sampler.corrector("resample", threshold=1.0),
            sampler.corrector("rwmh", n_steps=n_steps, step_size=scale),
        ],
        name="rw-smc",
        options={"n_steps": n_steps, "target_ess": target_ess, "scale": scale},
    )


@sampler.hookimpl
def sampler_register(registry) -> None:
    """Register the ``ring`` target and the ``rw-smc`` method."""
    registry.add_target("ring", Ring)
    registry.add_method("rw-smc", build_rw_smc)
