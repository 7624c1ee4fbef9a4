"""The neural JKO (CNF) layer: a velocity field integrated over t in [0, 1] with fixed-step RK4.

The augmented ODE carries the position ``z``, ``l = ∫ div v`` and ``w = ∫ |v|^2``:

    dz/dt = v(z, t),   dl/dt = div v(z, t),   dw/dt = |v(z, t)|^2,   z(0) = x, l(0) = w(0) = 0.

Since ``d/dt log p = -div v`` along trajectories, the model's negative log density after the
layer is ``e_new(z(1)) = e_old(x) + l(1)``. The same fixed-step RK4 scheme is used for training
and for sampling, so the trained map is the one that is sampled. The divergence is exact
(forward-mode Jacobian, ``d`` tangents) or a Hutchinson estimate with Rademacher probes that are
drawn once per solve and reused at every stage (so each probe gives an unbiased estimate of the
whole integral ``l``, and the spread over probes measures the noise).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sampler.ext import ConfigurationError
from sampler_plugins.neural_jko.velocity import VelocityField

__all__ = ["CNFLayer", "Flow"]


class Flow:
    """What :meth:`CNFLayer.integrate` returns (shapes for ``B`` points, ``k`` probes).

    Attributes:
        z: end points ``(B, d)``.
        div: ``(B, k)`` integrated divergence, one column per probe (``k = 1`` when exact).
        kinetic: ``(B,)`` integrated ``|v|^2`` (the Benamou-Brenier action of the path).
    """

    __slots__ = ("z", "div", "kinetic")

    def __init__(self, z: Tensor, div: Tensor, kinetic: Tensor):
        self.z, self.div, self.kinetic = z, div, kinetic

    @property
    def ell(self) -> Tensor:
        """``(B,)`` the divergence integral (mean over probes)."""
        return self.div.mean(-1)

    @property
    def ell_stderr(self) -> Tensor:
        """``(B,)`` standard error of :attr:`ell` over probes (0 when exact or with one probe)."""
        k = self.div.shape[-1]
        if k < 2:
            return torch.zeros_like(self.div[:, 0])
        return self.div.std(-1) / math.sqrt(k)


class CNFLayer(nn.Module):
    """One neural JKO step: ``x -> z(1)`` with ``e_new = e_old + l(1)``.

    Args:
        dim: d.
        width: hidden width of the velocity MLP (default ``2 d + 50``).
        tau: the JKO step size of the layer's training loss ``KL + W2^2 / tau`` (kept for the record).
        n_steps: RK4 steps on [0, 1] for training and sampling.
    """

    kind = "cnf"
    tau: Tensor  # a float64 buffer (declared for the type checker)

    def __init__(self, dim: int, width: int | None = None, tau: float = 1.0, n_steps: int = 8):
        super().__init__()
        if n_steps < 1:
            raise ConfigurationError(f"n_steps must be a positive integer, got {n_steps!r}")
        self.dim = dim
        self.width = width or 2 * dim + 50
        self.velocity = VelocityField(dim, self.width)
        self.n_steps = int(n_steps)
        self.register_buffer("tau", torch.tensor(float(tau), dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, width={self.width}, tau={float(self.tau):.4g}, n_steps={self.n_steps}"

    def _field(
        self, z: Tensor, t: float, probes: Tensor | None, exact: bool, track: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        if not track:
            v, _ = self.velocity(z, t)
            zero = z.new_zeros(z.shape[0], 1)
            return v, zero, zero[:, 0]
        if exact:
            v, jac = self.velocity(z, t, identity=True)
            div = torch.diagonal(jac, dim1=-2, dim2=-1).sum(-1, keepdim=True)
        else:
            v, jp = self.velocity(z, t, tangents=probes)
            div = (probes * jp).sum(1)  # (B, k): eps_k . (J eps_k)
        return v, div, (v * v).sum(-1)

    def integrate(
        self,
        x: Tensor,
        *,
        reverse: bool = False,
        exact: bool = True,
        n_probes: int = 1,
        generator: torch.Generator | None = None,
        track: bool = True,
    ) -> Flow:
        """Solve the augmented ODE from ``x`` ``(B, d)`` (forward: t 0 -> 1; ``reverse``: 1 -> 0).

        In reverse, ``x`` is an end point ``z(1)``; the result's ``z`` is its pre-image ``z(0)``
        and ``div``/``kinetic`` are the integrals along that same trajectory (so
        ``e(x) = e_below(z(0)) + ell``). Differentiable with respect to the weights.

        Args:
            exact: exact divergence (``d`` tangents); otherwise Hutchinson with ``n_probes``
                Rademacher probes drawn from ``generator`` once for the whole solve.
            track: integrate the divergence and kinetic energy (``False``: positions only).
        """
        b, d = x.shape
        probes = None
        if track and not exact:
            probes = torch.randint(0, 2, (b, d, n_probes), generator=generator, device=x.device).to(x.dtype) * 2 - 1
        h = 1.0 / self.n_steps
        sign = -1.0 if reverse else 1.0
        z = x
        div = x.new_zeros(b, 1 if (exact or not track) else n_probes)
        kin = x.new_zeros(b)
        for i in range(self.n_steps):
            t0 = 1.0 - i * h if reverse else i * h
            dt = sign * h
            v1, d1, k1 = self._field(z, t0, probes, exact, track)
            v2, d2, k2 = self._field(z + 0.5 * dt * v1, t0 + 0.5 * dt, probes, exact, track)
            v3, d3, k3 = self._field(z + 0.5 * dt * v2, t0 + 0.5 * dt, probes, exact, track)
            v4, d4, k4 = self._field(z + dt * v3, t0 + dt, probes, exact, track)
            z = z + (dt / 6.0) * (v1 + 2 * v2 + 2 * v3 + v4)
            div = div + (h / 6.0) * (d1 + 2 * d2 + 2 * d3 + d4)
            kin = kin + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        return Flow(z, div, kin)

    @torch.no_grad()
    def transform(
        self,
        x: Tensor,
        *,
        reverse: bool = False,
        exact: bool = True,
        n_probes: int = 1,
        generator: torch.Generator | None = None,
        chunk: int = 16384,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Inference: ``(z, ell, ell_stderr)`` for ``x`` ``(B, d)``, in chunks, ``ell`` in float64."""
        zs, ells, ses = [], [], []
        for start in range(0, x.shape[0], chunk):
            f = self.integrate(
                x[start : start + chunk], reverse=reverse, exact=exact, n_probes=n_probes, generator=generator
            )
            zs.append(f.z)
            ells.append(f.ell.to(torch.float64))
            ses.append(f.ell_stderr.to(torch.float64))
        if not zs:
            empty = x.new_zeros(0, dtype=torch.float64)
            return x, empty, empty
        return torch.cat(zs), torch.cat(ells), torch.cat(ses)
