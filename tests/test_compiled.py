"""``compile=True``: the compiled HMC and MALA steps (sampler_plugins.mcmc.compiled).

The compiled steps must compute what the eager ones do: from the same state and the same
random draws, the same proposal, evaluation, acceptance ratio and counts, up to floating-point
rounding (float64 here; inductor may reorder sums). Each test compiles at most one new graph
(a few seconds each on 2 cores), so they are marked slow and still run in CI.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from test_kernels import COV3, MEAN3, Z_MAX, exact_particles, gaussian3, max_abs_z

import sampler
from sampler.errors import ConfigurationError
from sampler_plugins.mcmc.compiled import CompilationWarning
from sampler_plugins.mcmc.kernels import HMC, MALA, RWMH, ULA

pytestmark = pytest.mark.slow


class AutogradGaussian3(sampler.Target):
    """``gaussian3``'s density, its gradient left to ``Target``'s autograd default (traced by ``torch.func``)."""

    dim = 3

    def __init__(self):
        self.gaussian = gaussian3()

    def log_prob(self, x):
        return self.gaussian.log_prob(x)

    def sample(self, n, generator=None, device=None, dtype=None):
        return self.gaussian.sample(n, generator, device, dtype)


def _transition(kernel, particles, ctx, metric, seed: int):
    """``kernel.transition`` from ``particles`` at the context's time, draws from a generator seeded ``seed``."""
    ctx.generator.manual_seed(seed)
    eps = torch.full((particles.n_replicas, 1, 1), 1.2, dtype=particles.x.dtype)  # large: some moves rejected
    options = {} if metric is None else {"metric": metric}
    if getattr(kernel, "jitter", 0.0) > 0.0:
        options["sweep"] = 3
    return kernel.transition(particles.x, particles.evaluation, eps, ctx, **options)


@pytest.mark.parametrize(
    ("kernel_type", "options", "metric_kind", "t", "target_type"),
    [
        (HMC, {}, "dense", 0.4, gaussian3),  # a fixed length: one compiled hmc_transition
        (HMC, {"jitter": 0.5}, "dense", 0.4, gaussian3),  # varying lengths: leapfrog_step calls, hmc_choice
        (MALA, {}, "diag", 1.0, gaussian3),
        (HMC, {}, "diag", 0.7, AutogradGaussian3),
    ],
)
def test_compiled_steps_compute_the_eager_proposals(kernel_type, options, metric_kind, t, target_type):
    target = target_type()
    particles, ctx = exact_particles(target, 2, 50, seed=3)
    ctx = sampler.StepContext(
        path=ctx.path, t=torch.tensor([t, 0.5 * t], dtype=torch.float64), t_from=ctx.t_from, step=1,
        generator=ctx.generator, needs_grad=True,
    )  # fmt: skip
    scale = torch.linspace(0.5, 1.5, 3, dtype=torch.float64)
    metric = torch.diag(scale).expand(2, 3, 3).clone() if metric_kind == "dense" else scale.expand(2, 3).clone()
    metric[1] *= 0.8  # per replica
    eager, fused = kernel_type(**options), kernel_type(compile=True, **options)
    counter = ctx.path.counter
    before = (counter.target_evals, counter.grad_evals)
    a = _transition(eager, particles, ctx, metric, seed=11)
    mid = (counter.target_evals, counter.grad_evals)
    b = _transition(fused, particles, ctx, metric, seed=11)
    after = (counter.target_evals, counter.grad_evals)
    assert not fused._compiled.failed
    # the same number of evaluations, counted
    assert [m - s for m, s in zip(mid, before)] == [e - m for e, m in zip(after, mid)] != [0, 0]
    close = dict(rtol=1e-10, atol=1e-10)
    (x_a, ev_a, log_alpha_a, prop_a), (x_b, ev_b, log_alpha_b, prop_b) = a, b
    moved = (x_a != particles.x).any(-1)
    assert 0 < int(moved.sum()) < moved.numel()  # the choice matters: some moves accepted, some not
    for got, expected in ((x_b, x_a), (log_alpha_b, log_alpha_a), (prop_b.x, prop_a.x)):
        torch.testing.assert_close(got, expected, **close)
    for field in ("log_ref", "log_target", "grad_ref", "grad_target"):
        torch.testing.assert_close(getattr(ev_b, field), getattr(ev_a, field), **close)
        torch.testing.assert_close(getattr(prop_b.evaluation, field), getattr(prop_a.evaluation, field), **close)
    if kernel_type is HMC:
        torch.testing.assert_close(prop_b.momentum, prop_a.momentum, **close)


