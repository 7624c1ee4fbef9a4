"""The ``neutra`` corrector: an MCMC kernel run in the latent space of a flow fitted to the particles.

At each annealing stage each replica's particles are split at random into two halves and a
RealNVP flow ``x = T(z)`` (:mod:`sampler_plugins.flow_smc.flow`) is fitted to each half's
weighted particles; every particle is mapped to ``z = T^{-1}(x)`` by the flow fitted to the
*other* half, and a registered gradient kernel (MALA by default) runs on the pulled-back density

    log pi_t^T(z) = log pi_t(T(z)) + log |det dT/dz|,

whose gradient is ``J_T^T grad log pi_t(T(z)) + grad log |det J_T|`` (one target gradient per
proposal, the rest by autograd through the flow). Where the flow has learned pi_t's geometry
(a funnel's scale that depends on another coordinate, a banana's curvature), the latent density
is close to a standard normal and one step size fits everywhere: NeuTra (Hoffman et al. 2019,
"NeuTra-lizing bad geometry in Hamiltonian Monte Carlo using neural transport"), here refitted
at every temperature of a tempered SMC run.

Where the flow does not help -- one flow fitted across separated modes whitens by their spread,
and the latent step size shrinks to the modes' width -- the kernel does better in the particles'
own coordinates. With ``compare`` each stage runs one probe sweep of each kind and the rest of
its sweeps in the kind whose probe moved the particles further (per replica; the plain kind is
the same kernel through the identity map), so one method serves both kinds of target.

A kernel that leaves ``pi_t^T`` invariant leaves ``pi_t`` invariant after mapping back through
the fixed bijection ``T``. The flows are fitted before the sweeps and fixed within them, as the
kernels' particle-covariance metric is (the usual adaptive-SMC practice: Buchholz, Chopin &
Jacob 2021); fitting a flow to the very particles it moves biases the moves measurably, which
the cross-fitting avoids (docs/flow_smc.md). Each fit is warm-started from the previous stage's
couplings, so after the first stage a short fit suffices, and stopped early on the moved half's
held-out likelihood. Fitting evaluates no target density; every proposal's target and
gradient evaluations are counted as usual.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import Tensor

from sampler.ext import (
    ConfigurationError,
    Corrector,
    GaussianReference,
    GeometricPath,
    Particles,
    PathEvaluation,
    StepContext,
    StepOutput,
    check_positive_int,
    corrector,
    random_halves,
)
from sampler_plugins.flow_smc.flow import CHECK_EVERY, DEFAULT_HIDDEN, CouplingFlow, fit_flow, weighted_base


class LatentPath(GeometricPath):
    """The path ``pi_t`` pulled back through a flow: evaluations at latent points ``z`` ``(R, N, d)``.

    ``log_ref`` and ``log_target`` of an evaluation are those of ``x = T(z)`` plus
    ``log |det dT/dz|``, so ``log_prob(ev, t)`` is ``log pi_t^T(z)`` for every ``t``; gradients
    are with respect to ``z``. Evaluations of the target go through (and are counted by)
    ``path``.
    """

    def __init__(self, path: GeometricPath, flow: CrossFittedFlow):
        dim = flow.flows.loc.shape[-1]
        super().__init__(GaussianReference(dim, 0.0, 1.0), path.target, path.counter)
        self.base = path
        self.flow = flow

    def evaluate(self, x: Tensor, grad: bool = False) -> PathEvaluation:
        """The pulled-back evaluation at latent points ``x`` (``z`` in the module's notation)."""
        if not grad:
            with torch.no_grad():
                y, log_det = self.flow.forward(x)
                ev = self.base.evaluate(y, grad=False)
            log_det = log_det.to(torch.float64)
            return PathEvaluation(ev.log_ref + log_det, ev.log_target + log_det)
        z = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y, log_det = self.flow.forward(z)
        ev = self.base.evaluate(y.detach(), grad=True)
        return self.pull_back(z, y, log_det, ev)

    @staticmethod
    def pull_back(z: Tensor, y: Tensor, log_det: Tensor, ev: PathEvaluation) -> PathEvaluation:
        """The latent evaluation at ``z`` from ``ev`` at ``y = T(z)`` (``y``, ``log_det`` carry ``z``'s graph)."""
        assert ev.grad_ref is not None and ev.grad_target is not None
        with torch.enable_grad():
            grad_ref, grad_target = (
                torch.autograd.grad((y * g).sum() + log_det.sum(), z, retain_graph=i == 0)[0]
                for i, g in enumerate((ev.grad_ref, ev.grad_target))
            )
        finite = torch.isfinite(ev.log_target)[..., None]
        log_det = log_det.detach().to(torch.float64)
        return PathEvaluation(
            ev.log_ref + log_det,
            ev.log_target + log_det,
            grad_ref,
            torch.where(finite, grad_target, 0.0),
        )


def _normalized(log_weights: Tensor) -> Tensor:
    """Log weights ``(B, M)`` normalized per row."""
    return log_weights - torch.logsumexp(log_weights, -1, keepdim=True)


@attrs.frozen
class CrossFittedFlow:
    """Two flows per replica, each moving the half of the particles it was not fitted to.

    Each half's particles are packed into a row of a ``(2R, M)`` layout (``M`` the larger half's
    size; a smaller half is padded with other particles, whose results are discarded), so the
    ``2R`` flows run as one batch over about ``N / 2`` points each.

    Attributes:
        flows: ``2R`` flows: row ``r`` moves replica ``r``'s half A (it was fitted to half B),
            row ``R + r`` its half B.
        in_a: ``(R, N)`` bool, the particles of half A.
        index: ``(2R, M)`` the particles of each row: half A's of replica ``r`` in row ``r``,
            half B's in row ``R + r``, each followed by padding.
        valid: ``(2R, M)`` bool, the row's own particles (not padding).
    """

    flows: CouplingFlow
    in_a: Tensor
    index: Tensor
    valid: Tensor

    @staticmethod
    def pack_halves(in_a: Tensor) -> tuple[Tensor, Tensor]:
        """``index`` and ``valid`` (see the attributes) of the halves ``in_a`` ``(R, N)``."""
        a_first = torch.argsort((~in_a).to(torch.int8), dim=1, stable=True)
        b_first = torch.argsort(in_a.to(torch.int8), dim=1, stable=True)
        counts = torch.cat([in_a.sum(1), (~in_a).sum(1)])
        m = max(int(counts.max()), 1)
        index = torch.cat([a_first[:, :m], b_first[:, :m]])
        return index, torch.arange(m, device=in_a.device)[None, :] < counts[:, None]

    def pack(self, v: Tensor) -> Tensor:
        """Per-particle values ``(R, N, ...)`` in the packed layout ``(2R, M, ...)``."""
        rows = torch.arange(self.in_a.shape[0], device=v.device).repeat(2)[:, None]
        return v[rows, self.index]

    def unpack(self, v: Tensor) -> Tensor:
        """Packed values ``(2R, M, ...)`` back to ``(R, N, ...)``, each particle from its own half's row."""
        r, n = self.in_a.shape
        rows = torch.arange(r, device=v.device)[:, None]
        half_a, half_b = (
            v.new_zeros((r, n) + v.shape[2:]).index_put((rows, self.index[h * r : (h + 1) * r]), v[h * r : (h + 1) * r])
            for h in (0, 1)
        )
        return torch.where(self.in_a.reshape(self.in_a.shape + (1,) * (v.ndim - 2)), half_a, half_b)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``x = T(z)`` ``(R, N, d)`` and ``log |det dT/dz|`` ``(R, N)``, each particle through its half's flow."""
        x, log_det = self.flows.forward(self.pack(z))
        return self.unpack(x), self.unpack(log_det)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``z = T^{-1}(x)`` and ``log |det dT^{-1}/dx|``, each particle through its half's flow."""
        z, log_det = self.flows.inverse(self.pack(x))
        return self.unpack(z), self.unpack(log_det)


@attrs.frozen
class LatentState:
    """State of :class:`FlowPreconditioned`: the ``2R`` flows as trained so far (the next fit continues
    from them; the moves used the held-out check's choice), the kernel's latent-space state, the fits
    so far, and with ``compare`` the kernel's state in the particles' own coordinates."""

    flows: CouplingFlow
    kernel: Any
    fits: int
    plain: Any = None


class FlowPreconditioned(Corrector):
    """A gradient kernel run in the latent space of a RealNVP flow fitted to the particles (NeuTra).

    Args:
        kernel: a registered gradient corrector (``"mala"`` or ``"hmc"``), run in the latent space.
        n_steps: the kernel's sweeps per application (per annealing stage).
        hidden: hidden units of each coupling's network.
        n_fit: Adam iterations of the first fit (from the affine base).
        n_refit: Adam iterations of later fits (warm-started from the last stage's couplings).
        lr: Adam's learning rate.
        check_every: Adam iterations between the held-out checks that stop a fit early
            (:func:`~sampler_plugins.flow_smc.flow.fit_flow`); ``None`` turns them off.
        compare: choose, per replica and stage, where the sweeps run: one probe sweep in the
            latent space and one in the particles' own coordinates (the kernel as ``smc`` runs it),
            then the other ``n_steps - 2`` sweeps where the probe's mean squared jump, measured in
            the flow's latent units, was larger (``n_steps >= 2``). Off: all ``n_steps`` sweeps in
            the latent space.
        **kernel_options: passed to the kernel (``step_size``, ``target_acceptance``, ...);
            its metric is the identity (the flow whitens).

    Reports the kernel's ``acceptance`` and ``step_size`` ``(R,)`` (the latent sweeps' step), and
    ``flow_gain`` ``(R,)``: how much better than its affine base the flows describe the particles
    they move, in nats per particle (held-out log likelihood; 0 where a flow kept its base). With
    ``compare`` also ``flow_jump`` and ``plain_jump`` (the probes' mean squared jumps) and
    ``flow_sweeps`` (the fraction of the sweeps run in the latent space), each ``(R,)``.
    """

    needs_grad = True
    shardable = False

    def __init__(
        self,
        kernel: str = "mala",
        n_steps: int = 10,
        hidden: int = DEFAULT_HIDDEN,
        n_fit: int = 200,
        n_refit: int = 20,
        lr: float = 3e-3,
        check_every: int | None = CHECK_EVERY,
        compare: bool = False,
        **kernel_options: Any,
    ):
        if "metric" in kernel_options:
            raise ConfigurationError("neutra runs its kernel with the identity metric (the flow whitens)")
        self.kernel_name = kernel
        #: the options of the kernel (not the flow's), for kernels built alongside (the plain sweeps)
        self.kernel_options = kernel_options
        self.kernel = self._sweeps(check_positive_int("n_steps", n_steps))
        if not self.kernel.needs_grad:
            raise ConfigurationError(f"neutra needs a gradient kernel (mala, hmc), got {kernel!r}")
        self.hidden = check_positive_int("hidden", hidden)
        self.n_fit = check_positive_int("n_fit", n_fit)
        self.n_refit = check_positive_int("n_refit", n_refit)
        if not lr > 0:
            raise ConfigurationError(f"lr must be positive, got {lr!r}")
        self.lr = float(lr)
        self.check_every = None if check_every is None else check_positive_int("check_every", check_every)
        self.compare = bool(compare)
        if self.compare and n_steps < 2:
            raise ConfigurationError(f"compare needs n_steps >= 2 (a probe sweep of each kind), got {n_steps}")
        self.rest_steps = n_steps - 2
        self.probe = self._sweeps(1) if self.compare else None
        self.rest = self._sweeps(self.rest_steps) if self.compare and self.rest_steps > 0 else None

    def _sweeps(self, n: int) -> Corrector:
        """The kernel with ``n`` sweeps per application."""
        return corrector(self.kernel_name, n_steps=n, **self.kernel_options)

    def init(self, particles: Particles, ctx: StepContext) -> LatentState:
        """Fresh flows (the particles' affine base, identity couplings) and the kernel's latent-space state."""
        x2 = torch.cat([particles.x, particles.x])
        log_w2 = torch.cat([particles.log_weights, particles.log_weights])
        flows = CouplingFlow.identity_couplings(*weighted_base(x2, log_w2), self.hidden, ctx.generator)
        halves = torch.ones(particles.log_weights.shape, dtype=torch.bool, device=particles.x.device)
        latent_ctx = attrs.evolve(
            ctx, path=LatentPath(ctx.path, CrossFittedFlow(flows, halves, *CrossFittedFlow.pack_halves(halves)))
        )
        plain = self.kernel.init(particles, ctx) if self.compare else None
        return LatentState(flows, self.kernel.init(particles, latent_ctx), fits=0, plain=plain)

    def apply(self, particles: Particles, state: LatentState, ctx: StepContext) -> StepOutput:
        """Fit the flow, map to latent space, run the kernel's sweeps there, map back."""
        x, log_w = particles.x, particles.log_weights
        in_a = random_halves(x, ctx.generator)
        flow = CrossFittedFlow(state.flows, in_a, *CrossFittedFlow.pack_halves(in_a))
        r = particles.n_replicas
        # row r's flow moves the particles of row r (its held-out set) and is fitted to the other half's row
        held_x, held_log_w = flow.pack(x), flow.pack(log_w).masked_fill(~flow.valid, -math.inf)
        fit_x, fit_log_w = held_x.roll(r, 0), held_log_w.roll(r, 0)
        # a replica whose particles all fell in one half (all copies of one point) fits that half
        empty = ~flow.valid.roll(r, 0).any(-1)
        fit_x = torch.where(empty[:, None, None], held_x, fit_x)
        fit_log_w = _normalized(torch.where(empty[:, None], held_log_w, fit_log_w))
        held_log_w = torch.where(flow.valid.any(-1, keepdim=True), _normalized(held_log_w), fit_log_w)
        loc, tril = weighted_base(fit_x, fit_log_w)
        n_iter = self.n_fit if state.fits == 0 else self.n_refit
        flows, gain, trained = fit_flow(
            attrs.evolve(state.flows, loc=loc, tril=tril),
            fit_x,
            fit_log_w,
            held_x,
            held_log_w,
            n_iter,
            self.lr,
            self.check_every,
        )
        flow = attrs.evolve(flow, flows=flows)
        info: dict[str, Any]
        if not self.compare:
            moved, out, _ = self._latent_sweeps(self.kernel, flow, particles, state.kernel, ctx)
            info = dict(out.info)
            new_state = LatentState(trained, out.state, state.fits + 1)
        else:
            moved, info, kernel_state, plain_state = self._compared_sweeps(flow, particles, state, ctx)
            new_state = LatentState(trained, kernel_state, state.fits + 1, plain_state)
        first, second = gain.chunk(2)
        info["flow_gain"] = 0.5 * (first + second)
        return StepOutput(moved, new_state, info)

    def _compared_sweeps(
        self, flow: CrossFittedFlow, particles: Particles, state: LatentState, ctx: StepContext
    ) -> tuple[Particles, dict[str, Any], Any, Any]:
        """A probe sweep through the flow, one in the particles' coordinates, the rest where the probe moved further.

        The probes' jumps are compared in the flow's latent units: the weighted mean squared
        jump per particle, the expected squared jump distance that Pasarica & Gelman (2010)
        maximize to tune a kernel (both probes cost the same gradients). A flow that squeezes some
        direction (a dense affine base across separated modes) makes its own steps small there
        and the plain steps look large. Each replica chooses for itself; the choice is fixed for
        the rest of the stage's sweeps. Returns the particles, the info, and the latent
        and plain kernel states (each kind keeps its own step size).
        """
        probe, rest = self.probe, self.rest
        assert probe is not None
        weights = particles.log_weights.exp()
        p1, out1, z0 = self._latent_sweeps(probe, flow, particles, state.kernel, ctx)
        jump_flow = (weights * ((out1.particles.x - z0) ** 2).sum(-1)).sum(-1)
        out2 = probe.apply(p1, state.plain, ctx)
        with torch.no_grad():
            after, _ = flow.inverse(out2.particles.x)
        # out1's latent points are where the plain probe starts (T^-1(p1.x) up to round-off)
        jump_plain = (weights * ((after - out1.particles.x) ** 2).sum(-1)).sum(-1)
        use_flow = jump_flow >= jump_plain
        eps_flow, eps_plain = out1.state.step_size, out2.state.step_size
        info: dict[str, Any] = {
            "flow_jump": jump_flow.to(torch.float64),
            "plain_jump": jump_plain.to(torch.float64),
            "flow_sweeps": (1.0 + self.rest_steps * use_flow.to(torch.float64)) / (2 + self.rest_steps),
        }
        acceptance = out1.info["acceptance"] + out2.info["acceptance"]
        moved = out2.particles
        if rest is not None:
            if use_flow.any():  # replicas that chose the plain sweeps run them through the identity map
                chosen = attrs.evolve(flow, flows=flow.flows.or_identity(use_flow.repeat(2)))
                kernel_state = attrs.evolve(out1.state, step_size=torch.where(use_flow, eps_flow, eps_plain))
                moved, out, _ = self._latent_sweeps(rest, chosen, moved, kernel_state, ctx)
            else:
                out = rest.apply(moved, out2.state, ctx)
                moved = out.particles
            acceptance = acceptance + self.rest_steps * out.info["acceptance"]
            eps = out.state.step_size
            eps_flow, eps_plain = torch.where(use_flow, eps, eps_flow), torch.where(use_flow, eps_plain, eps)
        info["acceptance"] = acceptance / (2 + self.rest_steps)
        info["step_size"] = eps_flow
        return (
            moved,
            info,
            attrs.evolve(out1.state, step_size=eps_flow),
            attrs.evolve(out2.state, step_size=eps_plain),
        )

    def _latent_sweeps(
        self, kernel: Corrector, flow: CrossFittedFlow, particles: Particles, kernel_state: Any, ctx: StepContext
    ) -> tuple[Particles, StepOutput, Tensor]:
        """``kernel``'s sweeps on the density pulled back through ``flow``: the moved particles ``x``,
        the kernel's latent output, and the particles' starting latent points ``z0`` ``(R, N, d)``."""
        x = particles.x
        ev = particles.evaluation
        if not ev.has_grad:
            ev = ctx.path.evaluate(x, grad=True)
        with torch.no_grad():
            z0, _ = flow.inverse(x)
        z = z0.requires_grad_(True)
        with torch.enable_grad():
            y, log_det = flow.forward(z)
        ev_z0 = LatentPath.pull_back(z, y, log_det, ev)
        z0 = z0.detach()
        start = attrs.evolve(particles, x=z0, evaluation=ev_z0)
        out = kernel.apply(start, kernel_state, attrs.evolve(ctx, path=LatentPath(ctx.path, flow)))
        moved = (out.particles.x != z0).any(-1)
        x_new, ev_new = self._push_forward(flow, out.particles.x, out.particles.evaluation, ctx)
        x_new = torch.where(moved[..., None], x_new, x)
        ev_new = ev_new.where(moved, ev)
        return attrs.evolve(particles, x=x_new, evaluation=ev_new), out, z0

    @staticmethod
    def _push_forward(
        flow: CrossFittedFlow, z: Tensor, ev_z: PathEvaluation, ctx: StepContext
    ) -> tuple[Tensor, PathEvaluation]:
        """Positions ``x = T(z)`` and their evaluation on ``ctx.path``, from the latent evaluation (no target call).

        ``log pi(x) = log pi^T(z) - log |det J_T(z)|``; the target's gradient at ``x`` is
        ``J_T^{-T} (grad_z - grad log |det J_T|)``, the second product by autograd through
        ``T^{-1}`` at ``x``.
        """
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            x, log_det = flow.forward(z)
            grad_log_det = torch.autograd.grad(log_det.sum(), z)[0]
        x = x.detach()
        assert ev_z.grad_target is not None
        v = ev_z.grad_target - grad_log_det
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            z_back, _ = flow.inverse(xg)
            grad_target = torch.autograd.grad((z_back * v).sum(), xg)[0]
        log_target = ev_z.log_target - log_det.detach().to(torch.float64)
        finite = torch.isfinite(log_target)[..., None]
        log_ref, grad_ref = ctx.path.reference.log_prob_and_grad(x)
        ev = PathEvaluation(log_ref, log_target, grad_ref, torch.where(finite, grad_target, 0.0))
        return x, ev
