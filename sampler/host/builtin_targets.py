"""Registers the core's built-in targets through the same hook a plugin uses."""

from __future__ import annotations

from collections.abc import Callable

from sampler.host.hookspecs import hookimpl
from sampler.host.registry import Registrar
from sampler.targets import (
    GMM10,
    GMM10_DIMS,
    GMM40,
    LGCP,
    DoubleWell,
    EightModes,
    EightPeaky,
    Funnel,
    Gaussian,
    ManyWell,
    Mustache,
)


def _gmm10_factory(dim: int) -> Callable[..., GMM10]:
    def build(seed: int = 0) -> GMM10:
        return GMM10(dim, seed=seed)

    build.__name__ = build.__qualname__ = f"gmm10_{dim}"
    return build


@hookimpl
def sampler_register(registry: Registrar) -> None:
    """Add the built-in targets (``gaussian``, ``double-well``, ``gmm40`` and the benchmark suite)."""
    registry.add_target("gaussian", Gaussian)
    registry.add_target("double-well", DoubleWell)
    registry.add_target("gmm40", GMM40)
    registry.add_target("mustache", Mustache, "2D correlated Gaussian bent by x2 -> x2 - (x1^2 - 1)^2 (normalized)")
    registry.add_target("8modes", EightModes, "8 Gaussians (var 0.01) on the unit circle centred at (-1, 0)")
    registry.add_target("8peaky", EightPeaky, "8 Gaussians (var 0.005) on the unit circle centred at (-1, 0)")
    registry.add_target("funnel", Funnel, "Neal's funnel, d = 10: x1 ~ N(0, 9), x2..x10 | x1 ~ N(0, e^x1)")
    for d in GMM10_DIMS:
        registry.add_target(
            f"gmm10-{d}",
            _gmm10_factory(d),
            f"10 Gaussians (var 0.01) in d = {d}, means uniform on [-1, 1]^{d} (torch CPU generator, seed 0)",
        )
    registry.add_target("manywell", ManyWell, "16 independent 2D double wells, d = 32 (log Z ~ 164.696)")
    registry.add_target(
        "lgcp", LGCP, "log-Gaussian Cox process on a 40x40 grid, d = 1600 (simulated data; log Z unknown)"
    )
