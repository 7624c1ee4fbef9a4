"""``compile=True``'s fused loops (sampler_plugins.mcmc.fused): chain segments and SMC sweeps.

A chain segment runs many chain iterations in one compiled ``scan``, the warm-up's dual
averaging included. It must sample the target (exact moments of a correlated Gaussian), make
the same evaluations and keep the same records as the eager iterations, adapt as they do, and
give the same result whether or not the run checkpoints or resumes. Fused sweeps run all of a
temperature's MCMC sweeps in one call: SMC with them keeps log Z within its standard error and
counts every gradient. Each distinct loop compiles once (5-25 s on 2 cores), so these tests are
marked slow and still run in CI.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from test_kernels import COV3, MEAN3, Z_MAX, gaussian3, max_abs_z

import sampler
from sampler.ext import StepBlock, StepStats
from sampler.io.checkpoint import read_checkpoint
from sampler_plugins.mcmc.compiled import CompilationWarning
from sampler_plugins.mcmc.fused import SEGMENT_ITERATIONS
from sampler_plugins.mcmc.kernels import HMC

pytestmark = pytest.mark.slow


def _run(kernel: str, seed: int, n_replicas: int, n_particles: int, n_warmup: int, **options):
    return sampler.sample(
        gaussian3(), method=kernel, n_particles=n_particles, n_replicas=n_replicas, seed=seed, dtype="float64",
        n_warmup=n_warmup, progress=False, **options,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kernel", "options"),
    [
        ("hmc", {"trajectory": "fixed", "n_leapfrog": 3}),  # dense metric, jittered lengths: the masked trajectory
        ("hmc", {"trajectory": "fixed", "n_leapfrog": 3, "metric": "identity"}),  # one length
        ("mala", {}),  # diagonal metric
        ("hmc", {}),  # ChEES lengths adapted in the graph, dense metric: each trajectory a loop
    ],
)
def test_fused_chains_draw_the_target(kernel, options):
    """The last draw of each of 2000 independent chains, after warm-up, is an exact draw of gaussian3.

    200 warm-up iterations (Stan's windows, metric pooled over the chains) and 50 kept
    draws: the chains have long forgotten their start, so the 2000 last draws are iid draws of
    the target and ``test_kernels``' iid z-scores apply (max of 9 below 4: P ~ 6e-4).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompilationWarning)  # the loops fuse
        res = _run(kernel, 3, 2000, 50, 200, compile=True, **options)
    assert max_abs_z(res.samples[:, -1].numpy(), MEAN3, COV3) < Z_MAX
    acceptance = torch.stack([s.info["acceptance"] for s in res.steps[200:]])
    assert 0.3 < float(acceptance.mean()) < 1.0  # the chains moved


def test_fused_chains_keep_the_eager_records_and_counts():
    """Per iteration a StepStats with the iteration's evaluations; the step size frozen after warm-up.

    The fused run records a StepBlock per segment, read as its rows, with the eager run's statistics.
    """
    options = dict(trajectory="fixed", n_leapfrog=3)
    fused, eager = _run("hmc", 5, 2, 30, 30, compile=True, **options), _run("hmc", 5, 2, 30, 30, **options)
    assert all(isinstance(r, StepBlock) for r in fused.steps.records)
    assert all(isinstance(r, StepStats) for r in eager.steps.records)
    assert set(fused.stats) == set(eager.stats)
    assert len(fused.steps) == len(eager.steps) == 60
    assert [s.step for s in fused.steps] == list(range(1, 61))
    # jittered lengths (the dense metric's default): the same per iteration as the eager kernel's
    assert [s.grad_evals for s in fused.steps] == [s.grad_evals for s in eager.steps]
    assert fused.n_grad_evals == eager.n_grad_evals and fused.n_target_evals == eager.n_target_evals
    assert len({s.grad_evals for s in fused.steps}) > 1
    warm = torch.stack([s.info["warmup"] for s in fused.steps])
    assert warm[:30].eq(1).all() and warm[30:].eq(0).all()
    steps = torch.stack([s.info["step_size"] for s in fused.steps])
    # the last warm-up iteration reports the frozen size the sampling iterations use
    torch.testing.assert_close(steps[29:], steps[29].expand(31, 2), rtol=1e-14, atol=0)
    assert not steps[:29].eq(steps[29]).all()  # the warm-up adapted
    assert fused.samples.shape == eager.samples.shape == (2, 30, 3)


def test_fused_chains_are_reproducible_and_checkpointing_changes_nothing(tmp_path):
    """Segments end at the same iterations with or without checkpoints: the same draws; resume continues them."""
    options = dict(trajectory="fixed", n_leapfrog=3, compile=True, thin=2)
    full = _run("hmc", 9, 2, 40, 30, **options)
    again = _run("hmc", 9, 2, 40, 30, **options)
    torch.testing.assert_close(full.samples, again.samples, rtol=0, atol=0)
    ck = tmp_path / "chains.ckpt"
    saved = _run("hmc", 9, 2, 40, 30, checkpoint=ck, checkpoint_every=7, **options)
    torch.testing.assert_close(saved.samples, full.samples, rtol=0, atol=0)
    data = read_checkpoint(ck)
    assert 0 < data.step < 110  # the last periodic save, at a segment's end
    resumed = sampler.resume(ck, gaussian3(), progress=False)
    torch.testing.assert_close(resumed.samples, full.samples, rtol=0, atol=0)
    assert resumed.n_grad_evals == full.n_grad_evals and len(resumed.steps) == len(full.steps)
    # the checkpoint keeps the blocks' rows: the resumed run's statistics are the full run's
    for key, value in full.stats.items():
        torch.testing.assert_close(resumed.stats[key], value, rtol=0, atol=0, equal_nan=True)


def test_segments_end_at_windows_warmup_and_their_length():
    chain = sampler.method("hmc", trajectory="fixed", n_warmup=1000)
    ends, it, total = [], 0, 1000 + 2 * SEGMENT_ITERATIONS + 7
    while it < total:
        it = chain._segment_end(it, total)
        ends.append(it)
    window_edges = sorted({i for w in chain.windows for i in w})
    assert ends == [*window_edges, 1000, 1000 + SEGMENT_ITERATIONS, 1000 + 2 * SEGMENT_ITERATIONS, total]


def test_one_iteration_segments_run():
    """A segment of one iteration (padded with an inactive one) moves the chains once."""
    res = _run("hmc", 2, 2, 1, 0, trajectory="fixed", n_leapfrog=3, compile=True, metric="identity")
    assert res.samples.shape == (2, 1, 3) and len(res.steps) == 1
    assert res.n_grad_evals == 2 * 3 + 2  # one trajectory per chain, and the start's gradient


@pytest.mark.parametrize(
    ("options", "loop"),
    [({"trajectory": "fixed", "n_leapfrog": 3}, "hmc_chain_segment"), ({}, "chees_warmup_segment")],
)
def test_fused_chains_fall_back_to_eager_iterations_with_the_same_draws(no_compiler, options, loop):
    with pytest.warns(CompilationWarning, match=rf"{loop} failed .*no C\+\+ compiler"):
        fallback = _run("hmc", 7, 2, 20, 20, compile=True, **options)
    torch.testing.assert_close(fallback.samples, _run("hmc", 7, 2, 20, 20, **options).samples, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kernel", "options"), [("hmc", {"trajectory": "fixed", "step_jitter": 0.2}), ("mala", {"step_jitter": 0.2})]
)
def test_chains_that_do_not_fuse(kernel, options):
    """Per-particle step jitter runs one iteration at a time."""
    assert sampler.method(kernel, compile=True, **options)._segment_step() is None


def test_chees_chains_fuse_with_the_eager_records(tmp_path):
    """ChEES chains run fused, warm-up included (the trajectory length adapts in the graph), each
    trajectory a loop of its own length: per iteration the eager records (``n_leapfrog``,
    ``trajectory_length``, adapted during warm-up and frozen after it) and R x n_leapfrog
    gradients. The draws do not depend on checkpoints."""
    full = _run("hmc", 4, 2, 40, 30, compile=True, thin=2)
    assert len(full.steps) == 110
    n = torch.stack([s.info["n_leapfrog"] for s in full.steps])
    assert [s.grad_evals for s in full.steps] == [2 * int(k[0]) for k in n]
    assert len(set(n[30:, 0].tolist())) > 1  # the frozen length, jittered per iteration
    length = torch.stack([s.info["trajectory_length"] for s in full.steps])
    assert length[30:].eq(length[30]).all() and not length[:30].eq(length[30]).all()
    assert sorted(full.steps[-1].info) == ["acceptance", "n_leapfrog", "step_size", "trajectory_length", "warmup"]
    saved = _run("hmc", 4, 2, 40, 30, compile=True, thin=2, checkpoint=tmp_path / "c.ckpt", checkpoint_every=25)
    torch.testing.assert_close(saved.samples, full.samples, rtol=0, atol=0)


# -- SMC's sweeps ------------------------------------------------------------------------------------
def _smc(kernel: str, seed: int, **options):
    target = sampler.targets.Gaussian(mean=MEAN3, cov=COV3)
    return target, sampler.sample(
        target, method="smc", kernel=kernel, n_particles=500, n_replicas=16, seed=seed, dtype="float64",
        reference="prior", reference_loc=0.0, reference_scale=3.0, progress=False, **options,
    )  # fmt: skip


@pytest.mark.parametrize(("kernel", "options"), [("hmc", {"n_leapfrog": 3}), ("mala", {})])
def test_fused_sweeps_keep_smc_log_z_within_three_standard_errors(kernel, options):
    """As ``test_smc``'s log Z check (R = 16: P(|t_15| > 3) ~ 0.009), with the sweeps fused; every gradient counted."""
    target, res = _smc(kernel, 2024, compile=True, **options)
    se = res.log_Z_stderr
    assert 0 < se < 0.2
    assert abs(res.log_Z - target.log_Z) < 3 * se, f"log Z {res.log_Z:.4f} +- {se:.4f} vs exact {target.log_Z:.4f}"
    per_stage = 16 * 500 * 10 * options.get("n_leapfrog", 1)  # R x N x 10 sweeps x gradients per sweep
    assert all(s.grad_evals == per_stage for s in res.steps)
    assert res.n_grad_evals == 16 * 500 + len(res.steps) * per_stage
    steps = torch.stack([s.info["step_size"] for s in res.steps])
    assert not steps.eq(steps[0]).all()  # the sweeps adapted the step size


def test_fused_sweeps_fall_back_to_the_eager_sweeps_with_the_same_draws(no_compiler):
    with pytest.warns(CompilationWarning, match=r"mala_sweeps failed .*no C\+\+ compiler"):
        _, fallback = _smc("mala", 3, compile=True)
    _, eager = _smc("mala", 3)
    # the same draws; the compiled step's eager fallback rounds its identity-metric move as the
    # whitened one, in the last digits
    torch.testing.assert_close(fallback.samples, eager.samples, rtol=1e-9, atol=1e-12)
    assert fallback.log_Z == pytest.approx(eager.log_Z, abs=1e-9)


@pytest.mark.parametrize("n_leapfrog", [1, 3, 5, 10])
@pytest.mark.parametrize("jitter", [0.0, 0.3, 0.5, 0.9])
def test_the_masked_trajectory_is_as_long_as_the_longest_jittered_one(n_leapfrog, jitter):
    kernel = HMC(n_leapfrog=n_leapfrog, jitter=jitter)
    assert max(kernel.trajectory_length(k) for k in range(20_000)) == kernel.longest_sweep()
    assert kernel.sweep_lengths(7, 3) == [kernel.trajectory_length(k) for k in (7, 8, 9)]


class FactoredGaussian3(sampler.Target):
    """``gaussian3``'s unnormalized density through the Cholesky factor of a covariance that
    depends on ``x`` (as a GP's kernel matrix does on its length scale), factored by ``factor``:
    ``"cholesky"`` or ``"cholesky_ex"``. The dependence is ``x``'s coordinates times zero, so the
    covariance is COV3 and log Z is exact: ``(d/2) log 2 pi + log det L``."""

    dim = 3

    def __init__(self, factor: str):
        self.factor = factor
        self.log_Z = 1.5 * math.log(2 * math.pi) + 0.5 * math.log(np.linalg.det(COV3))
        self.cov, self.mean = torch.tensor(COV3), torch.tensor(MEAN3)

    def log_prob(self, x):
        cov = self.cov.to(x) * (1 + 0 * x[..., :1, None]).square()
        mean = self.mean.to(x)
        factor = torch.linalg.cholesky(cov) if self.factor == "cholesky" else torch.linalg.cholesky_ex(cov)[0]
        z = torch.linalg.solve_triangular(factor, (x - mean)[..., None], upper=False)[..., 0]
        return -0.5 * z.square().sum(-1)


def _factored(factor: str):
    target = FactoredGaussian3(factor)
    return target, sampler.sample(
        target, method="smc", n_particles=500, n_replicas=16, seed=5, dtype="float64", reference="prior",
        reference_loc=0.0, reference_scale=3.0, progress=False, compile=True,
    )  # fmt: skip


def test_targets_that_factor_by_cholesky_ex_fuse():
    """``cholesky_ex`` compiles inside the fused sweeps (the GP posterior's transcription uses it): no
    warning, and log Z within 3 standard errors (R = 16)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompilationWarning)
        target, res = _factored("cholesky_ex")
    assert abs(res.log_Z - target.log_Z) < 3 * res.log_Z_stderr


def test_a_cholesky_in_the_target_falls_back_with_a_hint():
    """``torch.linalg.cholesky`` does not compile inside a ``scan`` (torch 2.13): the warning names
    the way out, and the run goes on with the per-transition steps (a torch that compiles it
    fuses without a warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompilationWarning)
        target, res = _factored("cholesky")
    failed = [str(w.message) for w in caught if "mala_sweeps failed" in str(w.message)]
    assert all("torch.linalg.cholesky_ex" in message for message in failed)
    if torch.__version__.startswith("2.13"):
        assert failed  # the failure this hint is for
    assert abs(res.log_Z - target.log_Z) < 3 * res.log_Z_stderr


def _function_target(transpose: str) -> sampler.Target:
    """``gaussian3``'s density as ``sampler.target(log_prob=...)``, its gradient left to autograd: the
    quadratic form through the held precision's transpose, taken by ``transpose``."""
    precision, mean = torch.tensor(np.linalg.inv(COV3)), torch.tensor(MEAN3)

    def log_prob(x):
        held = precision.T if transpose == ".T" else precision.transpose(-2, -1)
        z = x - mean.to(x)
        return -0.5 * ((z @ held.to(x)) * z).sum(-1)

    log_z = 1.5 * math.log(2 * math.pi) + 0.5 * math.log(np.linalg.det(COV3))
    return sampler.target(log_prob=log_prob, dim=3, name=f"gaussian3 {transpose}", log_Z=log_z)


def test_function_targets_fuse_with_torch_func_gradients():
    """A plain ``sampler.target(log_prob=...)`` (no ``grad``) fuses: its gradient is ``torch.func``'s inside
    the loop (autograd's ``torch.autograd.grad`` does not trace). log Z within 3 standard errors (R = 16)."""
    target = _function_target(".transpose")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompilationWarning)
        res = sampler.sample(
            target, method="smc", n_particles=500, n_replicas=16, seed=8, dtype="float64", reference="prior",
            reference_loc=0.0, reference_scale=3.0, progress=False, compile=True,
        )  # fmt: skip
    assert abs(res.log_Z - target.log_Z) < 3 * res.log_Z_stderr


def test_a_held_tensors_transpose_property_falls_back_with_a_hint():
    """``.T`` of a tensor the log density holds does not trace inside a fused loop's gradient (torch
    2.13): the warning names the way out, and the chains go on with the per-transition steps."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompilationWarning)
        res = sampler.sample(
            _function_target(".T"), method="hmc", n_particles=50, n_replicas=2000, seed=4, dtype="float64",
            n_warmup=200, trajectory="fixed", n_leapfrog=3, progress=False, compile=True,
        )  # fmt: skip
    failed = [str(w.message) for w in caught if "chain_segment failed" in str(w.message)]
    assert all(".transpose(-2, -1)" in message for message in failed)
    if torch.__version__.startswith("2.13"):
        assert failed  # the failure this hint is for
    assert max_abs_z(res.samples[:, -1].numpy(), MEAN3, COV3) < Z_MAX
