"""Functional tensor trains: ``Phi(x) = C_1[phi(x_1)] C_2[phi(x_2)] ... C_d[phi(x_d)]``, batched over replicas.

The coefficient tensor is a tensor train with cores ``C_j`` of shape ``(R, r_{j-1}, n, r_j)``
(``r_0 = r_d = 1``), one independent train per replica ``R``, held in a batched
:class:`tntorch.Tensor` (its orthogonalization and TT-SVD rounding are used as they are). With
``C_j[phi(x_j)] = sum_k C_j[:, k, :] phi_k(x_j)`` an ``r_{j-1} x r_j`` matrix per point, the value
and gradient of ``Phi`` at N points cost ``O(N d r^2 n)`` and the Hessian ``O(N d^2 r^2)``:
derivatives act on one coordinate's basis at a time, so they are sums of products of the same
matrices with ``phi`` replaced by ``phi'`` or ``phi''`` at the differentiated coordinates.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

from sampler_plugins.tt_continuity.basis import BasisValues

__all__ = ["FunctionalTT", "rank_caps", "core_matrices"]


def _tntorch() -> ModuleType:
    """``tntorch``, imported on first use: it imports scipy's FFT modules, 0.15 s of every start-up."""
    return importlib.import_module("tntorch")


def rank_caps(d: int, n: int, rank_max: int) -> list[int]:
    """Largest useful bond ranks ``r_1 .. r_{d-1}``: ``min(n^j, n^(d-j), rank_max)``."""
    return [min(n**j, n ** (d - j), rank_max) for j in range(1, d)]


def core_matrices(core: Tensor, phi: Tensor) -> Tensor:
    """``C[phi(x)]``: ``(R, a, n, b)`` core and ``(R, N, n)`` basis values -> ``(R, N, a, b)``."""
    return torch.einsum("rakb,rnk->rnab", core, phi)


def _vecmat(v: Tensor, m: Tensor) -> Tensor:
    """Row vectors times matrices per point: ``(R, N, a)``, ``(R, N, a, b)`` -> ``(R, N, b)``."""
    return torch.einsum("rna,rnab->rnb", v, m)


def _matvec(m: Tensor, v: Tensor) -> Tensor:
    """Matrices times column vectors per point: ``(R, N, a, b)``, ``(R, N, b)`` -> ``(R, N, a)``."""
    return torch.einsum("rnab,rnb->rna", m, v)


