"""Tests of the ``neural_jko`` plugin: exact densities of CNF layers, the rejection layer's
density correction, training on a Gaussian with a known JKO optimum, log Z from the model's own
importance weights, sample quality against exact samples, engine integration and save/load.

Every test is seeded. Where a tolerance is statistical it is derived next to the check from the
Monte Carlo error (standard errors from the test's own draws or replicas, with the quantile for a
false-failure rate of ``ALPHA`` per check); where it is numerical (ODE discretization) the order
of the error is stated; where it bounds an optimization (a few Adam iterations), it says so and
is kept apart from the Monte Carlo error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import sampler
from sampler import metrics
from sampler.paths import EvaluationCounter, GaussianReference, GeometricPath
from sampler.schedules import Linear
from sampler_plugins.neural_jko import (
    CNFLayer,
    LayerTransport,
    NeuralJKOModel,
    RejectionLayer,
    VelocityField,
    fit_log_c,
    layer_transports,
    resolve_config,
    train_model,
)
from sampler_plugins.neural_jko.model import _Draw

DTYPE = torch.float64
#: False-failure rate of each statistical check (a normal z-score beyond 3.9, or the matching quantile).
ALPHA = 1e-4
Z = float(stats.norm.ppf(1 - ALPHA / 2))


def z_bound(n_checks: int = 1, dof: int | None = None) -> float:
    """Two-sided quantile for ``n_checks`` simultaneous z- (or t-, with ``dof``) scores at total rate ``ALPHA``."""
    p = 1 - ALPHA / (2 * n_checks)
    return float(stats.norm.ppf(p) if dof is None else stats.t.ppf(p, dof))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_cnf(dim: int, seed: int, n_steps: int = 8, scale: float = 0.5) -> CNFLayer:
    """A CNF layer with random (non-zero) weights, in float64."""
    torch.manual_seed(seed)
    layer = CNFLayer(dim, width=16, n_steps=n_steps).to(DTYPE)
    for lin in layer.velocity.linears:
        nn.init.normal_(lin.weight, std=scale / math.sqrt(lin.in_features))
        nn.init.normal_(lin.bias, std=0.1)
    for p in layer.parameters():
        p.requires_grad_(False)
    return layer


def log_mean_exp(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


# ------------------------------------------------------------------------------------------
# Velocity field and CNF layer: exact divergence and change of variables


def test_new_layer_is_identity():
    layer = CNFLayer(3, n_steps=4).to(DTYPE)
    x = torch.randn(50, 3, generator=gen(0), dtype=DTYPE)
    f = layer.integrate(x)
    assert torch.equal(f.z, x) and torch.all(f.ell == 0) and torch.all(f.kinetic == 0)


def test_velocity_jacobian_matches_autograd():
    torch.manual_seed(1)
    v = VelocityField(3, 8).to(DTYPE)
    nn.init.normal_(v.linears[-1].weight)
    x = torch.randn(5, 3, generator=gen(1), dtype=DTYPE)
    _, jac = v(x, 0.3, identity=True)
    for i in range(5):
        ref = torch.autograd.functional.jacobian(lambda y: v(y[None], 0.3)[0][0], x[i])
        torch.testing.assert_close(jac[i], ref, rtol=1e-10, atol=1e-12)
    probes = torch.randn(5, 3, 2, generator=gen(2), dtype=DTYPE)
    _, jp = v(x, 0.3, tangents=probes)
    torch.testing.assert_close(jp, jac @ probes, rtol=1e-10, atol=1e-12)


class LinearVelocity(nn.Module):
    """``v(x, t) = A x``: the flow is ``expm(A)`` and the divergence is ``tr A`` (a known flow)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a, requires_grad=False)

    def forward(self, x, t, tangents=None, identity=False):
        v = x @ self.a.T
        if identity:
            return v, self.a.expand(x.shape[0], *self.a.shape)
        return v, (None if tangents is None else self.a @ tangents)


