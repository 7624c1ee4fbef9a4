"""The target's own prior as the annealing path's reference: tempering the likelihood alone.

For a Bayesian posterior ``pi(x) = prior(x) L(x) / Z`` the geometric path from the prior,
``log pi_t = (1 - t) log prior + t log(prior L) = log prior + t log L``, is the path of
likelihood-tempered SMC (Del Moral, Doucet & Jasra 2006, "Sequential Monte Carlo samplers";
PyMC's SMC follows it): it starts from exact draws of the prior and its log Z is the model
evidence.

Why it matters: where the posterior inherits a shape from its prior that local MCMC moves cannot
build, the prior's draws have that shape from the start. In a hierarchical model with a centered
parameterization (the centered eight schools) the prior is itself a funnel: small group scales
with the group effects pulled together. From a Gaussian reference, the geometric path fills that
neck only in its last temperatures, where MALA's steps, sized for the bulk, cannot carry
particles into it, and default ``smc`` failed that posterior with every sd too small
(docs/posteriors.md); from the prior the neck is populated at ``t = 0`` and the moves only refine
it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sampler.core.paths import GaussianReference, sanitized
from sampler.errors import ConfigurationError, TargetError
from sampler.targets.base import Target

__all__ = ["PriorReference", "SUMMARY_DRAWS"]

#: Prior draws behind :attr:`PriorReference.loc` and :attr:`PriorReference.scale` (a fixed seed).
SUMMARY_DRAWS = 4096
_SUMMARY_SEED = 0x9A10
#: Median absolute deviation -> standard deviation for a Gaussian.
_MAD_TO_SD = 1.4826


class PriorReference(GaussianReference):
    """The prior that ``target`` declares as a path's reference.

    The target declares it with :meth:`~sampler.Target.prior_sample` and
    :meth:`~sampler.Target.prior_log_prob`.

    Draws and log densities come from the target, on its unconstrained space; the prior is
    normalized, so :attr:`log_norm` is 0 and :meth:`log_kernel` equals :meth:`log_prob`. The
    gradient is autograd's (``torch.func``'s inside compiled kernel steps, which Dynamo traces).
    ``loc`` and ``scale`` ``(dim,)`` summarize the prior for what reads a reference's centre and
    width (the MCMC kernels' first step size, a diagonal metric's start): the coordinates'
    medians and median absolute deviations (times 1.4826) over :data:`SUMMARY_DRAWS` draws of a
    fixed seed, robust where a prior has no variance (a half-Cauchy scale).

    It is not a Gaussian: it cannot be drawn from standard normals (so a sharded run, whose
    particles come from per-particle normal streams, refuses it) nor widened.

    Raises:
        ConfigurationError: the target declares no prior.
        TargetError: its prior draws have the wrong shape or are not finite, or a coordinate
            has no spread.
    """

    def __init__(self, target: Target):
        if not target.has_prior:
            raise ConfigurationError(
                f"target {target.name!r} declares no prior (it needs prior_sample and prior_log_prob)"
            )
        self.target = target
        self.dim = target.dim
        x = self._draws(SUMMARY_DRAWS, torch.Generator().manual_seed(_SUMMARY_SEED), torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise TargetError(f"target {target.name!r}: prior_sample returned non-finite draws")
        loc = x.median(0).values
        scale = (x - loc).abs().median(0).values * _MAD_TO_SD
        if not bool((scale > 0).all()):
            flat = [int(i) for i in torch.nonzero(scale <= 0).flatten()]
            raise TargetError(f"target {target.name!r}: the prior draws do not vary in coordinate(s) {flat}")
        super().__init__(target.dim, loc=loc, scale=scale)
        self._log_norm = 0.0

    def _draws(self, n: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """``n`` prior draws ``(n, dim)``, shape-checked."""
        x = self.target.prior_sample(n, generator=generator, dtype=dtype)
        if not isinstance(x, Tensor) or tuple(x.shape) != (n, self.dim):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            want = (n, self.dim)
            raise TargetError(f"target {self.target.name!r}: prior_sample({n}) must return shape {want}, got {got}")
        return x

    def sample(self, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """``shape + (dim,)`` prior draws on the generator's device."""
        n = math.prod(shape)
        return self._draws(n, generator, dtype).to(dtype).reshape(*shape, self.dim)

    def from_standard(self, z: Tensor) -> Tensor:
        """Not available: a prior is not a transform of standard normals."""
        raise ConfigurationError(
            "a sharded run draws its reference from per-particle standard normal streams, which the target's prior "
            "cannot use: run it unsharded (distributed=False), or start from a Gaussian "
            "(reference_loc=, reference_scale=)"
        )

    def widened(self, factor: float) -> GaussianReference:
        """Not available: only a Gaussian reference is widened."""
        raise ConfigurationError("the target's prior cannot be widened; only a Gaussian reference can")

    def _checked(self, lp: object, x: Tensor) -> Tensor:
        """The target's ``prior_log_prob`` value at ``x``, or a TargetError if it is not a ``(...)`` tensor."""
        if not isinstance(lp, Tensor) or lp.shape != x.shape[:-1]:
            got = tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__
            want = tuple(x.shape[:-1])
            raise TargetError(f"target {self.target.name!r}: prior_log_prob must return shape {want}, got {got}")
        return lp

    def log_prob(self, x: Tensor) -> Tensor:
        """The prior's log density, float64 ``(...)`` (``-inf`` where it is not finite)."""
        lp = self._checked(self.target.prior_log_prob(x), x)
        return sanitized(lp.detach(), None)[0].to(torch.float64)

    def log_kernel(self, x: Tensor) -> Tensor:
        """:meth:`log_prob` (the prior is normalized: :attr:`log_norm` is 0)."""
        return self.log_prob(x)

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`log_prob` and :meth:`grad_log_prob` from one evaluation of the prior (and its backward pass)."""
        if torch.compiler.is_compiling():  # Dynamo traces torch.func, not torch.autograd.grad

            def total(z: Tensor) -> tuple[Tensor, Tensor]:
                lp = self._checked(self.target.prior_log_prob(z), z)
                return lp.sum(), lp

            grad, (_, lp) = torch.func.grad_and_value(total, has_aux=True)(x.detach())
        else:  # eager: autograd, without torch.func's per-call overhead
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                lp = self._checked(self.target.prior_log_prob(xg), x)
                (grad,) = torch.autograd.grad(lp.sum(), xg)
        grad = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad)).to(x.dtype)
        return sanitized(lp.detach(), None)[0].to(torch.float64), grad

    def grad_log_prob(self, x: Tensor) -> Tensor:
        """Gradient of the prior's log density, ``(..., dim)`` in ``x``'s dtype (0 where it is not finite)."""
        return self.log_prob_and_grad(x)[1]
