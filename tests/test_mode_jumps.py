"""The mode-jumping corrector ``imh`` and the Gaussian mixtures it proposes from.

Every test is seeded; tolerances are Monte Carlo errors of the checked quantity (stated next to
each check). The target is a two-component mixture with unequal weights and widths along the
first axis, whose mode fractions and moments are known exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_kernels import particles_at_t1
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal

import sampler
from sampler.errors import ConfigurationError
from sampler.ext import Linear, random_halves
from sampler_plugins.mcmc.independence import LINEAGE_KEY, IndependenceMH
from sampler_plugins.mcmc.mixture import ParticleMixture, fit_mixture

DTYPE = torch.float64

#: |z| threshold of the checks below: each z is ~N(0, 1) under the null (CLT, >= 8000 draws).
Z_MAX = 4.0


class TwoModes(sampler.BoltzmannTarget):
    """``w N(-a e_1, 0.5^2 I) + (1 - w) N(a e_1, I)`` in ``dim`` dimensions, normalized (log Z = 0)."""

    log_Z = 0.0

    def __init__(self, dim: int = 3, weight: float = 0.3, a: float = 2.0):
        self.dim, self.weight, self.a = dim, weight, a
        self.modes = torch.zeros(2, dim, dtype=DTYPE)
        self.modes[0, 0], self.modes[1, 0] = -a, a

    def _components(self, x: torch.Tensor) -> torch.Tensor:
        half_log_2pi = 0.5 * math.log(2 * math.pi) * self.dim
        first = -0.5 * ((x - self.modes[0].to(x)) / 0.5).square().sum(-1) - self.dim * math.log(0.5) - half_log_2pi
        second = -0.5 * (x - self.modes[1].to(x)).square().sum(-1) - half_log_2pi
        return torch.stack([first + math.log(self.weight), second + math.log1p(-self.weight)], -1)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.logsumexp(self._components(x), -1)

    def exact(self, r: int, n: int, seed: int, weight: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R, N, d)`` iid draws (with the first mode's share ``weight``) and their labels (True: first mode)."""
        g = torch.Generator().manual_seed(seed)
        first = torch.rand(r, n, generator=g, dtype=DTYPE) < (self.weight if weight is None else weight)
        z = torch.randn(r, n, self.dim, generator=g, dtype=DTYPE)
        x = torch.where(first[..., None], self.modes[0] + 0.5 * z, self.modes[1] + z)
        return x, first


def first_mode_share(target: TwoModes, x: torch.Tensor) -> torch.Tensor:
    """Share of particles nearer the first mode's side (``x_0 < boundary``), per replica."""
    return (x[..., 0] < 0).to(DTYPE).mean(-1)


def exact_share_below_zero(target: TwoModes) -> float:
    """P(x_0 < 0) under the target."""
    phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    return target.weight * phi(target.a / 0.5) + (1 - target.weight) * phi(-target.a)


