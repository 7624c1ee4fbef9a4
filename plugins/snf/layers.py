"""The layers of a stochastic normalizing flow, each a step of the engine's contract.

Every layer moves particles ``x`` ``(R, N, d)`` and knows the log-ratio of its backward to its
forward path density, ``ΔS`` (Wu, Köhler & Noé 2020; Hagemann, Hertrich & Steidl 2022):

* :class:`CouplingBlock` (a :class:`sampler.Transport`): an element-wise affine layer and
  RealNVP affine couplings, a bijection; ``ΔS = log |det J|``.
* :class:`LangevinLayer` (a :class:`sampler.Transport`): unadjusted (preconditioned) Langevin
  steps on the intermediate energy ``E_t = -log pi_t``; ``ΔS = ½|η|² - ½|η̃|²`` with ``η̃`` the
  noise of the reverse step.
* :class:`MetropolisLayer` (a :class:`sampler.Corrector`): random-walk or MALA Metropolis
  steps that leave ``pi_t`` invariant; ``ΔS = E_t(after) - E_t(before)`` by detailed balance.

The intermediate densities are the engine's geometric path,
``log pi_t = (1 - t) log ref + t log target``, i.e. ``E_t = (1 - t) E_latent + t U`` with the
path's (normalized) Gaussian reference as the latent. Inside a stage the engine adds
``log pi_t(x_after) - log pi_t_from(x_before)`` to the transports' increments; so transports
report only their ``ΔS`` and a Metropolis layer (whose ``ΔS`` is exactly a change of
``log pi_t``) reports nothing -- the engine's telescoping sum is the SNF path weight
``log w = -U(x_T) + E_latent(z) + Σ_k ΔS_k`` (the derivation is in ``docs/snf.md``).

Layers use ``ctx.path`` for every evaluation, so the same code runs inside
``sampler.Pipeline`` (evaluations detached and counted) and in training, where the path is a
:class:`~sampler_plugins.snf.paths.DifferentiablePath` and gradients flow through couplings and
reparameterized Langevin noise (never through a Metropolis accept/reject decision).

A *conditional* layer (inverse problems) reads the observation from the path's target:
``ctx.path.target.condition`` ``(..., m)``, broadcast against the particles' leading axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch
from torch import Tensor, nn

from sampler.ext import (
    ConfigurationError,
    Corrector,
    Particles,
    PathEvaluation,
    StepContext,
    StepOutput,
    Transport,
    check_positive_int,
)

__all__ = [
    "ElementwiseAffine",
    "AffineCoupling",
    "CouplingBlock",
    "LangevinLayer",
    "MetropolisLayer",
    "coupling_masks",
    "condition_of",
    "grad_enabled",
    "tamed_drift",
]

#: Adapted step sizes stay within these bounds.
STEP_SIZE_BOUNDS = (1e-8, 1e4)


def grad_enabled(ctx: StepContext) -> bool:
    """Whether the step runs under training (a differentiable path): build autograd graphs then only."""
    return bool(getattr(ctx.path, "differentiable", False))


def condition_of(ctx: StepContext, like: Tensor) -> Tensor | None:
    """The observation a conditional layer is conditioned on, ``like.shape[:-1] + (m,)``, or ``None``.

    Read from ``ctx.path.target.condition`` (see :class:`~sampler_plugins.snf.inverse.PosteriorTarget`).
    """
    cond = getattr(ctx.path.target, "condition", None)
    if cond is None:
        return None
    cond = cond.to(device=like.device, dtype=like.dtype)
    return cond.expand(*like.shape[:-1], cond.shape[-1])


def _scale_vector(ctx: StepContext, like: Tensor) -> Tensor:
    """The reference's per-coordinate scale ``(d,)`` in ``like``'s dtype/device (the preconditioner)."""
    return torch.as_tensor(ctx.path.reference.scale, device=like.device, dtype=like.dtype)


def _noise(x: Tensor, ctx: StepContext) -> Tensor:
    return torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)


# --------------------------------------------------------------------------------------------
# Deterministic layers


class ElementwiseAffine(nn.Module):
    """``y = loc + (x - loc) * exp(log_scale) + shift`` per coordinate (identity at initialization).

    ``log |det J| = sum(log_scale)``. Parameters ``log_scale`` and ``shift`` are ``(d,)``;
    ``shift`` is in units of the reference scale ``scale``.
    """

    loc: Tensor  # buffers (declared for the type checker: nn.Module's attribute lookup is untyped)
    scale: Tensor

    def __init__(self, dim: int, loc: Tensor, scale: Tensor):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.shift = nn.Parameter(torch.zeros(dim))
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(y, log|det J|)`` for ``x`` ``(..., d)``; the log-det has shape ``(...)``."""
        y = self.loc + (x - self.loc) * self.log_scale.exp() + self.shift * self.scale
        return y, self.log_scale.sum().expand(x.shape[:-1])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x, log|det J_inverse|)``: the inverse map and its log-det (minus the forward one)."""
        x = self.loc + (y - self.loc - self.shift * self.scale) * (-self.log_scale).exp()
        return x, (-self.log_scale.sum()).expand(y.shape[:-1])


class AffineCoupling(nn.Module):
    """A RealNVP affine coupling: the coordinates outside ``mask`` are scaled and shifted by an
    MLP of the coordinates in ``mask`` (and of a condition ``context``, if ``context_dim > 0``).

    In reference-standardized coordinates ``u = (x - loc) / scale``:
    ``u_b' = u_b * exp(s) + m``, ``(s, m) = MLP(u_a, context)``, with ``s`` soft-clamped to
    ``(-clamp, clamp)``; ``log |det J| = sum(s)``. The last layer is zero-initialized, so the
    coupling starts as the identity.

    Args:
        mask: ``(d,)`` bool, the conditioning coordinates (neither all true nor all false).
        hidden: widths of the MLP's hidden layers.
        loc, scale: ``(d,)`` standardization (the path reference's location and scale).
        context_dim: size ``m`` of the condition (0: unconditional).
        clamp: bound of the log-scale.
    """

    mask: Tensor  # buffers
    loc: Tensor
    scale: Tensor

    def __init__(
        self,
        mask: Tensor,
        hidden: Sequence[int],
        loc: Tensor,
        scale: Tensor,
        context_dim: int = 0,
        clamp: float = 2.0,
    ):
        super().__init__()
        mask = mask.to(torch.bool)
        n_a = int(mask.sum())
        if n_a == 0 or n_a == mask.numel():
            raise ConfigurationError("a coupling mask must leave coordinates on both sides")
        self.register_buffer("mask", mask)
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())
        self.context_dim = int(context_dim)
        self.clamp = float(clamp)
        n_b = mask.numel() - n_a
        widths = [n_a + self.context_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        last = nn.Linear(widths[-1], 2 * n_b)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def _params(self, u_a: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.context_dim:
            if context is None:
                raise ConfigurationError(
                    "this coupling is conditional: the target must carry a 'condition' (observation)"
                )
            u_a = torch.cat([u_a, context], dim=-1)
        s, m = self.net(u_a).chunk(2, dim=-1)
        return self.clamp * torch.tanh(s / self.clamp), m

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(y, log|det J|)`` for ``x`` ``(..., d)``."""
        u = (x - self.loc) / self.scale
        s, m = self._params(u[..., self.mask], context)
        out = u.clone()
        out[..., ~self.mask] = u[..., ~self.mask] * s.exp() + m
        return self.loc + self.scale * out, s.sum(-1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x, log|det J_inverse|)``."""
        u = (y - self.loc) / self.scale
        s, m = self._params(u[..., self.mask], context)
        out = u.clone()
        out[..., ~self.mask] = (u[..., ~self.mask] - m) * (-s).exp()
        return self.loc + self.scale * out, -s.sum(-1)


def coupling_masks(dim: int, n: int) -> list[Tensor]:
    """``n`` alternating masks for ``dim >= 2``: first/second half, then even/odd coordinates, repeated."""
    idx = torch.arange(dim)
    half = idx < dim // 2
    parity = idx % 2 == 0
    cycle = [half, ~half, parity, ~parity] if dim > 2 else [half, ~half]
    return [cycle[i % len(cycle)] for i in range(n)]


class CouplingBlock(nn.Module, Transport):
    """A deterministic SNF layer: an :class:`ElementwiseAffine` then ``n_couplings`` couplings.

    As a :class:`sampler.Transport` it maps the particles, evaluates the path once at the new
    positions, and reports ``log |det J|`` ``(R, N)`` as its log-weight increment.

    Args:
        dim: d.
        loc, scale: the path reference's location and scale ``(d,)`` (standardization).
        n_couplings: number of couplings (0 leaves only the element-wise affine; d = 1 allows none).
        hidden: MLP widths.
        context_dim: observation size for conditional couplings (0: unconditional).
        clamp: bound of each coupling's log-scale.
    """

    def __init__(
        self,
        dim: int,
        loc: Tensor,
        scale: Tensor,
        n_couplings: int = 2,
        hidden: Sequence[int] = (64, 64),
        context_dim: int = 0,
        clamp: float = 2.0,
    ):
        nn.Module.__init__(self)
        if n_couplings > 0 and dim < 2:
            raise ConfigurationError(f"affine couplings need dim >= 2 (got dim {dim}); use n_couplings=0")
        self.affine = ElementwiseAffine(dim, loc, scale)
        self.couplings = nn.ModuleList(
            AffineCoupling(m, hidden, loc, scale, context_dim, clamp) for m in coupling_masks(dim, n_couplings)
        )

    def coupling_list(self) -> list[AffineCoupling]:
        """The couplings in order (a typed view of the ``couplings`` ModuleList)."""
        return [c for c in self.couplings if isinstance(c, AffineCoupling)]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(T(x), log|det J_T(x)|)`` for ``x`` ``(..., d)``; the log-det is ``(...)``."""
        y, logdet = self.affine(x)
        for c in self.coupling_list():
            y, ld = c(y, context)
            logdet = logdet + ld
        return y, logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(T^{-1}(y), log|det J_{T^{-1}}(y)|)``."""
        x, logdet = y, torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device)
        for c in reversed(self.coupling_list()):
            x, ld = c.inverse(x, context)
            logdet = logdet + ld
        x, ld = self.affine.inverse(x)
        return x, logdet + ld

    # The engine's step contract (Transport.apply) shadows nn.Module.apply(fn) on purpose.
    def apply(self, particles: Particles, state: object, ctx: StepContext) -> StepOutput:  # type: ignore[override]
        """Map the particles; increment ``log|det J|`` ``(R, N)`` float64."""
        with torch.set_grad_enabled(grad_enabled(ctx)):
            y, logdet = self(particles.x, condition_of(ctx, particles.x))
            ev = ctx.path.evaluate(y, grad=ctx.needs_grad)
        return StepOutput(attrs.evolve(particles, x=y, evaluation=ev), state, {}, logdet.to(torch.float64))

    def reverse(self, particles: Particles, ctx: StepContext) -> tuple[Particles, Tensor]:
        """Run the layer backward (for maximum-likelihood training): ``(particles before, ΔS)``.

        ``ΔS = log |det J_T|`` at the returned positions (minus the inverse's log-det).
        """
        x, logdet_inv = self.inverse(particles.x, condition_of(ctx, particles.x))
        ev = ctx.path.evaluate(x, grad=ctx.needs_grad)
        return attrs.evolve(particles, x=x, evaluation=ev), -logdet_inv.to(torch.float64)

    __repr__ = nn.Module.__repr__


# --------------------------------------------------------------------------------------------
# Stochastic layers


class _StochasticLayer(nn.Module):
    """Shared parts of the Langevin and Metropolis layers: a step size kept as a buffer (not
    trained by gradient; adapted during training toward an acceptance rate, then frozen)."""

    default_acceptance: float = 0.5
    log_step_size: Tensor  # a float64 buffer

    def __init__(self, n_steps: int, step_size: float, target_acceptance: float | None):
        nn.Module.__init__(self)
        self.n_steps = check_positive_int("n_steps", n_steps)
        if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
            raise ConfigurationError(f"step_size must be positive and finite, got {step_size!r}")
        acc = self.default_acceptance if target_acceptance is None else float(target_acceptance)
        if not 0 < acc < 1:
            raise ConfigurationError(f"target_acceptance must lie in (0, 1), got {target_acceptance!r}")
        self.target_acceptance = acc
        self.register_buffer("log_step_size", torch.tensor(math.log(step_size), dtype=torch.float64))

    @property
    def step_size(self) -> float:
        """The current step size."""
        return float(self.log_step_size.exp())

    def adapt(self, acceptance: float, gain: float = 0.1) -> None:
        """``log step <- log step + gain (acceptance - target)``, within :data:`STEP_SIZE_BOUNDS`."""
        lo, hi = (math.log(b) for b in STEP_SIZE_BOUNDS)
        with torch.no_grad():
            self.log_step_size.add_(gain * (float(acceptance) - self.target_acceptance)).clamp_(lo, hi)

    def _eps(self, like: Tensor) -> Tensor:
        return self.log_step_size.exp().to(device=like.device, dtype=like.dtype)

    __repr__ = nn.Module.__repr__


def tamed_drift(grad: Tensor, eps: Tensor, precond: Tensor) -> Tensor:
    """The Langevin drift in ``x``: ``precond * eps g / (1 + eps |g|)`` coordinate-wise, where
    ``g = precond * grad`` is the gradient in reference-standardized coordinates.

    Taming (Brosse et al. 2019, coordinate-wise) keeps a step bounded by one reference standard
    deviation per coordinate where the gradient is huge (tails of quartic energies), where plain
    ULA diverges; for ``eps |g| << 1`` it is the usual drift ``eps precond^2 grad``. Any drift
    that is a function of the current point keeps the transition Gaussian, so ``ΔS`` stays exact.
    """
    g = precond * grad
    return precond * (eps * g / (1 + eps * g.abs()))


def _langevin_proposal(
    x: Tensor, ev: PathEvaluation, ctx: StepContext, eps: Tensor, precond: Tensor
) -> tuple[Tensor, PathEvaluation, Tensor, Tensor]:
    """One preconditioned, tamed Langevin move at pi_t (``M = diag(precond^2)``, time step ``eps``).

    ``y = x + μ(x) + sqrt(2 eps) M^{1/2} η`` with the drift ``μ`` of :func:`tamed_drift`; returns
    ``(y, ev_y, ΔS, log α)`` with ``ΔS = ½|η|² - ½|η̃|²`` (``η̃ = M^{-1/2}(x - y - μ(y)) /
    sqrt(2 eps)``, the noise that takes ``y`` back to ``x``) and the MALA log acceptance ratio
    ``log α = log pi_t(y) - log pi_t(x) + ΔS``, all ``(R, N)`` float64.
    """
    path, t = ctx.path, ctx.t
    sd = torch.sqrt(2 * eps) * precond
    eta = _noise(x, ctx)
    y = x + tamed_drift(path.grad_log_prob(ev, t), eps, precond) + sd * eta
    ev_y = path.evaluate(y, grad=True)
    eta_back = (x - y - tamed_drift(path.grad_log_prob(ev_y, t), eps, precond)) / sd
    delta = 0.5 * (eta.to(torch.float64) ** 2).sum(-1) - 0.5 * (eta_back.to(torch.float64) ** 2).sum(-1)
    log_alpha = path.log_prob(ev_y, t) - path.log_prob(ev, t) + delta
    return y, ev_y, delta, log_alpha


def _mean_acceptance(log_alpha: Tensor) -> Tensor:
    """Mean of ``min(1, exp(log α))`` over particles, ``(R,)`` float64 (NaN counts as 0)."""
    la = log_alpha.detach().masked_fill(torch.isnan(log_alpha.detach()), -math.inf).clamp(max=0.0)
    return la.exp().mean(-1)


class LangevinLayer(_StochasticLayer, Transport):
    """Unadjusted Langevin SNF layer: ``n_steps`` preconditioned Langevin steps at pi_t.

    ``x' = x + μ(x) + sqrt(2 eps) M^{1/2} η`` with ``M = diag(scale^2)`` (the reference scale)
    and ``μ`` the tamed drift ``≈ eps M grad log pi_t`` (:func:`tamed_drift`); as a
    :class:`sampler.Transport` its increment is ``ΔS = sum over steps of ½|η|² - ½|η̃|²``, where
    ``η̃ = M^{-1/2}(x - x' - μ(x')) / sqrt(2 eps)``. One target and gradient evaluation per
    particle per step.
    Reports ``langevin_acceptance``: the mean MALA acceptance probability the moves would have had
    (the handle used to adapt ``eps``; default goal 0.9).
    """

    needs_grad = True
    default_acceptance = 0.9

    def __init__(self, n_steps: int = 1, step_size: float = 0.05, target_acceptance: float | None = None):
        _StochasticLayer.__init__(self, n_steps, step_size, target_acceptance)

    # Transport.apply shadows nn.Module.apply(fn) on purpose (the engine's step contract).
    def apply(self, particles: Particles, state: object, ctx: StepContext) -> StepOutput:  # type: ignore[override]
        """Move with ``n_steps`` ULA steps; increment ``ΔS`` ``(R, N)`` float64."""
        with torch.set_grad_enabled(grad_enabled(ctx)):
            x, ev = particles.x, particles.evaluation
            if not ev.has_grad:
                ev = ctx.path.evaluate(x, grad=True)
            eps, precond = self._eps(x), _scale_vector(ctx, x)
            delta = torch.zeros(x.shape[:2], dtype=torch.float64, device=x.device)
            acc = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            for _ in range(self.n_steps):
                x, ev, d, log_alpha = _langevin_proposal(x, ev, ctx, eps, precond)
                delta = delta + d
                acc = acc + _mean_acceptance(log_alpha) / self.n_steps
        return StepOutput(attrs.evolve(particles, x=x, evaluation=ev), state, {"langevin_acceptance": acc}, delta)

    def reverse(self, particles: Particles, ctx: StepContext) -> tuple[Particles, Tensor]:
        """Run the backward kernel (the same ULA kernel) from the particles: ``(particles before, ΔS)``.

        With the backward draw ``x_prev = x + eps M grad log pi_t(x) + sqrt(2 eps) M^{1/2} ξ``, the
        forward-orientation ``ΔS = ½|η|² - ½|ξ|²`` where ``η`` is the forward noise from
        ``x_prev`` to ``x``: the negative of the increment the same move reports forward.
        """
        x, ev = particles.x, particles.evaluation
        if not ev.has_grad:
            ev = ctx.path.evaluate(x, grad=True)
        eps, precond = self._eps(x), _scale_vector(ctx, x)
        delta = torch.zeros(x.shape[:2], dtype=torch.float64, device=x.device)
        for _ in range(self.n_steps):
            x, ev, d, _ = _langevin_proposal(x, ev, ctx, eps, precond)
            delta = delta - d
        return attrs.evolve(particles, x=x, evaluation=ev), delta


class MetropolisLayer(_StochasticLayer, Corrector):
    """Metropolis SNF layer: ``n_steps`` random-walk (``kernel="rw"``) or MALA (``"mala"``) steps
    that leave pi_t invariant (a :class:`sampler.Corrector`: no log-weight increment).

    Proposals are preconditioned by the reference scale: ``x' = x + eps scale η`` (random walk)
    or the Langevin move of :class:`LangevinLayer` (MALA). The accept/reject decision carries no
    gradient (it is a mask); gradients flow through the accepted proposals. Reports
    ``acceptance`` ``(R,)``, the mean acceptance probability. Default acceptance goals (used when
    adapting the step size in training): 0.3 for random walk, 0.574 for MALA.
    """

    def __init__(
        self,
        n_steps: int = 2,
        kernel: str = "mala",
        step_size: float | None = None,
        target_acceptance: float | None = None,
    ):
        if kernel not in ("rw", "mala"):
            raise ConfigurationError(f"kernel must be 'rw' or 'mala', got {kernel!r}")
        self.kernel = kernel
        self.default_acceptance = 0.574 if kernel == "mala" else 0.3
        if step_size is None:
            step_size = 0.05 if kernel == "mala" else 0.5
        _StochasticLayer.__init__(self, n_steps, step_size, target_acceptance)

    @property
    def needs_grad(self) -> bool:  # type: ignore[override]
        """MALA needs cached gradients; the random walk does not."""
        return self.kernel == "mala"

    def _propose(self, x: Tensor, ev: PathEvaluation, ctx: StepContext) -> tuple[Tensor, PathEvaluation, Tensor]:
        eps, precond = self._eps(x), _scale_vector(ctx, x)
        if self.kernel == "mala":
            y, ev_y, _, log_alpha = _langevin_proposal(x, ev, ctx, eps, precond)
            return y, ev_y, log_alpha
        y = x + eps * precond * _noise(x, ctx)
        ev_y = ctx.path.evaluate(y, grad=ctx.needs_grad)
        return y, ev_y, ctx.path.log_prob(ev_y, ctx.t) - ctx.path.log_prob(ev, ctx.t)

    def _run(self, particles: Particles, ctx: StepContext) -> tuple[Particles, Tensor]:
        x, ev = particles.x, particles.evaluation
        if self.kernel == "mala" and not ev.has_grad:
            ev = ctx.path.evaluate(x, grad=True)
        acc = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for _ in range(self.n_steps):
            y, ev_y, log_alpha = self._propose(x, ev, ctx)
            la = log_alpha.detach().masked_fill(torch.isnan(log_alpha.detach()), -math.inf)
            u = torch.rand(la.shape, generator=ctx.generator, device=x.device, dtype=torch.float64)
            accept = torch.log(u) < la
            x = torch.where(accept[..., None], y, x)
            ev = ev_y.where(accept, ev)
            acc = acc + _mean_acceptance(la) / self.n_steps
        return attrs.evolve(particles, x=x, evaluation=ev), acc

    # Corrector.apply shadows nn.Module.apply(fn) on purpose (the engine's step contract).
    def apply(self, particles: Particles, state: object, ctx: StepContext) -> StepOutput:  # type: ignore[override]
        """``n_steps`` Metropolis steps at pi_t (invariant: no increment)."""
        with torch.set_grad_enabled(grad_enabled(ctx)):
            new, acc = self._run(particles, ctx)
        return StepOutput(new, state, {"acceptance": acc})

    def reverse(self, particles: Particles, ctx: StepContext) -> tuple[Particles, Tensor]:
        """The backward kernel is the same reversible kernel: ``(particles before, ΔS)`` with
        ``ΔS = log pi_t(before) - log pi_t(after)`` (``E_t(after) - E_t(before)`` in the forward
        orientation, where "after" is the given particles)."""
        before, _ = self._run(particles, ctx)
        path = ctx.path
        return before, path.log_prob(before.evaluation, ctx.t) - path.log_prob(particles.evaluation, ctx.t)
