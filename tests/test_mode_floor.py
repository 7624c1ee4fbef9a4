"""Mode-preserving resampling (``smc(mode_floor=m)``, :mod:`sampler_plugins.mcmc.balanced`).

Every test is seeded; tolerances are Monte Carlo errors of the checked quantity (stated next to
each check) or exact identities (to round-off).
"""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from test_kernels import particles_at_t1
from test_mode_jumps import Z_MAX, TwoModes, exact_share_below_zero, first_mode_share

import sampler
from sampler.errors import ConfigurationError
from sampler.ext import Linear
from sampler_plugins.mcmc.balanced import balanced_resample, floored_allocation
from sampler_plugins.mcmc.independence import IndependenceMH

DTYPE = torch.float64


def test_floored_allocation_floors_small_clusters_and_shares_the_rest():
    weights = torch.tensor([[0.6, 0.3, 0.099, 0.001, 0.0], [0.25, 0.25, 0.25, 0.25, 0.0]], dtype=DTYPE)
    alloc = floored_allocation(weights, 20.0, 200)
    assert torch.allclose(alloc.sum(-1), torch.full((2,), 200.0, dtype=DTYPE))
    # Row 0: the 0.1% cluster is floored; 0.099 * 200 = 19.8 falls below the floor once the rest is rescaled.
    assert alloc[0, 3] == 20.0 and alloc[0, 2] == 20.0 and alloc[0, 4] == 0.0
    assert torch.allclose(alloc[0, :2], torch.tensor([160.0 * 2 / 3, 160.0 / 3], dtype=DTYPE))
    assert torch.allclose(alloc[1, :4], torch.full((4,), 50.0, dtype=DTYPE))  # nothing to floor: proportional
    # Floors that would exceed N: equal shares for the live clusters.
    assert torch.allclose(floored_allocation(weights[:1], 60.0, 200)[0, :4], torch.full((4,), 50.0, dtype=DTYPE))