# -- the mixture -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dense", [True, False])
def test_mixture_log_prob_matches_torch_distributions(dense):
    g = torch.Generator().manual_seed(0)
    r, k, d = 3, 4, 5
    means = torch.randn(r, k, d, generator=g, dtype=DTYPE)
    log_w = torch.log_softmax(torch.randn(r, k, generator=g, dtype=DTYPE), -1)
    if dense:
        a = torch.randn(r, k, d, d, generator=g, dtype=DTYPE)
        scales = torch.linalg.cholesky(a @ a.transpose(-1, -2) + 0.5 * torch.eye(d, dtype=DTYPE))
        comp = MultivariateNormal(means, scale_tril=scales)
    else:
        scales = torch.rand(r, k, d, generator=g, dtype=DTYPE) + 0.2
        comp = Independent(Normal(means, scales), 1)
    mix = ParticleMixture(log_w, means, scales)
    x = torch.randn(7, r, d, generator=g, dtype=DTYPE) * 2
    expected = MixtureSameFamily(Categorical(logits=log_w), comp).log_prob(x)  # (7, R)
    torch.testing.assert_close(mix.log_prob(x.transpose(0, 1)), expected.T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dense", [True, False])
def test_mixture_draws_have_the_mixture_moments(dense):
    g = torch.Generator().manual_seed(1)
    r, k, d, n = 2, 3, 2, 40_000
    means = torch.tensor([[-3.0, 0.0], [0.0, 2.0], [4.0, 1.0]], dtype=DTYPE).expand(r, k, d)
    sd = torch.tensor([[0.5, 1.0], [1.0, 0.3], [2.0, 1.0]], dtype=DTYPE).expand(r, k, d)
    scales = torch.diag_embed(sd) if dense else sd
    log_w = torch.tensor([0.2, 0.5, 0.3], dtype=DTYPE).log().expand(r, k)
    x = ParticleMixture(log_w, means, scales).sample(
        torch.rand(r, n, 1, generator=g, dtype=DTYPE), torch.randn(r, n, d, generator=g, dtype=DTYPE)
    )
    w = log_w[0].exp()
    mean = (w[:, None] * means[0]).sum(0)
    var = (w[:, None] * (sd[0] ** 2 + means[0] ** 2)).sum(0) - mean**2
    z = (x.mean(1) - mean) / (var / n).sqrt()  # iid draws: the sample mean's standard error
    assert z.abs().max() < Z_MAX, z


def test_weighted_em_recovers_well_separated_components():
    """Weights and means of three separated components, from weighted draws.

    The particles are drawn with equal shares and weighted to shares (0.2, 0.5, 0.3), so the
    fit must use the weights. Standard errors: a share from importance weights has
    ``sd ~ sqrt(p (1 - p) / n_eff)``; a mean coordinate ``sd ~ sigma / sqrt(p n_eff)``.
    """
    g = torch.Generator().manual_seed(2)
    n, d = 6000, 2
    centres = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]], dtype=DTYPE)
    label = torch.arange(n) % 3
    x = (centres[label] + torch.randn(n, d, generator=g, dtype=DTYPE))[None]
    share = torch.tensor([0.2, 0.5, 0.3], dtype=DTYPE)
    log_w = torch.log_softmax((share / (1 / 3))[label].log(), -1)[None]
    mix = fit_mixture(x, log_w, 3, torch.Generator().manual_seed(3), "full")
    order = mix.means[0, :, 0].argsort()
    order = order[[0, 1, 2]] if mix.means[0, order[1], 1] > 3 else order
    n_eff = float(1 / (log_w.exp() ** 2).sum())
    weights = mix.log_weights[0, order].exp()
    assert ((weights - share).abs() / (share * (1 - share) / n_eff).sqrt()).max() < Z_MAX, weights
    err = (mix.means[0, order] - centres).abs() / (1 / (share[:, None] * n_eff)).sqrt()
    assert err.max() < Z_MAX, err


def test_mixture_arguments_are_checked():
    x = torch.zeros(1, 5, 2, dtype=DTYPE)
    lw = torch.full((1, 5), -math.log(5), dtype=DTYPE)
    with pytest.raises(ConfigurationError, match="covariance"):
        fit_mixture(x, lw, 2, torch.Generator(), covariance="dense")
    with pytest.raises(ConfigurationError, match="n_components"):
        fit_mixture(x, lw, 6, torch.Generator())
    with pytest.raises(ConfigurationError, match="covariance"):
        fit_mixture(x, lw, 2, torch.Generator(), covariance=("diag", "dense"))
    with pytest.raises(ConfigurationError, match="covariance"):
        fit_mixture(x, lw, 2, torch.Generator(), covariance=())
    with pytest.raises(ConfigurationError, match="covariance"):
        IndependenceMH(covariance="tied")
    with pytest.raises(ConfigurationError, match="mode_jumps"):
        sampler.sample("double-well", n_particles=50, n_replicas=1, seed=0, mode_jumps=-1, progress=False)


def _two_clusters(g: torch.Generator, n: int, d: int, sds: torch.Tensor) -> torch.Tensor:
    """``n`` draws ``(1, n, d)``, half about ``-3 e`` and half about ``+3 e``, coordinate sds ``sds`` ``(d,)``."""
    centre = torch.full((d,), 3.0, dtype=DTYPE) * torch.where(torch.arange(n) % 2 == 0, -1.0, 1.0).to(DTYPE)[:, None]
    return (centre + sds * torch.randn(n, d, generator=g, dtype=DTYPE))[None]


