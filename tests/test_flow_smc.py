"""The ``flow_smc`` plugin: the per-replica RealNVP flow, the ``neutra`` corrector and ``flow-smc``.

Every test is seeded. Exact checks (bijection, log-determinant, cached evaluations) use float64
round-off tolerances; statistical checks compare with exact moments or log Z at the Monte Carlo
error stated next to each.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_kernels import exact_particles, particles_at_t1
from torch.distributions import MultivariateNormal

import sampler
from sampler.errors import ConfigurationError
from sampler.ext import Linear
from sampler_plugins.flow_smc.flow import CouplingFlow, coupling_masks, fit_flow, weighted_base
from sampler_plugins.flow_smc.latent import CrossFittedFlow, FlowPreconditioned

from conftest import run_and_resume

DTYPE = torch.float64

#: |z| threshold of the statistical checks: each z is ~N(0, 1) under the null.
Z_MAX = 4.0


def random_flow(r: int, d: int, seed: int, hidden: int = 8) -> CouplingFlow:
    """A flow with random (non-identity) couplings and a random dense base."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(r, d, d, generator=g, dtype=DTYPE)
    tril = torch.linalg.cholesky(a @ a.transpose(-1, -2) + torch.eye(d, dtype=DTYPE))
    flow = CouplingFlow.identity_couplings(torch.randn(r, d, generator=g, dtype=DTYPE), tril, hidden, g)
    return flow.with_parameters([torch.randn(p.shape, generator=g, dtype=DTYPE) * 0.3 for p in flow.parameters()])


def test_masks_let_every_coordinate_condition_every_other():
    """For every ordered pair (i, j), some coupling keeps i and moves j."""
    for d in (2, 3, 10, 17):
        m = coupling_masks(d).bool()
        assert m.shape == (2 * math.ceil(math.log2(d)), d)
        for i in range(d):
            for j in range(d):
                assert i == j or bool((m[:, i] & ~m[:, j]).any()), (d, i, j)
    assert coupling_masks(1).shape == (0, 1)


def test_flow_is_a_bijection_with_the_autograd_log_determinant():
    flow = random_flow(2, 4, seed=0)
    z = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    x, log_det = flow.forward(z)
    z_back, log_det_inv = flow.inverse(x)
    torch.testing.assert_close(z_back, z, rtol=0, atol=1e-12)
    torch.testing.assert_close(log_det_inv, -log_det, rtol=0, atol=1e-12)
    for r in range(2):
        for n in range(5):

            def point(v: torch.Tensor, r: int = r) -> torch.Tensor:
                return flow.forward(v[None, None].expand(2, 1, 4))[0][r, 0]

            jac = torch.autograd.functional.jacobian(point, z[r, n])
            torch.testing.assert_close(torch.linalg.slogdet(jac)[1], log_det[r, n], rtol=0, atol=1e-10)


def test_affine_base_alone_is_the_weighted_gaussian():
    """Zero output layers: ``q`` is N(weighted mean, regularized weighted covariance)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 400, 3, generator=g, dtype=DTYPE) * torch.tensor([1.0, 2.0, 0.5], dtype=DTYPE) + 1.0
    log_w = torch.log_softmax(torch.randn(3, 400, generator=g, dtype=DTYPE), -1)
    loc, tril = weighted_base(x, log_w)
    torch.testing.assert_close(loc, (log_w.exp()[..., None] * x).sum(1))
    flow = CouplingFlow.identity_couplings(loc, tril, 8, g)
    expected = MultivariateNormal(loc[:, None, :], scale_tril=tril[:, None]).log_prob(x)
    torch.testing.assert_close(flow.log_prob(x), expected, rtol=1e-10, atol=1e-10)


def test_or_identity_keeps_the_chosen_rows_and_makes_the_others_the_identity():
    flow = random_flow(3, 4, seed=13)
    keep = torch.tensor([True, False, True])
    mixed = flow.or_identity(keep)
    z = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(14), dtype=DTYPE)
    x, log_det = mixed.forward(z)
    x_all, log_det_all = flow.forward(z)
    assert torch.equal(x[1], z[1]) and torch.equal(log_det[1], torch.zeros(6, dtype=DTYPE))
    assert torch.equal(mixed.inverse(z)[0][1], z[1])
    torch.testing.assert_close(x[keep], x_all[keep], rtol=0, atol=0)
    torch.testing.assert_close(log_det[keep], log_det_all[keep], rtol=0, atol=0)


def halves_weights(n: int, r: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Log weights ``(r, 2n)``: uniform on the first n particles (fitted), and on the last n (held out)."""
    fit = torch.cat([torch.full((r, n), -math.log(n), dtype=DTYPE), torch.full((r, n), -math.inf, dtype=DTYPE)], 1)
    return fit, fit.flip(1)


