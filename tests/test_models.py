"""Models with named, constrained parameters (sampler.model): maps, Jacobians, sampling, results, errors."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import distributions as dist
from torch.distributions import constraints

import sampler
from sampler.errors import ConfigurationError, PersistenceError, TargetError

from conftest import t_bound

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import correlated_effects  # noqa: E402
import eight_schools  # noqa: E402
import logistic_regression  # noqa: E402

# -- exact distributions on each supported support ---------------------------------------------------
#: (support, shape, a distribution on it with an exact sampler and a normalized log density)
SUPPORTS = {
    "positive": (constraints.positive, (), dist.Gamma(torch.tensor(2.0), torch.tensor(3.0))),
    "unit_interval": ("unit_interval", (), dist.Beta(torch.tensor(2.0), torch.tensor(5.0))),
    "interval": (
        constraints.interval(-1.0, 3.0),
        (),
        dist.TransformedDistribution(
            dist.Beta(torch.tensor(3.0), torch.tensor(2.0)), [dist.AffineTransform(-1.0, 4.0)]
        ),
    ),
    "greater_than": (
        constraints.greater_than(2.0),
        (2,),
        dist.TransformedDistribution(
            dist.Gamma(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 2.0])), [dist.AffineTransform(2.0, 1.0)]
        ),
    ),
    "less_than": (
        constraints.less_than(1.0),
        (),
        dist.TransformedDistribution(
            dist.Gamma(torch.tensor(3.0), torch.tensor(2.0)), [dist.AffineTransform(1.0, -1.0)]
        ),
    ),
    "simplex": ("simplex", (4,), dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0, 4.0]))),
    "corr_cholesky": (constraints.corr_cholesky, (3, 3), dist.LKJCholesky(3, concentration=torch.tensor(2.0))),
    "real": ("real", (3,), dist.Normal(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 2.0, 1.0]))),
}


def _summed(lp: torch.Tensor, shape: tuple[int, ...], event_dims: int) -> torch.Tensor:
    """Sum a distribution's log density over the parameter axes it did not reduce itself."""
    extra = len(shape) - event_dims
    return lp.sum(tuple(range(-extra, 0))) if extra > 0 else lp


def _model_of(key: str) -> tuple[sampler.Model, dist.Distribution]:
    support, shape, law = SUPPORTS[key]
    event_dims = len(law.event_shape)

    def log_prob(p):
        return _summed(law.log_prob(p["v"]), shape, event_dims)

    return sampler.model(log_prob, {"v": (shape, support) if shape else support}, name=key), law


def _free(key: str, y: torch.Tensor) -> torch.Tensor:
    """The free coordinates of a constrained value ``y`` ``(*shape)``: those its density is written in."""
    if key == "simplex":
        return y[:-1]
    if key == "corr_cholesky":
        rows, cols = torch.tril_indices(3, 3, -1)
        return y[rows, cols]
    return y.reshape(-1)


@pytest.mark.parametrize("key", sorted(SUPPORTS))
def test_log_jacobian_is_autograd_log_det(key):
    """The log-Jacobian the model adds equals log |det| of autograd's Jacobian of x -> free constrained coordinates."""
    model, _ = _model_of(key)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(model.dim, generator=gen, dtype=torch.float64)
        _, log_jac = model.constrain_with_log_jacobian(x)
        jac = torch.autograd.functional.jacobian(lambda u: _free(key, model.constrain(u)["v"]), x)
        assert torch.allclose(log_jac, torch.linalg.slogdet(jac).logabsdet, atol=1e-10)