class FunctionalTT:
    """A batch of R functional tensor trains over a tensor-product basis of n functions per coordinate.

    Args:
        cores: ``d`` tensors ``(R, r_{j-1}, n, r_j)`` with ``r_0 = r_d = 1``.
    """

    def __init__(self, cores: Sequence[Tensor]):
        cores = [c for c in cores]
        if not cores or any(c.ndim != 4 for c in cores) or cores[0].shape[1] != 1 or cores[-1].shape[-1] != 1:
            raise ValueError("cores must be d >= 1 tensors (R, r_{j-1}, n, r_j) with r_0 = r_d = 1")
        self.tt = _tntorch().Tensor(cores, batch=True)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def random(
        cls,
        n_replicas: int,
        dim: int,
        n: int,
        rank: int,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float64,
        scale: float = 1.0,
    ) -> FunctionalTT:
        """Random Gaussian cores with bond ranks ``min(rank, caps)``, right-orthogonalized, scaled by ``scale``."""
        ranks = [1, *rank_caps(dim, n, rank), 1]
        dev = generator.device
        cores = [
            torch.randn(n_replicas, ranks[j], n, ranks[j + 1], generator=generator, device=dev, dtype=dtype)
            for j in range(dim)
        ]
        out = cls(cores)
        out.tt.orthogonalize(0)
        out.tt.cores[0] = out.tt.cores[0] * (
            scale / out.tt.cores[0].flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None, None]
        )
        return out

    @classmethod
    def additive(
        cls,
        n_replicas: int,
        dim: int,
        n: int,
        rank: int,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float64,
        noise: float = 1e-3,
    ) -> FunctionalTT:
        """The zero potential in the rank-2 "sum of univariate functions" form (a good ALS start).

        Cores ``[f_1, e]``, ``[[e, 0], [f_j, e]]``, ``[[e], [f_d]]`` with ``f_j = 0`` and ``e`` the first
        basis function (the window: constant inside the box) represent ``sum_j f_j(x_j) prod_{i != j} e(x_i)``,
        so the first ALS sweep fits the best additive potential (backfitting) and later sweeps
        add interactions. Bond ranks above 2 (up to ``rank`` and the caps) are padded with small
        random entries (``noise``).
        """
        if dim == 1:
            return cls([torch.zeros(n_replicas, 1, n, 1, dtype=dtype, device=generator.device)])
        dev = generator.device
        e = torch.zeros(n, dtype=dtype, device=dev)
        e[0] = 1.0
        caps = rank_caps(dim, n, rank)
        ranks = [1, *[max(min(2, c), c if c < 2 else min(rank, c)) for c in caps], 1]
        cores = []
        for j in range(dim):
            c = torch.zeros(ranks[j], n, ranks[j + 1], dtype=dtype, device=dev)
            c += noise * torch.randn(c.shape, generator=generator, device=dev, dtype=dtype)
            if j == 0:
                c[0, :, 1 % ranks[1]] = e
            elif j == dim - 1:
                c[0, :, 0] = e
            else:
                c[0, :, 0] = e
                if ranks[j] > 1 and ranks[j + 1] > 1:
                    c[1, :, 1] = e
            cores.append(c.expand(n_replicas, *c.shape).clone())
        return cls(cores)

    @property
    def cores(self) -> list[Tensor]:
        """The cores ``(R, r_{j-1}, n, r_j)`` (a live list: ALS updates them in place)."""
        return self.tt.cores

    @property
    def dim(self) -> int:
        """d, the number of coordinates."""
        return len(self.tt.cores)

    @property
    def ranks(self) -> list[int]:
        """Bond ranks ``[r_1, ..., r_{d-1}]`` (common to all replicas)."""
        return [c.shape[-1] for c in self.tt.cores[:-1]]

    def norm(self) -> Tensor:
        """Frobenius norm of each replica's coefficient tensor ``(R,)`` (the H² norm for an H²-orthonormal basis)."""
        self.tt.orthogonalize(0)
        return self.tt.cores[0].flatten(1).norm(dim=1)

    def full(self) -> Tensor:
        """The dense coefficient tensor ``(R, n, ..., n)`` (small cases and tests only)."""
        return self.tt.torch()

    def clone(self) -> FunctionalTT:
        """An independent copy."""
        return FunctionalTT([c.clone() for c in self.tt.cores])

    # -- evaluation -----------------------------------------------------------------------------
    def right_values(self, phi: Tensor) -> list[Tensor]:
        """``Rv[j] = C_j[phi] ... C_d[phi]`` as ``(R, N, r_{j-1})`` for j = 0..d (``Rv[d] = 1``)."""
        cores = self.tt.cores
        r, n_pts = phi.shape[:2]
        out = [torch.ones(r, n_pts, 1, dtype=phi.dtype, device=phi.device)]  # built from j = d down to 0
        for j in range(self.dim - 1, -1, -1):
            out.append(_matvec(core_matrices(cores[j], phi[:, :, j]), out[-1]))
        return out[::-1]

    def value_and_grad(self, bv: BasisValues) -> tuple[Tensor, Tensor]:
        """``Phi`` ``(R, N)`` and ``grad Phi`` ``(R, N, d)`` at the points of ``bv``."""
        cores, phi, dphi = self.tt.cores, bv.values, bv.d1
        right = self.right_values(phi)
        left = right[self.dim].new_ones(right[self.dim].shape)
        grads = []
        for j in range(self.dim):
            grads.append(torch.einsum("rna,rnab,rnb->rn", left, core_matrices(cores[j], dphi[:, :, j]), right[j + 1]))
            left = _vecmat(left, core_matrices(cores[j], phi[:, :, j]))
        return left[..., 0], torch.stack(grads, -1)

    def derivatives(self, bv: BasisValues) -> tuple[Tensor, Tensor, Tensor]:
        """``Phi`` ``(R, N)``, ``grad Phi`` ``(R, N, d)`` and the Hessian ``(R, N, d, d)``.

        One left-to-right pass keeps, per point, the left product ``L`` (row vector), its
        derivatives ``W[i] = d/dx_i L`` for the coordinates already passed, and fills
        ``H[i, j] = W[i] C_j[phi'] Rv_{j+1}`` (i < j) and ``H[j, j] = L C_j[phi''] Rv_{j+1}``.
        """
        cores, phi, d1, d2 = self.tt.cores, bv.values, bv.d1, bv.d2
        d = self.dim
        right = self.right_values(phi)
        r, n_pts = phi.shape[:2]
        hess = phi.new_zeros(r, n_pts, d, d)
        left = phi.new_ones(r, n_pts, 1)
        w = phi.new_zeros(r, n_pts, d, 1)
        for j in range(d):
            m0 = core_matrices(cores[j], phi[:, :, j])
            m1 = core_matrices(cores[j], d1[:, :, j])
            m2 = core_matrices(cores[j], d2[:, :, j])
            nxt = right[j + 1]
            hess[:, :, j, j] = torch.einsum("rna,rnab,rnb->rn", left, m2, nxt)
            if j > 0:
                off = torch.einsum("rnia,rnab,rnb->rni", w[:, :, :j], m1, nxt)
                hess[:, :, :j, j] = off
                hess[:, :, j, :j] = off
            w_new = phi.new_zeros(r, n_pts, d, m0.shape[-1])
            if j > 0:
                w_new[:, :, :j] = torch.einsum("rnia,rnab->rnib", w[:, :, :j], m0)
            w_new[:, :, j] = _vecmat(left, m1)
            w = w_new
            left = _vecmat(left, m0)
        return left[..., 0], w[..., 0], hess

    def generator(self, bv: BasisValues, drift: Tensor) -> Tensor:
        """``L Phi = Laplacian Phi + <drift, grad Phi>`` ``(R, N)``, for a drift ``(R, N, d)`` per point.

        With ``drift = grad log pi_t`` this is the generator of the Langevin diffusion of pi_t.
        """
        _, grad = self.value_and_grad(bv)
        lap = self.laplacian(bv)
        return lap + (drift * grad).sum(-1)

    def laplacian(self, bv: BasisValues) -> Tensor:
        """``Laplacian Phi`` (the divergence of the field ``grad Phi``) ``(R, N)`` in ``O(N d r^2 n)``."""
        cores, phi, d2 = self.tt.cores, bv.values, bv.d2
        right = self.right_values(phi)
        left = right[self.dim].new_ones(right[self.dim].shape)
        lap_left = torch.zeros_like(left)  # sum over passed coordinates of the left product with phi'' there
        for j in range(self.dim):
            m0 = core_matrices(cores[j], phi[:, :, j])
            lap_left = _vecmat(lap_left, m0) + _vecmat(left, core_matrices(cores[j], d2[:, :, j]))
            left = _vecmat(left, m0)
        return lap_left[..., 0]

    def padded(self, ranks: Sequence[int]) -> FunctionalTT:
        """The same functions with bond ranks raised to ``ranks`` by zero padding (a copy)."""
        full = [1, *ranks, 1]
        cores = []
        for j, c in enumerate(self.tt.cores):
            pad = c.new_zeros(c.shape[0], full[j], c.shape[2], full[j + 1])
            pad[:, : c.shape[1], :, : c.shape[3]] = c
            cores.append(pad)
        return FunctionalTT(cores)

    def where(self, mask: Tensor, other: FunctionalTT) -> FunctionalTT:
        """Per replica, ``self`` where ``mask`` ``(R,)`` is true and ``other`` elsewhere (ranks padded to match)."""
        ranks = [max(a, b) for a, b in zip(self.ranks, other.ranks)]
        a, b = self.padded(ranks), other.padded(ranks)
        m = mask[:, None, None, None]
        return FunctionalTT([torch.where(m, ca, cb) for ca, cb in zip(a.cores, b.cores)])

    # -- rank control ---------------------------------------------------------------------------
    def enrich(self, extra: int, caps: Sequence[int], generator: torch.Generator, scale: float = 1e-3) -> None:
        """Raise every bond rank by up to ``extra`` (within ``caps``) without changing the function.

        New columns of core j are small random values, the matching rows of core j+1 zero; the
        next orthogonalization turns them into fresh orthonormal directions ALS can use.
        """
        cores = self.tt.cores
        for j in range(self.dim - 1):
            k = min(extra, caps[j] - cores[j].shape[-1])
            if k <= 0:
                continue
            a = cores[j]
            noise = torch.randn(*a.shape[:-1], k, generator=generator, device=a.device, dtype=a.dtype)
            noise = (
                noise * scale * a.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None, None] / a[0].numel() ** 0.5
            )
            cores[j] = torch.cat([a, noise], -1)
            b = cores[j + 1]
            cores[j + 1] = torch.cat([b, b.new_zeros(b.shape[0], k, *b.shape[2:])], 1)

    def round(self, eps: float, rank_max: int) -> None:
        """TT-SVD rounding of each replica to relative Frobenius error ``eps`` and ranks ``<= rank_max``.

        Replicas may need different ranks; the trains are zero-padded to the largest (which
        leaves each function unchanged) so that they stay one batch.
        """
        if self.dim == 1:
            return
        rounded = []
        for r in range(self.tt.cores[0].shape[0]):
            t = _tntorch().Tensor([c[r] for c in self.tt.cores])
            t.round_tt(eps=eps, rmax=rank_max)
            rounded.append(t.cores)
        ranks = [max(rc[j].shape[-1] for rc in rounded) for j in range(self.dim - 1)]
        full = [1, *ranks, 1]
        new = []
        for j in range(self.dim):
            padded = []
            for rc in rounded:
                c = rc[j]
                pad = c.new_zeros(full[j], c.shape[1], full[j + 1])
                pad[: c.shape[0], :, : c.shape[2]] = c
                padded.append(pad)
            new.append(torch.stack(padded))
        self.tt = _tntorch().Tensor(new, batch=True)