def test_fit_learns_a_funnel_from_its_draws_and_uses_the_weights():
    """Fitted to 1000 exact funnel draws per replica, the flow's KL on 1000 others drops from the
    affine base's ~8 nats to under 2 (its reported held-out gain is that drop); particles of weight
    zero in both sets change nothing."""
    target = sampler.get_target("funnel", dim=4)
    g = torch.Generator().manual_seed(3)
    x = target.sample(2 * 2000, g, dtype=DTYPE).reshape(2, 2000, 4)
    fit_w, held_w = halves_weights(1000)
    flow = CouplingFlow.identity_couplings(*weighted_base(x, fit_w), 16, torch.Generator().manual_seed(4))
    fitted, gain, _ = fit_flow(flow, x, fit_w, x, held_w, 150, 3e-3)
    held = x[:, 1000:]
    kl = lambda f: (target.log_prob(held) - f.log_prob(held)).mean(-1)  # noqa: E731
    assert (kl(flow) > 4.0).all() and (kl(fitted) < 2.0).all(), (kl(flow), kl(fitted))
    torch.testing.assert_close(gain, kl(flow) - kl(fitted))
    far = torch.cat([x, 50.0 + x], 1)
    pad = torch.full_like(fit_w, -math.inf)
    fit_far, held_far = torch.cat([fit_w, pad], 1), torch.cat([held_w, pad], 1)
    padded = CouplingFlow.identity_couplings(*weighted_base(far, fit_far), 16, torch.Generator().manual_seed(4))
    fitted_far, _, _ = fit_flow(padded, far, fit_far, far, held_far, 150, 3e-3)
    torch.testing.assert_close(fitted_far.log_prob(held), fitted.log_prob(held), rtol=1e-6, atol=1e-6)


def test_early_stopping_keeps_the_base_where_couplings_do_not_generalize():
    """On 20 Gaussian draws per replica, a flow fitted for 300 steps overfits: the held-out check
    keeps the affine base (gain 0, zero output layers); selected on its own draws instead, the fit
    gains on them and loses on the held-out ones."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 40, 6, generator=g, dtype=DTYPE)
    fit_w, held_w = halves_weights(20)
    flow = CouplingFlow.identity_couplings(*weighted_base(x, fit_w), 32, torch.Generator().manual_seed(6))
    kept, gain, _ = fit_flow(flow, x, fit_w, x, held_w, 300, 1e-2)
    assert torch.equal(gain, torch.zeros(2, dtype=DTYPE)) and not kept.w_out.any()
    overfit, train_gain, _ = fit_flow(flow, x, fit_w, x, fit_w, 300, 1e-2)  # "held out" = the fitted draws
    assert (train_gain > 0).all()
    score = lambda f: (held_w.exp() * f.log_prob(x)).sum(-1)  # noqa: E731
    assert (score(overfit) < score(kept)).all()


def test_packed_halves_round_trip():
    """Each particle comes back from its own half's row; the padding is discarded."""
    g = torch.Generator().manual_seed(10)
    in_a = torch.rand(3, 11, generator=g) < 0.3
    halves = CrossFittedFlow(random_flow(6, 2, seed=0), in_a, *CrossFittedFlow.pack_halves(in_a))
    v = torch.randn(3, 11, 2, generator=g, dtype=DTYPE)
    packed = halves.pack(v)
    assert packed.shape == (6, int(max(in_a.sum(1).max(), (~in_a).sum(1).max())), 2)
    assert torch.equal(halves.unpack(packed), v)
    assert torch.equal(halves.valid.sum(1), torch.cat([in_a.sum(1), (~in_a).sum(1)]))
    rows_a = torch.gather(in_a, 1, halves.index[:3])
    assert bool(rows_a[halves.valid[:3]].all()) and not bool(
        torch.gather(in_a, 1, halves.index[3:])[halves.valid[3:]].any()
    )


def test_neutra_with_every_particle_of_a_replica_in_one_half():
    """Copies of one point share a half, so a replica of copies has an empty half: its flow is fitted
    to the copies themselves and nothing becomes NaN."""
    target = sampler.get_target("funnel", dim=3)
    x = target.sample(2 * 50, torch.Generator().manual_seed(11), dtype=DTYPE).reshape(2, 50, 3)
    x[0] = x[0, :1]
    particles, ctx = particles_at_t1(target, x, seed=12)
    step = FlowPreconditioned(n_steps=2, n_fit=5)
    out = step.apply(particles, step.init(particles, ctx), ctx)
    assert torch.isfinite(out.particles.x).all() and torch.isfinite(out.particles.evaluation.log_target).all()
    assert all(torch.isfinite(v).all() for v in out.info.values())


