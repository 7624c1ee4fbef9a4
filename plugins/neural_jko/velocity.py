"""The velocity field of a neural JKO (CNF) layer, with forward-mode Jacobian products.

``v(x, t)`` is an MLP with 3 hidden ELU layers; the scalar time ``t`` is concatenated to the
input of every linear layer, and the last layer starts at zero, so a new layer is the identity
map. Besides ``v`` the network returns ``J_v(x) V`` for tangent directions ``V`` by propagating
them through the layers (forward mode, written out: ``J = W_x ... diag(elu') W_x``). With
``V = I`` that gives the full Jacobian and the exact divergence (cost: ``d`` tangents); with
Rademacher probes it gives Hutchinson's estimate (cost: one tangent per probe). Both are plain
tensor operations, so they can be differentiated with respect to the weights during training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["VelocityField"]


class VelocityField(nn.Module):
    """``v(x, t)``: ``R^d x [0, 1] -> R^d``, an MLP with time concatenated to every layer's input.

    Args:
        dim: d.
        width: hidden width (the paper's default is ``2 d + 50``).
        n_hidden: number of hidden layers (3 in the paper).
    """

    def __init__(self, dim: int, width: int, n_hidden: int = 3):
        super().__init__()
        self.dim = dim
        sizes = [dim] + [width] * n_hidden + [dim]
        linears = [nn.Linear(a + 1, b) for a, b in zip(sizes[:-1], sizes[1:])]
        nn.init.zeros_(linears[-1].weight)
        nn.init.zeros_(linears[-1].bias)
        self.linears = nn.ModuleList(linears)

    def linear_list(self) -> list[nn.Linear]:
        """The linear layers in order (a typed view of the ``linears`` ModuleList)."""
        return [lin for lin in self.linears if isinstance(lin, nn.Linear)]

    def forward(
        self, x: Tensor, t: float | Tensor, tangents: Tensor | None = None, identity: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Velocity and Jacobian-vector products.

        Args:
            x: points ``(B, d)``.
            t: time, a float (or a 0-d tensor).
            tangents: ``(B, d, k)`` directions ``V``; ignored when ``identity``.
            identity: use ``V = I`` (``k = d``): the full Jacobian.

        Returns:
            ``v`` ``(B, d)`` and ``J_v V`` ``(B, d, k)`` (``None`` without tangents).

        The point and its tangents travel together as rows of one ``(B, 1 + k, width)`` array,
        so each layer is a single matrix product (time and bias enter the point's row only).
        """
        b, d = x.shape
        tt = x.new_full((b, 1), float(t))
        # with identity: None until past the first layer, then (B, k, width) (V = I is folded into it)
        jac: Tensor | None = None
        if not identity and tangents is not None:
            jac = tangents.transpose(1, 2)  # (B, k, d): one row per direction
        track = identity or tangents is not None
        h = x
        linears = self.linear_list()
        n = len(linears)
        for i, lin in enumerate(linears):
            out = F.linear(torch.cat([h, tt], dim=-1), lin.weight, lin.bias)
            if track:
                w = lin.weight[:, :-1]
                jout = w.T.expand(b, *w.T.shape) if jac is None else torch.matmul(jac, w.T)  # (B, k, out)
            if i < n - 1:
                h = F.elu(out)
                if track:
                    slope = torch.where(out > 0, 1.0, h + 1.0)  # elu'(u) = elu(u) + 1 for u <= 0
                    jac = jout * slope[:, None, :]
            else:
                h = out
                if track:
                    jac = jout
        return h, (jac.transpose(1, 2) if track and jac is not None else None)