def _two_groups(r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """190 particles about (-5, 0), 10 about (5, 0) holding 0.1% of the weight; the same in every replica."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(200, 2, generator=g, dtype=DTYPE)
    small = torch.arange(200) >= 190
    x[:, 0] += torch.where(small, 5.0, -5.0)
    log_w = torch.randn(200, generator=g, dtype=DTYPE)
    log_w = torch.where(small, log_w - torch.logsumexp(log_w[small], 0) + math.log(1e-3), log_w)
    big = ~small
    log_w = torch.where(big, log_w - torch.logsumexp(log_w[big], 0) + math.log1p(-1e-3), log_w)
    return x.expand(r, -1, -1), log_w.expand(r, -1), small


def test_balanced_resampling_keeps_the_floor_and_every_cluster_mass():
    """The small group gets its floor of offspring, to within one, and exactly its 0.1% of the weight."""
    x, log_w, small = _two_groups(64, seed=0)
    ancestors, new_log_w, floored = balanced_resample(x, log_w, 20, torch.Generator().manual_seed(1))
    offspring_small = small[ancestors]
    counts = offspring_small.sum(-1)
    assert int(counts.min()) >= 19 and int(counts.max()) <= 21
    mass_small = torch.where(offspring_small, new_log_w.exp(), 0.0).sum(-1)
    assert torch.allclose(mass_small, torch.full_like(mass_small, 1e-3), rtol=1e-10)
    assert torch.allclose(floored, counts.to(DTYPE) / 200)
    # Within a cluster the offspring are equally weighted.
    highest = torch.where(~offspring_small, new_log_w, -math.inf).amax(-1)
    lowest = torch.where(~offspring_small, new_log_w, math.inf).amin(-1)
    assert torch.allclose(highest, lowest)


def test_balanced_resampling_is_unbiased():
    """``E[sum_j w'_j f(x_{a_j})] = sum_i w_i f(x_i)``, f = x_1 + x_0^2: within 4 standard errors over 4000 draws."""
    x, log_w, _ = _two_groups(4000, seed=2)
    ancestors, new_log_w, _ = balanced_resample(x, log_w, 20, torch.Generator().manual_seed(3))
    f = x[..., 1] + x[..., 0].square()
    exact = float((log_w[0].exp() * f[0]).sum())
    estimates = (new_log_w.exp() * torch.gather(f, 1, ancestors)).sum(-1)
    z = (float(estimates.mean()) - exact) / (float(estimates.std()) / math.sqrt(4000))
    assert abs(z) < Z_MAX, z


def test_without_small_clusters_it_is_systematic_resampling():
    """Equal weights on two groups of 100, a floor of 25 (two clusters): nothing is floored, weights stay equal."""
    x, _, _ = _two_groups(4, seed=4)
    x = torch.cat([x[:, :100], x[:, :100] + torch.tensor([10.0, 0.0], dtype=DTYPE)], 1)
    log_w = torch.full((4, 200), -math.log(200), dtype=DTYPE)
    _, new_log_w, floored = balanced_resample(x, log_w, 25, torch.Generator().manual_seed(5))
    assert torch.allclose(new_log_w, log_w) and not bool(floored.any())


def test_smc_with_a_mode_floor_stays_exact_and_repeats():
    """``smc(mode_floor=20)`` on a fixed 8-stage schedule: log Z over R = 8 replicas within 4 standard errors of 0.

    The mode share is within 4 binomial errors of exact; the floored share is recorded; a
    second run with the seed repeats the first exactly.
    """
    target = TwoModes(dim=2, a=3.0)
    common = dict(n_particles=1000, n_replicas=8, seed=10, progress=False, schedule=Linear(8), mode_floor=20)
    res = sampler.sample(target, method="smc", **common)
    log_z = res.log_Z_per_replica
    assert abs(float(log_z.mean())) < Z_MAX * float(log_z.std()) / math.sqrt(8)
    p, m = exact_share_below_zero(target), 8 * 1000
    z = (float(first_mode_share(target, res.samples).mean()) - p) / math.sqrt(p * (1 - p) / m)
    assert abs(z) < Z_MAX, z
    assert res.options["mode_floor"] == 20
    assert [s.info["floored"].shape for s in res.steps][0] == (8,)
    again = sampler.sample(target, method="smc", **common)
    assert torch.equal(again.samples, res.samples)


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_mode_floor_is_checked(bad):
    with pytest.raises(ConfigurationError, match="mode_floor"):
        sampler.sample(TwoModes(), method="smc", n_particles=50, mode_floor=bad, progress=False)


def test_mode_floor_and_waste_free_exclude_each_other():
    with pytest.raises(ConfigurationError, match="mode_floor"):
        sampler.sample(TwoModes(), method="smc", n_particles=50, waste_free=5, mode_floor=10, progress=False)


def _weighted_at_t1(target: TwoModes, share: float, r: int, n: int, seed: int):
    """Particles with ``share`` of them drawn in the first mode, weighted to the target's shares (properly weighted)."""
    x, first = target.exact(r, n, seed, weight=share)
    log_w = torch.where(first, math.log(target.weight / share), math.log((1 - target.weight) / (1 - share))).to(DTYPE)
    particles, ctx = particles_at_t1(target, x, seed + 1)
    return attrs.evolve(particles, log_weights=torch.log_softmax(log_w, -1)), ctx


@pytest.mark.parametrize("share", [0.5, 0.1])
def test_balanced_jumps_keep_the_allocation_and_the_weighted_shares(share):
    """A properly weighted set (``share`` of the particles in a mode of true weight 0.3, resp. 0.02) stays one.

    After 5 balanced independence sweeps the weighted mode share is within 4 standard errors
    (the spread over R = 8 replicas) of exact, and the particles' allocation stays within 4
    binomial errors of ``share``; plain sweeps move the allocation to the exact share.
    """
    target = TwoModes(dim=3, weight=0.3 if share == 0.5 else 0.02, a=4.0)
    particles, ctx = _weighted_at_t1(target, share, 8, 2000, seed=20)
    moved = IndependenceMH(n_steps=5, balanced=True).apply(particles, None, ctx).particles
    below = (moved.x[..., 0] < 0).to(DTYPE)
    weighted = (moved.log_weights.exp() * below).sum(-1)  # (R,)
    p = exact_share_below_zero(target)
    z = (float(weighted.mean()) - p) / (float(weighted.std()) / math.sqrt(8))
    assert abs(z) < Z_MAX, z
    z_alloc = (float(below.mean()) - share) / math.sqrt(share * (1 - share) / below.numel())
    assert abs(z_alloc) < Z_MAX, z_alloc
    plain = IndependenceMH(n_steps=5).apply(particles, None, ctx).particles
    assert abs(float((plain.x[..., 0] < 0).to(DTYPE).mean()) - p) < 0.02
