"""The ``imh`` corrector: mode-jumping moves by independence Metropolis-Hastings.

At each annealing stage a Gaussian mixture ``q`` is fitted to each replica's weighted particles
(:func:`~sampler_plugins.mcmc.mixture.fit_mixture`), then every particle proposes ``y ~ q``
independently of where it is and accepts with probability

    min(1, pi_t(y) q(x) / (pi_t(x) q(y))).

The proposal does not depend on the particle, so a particle in one mode proposes into every
mode ``q`` covers, in proportion to ``q``'s weights: relative mode masses re-equilibrate at
every temperature instead of drifting with the resampling noise, which local moves (MALA,
HMC) cannot correct once modes are separated by more than a step (Tierney 1994 for the kernel;
adaptive independence proposals fitted to the particle population inside SMC as in Chopin 2002,
and South, Pettitt & Drovandi 2019, "Sequential Monte Carlo samplers with independent Markov
chain Monte Carlo proposals", Bayesian Analysis 14(3)).

Each half of the particles (chosen at random, the descendants of one particle always in the same
half: their lineage is carried in ``Particles.extras``) is moved by a mixture fitted to the other
half, both fitted before the sweeps and fixed within them (:meth:`IndependenceMH.apply`), so a
particle's proposal never depends on the particle and each particle distributed as pi_t still
is. ``q`` covers only the modes the particles have found: a mode with no particle stays lost.
One target evaluation (with its gradient when a later step needs it) per particle per sweep;
no gradient of its own.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from sampler.ext import (
    ConfigurationError,
    Corrector,
    Particles,
    StepContext,
    StepOutput,
    check_positive_int,
    random_halves,
)
from sampler.ext import ess as sampler_ess
from sampler_plugins.mcmc.mixture import COVARIANCES, ParticleMixture, fit_mixture

#: ``Particles.extras`` key of each particle's lineage: the index, at the corrector's last
#: application, of the particle it descends from (resampling copies it to the offspring).
LINEAGE_KEY = "imh_lineage"

#: Components of the default mixture (fewer when the particles cannot support them).
DEFAULT_COMPONENTS = 16

#: The default mixture gives each component at least this many effective particles.
PARTICLES_PER_COMPONENT = 50

#: ``covariance="auto"`` picks by AIC between these structures, and dense ones up to ``DENSE_UP_TO_DIM``.
AUTO_COVARIANCES = ("spherical", "diag")

#: ``covariance="auto"`` considers dense covariances up to this dimension.
DENSE_UP_TO_DIM = 10


class IndependenceMH(Corrector):
    """Independence Metropolis-Hastings with a Gaussian mixture fitted to the weighted particles.

    Args:
        n_steps: sweeps per application (per annealing stage).
        n_components: mixture components K per replica; default ``min(16, ESS // 50)`` (at
            least 1) of the half of the particles it is fitted to.
        covariance: ``"full"`` (each component's covariance shrunk toward its diagonal),
            ``"diag"``, ``"spherical"`` (one variance per component), or ``"auto"``: each
            replica's fit takes the structure of least AIC (the best expected log density of
            fresh draws, which sets the acceptance) among spherical, diagonal and, up to
            d = 10, full (a dense covariance needs many more than d draws per component, and
            a dense EM costs O(K N d^2) per iteration).
        n_iter: EM iterations of each fit.
        balanced: keep the particles' allocation between clusters and move the mass in the
            weights instead (for unequally weighted particles, e.g. after mode-preserving
            resampling, ``resample(mode_floor=m)``). The mixture is fitted to the positions,
            every particle counted once, and the moves leave ``pi_t / rho`` invariant, where
            ``rho`` is the mean weight of the particles in the component a point belongs to;
            an accepted move from x to y multiplies the particle's weight by
            ``rho(y) / rho(x)``. For any positive ``rho`` this keeps a properly weighted set
            properly weighted (``E[w rho(Y) / rho(x) f(Y)] = integral of f pi_t``), and
            with this ``rho`` a cluster whose particles carry small weights keeps about as
            many particles as it has, so the moves correct the clusters' masses without
            emptying the clusters that mode-preserving resampling held at a floor. Without it
            (the default) the moves leave pi_t itself invariant: on unequal weights they would
            carry a floored cluster's particles to where pi_t puts them, and empty it.

    Reports ``acceptance`` ``(R,)`` (mean acceptance probability over the sweeps) and
    ``components`` ``(R,)`` (the mixture's effective number of components, ``exp`` of the
    entropy of its weights).
    """

    shardable = False

    def __init__(
        self,
        n_steps: int = 1,
        n_components: int | None = None,
        covariance: str = "auto",
        n_iter: int = 10,
        balanced: bool = False,
    ):
        self.n_steps = check_positive_int("n_steps", n_steps)
        self.n_components = None if n_components is None else check_positive_int("n_components", n_components)
        if covariance not in (*COVARIANCES, "auto"):
            raise ConfigurationError(f"covariance must be one of {', '.join(COVARIANCES)} or auto, got {covariance!r}")
        self.covariance = covariance
        self.n_iter = check_positive_int("n_iter", n_iter)
        self.balanced = bool(balanced)

    def components_for(self, log_weights: Tensor) -> int:
        """K for particles with log weights ``(R, M)``: ``n_components`` or the default from their ESS (at most M)."""
        m = log_weights.shape[1]
        if self.n_components is not None:
            return min(self.n_components, m)
        ess = float(sampler_ess(log_weights).min()) * m
        return max(1, min(DEFAULT_COMPONENTS, int(ess // PARTICLES_PER_COMPONENT)))

    def apply(self, particles: Particles, state: None, ctx: StepContext) -> StepOutput:
        """``n_steps`` independence sweeps at pi_t, cross-fitted over two random halves of the particles.

        The particles of each replica are split at random into halves A and B, the descendants
        of one particle of the previous application (siblings that resampling copied and the
        kernel's sweeps moved apart, still correlated) always into the same half, as are copies
        of one point on the first application; a mixture fitted to A
        moves B and one fitted to B moves A, both fitted before anything moves. A particle's
        proposal thus never depends on the particle itself (or a copy of it), and each particle
        that was distributed as pi_t still is. A mixture evaluated at the points it was fitted
        to overrates them (by about its number of parameters over the points per component):
        fitted to every particle, it made them leave small modes faster than they entered
        (gmm10-50: modes emptied at intermediate temperatures that exact SMC keeps). Fitted to
        the siblings of the particles it moves (halves split by position only), it biased log Z
        low: on gmm10-200 by 0.37-0.74 over 10 seeds, against 0.03-0.33 with the halves split by lineage.
        """
        covariance: str | tuple[str, ...] = self.covariance
        if covariance == "auto":
            covariance = AUTO_COVARIANCES if particles.dim > DENSE_UP_TO_DIM else (*AUTO_COVARIANCES, "full")
        r, n, d = particles.x.shape
        lineage = particles.extras.get(LINEAGE_KEY)
        if lineage is not None and tuple(lineage.shape) != (r, n):
            lineage = None  # the particle count changed since (waste-free chains, a resumed template)
        in_a = random_halves(particles.x, ctx.generator, lineage)
        fits = [self._fit(particles, half, covariance, ctx) for half in (~in_a, in_a)]  # fitted to B, to A
        x, ev = particles.x, particles.evaluation
        # log rho per component of each fit, from the particles that fit was fitted to (the balanced moves)
        evaluated = [fit.log_prob_and_component(x) for fit in fits]
        log_rho = (
            [
                _component_log_rho(comp, fit.n_components, particles.log_weights, half)
                for (_, comp), fit, half in zip(evaluated, fits, (~in_a, in_a), strict=True)
            ]
            if self.balanced
            else None
        )
        log_q, rho_x = _proposal_terms(evaluated, in_a, log_rho)
        log_w = particles.log_weights
        acceptance = torch.zeros(particles.n_replicas, dtype=torch.float64, device=x.device)
        for _ in range(self.n_steps):
            u = ctx.rand((r, n, 1), torch.float64, x.device)
            z = ctx.randn((r, n, d), torch.float64, x.device)
            y = torch.where(in_a[..., None], fits[0].sample(u, z), fits[1].sample(u, z)).to(x.dtype)
            ev_y = ctx.path.evaluate(y, grad=ctx.needs_grad)
            log_q_y, rho_y = _proposal_terms([fit.log_prob_and_component(y) for fit in fits], in_a, log_rho)
            log_alpha = ctx.path.log_prob(ev_y, ctx.t) - ctx.path.log_prob(ev, ctx.t) + log_q - log_q_y
            if rho_x is not None and rho_y is not None:  # balanced: pi_t / rho is the invariant density
                log_alpha = log_alpha + rho_x - rho_y
            log_alpha = log_alpha.to(torch.float64).masked_fill(torch.isnan(log_alpha), -math.inf).clamp(max=0.0)
            accept = torch.log(ctx.rand(log_alpha.shape, torch.float64, x.device)) < log_alpha
            if rho_x is not None and rho_y is not None:
                log_w = torch.where(accept, log_w + rho_y - rho_x, log_w)
                rho_x = torch.where(accept, rho_y, rho_x)
            x = torch.where(accept[..., None], y, x)
            ev = ev_y.where(accept, ev)
            log_q = torch.where(accept, log_q_y, log_q)
            acceptance = acceptance + log_alpha.exp().mean(-1) / self.n_steps
        components = 0.5 * (fits[0].effective_components() + fits[1].effective_components())
        info = {"acceptance": acceptance, "components": components}
        if self.balanced:
            log_w = torch.log_softmax(log_w, -1)
        # Each particle starts a lineage: resampling copies the label to its offspring, and the next
        # application keeps every lineage in one half.
        fresh = torch.arange(n, device=x.device).expand(r, n).clone()
        extras = {**particles.extras, LINEAGE_KEY: fresh}
        return StepOutput(attrs.evolve(particles, x=x, evaluation=ev, log_weights=log_w, extras=extras), None, info)

    def _fit(
        self, particles: Particles, half: Tensor, covariance: str | tuple[str, ...], ctx: StepContext
    ) -> ParticleMixture:
        """The mixture fitted to the particles where ``half`` ``(R, N)`` is true (all of them where it is empty).

        Weighted by the particles' weights, or each particle counted once if ``balanced``.
        """
        own = torch.zeros_like(particles.log_weights) if self.balanced else particles.log_weights
        log_w = own.masked_fill(~half, -math.inf)
        empty = ~half.any(-1, keepdim=True)
        log_w = torch.where(empty, own - math.log(own.shape[1]), log_w - torch.logsumexp(log_w, -1, keepdim=True))
        k = self.components_for(log_w)
        return fit_mixture(particles.x, log_w, k, ctx.generator, covariance, self.n_iter)


def _component_log_rho(component: Tensor, k: int, log_weights: Tensor, half: Tensor) -> Tensor:
    """``log rho`` of a fit's K components for the balanced moves: ``(R, K)`` float64.

    ``component`` ``(R, N)`` is each particle's most likely component of the fit, ``half`` ``(R, N)``
    the particles it was fitted to; a component's ``rho`` is ``N`` times the mean normalized
    weight of those of its particles, and 1 (the mean) where it has none.
    """
    r, n = half.shape
    w = torch.where(half, log_weights.to(torch.float64).exp() * n, 0.0)
    total = torch.zeros(r, k, dtype=torch.float64, device=w.device).scatter_add_(1, component, w)
    count = torch.zeros(r, k, dtype=torch.float64, device=w.device).scatter_add_(1, component, half.to(torch.float64))
    return torch.where(count > 0, (total / count.clamp_min(1.0)).clamp_min(1e-300).log(), 0.0)


def _proposal_terms(
    evaluated: list[tuple[Tensor, Tensor]], in_a: Tensor, log_rho: list[Tensor] | None
) -> tuple[Tensor, Tensor | None]:
    """``log q`` ``(R, M)`` of points from the two fits' ``(log_prob, component)``, each point by the fit for its half.

    Also ``log rho`` ``(R, M)`` of the points' components where ``log_rho`` (one ``(R, K)`` table per
    fit) is given, else ``None``.
    """
    (lp_b, comp_b), (lp_a, comp_a) = evaluated  # the fit to B moves A, the fit to A moves B
    log_q = torch.where(in_a, lp_b, lp_a)
    if log_rho is None:
        return log_q, None
    rho = torch.where(in_a, torch.gather(log_rho[0], 1, comp_b), torch.gather(log_rho[1], 1, comp_a))
    return log_q, rho