@pytest.mark.parametrize("key", sorted(SUPPORTS))
def test_constrain_unconstrain_round_trip(key):
    model, law = _model_of(key)
    y = law.sample((5, 7)).double()
    x = model.unconstrain({"v": y})
    assert x.shape == (5, 7, model.dim)
    back = model.constrain(x)["v"]
    assert back.shape == y.shape
    assert torch.allclose(back, y, atol=1e-8)
    support = SUPPORTS[key][0]
    support = getattr(constraints, support) if isinstance(support, str) else support
    if isinstance(support, constraints.Constraint):
        # seeded; |x| <= ~20 keeps a bound + exp(-|x|) distinguishable from the bound in float64
        x = 5 * torch.randn(50, model.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        assert bool(support.check(model.constrain(x)["v"]).all())


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(SUPPORTS))
def test_sampled_draws_match_the_exact_distribution(key):
    """smc on the unconstrained space, mapped back: log Z = 0 (the law is normalized, so this checks the
    Jacobian), the first two moments of every element match the exact law, and the pooled draws pass a
    two-sample test against exact draws. Bounds from the spread of 8 replicas (Student t) and a KS test,
    each at false-failure rate 1e-3 / number of checks."""
    model, law = _model_of(key)
    r = 8
    res = sampler.sample(model, method="smc", n_particles=1000, n_replicas=r, seed=11, dtype="float64")
    draws = res.draws["v"]
    assert draws.shape == (r, 1000, *SUPPORTS[key][1])
    if key == "corr_cholesky":
        flat, exact = _lkj_correlations(draws), _lkj_marginals(200_000)
    else:
        flat = draws.reshape(r, 1000, -1)
        exact = law.sample((200_000,)).double().reshape(200_000, -1)
    varying = exact.std(0) > 0
    flat, exact = flat[..., varying], exact[:, varying]
    n_checks = 1 + 2 * flat.shape[-1] + flat.shape[-1]
    bound = t_bound(r, 1e-3 / n_checks)
    assert abs(res.log_Z) <= bound * res.log_Z_stderr + 1e-3, (res.log_Z, res.log_Z_stderr)
    for moment, f in ((1, lambda v: v), (2, lambda v: v**2)):
        per_replica = f(flat).mean(1)  # (R, k)
        se = per_replica.std(0) / math.sqrt(r)
        err = (per_replica.mean(0) - f(exact).mean(0)).abs()
        assert bool((err <= bound * se + 3 * f(exact).std(0) / math.sqrt(len(exact))).all()), (moment, err, se)
    pooled = flat.reshape(-1, flat.shape[-1])
    # Resampled SMC draws repeat particles: thin to one draw in 8 per replica so the KS test's
    # independence assumption is closer to true (each replica's particles are exchangeable).
    thinned = pooled[::8]
    for j in range(flat.shape[-1]):
        p_value = stats.ks_2samp(thinned[:, j].numpy(), exact[:20_000, j].numpy()).pvalue
        assert p_value > 1e-3 / n_checks, (j, p_value)


def _lkj_correlations(factors: torch.Tensor) -> torch.Tensor:
    """The three correlations ``(..., 3)`` of 3 x 3 correlation matrices given by Cholesky factors ``(..., 3, 3)``."""
    corr = factors @ factors.transpose(-1, -2)
    rows, cols = torch.tril_indices(3, 3, -1)
    return corr[..., rows, cols]


def _lkj_marginals(n: int) -> torch.Tensor:
    """Exact draws ``(n, 3)`` of each correlation of LKJ(eta = 2) in 3 dimensions: its marginal is
    ``2 Beta(eta - 1 + d/2, eta - 1 + d/2) - 1`` (Lewandowski, Kurowicka & Joe 2009, section 3.2).

    (``torch.distributions.LKJCholesky.sample`` is not used: in torch 2.13 its draws for d = 3 give
    E[r_20^2] = 0.214 instead of 1/6, while its log_prob is right -- the model's draws give 1/6.)
    """
    a = torch.tensor(2.0 - 1.0 + 3 / 2, dtype=torch.float64)
    return 2 * dist.Beta(a, a).sample((n, 3)) - 1


# -- declarations -------------------------------------------------------------------------------------
def test_declarations_and_layout():
    m = sampler.model(
        lambda p: p["a"] * 0,
        {
            "a": (),
            "b": 3,
            "c": constraints.positive,
            "w": ((3,), "simplex"),
            "s": sampler.Param((2,), "positive", dims=("k",)),
        },
        coords={"k": ["x", "y"]},
    )
    assert m.parameter_names == ("a", "b", "c", "w", "s")
    assert m.dim == 1 + 3 + 1 + 2 + 2
    assert m.dim_names[:5] == ("a", "b[0]", "b[1]", "b[2]", "c (unconstrained)")
    assert m.layout["s"].dims == ("k",) and m.layout["w"].dims == ("w_dim_0",)
    assert m.layout.element_names()[-2:] == ["s[x]", "s[y]"]
    assert sampler.targets.ParameterLayout.from_json(m.layout.to_json()) == m.layout


