"""Least-squares fit of a TT potential to the continuity equation by the alternating linear scheme.

Along the geometric path ``log pi_t = (1 - t) log ref + t log target`` (energies linear in t:
``f_t = (1 - t) f_0 + t f_1`` with ``f_0 = -log ref``, ``f_1 = -log target``), a velocity
``v_t = grad Phi_t`` moves pi_t along the path iff the continuity equation
``d/dt pi_t + div(pi_t v_t) = 0`` holds. Dividing by pi_t, with ``g = log target - log ref = f_0 - f_1``
and ``d/dt log pi_t = g - E_{pi_t}[g]``, it reads

    L_t Phi_t (x) = -(g(x) - C_t),      L_t Phi = Laplacian Phi + <grad log pi_t, grad Phi>,   C_t = E_{pi_t}[g],

the issue's residual ``-(f_1 - f_0) + C_t' + div v - <grad f_t, v>`` with ``C_t' = E[f_1 - f_0] = -C_t``
(``L_t`` is the generator of the Langevin diffusion of pi_t; ``E_{pi_t}[L_t Phi] = 0`` for every
Phi, so the right side must have mean zero, which fixes ``C_t``). The equation is linear in
Phi; we minimize the weighted empirical risk

    sum_i W_i (L_t Phi(x_i) + g(x_i) - C_t)^2 + lam ||C||_F^2

over TT potentials (``C`` the coefficient tensor) at the current weighted particles. For a TT
``Phi = C_1[phi] ... C_d[phi]`` the operator ``L_t`` is a sum of one-coordinate operators
``l_j = d^2/dx_j^2 + s_j(x) d/dx_j`` (``s = grad log pi_t``, a known number at each particle), so
``L_t Phi`` is linear in each core: with the other cores fixed,

    L_t Phi(x) = < A_j(x), vec(C_j) >,
    A_j = Lo_j (x) phi_j (x) Rv_j + Lv_j (x) psi_j (x) Rv_j + Lv_j (x) phi_j (x) Ro_j,

where ``psi_j = phi_j'' + s_j phi_j'``, ``Lv_j``/``Rv_j`` are the left/right products of the
other cores' matrices and ``Lo_j``/``Ro_j`` the same products with one ``l_i`` applied (kept by
recursions like the Laplacian's). Each core's update is a ridge-regularized linear least squares
(the ALS step); with the other cores orthonormal (left of j left-orthogonal, right of j
right-orthogonal) ``||C_j||_F`` is the norm of the whole coefficient tensor, so the ridge is a
penalty on the H² norm of Phi. One sweep updates cores 0..d-1 then d-2..0.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from sampler_plugins.tt_continuity.basis import BasisValues
from sampler_plugins.tt_continuity.ftt import FunctionalTT, core_matrices

__all__ = ["ALSResult", "fit_potential", "fit_additive", "weighted_residual"]


@attrs.frozen
class ALSResult:
    """Outcome of :func:`fit_potential`.

    Attributes:
        residual: relative weighted residual ``||L Phi - y||_W / ||y||_W`` after the fit ``(R,)``.
        initial_residual: the same for the starting potential ``(R,)``.
    """

    residual: Tensor
    initial_residual: Tensor


def weighted_residual(lphi: Tensor, rhs: Tensor, weights: Tensor) -> Tensor:
    """``sqrt(sum W (lphi - rhs)^2 / sum W rhs^2)`` per replica ``(R,)`` (``rhs`` the target of ``L Phi``)."""
    num = (weights * (lphi - rhs) ** 2).sum(-1)
    den = (weights * rhs**2).sum(-1).clamp_min(1e-300)
    return (num / den).sqrt()


def _design(lv: Tensor, lo: Tensor, rv: Tensor, ro: Tensor, phi: Tensor, psi: Tensor) -> Tensor:
    """``A_j`` flattened to ``(R, N, a * n * b)`` from the interfaces and the basis at coordinate j."""
    a = torch.einsum("rna,rnk,rnb->rnakb", lo, phi, rv)
    a = a + torch.einsum("rna,rnk,rnb->rnakb", lv, psi, rv)
    a = a + torch.einsum("rna,rnk,rnb->rnakb", lv, phi, ro)
    return a.flatten(2)


def _solve(design: Tensor, rhs: Tensor, weights: Tensor, ridge: float, center: bool) -> Tensor:
    """Ridge-regularized weighted least squares per replica: ``(R, N, p)``, ``(R, N)``, ``(R, N)`` -> ``(R, p)``.

    With ``center`` an unpenalized constant is fitted too (eliminated by centring the design
    columns with the weighted mean). The ridge is relative: ``lam = ridge * trace(A^T W A) / p``
    (scale-free), with a tiny floor.
    """
    if center:
        design = design - (weights[..., None] * design).sum(1, keepdim=True)
    aw = design * weights[..., None]
    gram = aw.transpose(1, 2) @ design
    b = (aw * rhs[..., None]).sum(1)
    p = gram.shape[-1]
    lam = ridge * torch.diagonal(gram, dim1=-2, dim2=-1).mean(-1) + 1e-300
    eye = torch.eye(p, dtype=gram.dtype, device=gram.device)
    system = gram + lam[:, None, None] * eye
    chol, info = torch.linalg.cholesky_ex(system)
    if bool((info != 0).any()):  # numerically indefinite: fall back to a least-squares solve
        return torch.linalg.lstsq(system, b[..., None]).solution[..., 0]
    return torch.cholesky_solve(b[..., None], chol)[..., 0]


def fit_potential(
    ftt: FunctionalTT,
    bv: BasisValues,
    drift: Tensor,
    rhs: Tensor,
    weights: Tensor,
    n_sweeps: int = 2,
    ridge: float = 1e-8,
    fit_constant: bool = True,
) -> ALSResult:
    """Fit ``ftt`` in place so that ``Laplacian Phi + <drift, grad Phi> ~ rhs`` at the points (weighted least squares).

    Args:
        ftt: the potential, updated in place (its current value is the ALS starting point).
        bv: basis values at the points ``(R, N, d, n)``.
        drift: ``grad log pi_t`` at the points ``(R, N, d)`` (float64).
        rhs: the target of ``L Phi``: ``C_t - g`` ``(R, N)``.
        weights: normalized particle weights ``(R, N)`` (zero for points to ignore).
        n_sweeps: ALS sweeps (each: cores 0..d-1 then d-2..0).
        ridge: relative Tikhonov parameter on the coefficient (H²) norm.
        fit_constant: treat ``C_t`` as an unknown of the least squares too (the equation is linear
            in it): ``rhs`` is then used centred, and the fitted constant is the weighted mean of
            ``g + L Phi``, a control-variate estimate of ``E[g]`` (``E_{pi_t}[L Phi] = 0``). Otherwise
            ``rhs`` is taken as given (``C_t`` fixed to the caller's estimate).

    The reported residuals are of the centred problem when ``fit_constant``.
    """
    if fit_constant:
        rhs = rhs - (weights * rhs).sum(-1, keepdim=True)
    d = ftt.dim
    phi = bv.values
    psi = bv.d2 + drift[..., None] * bv.d1  # l_j phi_k at each point: (R, N, d, n)

    def residual(lphi: Tensor) -> Tensor:
        if fit_constant:
            lphi = lphi - (weights * lphi).sum(-1, keepdim=True)
        return weighted_residual(lphi, rhs, weights)

    initial = residual(ftt.generator(bv, drift))
    tt = ftt.tt
    r, n_pts = phi.shape[:2]
    one = phi.new_ones(r, n_pts, 1)
    zero = phi.new_zeros(r, n_pts, 1)

    def mats(j: int) -> tuple[Tensor, Tensor]:
        return core_matrices(tt.cores[j], phi[:, :, j]), core_matrices(tt.cores[j], psi[:, :, j])

    def solve_core(j: int, lv: Tensor, lo: Tensor, rv: Tensor, ro: Tensor) -> Tensor:
        a = _design(lv, lo, rv, ro, phi[:, :, j], psi[:, :, j])
        c = _solve(a, rhs, weights, ridge, fit_constant)
        tt.cores[j] = c.reshape(tt.cores[j].shape)
        return (a @ c[..., None])[..., 0]

    lphi: Tensor | None = None
    tt.orthogonalize(0)
    # right (rv, ro: index 1..d) and left (lv, lo: index 0..d-1) environments, filled as the sweeps go
    rv: dict[int, Tensor] = {d: one}
    ro: dict[int, Tensor] = {d: zero}
    for j in range(d - 1, 0, -1):
        m0, mp = mats(j)
        rv[j] = torch.einsum("rnab,rnb->rna", m0, rv[j + 1])
        ro[j] = torch.einsum("rnab,rnb->rna", m0, ro[j + 1]) + torch.einsum("rnab,rnb->rna", mp, rv[j + 1])
    lv: dict[int, Tensor] = {0: one}
    lo: dict[int, Tensor] = {0: zero}
    for _ in range(n_sweeps):
        for j in range(d):  # left to right
            lphi = solve_core(j, lv[j], lo[j], rv[j + 1], ro[j + 1])
            if j < d - 1:
                tt.left_orthogonalize(j)
                m0, mp = mats(j)
                lv[j + 1] = torch.einsum("rna,rnab->rnb", lv[j], m0)
                lo[j + 1] = torch.einsum("rna,rnab->rnb", lo[j], m0) + torch.einsum("rna,rnab->rnb", lv[j], mp)
        for j in range(d - 1, 0, -1):  # right to left (core d-1 was just solved)
            if j < d - 1:
                lphi = solve_core(j, lv[j], lo[j], rv[j + 1], ro[j + 1])
            tt.right_orthogonalize(j)
            m0, mp = mats(j)
            rv[j] = torch.einsum("rnab,rnb->rna", m0, rv[j + 1])
            ro[j] = torch.einsum("rnab,rnb->rna", m0, ro[j + 1]) + torch.einsum("rnab,rnb->rna", mp, rv[j + 1])
        if d > 1:
            lphi = solve_core(0, lv[0], lo[0], rv[1], ro[1])
    assert lphi is not None, "fit_potential needs n_sweeps >= 1"  # every sweep solves core 0 at least
    return ALSResult(residual(lphi), initial)


def fit_additive(
    bv: BasisValues, drift: Tensor, rhs: Tensor, weights: Tensor, ridge: float = 1e-8, fit_constant: bool = True
) -> FunctionalTT:
    """The best additive potential ``Phi = sum_j f_j(x_j) prod_{i != j} e(x_i)`` by one joint least squares.

    ``e`` is the first basis function (the window, constant inside the box) and ``f_j`` any
    combination of the basis; ``Phi`` is linear in all ``f_j`` together, so the minimizer of the same
    weighted (ridge-regularized, optionally centred) residual as :func:`fit_potential` over this
    family is one linear solve with ``d n`` unknowns. With ``E_i = e(x_i)`` and ``l_i E_i`` its
    one-coordinate generator, the column of ``f_j = phi_k`` is
    ``l_j phi_k(x_j) prod_{i != j} E_i + phi_k(x_j) sum_{i != j} (l_i E_i) prod_{l != i, j} E_l``.
    Returns it as a rank-2 tensor train (cores ``[f_1, e]``, ``[[e, 0], [f_j, e]]``, ``[[e], [f_d]]``).
    The additive family contains the exact potential of every path between product densities
    (Gaussian reference, target a product such as ``manywell``).
    """
    phi = bv.values
    psi = bv.d2 + drift[..., None] * bv.d1
    r, n_pts, d, n = phi.shape
    if fit_constant:
        rhs = rhs - (weights * rhs).sum(-1, keepdim=True)
    e_val, e_gen = phi[..., 0], psi[..., 0]  # (R, N, d)
    one = torch.ones_like(e_val[..., 0])
    pvs, pds, svs, sds = [one], [torch.zeros_like(one)], [one], [torch.zeros_like(one)]
    for j in range(d - 1):  # prefix products and their one-coordinate generators
        pds.append(pds[-1] * e_val[..., j] + pvs[-1] * e_gen[..., j])
        pvs.append(pvs[-1] * e_val[..., j])
    for j in range(d - 1, 0, -1):
        sds.append(sds[-1] * e_val[..., j] + svs[-1] * e_gen[..., j])
        svs.append(svs[-1] * e_val[..., j])
    pv, pd = torch.stack(pvs, -1), torch.stack(pds, -1)  # index j: over coordinates < j
    sv, sd = torch.stack(svs[::-1], -1), torch.stack(sds[::-1], -1)  # index j: over coordinates > j
    others = pv * sv  # prod_{i != j} E_i
    others_gen = pd * sv + pv * sd
    design = (psi * others[..., None] + phi * others_gen[..., None]).flatten(2)  # (R, N, d n)
    coef = _solve(design, rhs, weights, ridge, fit_constant).reshape(r, d, n)
    if d == 1:
        return FunctionalTT([coef[:, 0, None, :, None]])
    e = torch.zeros(n, dtype=phi.dtype, device=phi.device)
    e[0] = 1.0
    cores = []
    for j in range(d):
        f = coef[:, j]
        if j == 0:
            c = torch.stack([f, e.expand_as(f)], -1)[:, None]  # (R, 1, n, 2)
        elif j == d - 1:
            c = torch.stack([e.expand_as(f), f], 1)[..., None]  # (R, 2, n, 1)
        else:
            c = phi.new_zeros(r, 2, n, 2)
            c[:, 0, :, 0] = e
            c[:, 1, :, 0] = f
            c[:, 1, :, 1] = e
        cores.append(c)
    return FunctionalTT(cores)
