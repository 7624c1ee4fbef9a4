"""A geometric path whose evaluations keep the autograd graph (for training SNF layers)."""

from __future__ import annotations

import torch
from torch import Tensor

from sampler.ext import GeometricPath, PathEvaluation

__all__ = ["DifferentiablePath"]


class DifferentiablePath(GeometricPath):
    """:class:`sampler.GeometricPath` whose :meth:`evaluate` is differentiable in ``x``.

    Where ``x`` carries a graph (it depends on trainable parameters), the target's log density
    and its gradient ``grad log target(x)`` stay functions of ``x`` (the gradient through
    ``torch.autograd.grad(..., create_graph=True)``), so a loss built from path weights can be
    differentiated through Langevin drifts and through the final energy. Counting, shape checks
    and the treatment of non-finite values are those of the engine's path. Layers recognize it
    by ``differentiable = True`` and build graphs only then.
    """

    differentiable = True

    def evaluate(self, x: Tensor, grad: bool = False) -> PathEvaluation:
        """Evaluate reference and target at ``x`` ``(..., d)``, keeping the graph of ``x``."""
        if not x.requires_grad:
            return super().evaluate(x, grad=grad)
        n_points = x.numel() // max(x.shape[-1], 1)
        with torch.enable_grad():
            lp = self._check(self.target.log_prob(x), x, "log_prob")
            g = None
            if grad:
                if lp.requires_grad:
                    (g,) = torch.autograd.grad(lp.sum(), x, create_graph=True)
                else:  # a log density that does not depend on x
                    g = torch.zeros_like(x)
                g = self._check(g, x, "grad_log_prob")
                self.counter.grad_evals += n_points
        self.counter.target_evals += n_points
        return self._evaluation(x, lp, g)