@pytest.mark.parametrize(
    "params, message",
    [
        ({"tau": "positiv"}, "parameter 'tau': unknown support 'positiv'"),
        ({"tau": 3.5}, "parameter 'tau': declare it by a shape"),
        ({"L": ((3, 3), constraints.lower_cholesky)}, "parameter 'L': torch.distributions has no bijection"),
        ({"w": "simplex"}, "parameter 'w': a Simplex() value has 1 dimension"),
        ({"w": ((1,), "simplex")}, "parameter 'w': shape (1,) leaves no free coordinate"),
        ({"L": ((3, 4), "corr_cholesky")}, "parameter 'L': shape (3, 4) does not fit"),
        ({"s": sampler.Param((2,), dims=("a", "b"))}, "parameter 's': 2 dims"),
        ({"1x": ()}, "parameter names must be Python identifiers"),
        ({}, "params must be a non-empty dict"),
        ({"x": ((0,), "real")}, "parameter 'x': a shape is a tuple of positive integers"),
        ({"s": sampler.Param((2,), dims=("k",))}, "parameter 's': dim 'k' has 3 coords"),
    ],
)
def test_bad_declarations_name_the_parameter(params, message):
    with pytest.raises(ConfigurationError, match=re_escape(message)):
        sampler.model(lambda p: 0, params, coords={"k": [1, 2, 3]})


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_wrong_log_prob_shapes_name_the_parameter():
    x = torch.zeros(2, 5, 9)
    params = {"mu": (), "theta": 8}
    unsummed = sampler.model(lambda p: dist.Normal(p["mu"][..., None], 1.0).log_prob(p["theta"]), params)
    with pytest.raises(TargetError, match="shape of parameter 'theta' .*log_prob\\(theta\\).sum\\(-1\\)"):
        unsummed.log_prob(x)
    oversummed = sampler.model(lambda p: dist.Normal(0.0, 1.0).log_prob(p["theta"]).sum(), params)
    with pytest.raises(TargetError, match="must keep them"):
        oversummed.log_prob(x)
    misspelled = sampler.model(lambda p: p["sigma"], params)
    with pytest.raises(TargetError, match="no parameter 'sigma'; its parameters: mu, theta"):
        misspelled.log_prob(x)
    not_a_tensor = sampler.model(lambda p: [1.0], params)
    with pytest.raises(TargetError, match="must return a torch.Tensor"):
        not_a_tensor.log_prob(x)
    with pytest.raises(TargetError, match=r"x must have shape \(..., 9\)"):
        unsummed.log_prob(torch.zeros(4, 3))
    # through the engine: the same message, as a TargetError of the run
    with pytest.raises(TargetError, match="shape of parameter 'theta'"):
        sampler.sample(unsummed, method="smc", n_particles=16, n_replicas=2, seed=0)


def test_unconstrain_checks_values():
    m = eight_schools.noncentered()
    with pytest.raises(ConfigurationError, match="values for eta are missing"):
        m.unconstrain({"mu": 0.0, "tau": 1.0})
    with pytest.raises(ConfigurationError, match="parameter 'eta' has shape \\(8,\\)"):
        m.unconstrain({"mu": 0.0, "tau": 1.0, "eta": np.zeros(7)})


def test_data_follows_the_particles_dtype():
    m = logistic_regression.make_model()
    for dtype in (torch.float32, torch.float64):
        x = torch.zeros(3, 2, dtype=dtype)
        assert m.log_prob(x).dtype == dtype
        assert m.data_like(x)["z"].dtype == dtype


def test_distribution_validation_is_off_while_the_model_runs():
    """A positive value that underflows to 0 in float32 gets log density -inf, not a ValueError."""
    m = sampler.model(lambda p: dist.HalfCauchy(1.0).log_prob(p["tau"]) - torch.log(p["tau"]) * 0, {"tau": "positive"})
    lp = m.log_prob(torch.tensor([[-200.0]], dtype=torch.float32))
    assert lp.shape == (1,)
    assert dist.Distribution._validate_args  # restored