def test_aic_picks_the_covariance_structure_per_replica():
    """Isotropic clusters get spherical components, anisotropic ones diagonal or dense ones.

    Replica 0 has isotropic clusters (sd 0.5), replica 1 clusters whose coordinate sds run from
    0.25 to 1; d = 8, 250 points per cluster. A spherical fit's variance is the mean of 8 sample
    variances of 250 draws: relative sd sqrt(2 / 2000) = 0.032, so it is within 4 of them of
    0.25. On replica 1 a spherical fit loses ~250 nats of log likelihood per cluster against ~16
    parameters, on replica 0 a diagonal one gains ~chi^2_7 / 2 per cluster against 7 parameters:
    both choices hold far beyond their noise.
    """
    g = torch.Generator().manual_seed(5)
    n, d = 500, 8
    iso = _two_clusters(g, n, d, torch.full((d,), 0.5, dtype=DTYPE))
    aniso = _two_clusters(g, n, d, torch.linspace(0.25, 1.0, d, dtype=DTYPE))
    x = torch.cat([iso, aniso])
    lw = torch.full((2, n), -math.log(n), dtype=DTYPE)
    for candidates in [("spherical", "diag"), ("spherical", "diag", "full")]:
        mix = fit_mixture(x, lw, 2, torch.Generator().manual_seed(0), candidates)
        assert mix.dense == ("full" in candidates)
        scales = torch.diagonal(mix.scales, dim1=-2, dim2=-1) if mix.dense else mix.scales
        assert (scales[0] == scales[0, :, :1]).all(), "replica 0: spherical components"
        assert ((scales[0] ** 2 / 0.25 - 1).abs() < 4 * math.sqrt(2 / (250 * d))).all(), scales[0]
        rel = scales[1] / torch.linspace(0.25, 1.0, d, dtype=DTYPE)  # sd of a sample sd: sd / sqrt(2 n)
        assert ((rel - 1).abs() < 4 / math.sqrt(2 * 250)).all(), rel
        if mix.dense:  # replica 0's spherical components, stored densely beside replica 1's, stay diagonal
            assert (mix.scales[0].tril(-1) == 0).all()
    single = fit_mixture(x, lw, 2, torch.Generator().manual_seed(0), "spherical")
    assert (single.scales == single.scales[..., :1]).all()


def test_identical_particles_fit_a_proper_mixture():
    """All particles at one point (a collapsed population): finite, positive scales, no NaN."""
    x = torch.ones(2, 40, 3, dtype=DTYPE)
    lw = torch.full((2, 40), -math.log(40), dtype=DTYPE)
    for covariance in ["full", "spherical", ("spherical", "diag", "full")]:
        mix = fit_mixture(x, lw, 4, torch.Generator().manual_seed(0), covariance)
        assert torch.isfinite(mix.log_prob(x)).all() and torch.isfinite(mix.scales).all()


# -- the corrector ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("components", "covariance"), [(1, "full"), (2, "full"), (3, "diag"), (2, "spherical"), (None, "auto")]
)
def test_imh_leaves_an_unequal_mixture_invariant(components, covariance):
    """Started from exact draws, the particles keep the target's mode share and moments.

    Standard errors of iid draws over all R N = 40,000 particles: the share below 0 is binomial;
    the first coordinate's mean has ``sd = sqrt(var(x_0) / RN)``; E[x_1^2] = 1 with ``sd =
    sqrt(2 / RN)``. A single broad Gaussian (components=1) is a poor proposal, and still exact.
    """
    target = TwoModes()
    x, _ = target.exact(2, 20_000, seed=4)
    particles, ctx = particles_at_t1(target, x, seed=5)
    out = IndependenceMH(n_steps=5, n_components=components, covariance=covariance).apply(particles, None, ctx)
    y = out.particles.x
    assert (out.info["acceptance"] > 0.3).all(), out.info
    assert (y != x).any(-1).to(DTYPE).mean() > 0.8  # the particles really moved
    m = y.shape[0] * y.shape[1]
    p = exact_share_below_zero(target)
    w, a = target.weight, target.a
    mean0 = -w * a + (1 - w) * a
    var0 = w * (0.25 + a * a) + (1 - w) * (1 + a * a) - mean0**2
    z = [
        (float(first_mode_share(target, y).mean()) - p) / math.sqrt(p * (1 - p) / m),
        (float(y[..., 0].mean()) - mean0) / math.sqrt(var0 / m),
        (float(y[..., 1].square().mean()) - (w * 0.25 + (1 - w))) / math.sqrt(2 * (w * 0.0625 + (1 - w)) / m),
    ]
    assert max(abs(v) for v in z) < Z_MAX, z
    torch.testing.assert_close(out.particles.evaluation.log_target, -target.energy(y))


def test_imh_restores_mode_shares_that_local_moves_cannot():
    """Particles split 50/50 between modes 8 apart whose true shares are 30/70.

    MALA cannot cross (the share stays 0.5); ten independence sweeps with acceptance near 1
    reach the exact share within the binomial error of iid draws (RN = 8000).
    """
    target = TwoModes(dim=4, a=4.0)
    x, _ = target.exact(2, 4000, seed=6, weight=0.5)
    particles, ctx = particles_at_t1(target, x, seed=7)
    mala = sampler.corrector("mala", n_steps=10)
    stuck = mala.apply(particles, mala.init(particles, ctx), ctx).particles.x
    assert abs(float(first_mode_share(target, stuck).mean()) - 0.5) < 0.02
    moved = IndependenceMH(n_steps=10).apply(particles, None, ctx).particles.x
    p, m = exact_share_below_zero(target), moved.shape[0] * moved.shape[1]
    z = (float(first_mode_share(target, moved).mean()) - p) / math.sqrt(p * (1 - p) / m)
    assert abs(z) < Z_MAX, z