@pytest.mark.parametrize("compare", [False, True])
def test_neutra_caches_the_evaluation_of_where_particles_are(compare):
    """After each application the cached log densities and gradients are those of a fresh evaluation."""
    particles, ctx = exact_particles(sampler.get_target("funnel", dim=5), 2, 300, seed=5)
    step = FlowPreconditioned(n_steps=3, n_fit=30, n_refit=5, compare=compare)
    state = step.init(particles, ctx)
    for _ in range(2):
        out = step.apply(particles, state, ctx)
        particles, state = out.particles, out.state
        fresh = ctx.path.evaluate(particles.x, grad=True)
        ev = particles.evaluation
        torch.testing.assert_close(ev.log_target, fresh.log_target, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(ev.log_ref, fresh.log_ref, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(ev.grad_target, fresh.grad_target, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ev.grad_ref, fresh.grad_ref, rtol=1e-9, atol=1e-9)
    assert 0.2 < float(out.info["acceptance"].mean()) < 0.95


def test_compare_chooses_the_plain_sweeps_between_separated_modes_and_the_flow_on_a_narrow_ridge():
    """Probes decide per replica. Two modes 12 sds apart: the flow's dense affine base whitens across
    them, its latent steps shrink and the plain sweeps move further. A Gaussian ridge with sds 100
    and 0.01: plain steps are limited by the narrow direction, the flow whitens it away. Either
    way the probes differ by more than 3x, and each kind keeps its own step size."""
    modes = sampler.targets.GaussianMixture(np.array([[-6.0] * 4, [6.0] * 4]), std=1.0)
    rot = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(15), dtype=DTYPE))[0]
    cov = rot @ torch.diag(torch.tensor([1e4, 1.0, 1.0, 1e-4], dtype=DTYPE)) @ rot.T
    ridge = sampler.targets.Gaussian(mean=np.zeros(4), cov=cov.numpy())
    for target, expected in ((modes, 0.1), (ridge, 0.9)):
        particles, ctx = exact_particles(target, 3, 400, seed=16)
        step = FlowPreconditioned(n_steps=10, n_fit=30, n_refit=10, compare=True)
        state = step.init(particles, ctx)
        for _ in range(3):
            out = step.apply(particles, state, ctx)
            particles, state = out.particles, out.state
        shares = out.info["flow_sweeps"]
        assert torch.equal(shares, torch.full((3,), expected, dtype=DTYPE)), (target.name, out.info)
        jumps = (out.info["flow_jump"], out.info["plain_jump"])
        assert (jumps[0] > 3 * jumps[1] if expected > 0.5 else jumps[1] > 3 * jumps[0]).all(), jumps
        assert torch.equal(out.info["step_size"], state.kernel.step_size)
        assert not torch.equal(state.kernel.step_size, state.plain.step_size)


@pytest.mark.slow
@pytest.mark.parametrize("compare", [False, True])
def test_neutra_leaves_the_funnel_invariant(compare):
    """From exact funnel draws, 8 applications keep x_0 ~ N(0, 9) and the neck's mass P(x_0 < -3).

    Cross-fitting matters here: a flow fitted to the particles it moves drifted the variance of
    x_0 from 8.95 to 8.5 in 20 applications (z ~ -4.5 at this N). Each particle stays exactly
    distributed, so the sample mean, variance and neck fraction of the R N particles have their
    iid standard errors (the particles are close to independent across the population).
    """
    r, n = 4, 2000
    particles, ctx = exact_particles(sampler.get_target("funnel"), r, n, seed=6)
    step = FlowPreconditioned(n_steps=5, n_fit=100, compare=compare)
    state = step.init(particles, ctx)
    for _ in range(8):
        out = step.apply(particles, state, ctx)
        particles, state = out.particles, out.state
    x0 = particles.x[..., 0].reshape(-1)
    m = x0.numel()
    p_neck = 0.5 * (1 + math.erf(-1 / math.sqrt(2)))
    z_mean = float(x0.mean()) / math.sqrt(9 / m)
    z_var = (float(x0.var()) - 9) / math.sqrt(2 * 81 / m)
    z_neck = (float((x0 < -3).double().mean()) - p_neck) / math.sqrt(p_neck * (1 - p_neck) / m)
    assert max(abs(z_mean), abs(z_var), abs(z_neck)) < Z_MAX, (z_mean, z_var, z_neck)