# -- transcriptions ------------------------------------------------------------------------------------
def test_eight_schools_is_the_hand_written_density():
    """The centered model equals its hand-written unconstrained density (log tau + Jacobian) at random points."""
    y = torch.tensor(eight_schools.DATA["y"], dtype=torch.float64)
    sigma = torch.tensor(eight_schools.DATA["sigma"], dtype=torch.float64)
    x = torch.randn(4, 6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mu, log_tau, theta = x[..., 0], x[..., 1], x[..., 2:]
    tau = log_tau.exp()
    by_hand = (
        -0.5 * (mu / 5) ** 2
        - math.log(5 * math.sqrt(2 * math.pi))
        + math.log(2 / (math.pi * 5))
        - torch.log1p((tau / 5) ** 2)
        + (-0.5 * ((theta - mu[..., None]) / tau[..., None]) ** 2 - torch.log(tau[..., None])).sum(-1)
        - 4 * math.log(2 * math.pi)
        + (-0.5 * ((y - theta) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)
        + log_tau
    )
    assert torch.allclose(eight_schools.centered().log_prob(x), by_hand, atol=1e-10)


def test_eight_schools_prior_is_the_hand_written_prior():
    """The example's declared prior: its density is ``log_prob`` without the likelihood (by hand, in
    the unconstrained space with the log-tau Jacobian), and its draws follow it: ``mu / 5`` and
    ``(theta - mu) / tau`` standard normal, ``tau`` below 5 half the time (each within 4.5 standard
    errors of 20,000 draws)."""
    m = eight_schools.centered()
    assert m.has_prior and eight_schools.noncentered().has_prior
    y = torch.tensor(eight_schools.DATA["y"], dtype=torch.float64)
    sigma = torch.tensor(eight_schools.DATA["sigma"], dtype=torch.float64)
    x = torch.randn(4, 6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    theta = x[..., 2:]
    likelihood = (-0.5 * ((y - theta) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(m.log_prob(x) - m.prior_log_prob(x), likelihood, atol=1e-10)
    n = 20_000
    draws = m.prior_sample(n, torch.Generator().manual_seed(2), dtype=torch.float64)
    assert draws.shape == (n, 10) and draws.dtype == torch.float64 and torch.isfinite(draws).all()
    p = m.constrain(draws)
    e = ((p["theta"] - p["mu"][:, None]) / p["tau"][:, None]).reshape(-1)
    for v in (p["mu"] / 5.0, e):
        assert abs(float(v.mean())) < 4.5 / math.sqrt(v.numel())
        assert abs(float(v.var()) - 1.0) < 4.5 * math.sqrt(2.0 / v.numel())
    assert abs(float((p["tau"] < 5.0).double().mean()) - 0.5) < 4.5 * 0.5 / math.sqrt(n)


def test_smc_starts_a_model_at_its_prior():
    """Default ``smc`` on the centered example starts at its prior (auto finds no maximum) and
    agrees with posteriordb's reference draws of the same posterior, within 4.5 Monte Carlo
    standard errors of each mean (the smallest bulk ESS over the coordinates)."""
    from sampler_benchmarks.posteriors import get_posterior

    ref = get_posterior("eight_schools-eight_schools_centered")
    res = sampler.sample(eight_schools.centered(), "smc", n_particles=1000, n_replicas=4, seed=0, dtype="float64")
    assert res.options["reference"].startswith("target prior (auto:")
    ess = float(sampler.diagnostics.rhat_and_ess(res.samples)[1].min())
    means = {"mu": res.draws["mu"], "tau": res.draws["tau"]}
    means.update({f"theta[{j + 1}]": res.draws["theta"][..., j] for j in range(8)})
    for name, v in means.items():
        z = abs(float(v.mean()) - ref.reference_mean[name]) / ref.reference_sd[name]
        assert z <= 4.5 / math.sqrt(ess), (name, z, ess)


def test_model_prior_errors():
    params = {"mu": (), "tau": constraints.positive}

    def lp(p):
        return dist.Normal(0.0, 1.0).log_prob(p["mu"]) + dist.HalfNormal(1.0).log_prob(p["tau"])

    def draws(n, g):
        return {"mu": torch.randn(n, generator=g), "tau": torch.randn(n, generator=g).abs()}

    with pytest.raises(ConfigurationError, match="both prior_log_prob and prior_sample, or neither"):
        sampler.model(lp, params, prior_log_prob=lp)
    with pytest.raises(ConfigurationError, match="prior_sample must be a function"):
        sampler.model(lp, params, prior_log_prob=lp, prior_sample=3)
    assert not sampler.model(lp, params).has_prior
    with pytest.raises(NotImplementedError, match="declares no prior"):
        sampler.model(lp, params).prior_sample(3)
    short = sampler.model(lp, params, prior_log_prob=lp, prior_sample=lambda n, g: draws(n - 1, g))
    with pytest.raises(TargetError, match=r"prior_sample\(5, generator\) must give each parameter 5 draws"):
        short.prior_sample(5, torch.Generator().manual_seed(0))
    flat = sampler.model(lp, params, prior_log_prob=lambda p: p["mu"].sum(), prior_sample=draws)
    with pytest.raises(TargetError, match="prior_log_prob returned shape"):
        flat.prior_log_prob(torch.zeros(4, 2))
    good = sampler.model(lp, params, prior_log_prob=lp, prior_sample=draws)
    assert good.prior_sample(7, torch.Generator().manual_seed(0), dtype=torch.float32).shape == (7, 2)


def test_logistic_regression_log_Z_matches_quadrature():
    """log Z of the Challenger model by smc agrees with 2-D quadrature within the replicas' error."""
    m = logistic_regression.make_model()
    grid = torch.linspace(-8.0, 8.0, 801, dtype=torch.float64)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    lp = m.log_prob(torch.stack([a, b], -1))
    exact = float(torch.logsumexp(lp.flatten(), 0) + 2 * math.log(float(grid[1] - grid[0])))
    res = sampler.sample(m, method="smc", n_particles=1000, n_replicas=8, seed=2, dtype="float64")
    assert abs(res.log_Z - exact) <= t_bound(8) * res.log_Z_stderr, (res.log_Z, exact, res.log_Z_stderr)


# -- results -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def schools_result():
    return sampler.sample(eight_schools.noncentered(), method="smc", n_particles=300, n_replicas=4, seed=5)


def test_result_draws_and_arviz(schools_result):
    res = schools_result
    assert set(res.draws) == {"mu", "tau", "eta"}
    assert res.draws["tau"].shape == (4, 300) and res.draws["eta"].shape == (4, 300, 8)
    assert bool((res.draws["tau"] > 0).all())
    assert torch.equal(res.draws["tau"], res.samples[..., 1].exp())
    idata = res.to_arviz()
    assert set(idata.posterior.data_vars) == {"mu", "tau", "eta"}
    assert idata.posterior["eta"].dims == ("chain", "draw", "school")
    assert list(idata.posterior["school"].values) == list(eight_schools.SCHOOLS)
    assert idata.unconstrained_posterior["x"].shape == (4, 300, 10)
    import arviz as az

    table = az.summary(idata)
    assert list(table.index[:3]) == ["mu", "tau", "eta[Choate]"]


def test_summary_lists_parameters_by_name(schools_result):
    s = sampler.summary(schools_result)
    text = str(s)
    assert "  tau " in text and "  eta[Mt. Hermon] " in text
    tau = s.values["parameters"]["tau"]
    assert tau["mean"] == pytest.approx(float(schools_result.draws["tau"].mean()), rel=1e-6)
    assert set(tau) == {"mean", "sd", "rhat", "ess_bulk"}


def test_save_load_round_trip(schools_result, tmp_path):
    path = schools_result.save(tmp_path / "schools.nc")
    back = sampler.load(path)
    assert back.layout == schools_result.layout
    assert all(torch.equal(back.draws[k], v) for k, v in schools_result.draws.items())
    assert torch.equal(back.samples, schools_result.samples)
    assert back.dim_names == schools_result.dim_names
    assert (
        str(sampler.summary(back)).split("wall time")[0] == str(sampler.summary(schools_result)).split("wall time")[0]
    )


def test_damaged_layout_is_a_persistence_error(schools_result, tmp_path):
    idata = schools_result.to_arviz()
    idata.posterior.attrs["parameters"] = '{"parameters": [{"name": "mu"}]}'
    with pytest.raises(PersistenceError, match="JSON attribute parameters is not a parameter layout"):
        sampler.io.persistence.from_inference_data(idata, "the file")
    idata = schools_result.to_arviz()
    idata.posterior = idata.posterior.drop_vars("tau")
    with pytest.raises(PersistenceError, match="missing variable posterior.tau"):
        sampler.io.persistence.from_inference_data(idata, "the file")


def test_plots_show_parameters_by_name(schools_result):
    pytest.importorskip("matplotlib")
    fig = schools_result.plot("marginals", coords=["mu", "tau"])
    labels = [ax.get_title() + ax.get_xlabel() for ax in fig.axes]
    assert any("tau" in t for t in labels), labels
    assert "pair" in sampler.plotting.available_kinds(schools_result)


def test_chain_methods_carry_draws():
    res = sampler.sample(logistic_regression.make_model(), method="mala", n_particles=50, n_replicas=2, seed=0)
    assert res.draws["beta"].shape == (2, 50)
    assert res.layout.names == ("alpha", "beta")


def test_correlated_effects_model_declares_a_correlation_factor():
    m = correlated_effects.make_model()
    assert m.layout["L"].support == "CorrCholesky()" and m.layout["L"].unconstrained_size == 1
    values = m.constrain(torch.randn(5, m.dim))
    corr = values["L"] @ values["L"].transpose(-1, -2)
    assert torch.allclose(torch.diagonal(corr, dim1=-2, dim2=-1), torch.ones(5, 2), atol=1e-6)


def test_cli_runs_a_model_from_a_file(tmp_path):
    out = tmp_path / "r.nc"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sampler",
            "run",
            f"{ROOT / 'examples' / 'eight_schools.py'}:noncentered",
            "-n",
            "200",
            "--seed",
            "1",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "  eta[Choate] " in proc.stdout
    assert sampler.load(out).draws["eta"].shape[-1] == 8


def test_resume_of_a_model_run_gives_the_same_draws(tmp_path):
    """A checkpointed model run, resumed from a mid-run checkpoint, ends with the same draws."""
    model = logistic_regression.make_model()
    settings = dict(method="smc", n_particles=200, n_replicas=2, seed=4)
    full = sampler.sample(model, **settings)
    ck = tmp_path / "run.ckpt"
    sampler.sample(model, checkpoint=ck, checkpoint_every=2, **settings)
    data = sampler.io.checkpoint.read_checkpoint(ck)
    assert data is not None
    resumed = sampler.resume(ck, target=logistic_regression.make_model())
    assert all(torch.equal(resumed.draws[k], full.draws[k]) for k in full.draws)


# -- fuzz: any declaration either works or is a ConfigurationError ------------------------------------
_SUPPORT_CHOICES = [
    "real",
    "positive",
    "unit_interval",
    "simplex",
    "corr_cholesky",
    "nonnegative",
    "real_vector",
    "bogus",
    constraints.interval(-2.0, 5.0),
    constraints.greater_than(-1.0),
    constraints.less_than(3.0),
    constraints.lower_cholesky,
    constraints.positive_definite,
    constraints.boolean,
    constraints.integer_interval(0, 3),
]


@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 4), max_size=3).map(tuple),
            st.sampled_from(_SUPPORT_CHOICES),
        ),
        min_size=1,
        max_size=3,
    ),
    st.lists(st.integers(1, 3), max_size=2).map(tuple),
    st.sampled_from([torch.float32, torch.float64]),
)
@settings(max_examples=150, derandomize=True, deadline=None, database=None)
def test_fuzz_declarations(declarations, batch, dtype):
    """A declaration is accepted or refused with a ConfigurationError; accepted ones map x to values inside
    their supports and back, with a finite log-Jacobian of the batch's shape."""
    params = {f"p{i}": (shape, support) for i, (shape, support) in enumerate(declarations)}
    try:
        m = sampler.model(lambda p: sum(v.reshape(*batch, -1).sum(-1) * 0 for v in p.values()), params)
    except ConfigurationError:
        return
    x = torch.randn(*batch, m.dim, dtype=dtype, generator=torch.Generator().manual_seed(0))
    values, log_jac = m.constrain_with_log_jacobian(x)
    assert log_jac.shape == batch and bool(torch.isfinite(log_jac).all())
    assert m.log_prob(x).shape == batch
    for info in m.layout.parameters:
        assert values[info.name].shape == batch + info.shape
    back = m.unconstrain(values)
    tol = 1e-3 if dtype == torch.float32 else 1e-8
    assert torch.allclose(back, x, atol=tol, rtol=tol)