def test_a_small_mode_keeps_its_share():
    """A 2% mode in 20 dimensions keeps its exact share (RN = 16,000 particles, binomial error).

    A mixture fitted to the very particles it moves overrates them (about its number of
    parameters over the points per component) and drains small modes; the corrector fits each
    half of the particles on the other half.
    """
    target = TwoModes(dim=20, weight=0.02, a=4.0)
    x, _ = target.exact(8, 2000, seed=8)
    particles, ctx = particles_at_t1(target, x, seed=9)
    moved = IndependenceMH(n_steps=5).apply(particles, None, ctx).particles.x
    p, m = exact_share_below_zero(target), moved.shape[0] * moved.shape[1]
    z = (float(first_mode_share(target, moved).mean()) - p) / math.sqrt(p * (1 - p) / m)
    assert abs(z) < Z_MAX, z


def test_halves_keep_each_lineage_together():
    """Siblings (one label) share a half; without labels, identical positions do; the split is fair.

    4000 labels of 5 particles each: the share of labels in half A is binomial, sd sqrt(0.25 / 4000).
    """
    g = torch.Generator().manual_seed(0)
    r, n = 2, 20_000
    x = torch.randn(r, n, 3, generator=g, dtype=DTYPE)
    groups = (torch.arange(n) // 5).expand(r, n)
    in_a = random_halves(x, g, groups)
    by_group = in_a.reshape(r, n // 5, 5)
    assert (by_group == by_group[..., :1]).all()
    assert (by_group[..., 0].to(DTYPE).mean(-1) - 0.5).abs().max() < Z_MAX * math.sqrt(0.25 / (n // 5))
    label = groups[0][torch.randperm(n, generator=g)]
    in_a = random_halves(x[:, label], g)  # every point 5 times, the copies scattered
    order = label.argsort()
    assert (in_a[:, order].reshape(r, n // 5, 5) == in_a[:, order].reshape(r, n // 5, 5)[..., :1]).all()


def test_imh_labels_lineages_that_resampling_passes_on():
    """After a sweep each particle heads a lineage; offspring inherit it, and the next sweep splits by it."""
    target = TwoModes()
    x, _ = target.exact(1, 400, seed=4)
    particles, ctx = particles_at_t1(target, x, seed=5)
    imh = IndependenceMH(n_components=2)
    out = imh.apply(particles, None, ctx).particles
    assert torch.equal(out.extras[LINEAGE_KEY], torch.arange(400)[None])
    ancestors = torch.randint(0, 400, (1, 400), generator=torch.Generator().manual_seed(1))
    offspring = out.gather(ancestors)
    assert torch.equal(offspring.extras[LINEAGE_KEY], ancestors)
    again = imh.apply(offspring, None, ctx).particles
    assert torch.equal(again.extras[LINEAGE_KEY], torch.arange(400)[None])


def test_smc_with_mode_jumps_counts_its_evaluations_and_stays_exact():
    """``smc(mode_jumps=1)`` on a fixed 8-stage schedule spends N more evaluations per replica and stage, repeatably.

    Its log Z over R = 8 replicas is within 4 standard errors of 0 (the spread of the replicas'
    estimates, the Monte Carlo error), and the mode share within 4 binomial errors of exact.
    """
    target = TwoModes(dim=2, a=3.0)
    common = dict(n_particles=1000, n_replicas=8, seed=10, progress=False, schedule=Linear(8))
    base = sampler.sample(target, method="smc", **common)
    jumps = sampler.sample(target, method="smc", mode_jumps=1, **common)
    assert jumps.n_target_evals - base.n_target_evals == 8 * 1000 * 8
    assert [s.info["acceptance_2"].shape for s in jumps.steps][0] == (8,)
    log_z = jumps.log_Z_per_replica
    assert abs(float(log_z.mean())) < Z_MAX * float(log_z.std()) / math.sqrt(8) + 1e-12
    p, m = exact_share_below_zero(target), 8 * 1000
    z = (float(first_mode_share(target, jumps.samples).mean()) - p) / math.sqrt(p * (1 - p) / m)
    assert abs(z) < Z_MAX, z
    assert jumps.options["mode_jumps"] == 1
    again = sampler.sample(target, method="smc", mode_jumps=1, **common)
    assert torch.equal(again.samples, jumps.samples)  # seeded: the halves, the fits and the moves repeat