@pytest.mark.parametrize("split", ["adaptive", "fixed"])
def test_flow_smc_counts_the_same_evaluations_as_smc_on_one_schedule(split):
    """Fitting evaluates no target: on a fixed schedule flow-smc spends smc's evaluations, however the sweeps split."""
    common = dict(n_particles=100, n_replicas=2, seed=7, schedule=Linear(4), n_steps=3, progress=False)
    smc = sampler.sample("double-well", method="smc", reference="prior", **common)
    flow = sampler.sample(
        "double-well", method="flow-smc", reference="prior", n_fit=20, n_refit=5, **common, plain_steps=0, split=split
    )
    assert (flow.n_target_evals, flow.n_grad_evals) == (smc.n_target_evals, smc.n_grad_evals)
    assert flow.method == "flow-smc" and flow.options["kernel"] == "mala"
    mixed = sampler.sample(
        "double-well",
        method="flow-smc",
        reference="prior",
        n_fit=20,
        n_refit=5,
        **{**common, "n_steps": 2},
        plain_steps=1,
        split=split,
    )
    assert (mixed.n_target_evals, mixed.n_grad_evals) == (smc.n_target_evals, smc.n_grad_evals)
    assert mixed.options["plain_steps"] == 1 and mixed.options["split"] == split


@pytest.mark.parametrize("split", ["adaptive", "fixed"])
def test_flow_smc_passes_kernel_options_to_both_kinds_of_sweeps(split):
    """HMC with 2 leapfrog steps in the latent and the plain sweeps alike: smc's count with the same options."""
    common = dict(n_particles=50, n_replicas=1, seed=3, schedule=Linear(3), progress=False, reference="prior")
    hmc = dict(kernel="hmc", n_leapfrog=2)
    smc = sampler.sample("double-well", method="smc", n_steps=2, **common, **hmc)
    flow = sampler.sample(
        "double-well", method="flow-smc", n_fit=5, n_steps=1, plain_steps=1, split=split, **common, **hmc
    )
    assert (flow.n_target_evals, flow.n_grad_evals) == (smc.n_target_evals, smc.n_grad_evals)
    assert flow.options["n_leapfrog"] == 2


@pytest.mark.slow
def test_flow_smc_log_Z_and_moments_of_a_correlated_gaussian():
    """log Z and the mean of a correlated, shifted Gaussian (exact ``target.log_Z``) within 4 Monte Carlo sigma.

    The sigma of log Z is the spread of the replicas' estimates over sqrt(R); of a mean
    coordinate, its posterior sd over sqrt(R N) (equally weighted particles after resampling,
    close to independent at the end of an SMC run).
    """
    cov = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 0.25]], dtype=DTYPE)
    target = sampler.targets.Gaussian(mean=np.array([1.0, -1.0, 2.0]), cov=cov.numpy())
    r, n = 8, 500
    res = sampler.sample(target, method="flow-smc", n_particles=n, n_replicas=r, seed=8, dtype=DTYPE, progress=False)
    per_replica = res.log_Z_per_replica
    z_log_Z = (float(per_replica.mean()) - target.log_Z) / max(float(per_replica.std()) / math.sqrt(r), 1e-3)
    assert abs(z_log_Z) < Z_MAX, per_replica
    mean = res.samples.reshape(-1, 3).mean(0)
    z_mean = (mean - torch.tensor([1.0, -1.0, 2.0], dtype=DTYPE)) / (torch.diagonal(cov).sqrt() / math.sqrt(r * n))
    assert z_mean.abs().max() < Z_MAX, z_mean


@pytest.mark.parametrize("split", ["adaptive", "fixed"])
def test_flow_smc_resumes_bit_for_bit(tmp_path, split):
    """Checkpoints carry the flows and both kinds of sweeps' step sizes."""
    common = dict(n_particles=60, n_replicas=2, seed=9, dtype=DTYPE, progress=False)
    options = dict(n_fit=10, n_refit=3, n_steps=2, plain_steps=1, schedule=Linear(5), reference="prior", split=split)
    full, resumed = run_and_resume(tmp_path, 8, "flow-smc", options, **common)
    assert torch.equal(resumed.samples, full.samples)
    assert torch.equal(resumed.log_Z_per_replica, full.log_Z_per_replica)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(kernel="rwmh"), "gradient kernel"),
        (dict(metric="dense"), "identity metric"),
        (dict(n_fit=0), "n_fit"),
        (dict(lr=0.0), "lr"),
        (dict(compare=True, n_steps=1), "compare needs n_steps >= 2"),
    ],
)
def test_neutra_rejects_bad_options(options, message):
    with pytest.raises(ConfigurationError, match=message):
        sampler.corrector("neutra", **options)


@pytest.mark.parametrize("option", ["plain_steps", "mode_jumps"])
def test_flow_smc_rejects_negative_sweep_counts(option):
    with pytest.raises(ConfigurationError, match=option):
        sampler.method("flow-smc", **{option: -1})


@pytest.mark.parametrize(
    "options, message",
    [(dict(split="best"), "split must be one of"), (dict(n_steps=1, plain_steps=0), "n_steps \\+ plain_steps >= 2")],
)
def test_flow_smc_rejects_bad_splits(options, message):
    with pytest.raises(ConfigurationError, match=message):
        sampler.method("flow-smc", **options)