def test_compiled_hmc_leaves_a_gaussian_invariant():
    """Exact draws of a correlated Gaussian stay exact draws under three compiled HMC sweeps.

    Fixed step and metric (``adapt=False``), each particle its own noise: the particles stay iid
    exact draws, so the iid z-scores of ``test_kernels`` apply (max of 9 below 4: P ~ 6e-4).
    """
    target = gaussian3()
    particles, ctx = exact_particles(target, 4, 10_000, seed=20)
    kernel = HMC(n_steps=3, n_leapfrog=4, step_size=0.4, adapt=False, metric="dense", compile=True)
    out = kernel.apply(particles, kernel.init(particles, ctx), ctx)
    assert not kernel._compiled.failed
    assert 0.5 < float(out.info["acceptance"].mean()) < 1.0  # the sweeps did move
    y = out.particles.x.reshape(-1, 3).numpy()
    assert max_abs_z(y, MEAN3, COV3) < Z_MAX


def _chains(seed: int, **options):
    return sampler.sample(
        gaussian3(), method="hmc", n_particles=30, n_replicas=2, seed=seed, dtype="float64", n_warmup=30,
        trajectory="fixed", n_leapfrog=3, **options,
    )  # fmt: skip


def test_compiled_runs_are_reproducible_and_count_as_eager_ones():
    first, second, eager = _chains(5, compile=True), _chains(5, compile=True), _chains(5)
    torch.testing.assert_close(first.samples, second.samples, rtol=0, atol=0)
    assert first.n_grad_evals == eager.n_grad_evals == 2 * 60 * 3  # 2 chains x 60 iterations x 3 leapfrog steps
    assert first.n_target_evals == eager.n_target_evals
    assert first.options["compile"] is True


def test_the_callers_distribution_validation_survives_the_first_compilation():
    """Dynamo turns torch.distributions' validation off for the process when it first compiles; we give it back."""
    code = (
        "import torch, sampler\n"
        "sampler.sample('gaussian', method='smc', kernel='mala', n_particles=20, n_replicas=1, seed=0, compile=True)\n"
        "print(torch.distributions.Distribution._validate_args)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert done.stdout.split() == ["True"]


def test_compile_falls_back_to_eager_with_a_warning(no_compiler):
    with pytest.warns(CompilationWarning, match=r"no C\+\+ compiler\); running eagerly"):
        fallback = _chains(7, compile=True)
    torch.testing.assert_close(fallback.samples, _chains(7).samples, rtol=0, atol=0)
    assert math.isfinite(float(fallback.samples.sum()))


@pytest.mark.parametrize("kernel_type", [RWMH, ULA])
def test_compile_is_refused_by_kernels_without_a_compiled_step(kernel_type):
    with pytest.raises(ConfigurationError, match=f"{kernel_type.__name__} has no compiled step"):
        kernel_type(compile=True)


def test_a_new_run_with_another_reference_reuses_the_compiled_step():
    """Per-run values (the reference's normalizer, the stage's time) are tensors, never compiled-in constants."""
    import warnings

    run = lambda scale: sampler.sample(  # noqa: E731
        gaussian3(), method="smc", kernel="mala", n_particles=40, n_replicas=2, seed=1, dtype="float64",
        reference="prior", reference_scale=scale, compile=True,
    )  # fmt: skip
    run(2.0)
    with torch._dynamo.config.patch(error_on_recompile=True), warnings.catch_warnings():
        warnings.simplefilter("error", CompilationWarning)
        result = run(3.0)
    assert math.isfinite(result.log_Z)