def test_change_of_variables_of_a_linear_flow():
    """Latent N(0, I) pushed by expm(A) is N(0, M M^T), M = expm(A): the tracked log density and
    the backward-integrated log_prob must equal that Gaussian's log density. RK4 with 8 steps on
    a linear ODE with |A| ~ 0.5 has a relative error ~ (h|A|)^5/120 ~ 1e-8, so 1e-6 is a safe bound."""
    a = torch.tensor([[0.3, -0.5], [0.4, 0.1]], dtype=DTYPE)
    model = NeuralJKOModel(2)
    layer = CNFLayer(2, n_steps=8).to(DTYPE)
    layer.velocity = LinearVelocity(a)
    model.layers.append(layer)
    draws = model.sample(1000, gen(3))
    m = torch.linalg.matrix_exp(a)
    exact = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=DTYPE), covariance_matrix=m @ m.T)
    torch.testing.assert_close(draws.log_prob, exact.log_prob(draws.x), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.log_prob(draws.x), exact.log_prob(draws.x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("exact", [True, False])
def test_tracked_density_matches_backward_integration_and_jacobian(exact):
    """A random nonlinear 2-layer stack: the forward-tracked log density equals (i) the density
    from integrating backwards (log_prob) and (ii) the latent density minus log|det| of the
    discrete map's Jacobian (autograd), up to the RK4 error (O(h^4), ~1e-5 with h = 1/16 here).
    With Hutchinson probes the tracked value is noisy: the difference over its reported standard
    error (forward and backward estimates are independent; each standard error from 64 probes,
    so t with 63 dof at worst) stays within the Bonferroni quantile for 200 scores, and the
    z-scores have unit variance (sample variance of 200: sd sqrt(2 / 199))."""
    model = NeuralJKOModel(3, exact_max_dim=3 if exact else 0, n_probes=64)
    for s in (0, 1):
        model.layers.append(random_cnf(3, seed=10 + s, n_steps=16))
    draws = model.sample(200, gen(4))
    lp, se = model.log_prob(draws.x, generator=gen(5), return_stderr=True)
    if exact:
        assert torch.all(draws.log_prob_stderr == 0) and torch.all(se == 0)
        torch.testing.assert_close(lp, draws.log_prob, rtol=0, atol=1e-5)
        # change of variables through the discrete map, Jacobian by autograd
        x0 = torch.randn(20, 3, generator=gen(6), dtype=DTYPE)

        def push(x):
            for layer in model.layers:
                x = layer.integrate(x[None], track=False).z[0]
            return x

        for i in range(20):
            jac = torch.autograd.functional.jacobian(push, x0[i])
            y = push(x0[i])
            want = -model.latent_energy(x0[i][None])[0] - torch.linalg.slogdet(jac)[1]
            torch.testing.assert_close(model.log_prob(y[None])[0], want, rtol=0, atol=1e-5)
    else:
        assert torch.all(draws.log_prob_stderr > 0)
        z = (lp - draws.log_prob) / torch.sqrt(se**2 + draws.log_prob_stderr**2)
        assert float(z.abs().max()) < z_bound(z.numel(), dof=63)
        # and the noise is what it claims: z-scores have unit variance
        assert abs(float(z.var()) - 1) < Z * math.sqrt(2 / (z.numel() - 1))


# ------------------------------------------------------------------------------------------
# Rejection layer


def test_fit_log_c_hits_the_rate():
    lq = torch.randn(10_000, generator=gen(7), dtype=DTYPE) * 2 + 3
    for rate in (0.05, 0.2, 0.6):
        log_c = fit_log_c(lq, rate)
        r = (1 - torch.exp(torch.clamp(lq - log_c, max=0))).mean()
        assert abs(float(r) - rate) < 1e-4


@pytest.mark.parametrize("dim", [1, 2])
def test_rejection_density_integrates_to_one_on_a_grid(dim):
    """mu = N(0, 1.5^2 I), q = a two-bump density; with r_bar computed by quadrature, the
    layer's density p (alpha + r_bar) integrates to 1 (grid quadrature error < 1e-6)."""
    layer = RejectionLayer(rate=0.2)
    grid1 = torch.linspace(-12, 12, 2401 if dim == 1 else 601, dtype=DTYPE)
    h = float(grid1[1] - grid1[0])
    pts = grid1[:, None] if dim == 1 else torch.cartesian_prod(grid1, grid1)
    log_p = torch.distributions.Normal(0.0, 1.5).log_prob(pts).sum(-1)
    log_q = torch.logsumexp(torch.stack([-((pts - 1.0) ** 2).sum(-1) / 0.5, -((pts + 1.5) ** 2).sum(-1)]), 0)
    layer.log_c.fill_(0.3)
    w = torch.exp(log_p) * h**dim
    alpha = torch.exp(layer.log_alpha(-log_p + log_q))
    layer.r_bar.fill_(float((w * (1 - alpha)).sum()))
    new = torch.exp(log_p - (-layer.log_density_factor(-log_p + log_q)))
    assert abs(float((new * h**dim).sum()) - 1.0) < 1e-6
    assert abs(float(w.sum()) - 1.0) < 1e-6


@pytest.mark.parametrize("n_layers", [1, 2])
def test_rejection_layer_output_has_the_stated_density(n_layers):
    """1D: draws through one or two rejection layers (each fit on 20k fresh draws of the model
    below it) against the stated density p (alpha + r_bar): Kolmogorov-Smirnov on 40k output
    draws. Replacements drawn from the wrong level would change the output law. The stated CDF
    is off by at most |r_bar_est - r_bar| per layer, whose standard error is
    sqrt(r_bar (1 - r_bar) / n_fit) (r in [0, 1]); the bound is the exact KS quantile at
    ``ALPHA`` for n = 40k plus Z of those standard errors per layer."""
    target = sampler.target(
        log_prob=lambda x: torch.logsumexp(
            torch.stack([-((x - 1.0) ** 2).sum(-1) / 0.5, -((x + 1.5) ** 2).sum(-1)]), 0
        ),
        dim=1,
    )
    model = NeuralJKOModel(1, latent_scale=1.5)
    path = GeometricPath(model.latent_reference(), target, EvaluationCounter())
    for i in range(n_layers):
        train = model.draw(20_000, gen(8 + i), path)
        layer = RejectionLayer(0.2)
        layer.fit(train.e + model._evaluate(train, _Draw(gen(8), path)).log_target)
        model.layers.append(layer)
    out = model.sample(40_000, gen(9), target=target)
    grid = torch.linspace(-10, 10, 20001, dtype=DTYPE)[:, None]
    dens = torch.exp(model.log_prob(grid, target=target))
    cdf = torch.cumsum(dens, 0) * float(grid[1, 0] - grid[0, 0])
    xs = torch.sort(out.x[:, 0].to(DTYPE)).values
    model_cdf = np.interp(xs.numpy(), grid[:, 0].numpy(), cdf.numpy())
    emp = np.arange(1, xs.numel() + 1) / xs.numel()
    stated_cdf_error = sum(
        Z * math.sqrt(float(layer.r_bar) * (1 - float(layer.r_bar)) / int(layer.n_fit)) for layer in model.layers
    )
    assert np.max(np.abs(emp - model_cdf)) < float(stats.kstwo.ppf(1 - ALPHA, xs.numel())) + stated_cdf_error
    # the density returned with the samples is the stated one
    torch.testing.assert_close(out.log_prob, model.log_prob(out.x, target=target), rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------
# Training


def test_one_cnf_layer_reaches_the_jko_optimum_on_a_gaussian():
    """Latent N(0, I), target N(m, I) in 2D, one layer with tau = 2. The loss KL + W2^2/tau
    (h = tau/2) is minimized over Gaussians N(mu, I) by mu = m tau/(tau + 2) = m/2 with the
    covariance kept at I. The trained layer must land there and reduce the KL: within the
    optimization tolerance ``OPT = 0.1`` (what 150 Adam iterations reach; not statistical) plus
    Z standard errors of each estimate from 20000 model draws (mean: sd / sqrt(n); covariance:
    sqrt((S_ii S_jj + S_ij^2) / n) (Isserlis); KL: sd of the log ratio / sqrt(n))."""
    m = np.array([2.0, -1.0])
    target = sampler.targets.Gaussian(mean=m)
    config = resolve_config(
        "tiny",
        "",
        dict(
            n_flow=1,
            n_blocks=0,
            tau0=2.0,
            n_iters=150,
            batch_size=256,
            n_train=4000,
            n_rk4_steps=3,
            lr=1e-2,
            lr_decay=0.9,
        ),
    )
    path = GeometricPath(GaussianReference(2), target, EvaluationCounter())
    model = train_model(target, config, path, gen(11), dtype=torch.float32)
    assert path.counter.grad_evals == 150 * 256  # every training gradient is counted
    n, opt = 20_000, 0.1
    draws = model.sample(n, gen(12))
    x = draws.x.double().numpy()
    cov = np.cov(x.T)
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(x.mean(0) - m / 2) < opt + Z * se_mean), x.mean(0)
    assert np.all(np.abs(cov - np.eye(2)) < opt + Z * se_cov), cov
    # KL(model | target) = E[log p - log pi]; before: KL(N(0,I) | N(m,I)) = |m|^2/2 = 2.5;
    # at the optimum |m/2|^2 / 2 = 0.625
    log_ratio = draws.log_prob - (draws.log_target - target.log_Z)
    kl, se_kl = float(log_ratio.mean()), float(log_ratio.std()) / math.sqrt(n)
    assert kl < 0.625 + opt + Z * se_kl


# ------------------------------------------------------------------------------------------
# log Z and samples


@pytest.fixture(scope="module")
def mixture_target():
    """An equal-weight 2D mixture of 4 Gaussians (std 0.4) with a known normalizer log Z = 1.3."""

    means = torch.tensor([[1.5, 0.0], [-1.5, 0.0], [0.0, 1.5], [0.0, -1.5]], dtype=DTYPE)
    base = sampler.targets.GaussianMixture(means.numpy(), std=0.4, name="mix4")

    class Shifted(sampler.Target):
        dim = 2
        log_Z = 1.3
        modes = base.modes

        def log_prob(self, x):
            return base.log_prob(x) + 1.3

        def log_prob_and_grad(self, x):
            lp, g = base.log_prob_and_grad(x)
            return lp + 1.3, g

        def sample(self, n, generator=None, device=None, dtype=None):
            return base.sample(n, generator, device, dtype)

    return Shifted()


@pytest.fixture(scope="module")
def trained(mixture_target):
    """A small model on the mixture (2 CNF layers + 3 rejection layers), trained in seconds."""
    config = resolve_config(
        "tiny",
        "",
        dict(n_flow=1, n_blocks=1, tau0=0.5, n_iters=60, batch_size=256, n_train=6000, n_rk4_steps=3, latent_scale=1.5),
    )
    path = GeometricPath(GaussianReference(2), mixture_target, EvaluationCounter())
    return train_model(mixture_target, config, path, gen(13), dtype=torch.float32)


def test_log_Z_from_the_model_weights_is_unbiased(trained, mixture_target):
    """R = 20 replicas of N = 500 draws: the pooled estimate log mean_r Z_r must lie within
    t_19 standard errors (spread across replicas) of the truth, plus the bias the stored r_bar
    can cause: for each rejection layer |r_bar_est - r_bar| <= Z sqrt(r_bar (1 - r_bar) / n_fit)
    (r in [0, 1] has variance <= r_bar (1 - r_bar)), which shifts every log weight by at most
    that over (alpha + r_bar) >= r_bar. The ELBO (mean log weight) is at most log Z up to its
    standard error and the same bias (the stated density integrates to 1 only up to it)."""
    draws = trained.sample(20 * 500, gen(14))
    lw = draws.log_weights.reshape(20, 500)
    log_z_r = log_mean_exp(lw)
    pooled, se = sampler.core.result.pooled_log_Z(log_z_r)  # se from the spread of 20 replicas: t, 19 dof
    bias = sum(
        Z * math.sqrt(float(l.r_bar) * (1 - float(l.r_bar)) / int(l.n_fit)) / float(l.r_bar)
        for l in trained.layers
        if l.kind == "rejection"
    )
    assert abs(pooled - mixture_target.log_Z) < z_bound(dof=19) * se + bias
    # the model's density is normalized (up to the r_bar bias): ELBO <= log Z up to MC error
    assert float(lw.mean()) < mixture_target.log_Z + Z * float(lw.std()) / math.sqrt(lw.numel()) + bias


def test_cnf_only_model_log_Z_is_unbiased(mixture_target):
    """Without rejection layers the density is exact (up to RK4 error ~1e-5), so the importance
    estimate is unbiased: within t_19 standard errors over 20 replicas."""
    config = resolve_config(
        "tiny", "", dict(n_flow=2, n_blocks=0, tau0=0.5, n_iters=40, n_rk4_steps=4, latent_scale=1.5)
    )
    path = GeometricPath(GaussianReference(2), mixture_target, EvaluationCounter())
    model = train_model(mixture_target, config, path, gen(15), dtype=torch.float32)
    lw = model.sample(20 * 500, gen(16)).log_weights.reshape(20, 500)
    pooled, se = sampler.core.result.pooled_log_Z(log_mean_exp(lw))
    assert abs(pooled - mixture_target.log_Z) < z_bound(dof=19) * se


def _exact_floor_bound(target, n_eff: int, n: int, seed: int, k: int = 10) -> float:
    """Upper prediction bound (rate ``ALPHA``) for the sliced energy distance of a perfect sampler's
    ``n_eff`` draws to ``n`` exact draws: the mean of ``k`` independent exact-vs-exact distances plus
    the one-sided t quantile (k - 1 dof) times their sd times sqrt(1 + 1 / k)."""
    g = gen(seed)
    floors = np.array(
        [
            metrics.sliced_energy_distance(
                target.sample(n_eff, g, dtype=DTYPE), target.sample(n, g, dtype=DTYPE), 200, g
            )
            for _ in range(k)
        ]
    )
    return float(floors.mean() + stats.t.ppf(1 - ALPHA, k - 1) * floors.std(ddof=1) * math.sqrt(1 + 1 / k))


@pytest.mark.slow
def test_samples_match_exact_samples(trained, mixture_target):
    """Energy distance of 4000 importance-resampled model draws to 4000 exact draws, against the
    exact-vs-exact distances of a perfect sampler (:func:`_exact_floor_bound`). Resampling keeps
    about ESS distinct draws, so the perfect sampler draws n_eff = ESS (Kish, of the importance
    weights) points. A Gaussian target is checked the same way. (The tiny test models are not
    accurate enough for their raw draws to reach the floor; the importance weights make the
    resampled draws exact as N grows.)"""
    res = sampler.sample(
        mixture_target,
        method="neural-jko",
        model=trained,
        importance_resample=True,
        n_particles=4000,
        n_replicas=1,
        seed=17,
    )
    exact = mixture_target.sample(4000, gen(18), dtype=DTYPE)
    ed = metrics.sliced_energy_distance(res.samples[0].double(), exact, 200, gen(19))
    n_eff = max(int(float(metrics.kish_ess(res.log_weights)) * 4000), 50)
    bound = _exact_floor_bound(mixture_target, n_eff, 4000, 20)
    assert ed < bound, (ed, bound, n_eff)

    target = sampler.targets.Gaussian(mean=np.array([1.0, -0.5]), scale=np.array([0.8, 1.3]))
    res = sampler.sample(
        target,
        method="neural-jko",
        preset="tiny",
        n_flow=2,
        n_blocks=0,
        n_iters=100,
        tau0=1.0,
        importance_resample=True,
        n_particles=4000,
        n_replicas=1,
        seed=21,
    )
    ed = metrics.sliced_energy_distance(
        res.samples[0].double(), target.sample(4000, gen(22), dtype=DTYPE), 200, gen(23)
    )
    n_eff = max(int(float(metrics.kish_ess(res.log_weights)) * 4000), 50)
    bound = _exact_floor_bound(target, n_eff, 4000, 24)
    assert ed < bound, (ed, bound, n_eff)


# ------------------------------------------------------------------------------------------
# Engine integration and persistence


def test_method_result_weights_and_counts(trained, mixture_target):
    res = sampler.sample(mixture_target, method="neural-jko", model=trained, n_particles=300, n_replicas=3, seed=25)
    assert "neural-jko" in sampler.list_methods()
    assert res.samples.shape == (3, 300, 2) and res.model is trained
    assert torch.equal(res.samples, res.weighted_samples)  # raw model draws by default
    # log weights are log q - log p_model: recompute p_model by backward integration
    lp = trained.log_prob(res.weighted_samples, target=mixture_target)
    # backward vs forward RK4 with 3 steps (h = 1/3): the two discretizations differ by O(h^4);
    # 1e-3 bounds it here (the exact-density tests use h = 1/16 and 1e-5)
    torch.testing.assert_close(
        res.log_weights, mixture_target.log_prob(res.weighted_samples.double()) - lp, rtol=0, atol=1e-3
    )
    torch.testing.assert_close(res.log_Z_per_replica, log_mean_exp(res.log_weights), rtol=0, atol=1e-10)
    torch.testing.assert_close(res.elbo_per_replica, res.log_weights.mean(-1))
    # sampling cost: at least one evaluation per particle, about cost-per-sample of them overall
    assert res.n_target_evals >= 3 * 300 and res.n_grad_evals == 0


def test_training_costs_are_in_the_result(mixture_target):
    res = sampler.sample(
        mixture_target,
        method="neural-jko",
        preset="tiny",
        n_iters=5,
        batch_size=64,
        n_train=200,
        n_particles=50,
        n_replicas=1,
        seed=0,
    )
    assert res.training_grad_evals == 2 * 5 * 64  # two CNF layers
    assert res.n_grad_evals == res.training_grad_evals
    assert res.n_target_evals > res.training_target_evals > res.training_grad_evals
    assert res.config.n_iters == 5 and res.training_time > 0


def test_layers_compose_with_engine_steps(trained, mixture_target):
    """The layers as separate transports, then resampling and MALA at t = 1: the weights before
    the correctors are the importance weights of the model (checked against log_prob), and the
    log Z is the importance estimate."""
    pipe = sampler.Pipeline(
        schedule=Linear(1),
        steps=[
            *layer_transports(trained),
            sampler.corrector("resample", threshold=1.0),
            sampler.corrector("mala", n_steps=3),
        ],
        reference=trained.latent_reference(),
    )
    res = pipe.run(mixture_target, n_particles=400, n_replicas=2, seed=26)
    lp = trained.log_prob(res.weighted_samples, target=mixture_target)
    # backward vs forward RK4 with 3 steps (h = 1/3): the two discretizations differ by O(h^4);
    # 1e-3 bounds it here (the exact-density tests use h = 1/16 and 1e-5)
    torch.testing.assert_close(
        res.log_weights, mixture_target.log_prob(res.weighted_samples.double()) - lp, rtol=0, atol=1e-3
    )
    assert res.n_grad_evals > 0 and res.samples.shape == (2, 400, 2)
    with pytest.raises(sampler.errors.ConfigurationError, match="latent"):
        sampler.Pipeline(schedule=Linear(1), steps=[LayerTransport(trained, 0)]).run(
            mixture_target, n_particles=10, seed=0
        )
    with pytest.raises(sampler.errors.RunError, match="one-stage"):
        sampler.Pipeline(
            schedule=Linear(2), steps=[LayerTransport(trained, 0)], reference=trained.latent_reference()
        ).run(mixture_target, n_particles=10, seed=0)


def test_save_load_reproduces_samples_and_densities(trained, mixture_target, tmp_path):
    file = tmp_path / "model.pt"
    trained.save(file)
    loaded = NeuralJKOModel.load(file, target=mixture_target)
    a = trained.sample(500, gen(27))
    b = loaded.sample(500, gen(27))
    # Same weights and buffers, same random stream: identical draws. The float32 divergence
    # integrals may differ in the last bit (BLAS picks kernels by memory alignment), so the
    # float64 log densities agree to float32 rounding (|e| ~ 5 -> ~5e-7).
    assert torch.equal(a.x, b.x)
    torch.testing.assert_close(a.log_prob, b.log_prob, rtol=0, atol=2e-6)
    x = torch.randn(100, 2, generator=gen(28))
    torch.testing.assert_close(trained.log_prob(x), loaded.log_prob(x), rtol=0, atol=2e-6)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in trained.state_dict().items())
    assert loaded.history == trained.history and len(loaded.layers) == len(trained.layers)


def test_result_save_stores_the_model_and_load_rebuilds_it(trained, mixture_target, tmp_path):
    res = sampler.sample(mixture_target, "neural-jko", model=trained, n_particles=200, n_replicas=2, seed=29)
    assert res.models["neural-jko"] is trained
    res.save(tmp_path / "run.nc")
    loaded = sampler.load(tmp_path / "run.nc")
    torch.testing.assert_close(loaded.samples, res.samples, rtol=0, atol=0)
    model = loaded.models["neural-jko"]
    assert isinstance(model, NeuralJKOModel) and model.spec() == trained.spec()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trained.state_dict().items())
    model.attach(mixture_target)
    assert torch.equal(model.sample(300, gen(30)).x, trained.sample(300, gen(30)).x)


