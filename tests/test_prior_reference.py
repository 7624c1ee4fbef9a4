"""The target's own prior as the annealing path's start (``sampler.PriorReference``).

A target that declares ``prior_sample`` and ``prior_log_prob`` starts ``smc``'s path at its prior
wherever the path would start at the Gaussian prior reference, so the path tempers the
likelihood alone. Checked here: the reference's interface, where it is chosen (and where not),
exactness on a conjugate model whose posterior and evidence are known in closed form, resume,
and the sharded run's refusal. The centered eight schools, which default ``smc`` failed from a
Gaussian start, is in tests/test_posteriors.py.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
import torch
from scipy import integrate, stats
from test_workflow import assert_same_result
from torch.distributions import Normal

import sampler
from sampler.errors import ConfigurationError, TargetError

F64 = torch.float64


class ConjugateNormal(sampler.Target):
    """``x ~ N(m0, s0^2 I)`` a priori, five observations ``y_k ~ N(x, diag(sigma^2))``; d = 3.

    The posterior is ``N(post_mean, diag(post_var))`` and, coordinate by coordinate, the evidence
    is ``C sqrt(2 pi sigma^2 / K) N(ybar | m0, s0^2 + sigma^2 / K)`` with
    ``C = (2 pi sigma^2)^(-K/2) exp(-sum_k (y_k - ybar)^2 / (2 sigma^2))``. The posterior sds
    (0.22-0.45) are 7-14 times narrower than the prior's, so the path has several stages.
    """

    dim = 3

    def __init__(self, s0: float = 3.0) -> None:
        rng = np.random.default_rng(3)
        self.m0, self.s0 = np.array([1.0, -1.0, 0.5]), s0
        self.sigma = np.array([0.5, 1.0, 0.8])
        self.y = np.array([2.0, 0.0, -1.0]) + self.sigma * rng.standard_normal((5, 3))
        k = self.y.shape[0]
        self.post_var = 1.0 / (1.0 / self.s0**2 + k / self.sigma**2)
        self.post_mean = self.post_var * (self.m0 / self.s0**2 + self.y.sum(0) / self.sigma**2)
        ybar = self.y.mean(0)
        log_c = -0.5 * k * np.log(2 * np.pi * self.sigma**2) - ((self.y - ybar) ** 2).sum(0) / (2 * self.sigma**2)
        v = self.s0**2 + self.sigma**2 / k
        marginal = -0.5 * np.log(2 * np.pi * v) - (ybar - self.m0) ** 2 / (2 * v)
        self.log_Z_per_dim = log_c + 0.5 * np.log(2 * np.pi * self.sigma**2 / k) + marginal
        self.log_Z = float(self.log_Z_per_dim.sum())

    def prior_log_prob(self, x):
        return Normal(self.constant("m0", x), self.s0).log_prob(x).sum(-1)

    def prior_sample(self, n, generator=None, dtype=None):
        device = self.sample_device(generator, None)
        e = torch.randn(n, 3, generator=generator, device=device, dtype=dtype or torch.get_default_dtype())
        return self.constant("m0", e) + self.s0 * e

    def log_prob(self, x):
        lik = Normal(x[..., None, :], self.constant("sigma", x)).log_prob(self.constant("y", x)).sum((-1, -2))
        return self.prior_log_prob(x) + lik


class NoPrior(sampler.Target):
    dim = 3

    def log_prob(self, x):
        return -0.5 * (x**2).sum(-1)


def test_conjugate_evidence_against_quadrature():
    """The closed-form evidence of the test model, coordinate by coordinate, against scipy's quad."""
    t = ConjugateNormal()
    for j in range(3):

        def integrand(v, j=j):
            return stats.norm.pdf(v, t.m0[j], t.s0) * np.prod(stats.norm.pdf(t.y[:, j], v, t.sigma[j]))

        value, _ = integrate.quad(integrand, -30, 30, points=[float(t.post_mean[j])], epsabs=0, epsrel=1e-10)
        assert math.log(value) == pytest.approx(t.log_Z_per_dim[j], abs=1e-8)


def test_prior_reference_interface():
    t = ConjugateNormal()
    ref = sampler.PriorReference(t)
    assert t.has_prior and not NoPrior().has_prior
    assert ref.dim == 3 and ref.log_norm == 0.0 and not ref.dense
    # loc and scale: median and 1.4826 MAD of 4096 draws of N(m0, 9). Their standard errors are
    # 1.2533 s0 / 64 = 0.059 (median) and about 1.17 s0 / 64 = 0.055 (MAD), so 4 of them: 0.24, 0.22.
    assert np.abs(ref.loc - t.m0).max() < 0.24
    assert np.abs(ref.scale - t.s0).max() < 0.22
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    lp = ref.log_prob(x)
    assert lp.dtype == F64 and lp.shape == (2, 5)
    assert torch.allclose(lp, t.prior_log_prob(x))
    assert torch.equal(ref.log_kernel(x), lp)
    expected = -(x - torch.as_tensor(t.m0)) / t.s0**2
    assert torch.allclose(ref.grad_log_prob(x), expected)
    both = ref.log_prob_and_grad(x)  # one evaluation of the prior, as a path evaluation with gradients uses it
    assert torch.equal(both[0], lp) and torch.equal(both[1], ref.grad_log_prob(x))
    g32 = ref.grad_log_prob(x.float())
    assert g32.dtype == torch.float32 and torch.allclose(g32.double(), expected, atol=1e-5)
    draws = ref.sample((2, 7), torch.Generator().manual_seed(1), torch.float32)
    assert draws.shape == (2, 7, 3) and draws.dtype == torch.float32
    with pytest.raises(ConfigurationError, match="per-particle standard normal"):
        ref.from_standard(torch.zeros(2, 3))
    with pytest.raises(ConfigurationError, match="cannot be widened"):
        ref.widened(2.0)