def test_training_initializes_from_its_seed_and_leaves_the_global_random_state_alone(mixture_target):
    """CNF layer i starts from derived_seed(init_seed, i) (default: the generator's seed): the same
    weights whatever the global random state, which training does not touch; rebuilding a saved
    structure does not touch it either."""
    config = resolve_config("tiny", "", dict(n_flow=1, n_blocks=0, n_iters=0, n_train=50))

    def build(global_seed, init_seed=None):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        path = GeometricPath(GaussianReference(2), mixture_target, EvaluationCounter())
        model = train_model(mixture_target, config, path, gen(3), init_seed=init_seed)
        assert torch.equal(torch.get_rng_state(), before)
        return model.state_dict()

    a, b, c = build(1), build(2), build(1, init_seed=4)
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert not all(torch.equal(v, c[k]) for k, v in a.items())
    model = NeuralJKOModel(2)
    model.layers.append(CNFLayer(2, n_steps=2))
    before = torch.get_rng_state()
    NeuralJKOModel.from_spec(model.spec())
    assert torch.equal(torch.get_rng_state(), before)


def test_loading_a_crafted_pickle_is_refused(tmp_path):
    """NeuralJKOModel.load reads with weights_only=True: a pickle that would run code is refused."""

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    file = tmp_path / "evil.pt"
    torch.save({"spec": {}, "state_dict": {}, "history": [Payload()]}, file)
    with pytest.raises(sampler.errors.PersistenceError, match="cannot read"):
        NeuralJKOModel.load(file)


def test_bad_options_are_configuration_errors():
    with pytest.raises(sampler.errors.ConfigurationError, match="unknown neural-jko option"):
        sampler.method("neural-jko", n_flows=3)
    with pytest.raises(sampler.errors.ConfigurationError, match="preset"):
        sampler.method("neural-jko", preset="gpu")
    with pytest.raises(sampler.errors.ConfigurationError, match="rejection_rate"):
        sampler.method("neural-jko", rejection_rate=1.5)
    model = NeuralJKOModel(2)
    model.layers.append(RejectionLayer())
    with pytest.raises(sampler.errors.ConfigurationError, match="needs the target"):
        model.sample(3)
    with pytest.raises(sampler.errors.ConfigurationError, match="dim"):
        model.attach(sampler.targets.Gaussian(dim=3))