def test_prior_reference_errors():
    with pytest.raises(ConfigurationError, match="declares no prior"):
        sampler.PriorReference(NoPrior())

    class WrongShape(ConjugateNormal):
        def prior_sample(self, n, generator=None, dtype=None):
            return super().prior_sample(n, generator, dtype)[:, :2]

    with pytest.raises(TargetError, match="must return shape"):
        sampler.PriorReference(WrongShape())

    class Stuck(ConjugateNormal):
        def prior_sample(self, n, generator=None, dtype=None):
            x = super().prior_sample(n, generator, dtype)
            x[:, 1] = 0.5
            return x

    with pytest.raises(TargetError, match=r"do not vary in coordinate\(s\) \[1\]"):
        sampler.PriorReference(Stuck())

    class WrongLogProb(ConjugateNormal):
        def prior_log_prob(self, x):
            return super().prior_log_prob(x)[..., None]

    with pytest.raises(TargetError, match="prior_log_prob must return shape"):
        sampler.PriorReference(WrongLogProb()).log_prob(torch.zeros(4, 3))


def _run(target, **kw):
    opts = dict(n_particles=300, n_replicas=2, seed=0, n_steps=3, progress=False, dtype=F64)
    opts.update(kw)
    return sampler.sample(target, method="smc", **opts)


def test_where_the_target_prior_is_used():
    """Wherever the path would start at the Gaussian prior reference, and only there."""
    t = ConjugateNormal()
    assert _run(t, reference="prior").options["reference"] == "target prior"
    # asking for a Gaussian (loc or scale given) keeps the Gaussian
    assert _run(t, reference="prior", reference_scale=3.0).options["reference"] == "prior"
    assert _run(t, reference="prior", reference_loc=0.0).options["reference"] == "prior"
    # auto's fallback (here: the steps use no gradients, so no Laplace fit)
    used = _run(t, reference="auto", kernel="rwmh").options["reference"]
    assert used.startswith("target prior (auto: the steps use no gradients")
    # auto compares the Laplace fit with the target's prior: on its scale here, so the path starts there ...
    assert _run(t).options["reference"].startswith("target prior (auto: the prior is on the target's scale")
    # ... and where the prior is 2000x wider than the posterior, at the fit
    assert _run(ConjugateNormal(s0=1000.0)).options["reference"].startswith("laplace (auto: one maximum")
    assert _run(NoPrior(), reference="prior").options["reference"] == "prior"


def test_the_path_from_the_prior_is_exact_on_a_conjugate_model():
    """Posterior moments and the evidence, against their closed forms.

    Tolerances from the Monte Carlo error of the 16 independent replicas: each pooled estimate
    is compared with the exact value in units of its standard error, the replicas' sd over
    sqrt(16); under the null that ratio is t-distributed with 15 degrees of freedom, and
    P(|t_15| > 4.5) = 4e-4 per check (7 checks).
    """
    t = ConjugateNormal()
    res = _run(t, reference="prior", n_particles=1000, n_replicas=16, n_steps=10)
    assert res.options["reference"] == "target prior"
    assert len(res.steps) >= 4  # the prior is 7-14x wider than the posterior: a real path
    r = res.samples.shape[0]

    def check(per_replica, exact):
        se = per_replica.std(0) / math.sqrt(r)
        assert (np.abs(per_replica.mean(0) - exact) <= 4.5 * se).all(), (per_replica.mean(0), exact, se)

    x = res.samples.numpy()
    check(x.mean(1), t.post_mean)
    check(x.var(1), t.post_var)
    check(res.log_Z_per_replica.numpy(), t.log_Z)


def test_resume_with_the_target_prior_equals_the_uninterrupted_run(tmp_path):
    t = ConjugateNormal()
    kw = dict(reference="auto", kernel="rwmh", n_replicas=2, n_particles=200)  # auto falls back to the prior
    full = _run(t, **kw)
    ck = tmp_path / "prior.ckpt"
    _run(t, checkpoint=ck, checkpoint_every=1, **kw)
    resumed = sampler.resume(ck, ConjugateNormal(), progress=False)
    assert resumed.options["reference"].startswith("target prior")
    assert_same_result(full, resumed, wall_time=False)


def test_a_sharded_run_refuses_the_target_prior():
    with pytest.raises(ConfigurationError, match="per-particle standard normal"):
        _run(ConjugateNormal(), reference="prior", distributed=True)
    _run(ConjugateNormal(), reference="prior", reference_scale=3.0, distributed=True)  # a Gaussian shards


def test_advice_after_a_run_from_the_prior_names_no_gaussian():
    """When replicas disagree, the summary advises a reference closer to the target
    (reference_loc=, reference_scale=) -- except after a run from the target's prior, which those
    options would replace by a Gaussian."""
    target = sampler.targets.Gaussian(mean=[1.0] * 1000)
    res = sampler.sample(target, "smc", n_particles=8, n_replicas=4, seed=0, progress=False)
    assert "reference_loc=" in sampler.summary(res).warnings[0]
    from_prior = attrs.evolve(res, options={**res.options, "reference": "target prior"})
    advice = sampler.summary(from_prior).warnings[0]
    assert advice.startswith("the replicas disagree") and "reference_loc=" not in advice
