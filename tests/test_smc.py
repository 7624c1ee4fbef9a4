"""Statistical tests of SMC and AIS: log Z (accuracy, unbiasedness, bookkeeping), the adaptive
schedule, the returned weights, and mode coverage.

Every test is seeded. Tolerances come from the Monte Carlo error (the derivation is stated next
to each check), never adjusted to make a test pass. Standard errors of log Z come from the
spread across independent replicas (``Result.log_Z_stderr``: ``sd(Z_r) / (sqrt(R) mean Z_r)``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sampler
from sampler.schedules import Adaptive, Linear

from conftest import t_bound

DTYPE = torch.float64


def far_gaussian() -> sampler.targets.Gaussian:
    """d=10, mean 3 in every coordinate (3 sd of the N(0, I) reference away), scales 0.5 .. 1.5."""
    return sampler.targets.Gaussian(mean=np.full(10, 3.0), scale=np.linspace(0.5, 1.5, 10))


def log_mean_exp(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def my_conditional_ess(log_w: torch.Tensor, log_g: torch.Tensor) -> torch.Tensor:
    """``(sum_i W_i g_i)^2 / sum_i W_i g_i^2`` per replica, written out independently of the library."""
    w = torch.softmax(log_w, dim=-1)
    shift = log_g.max(dim=-1, keepdim=True).values
    g = torch.exp(log_g - shift)
    return (w * g).sum(-1) ** 2 / (w * g**2).sum(-1)


def assert_times_reach_one(t: torch.Tensor) -> None:
    """Per replica (columns of ``t`` ``(K, R)``): strictly increasing from t_1 > 0 up to 1, then 1.

    Every replica ends at 1; a replica that reached 1 early stays there while the others finish.
    """
    assert t.ndim == 2 and t.dtype == torch.float64
    assert torch.all(t[0] > 0) and torch.all(t[-1] == 1.0), t
    done = torch.cummax(t == 1.0, dim=0).values  # (K, R): at 1 at this stage or before
    assert torch.all(t[done] == 1.0)
    moving = ~done[:-1]  # stages k whose time is below 1: the next time is larger
    assert torch.all(t[1:][moving] > t[:-1][moving]), t


def finishing_stage(t: torch.Tensor) -> torch.Tensor:
    """Per replica, the index of the stage that took it to t = 1, ``(R,)``."""
    return (t < 1.0).sum(0)


class Recorder(sampler.Corrector):
    """Runs last in each stage and keeps, per stage, the particles the stage started from (the
    state after the previous stage's correctors: what the schedule and the reweighting saw)."""

    def __init__(self):
        self.current = None
        self.starts: list[sampler.Particles] = []
        self.times: list[tuple[torch.Tensor, torch.Tensor]] = []

    def init(self, particles, ctx):
        self.current = particles
        return None

    def apply(self, particles, state, ctx):
        self.starts.append(self.current)
        self.times.append((ctx.t_from.clone(), ctx.t.clone()))
        self.current = particles
        return sampler.StepOutput(particles, state)

    def log_increments(self, k: int, t_to: torch.Tensor | None = None) -> torch.Tensor:
        """Stage k's incremental log weights ``(t_to - t_from)(log target - log ref)`` (R, N),
        with per-replica times ``(R,)``.

        No transports: the reweighting happens at the stage's starting positions.
        """
        t_from, t = self.times[k]
        ev = self.starts[k].evaluation
        return ((t if t_to is None else t_to) - t_from)[:, None] * (ev.log_target - ev.log_ref)

    def cess(self, k: int, t_to: torch.Tensor | None = None) -> torch.Tensor:
        """Conditional ESS per replica of stage k (moved to ``t_to`` instead of its time if given)."""
        return my_conditional_ess(self.starts[k].log_weights, self.log_increments(k, t_to))

    def dlogz(self, k: int) -> torch.Tensor:
        """Stage k's log Z increment ``log sum_i W_i g_i`` per replica."""
        log_w = self.starts[k].log_weights
        return torch.logsumexp(log_w + self.log_increments(k), -1) - torch.logsumexp(log_w, -1)


class Snapshot(sampler.Corrector):
    """Runs first in each stage and keeps the particles right after the stage's reweighting."""

    def __init__(self):
        self.after_reweighting: list[sampler.Particles] = []

    def apply(self, particles, state, ctx):
        self.after_reweighting.append(particles)
        return sampler.StepOutput(particles, state)


# ---------------------------------------------------------------------------------------------
# 1. log Z accuracy.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, options",
    [
        # The prior reference: "auto" would take the Laplace fit, exact on a Gaussian (one stage).
        pytest.param(
            far_gaussian, dict(reference="prior", reference_scale=1.0, reference_loc=0.0), id="gaussian-d10-mean3"
        ),
        pytest.param(lambda: sampler.get_target("double-well"), dict(), id="double-well"),
    ],
)
def test_smc_log_z_within_three_standard_errors(target, options):
    """Pooled log Z within 3 standard errors of the exact value.

    R = 16 replicas, so the between-replica standard error has 15 degrees of freedom
    (P(|t_15| > 3) ~ 0.009). The adaptive schedule adds an O(1/N) bias to log Z, negligible
    against the standard error at N = 500.
    """
    tgt = target()
    res = sampler.sample(tgt, method="smc", n_particles=500, n_replicas=16, seed=2024, dtype=DTYPE, **options)
    assert res.exact_log_Z == pytest.approx(tgt.log_Z)
    se = res.log_Z_stderr
    # The check only means something if the error bar is small against log Z's natural scale
    # (a standard error of 0.2 is already a 20% error on Z).
    assert 0 < se < 0.2
    assert abs(res.log_Z - tgt.log_Z) < 3 * se, f"log Z {res.log_Z:.4f} +- {se:.4f} vs exact {tgt.log_Z:.4f}"


# ---------------------------------------------------------------------------------------------
# 2. Unbiasedness of Z on a fixed schedule.
# ---------------------------------------------------------------------------------------------

UNBIASED_R, UNBIASED_N = 200, 200

# Fixed schedule AND fixed kernel (adapt=False, one step size for every temperature): with
# adaptation, kernels chosen from the particles themselves break the exact unbiasedness argument.
FIXED_KERNEL = dict(kernel="mala", n_steps=2, step_size=0.5, adapt=False)


@pytest.mark.parametrize(
    "method, options",
    [
        pytest.param("ais", dict(n_temps=10, schedule="linear"), id="ais-linear10"),
        *[
            pytest.param(
                "smc",
                dict(schedule=Linear(10), resample_threshold=1.0, scheme=scheme),
                id=f"smc-linear10-always-{scheme}",
            )
            for scheme in ("systematic", "stratified", "residual", "multinomial")
        ],
        pytest.param("smc", dict(schedule=Linear(10), resample_threshold=0.5), id="smc-linear10-adaptive-resample"),
    ],
)
def test_z_estimate_is_unbiased_on_fixed_schedule(method, options):
    """E[Z_hat / Z] = 1 per replica for AIS and for SMC with (ESS-triggered) resampling.

    The mean of Z_hat/Z over R = 200 independent replicas has standard error
    sd(Z_hat/Z) / sqrt(R); require it within 4 standard errors of 1. (The relative sd of a
    replica's Z_hat is ~0.1 here, so Z_hat/Z is far from heavy-tailed and the sample sd is
    reliable.) Resampling decided from the current weights keeps Z_hat unbiased.
    """
    target = sampler.get_target("double-well")
    res = sampler.sample(
        target,
        method=method,
        n_particles=UNBIASED_N,
        n_replicas=UNBIASED_R,
        seed=77,
        dtype=DTYPE,
        **FIXED_KERNEL,
        **options,
    )
    assert len(res.steps) == 10
    ratio = torch.exp(res.log_Z_per_replica - target.log_Z).numpy()
    se = ratio.std(ddof=1) / math.sqrt(UNBIASED_R)
    assert abs(ratio.mean() - 1) < 4 * se, f"mean Z_hat/Z = {ratio.mean():.4f} +- {se:.4f}"
    if method == "smc" and options["resample_threshold"] == 0.5:
        # The adaptive-resampling case really mixes resampled and not-resampled stages.
        resampled = res.stats["resampled"][:-1]  # the last stage may always resample (final=True)
        assert 0 < float(resampled.mean()) < 1


# ---------------------------------------------------------------------------------------------
# 3. The adaptive schedule and the log Z bookkeeping.
# ---------------------------------------------------------------------------------------------


def test_adaptive_schedule_holds_conditional_ess_via_stats():
    """With resampling at every stage the weights before each reweighting are equal, so the
    Kish ESS the engine records after reweighting IS the conditional ESS: it is >= target_ess
    for every replica at every stage (exactly, up to round-off: the bisection keeps the time
    whose conditional ESS is >= the goal)."""
    target = sampler.get_target("double-well")
    res = sampler.sample(
        target,
        method="smc",
        n_particles=1000,
        n_replicas=4,
        seed=5,
        dtype=DTYPE,
        target_ess=0.6,
        resample_threshold=1.0,
    )
    stats = res.stats
    t = stats["t"]
    assert t.shape == (len(res.steps), 4)
    assert_times_reach_one(t)
    assert len(res.steps) > 2
    assert stats["ess"].shape == (len(res.steps), 4)
    assert torch.all(stats["ess"] >= 0.6 - 1e-9), stats["ess"].min()


@pytest.mark.parametrize(
    "target, n_replicas, mixed_finish",
    [
        pytest.param(lambda: sampler.get_target("double-well"), 4, False, id="double-well"),
        # ~13 stages: with 8 replicas, some reach t = 1 a stage before the others (on 9 of the
        # seeds 0-9; the seed below is one of them).
        pytest.param(far_gaussian, 8, True, id="gaussian-d10-mean3"),
    ],
)
def test_adaptive_schedule_conditional_ess_and_log_z_bookkeeping(target, n_replicas, mixed_finish):
    """Adaptive schedule with adaptive (ESS < 0.5) resampling, checked stage by stage and replica
    by replica (each replica follows its own times).

    * the conditional ESS (recomputed independently from the particles each stage starts from)
      is >= target_ess for every replica and stage;
    * each replica's step is as long as the bisection's resolution allows: at the next time
      beyond its bracket, ``t' + max(min_step, tol (t' - t) / (1 - tol))``, that replica's
      conditional ESS is already below the goal (the conditional ESS decreases with the step,
      as ``2 kappa(s) - kappa(2 s)`` for a convex cumulant function kappa);
    * the engine's ``log_Z_increment`` equals ``log sum_i W_i g_i`` recomputed here, and its sum
      over stages equals ``log_Z_per_replica`` (resampling never touches log Z);
    * a replica that reached t = 1 stays there with log Z increment exactly 0 while its MCMC
      moves continue.
    """
    target = target()
    goal, tol, min_step = 0.5, 1e-3, 1e-6
    recorder = Recorder()
    pipeline = sampler.Pipeline(
        schedule=Adaptive(target_ess=goal, tol=tol, min_step=min_step),
        steps=[sampler.corrector("resample", threshold=0.5), sampler.corrector("mala", n_steps=5), recorder],
    )
    res = pipeline.run(target, n_particles=1000, n_replicas=n_replicas, seed=0, dtype=DTYPE)
    stats = res.stats
    t = stats["t"]
    n_stages = len(res.steps)
    assert t.shape == (n_stages, n_replicas)
    assert_times_reach_one(t)
    # Both branches of adaptive resampling occur (before the final stage).
    assert 0 < float(stats["resampled"][:-1].mean()) < 1
    finish = finishing_stage(t)
    if mixed_finish:  # the per-replica checks below then cover finished replicas too
        assert bool((finish < n_stages - 1).any()), t

    assert len(recorder.times) == n_stages
    cess = torch.stack([recorder.cess(k) for k in range(n_stages)])  # (K, R)
    assert torch.all(cess >= goal - 1e-9), cess.min()
    for k, (t_from, t_to) in enumerate(recorder.times):
        assert torch.equal(t_to, t[k])
        assert torch.equal(t_from, t[k - 1] if k else torch.zeros(n_replicas, dtype=DTYPE))
        beyond = t_to + torch.clamp(tol * (t_to - t_from) / (1 - tol), min=min_step) + 1e-12
        after = recorder.cess(k, torch.clamp(beyond, max=1.0))
        for r in range(n_replicas):
            if t_to[r] < 1.0:
                assert float(after[r]) < goal, (k, r, t_from, t_to)

    dlogz = torch.stack([recorder.dlogz(k) for k in range(n_stages)])
    assert torch.allclose(stats["log_Z_increment"], dlogz, rtol=0, atol=1e-10)
    assert torch.allclose(stats["log_Z_increment"].sum(0), res.log_Z_per_replica, rtol=0, atol=1e-10)

    # After a replica's finishing stage: t stays 1, no log Z change at all, and the MCMC
    # kernel keeps moving its particles.
    for r in range(n_replicas):
        for k in range(int(finish[r]) + 1, n_stages):
            assert float(t[k, r]) == 1.0
            assert float(stats["log_Z_increment"][k, r]) == 0.0
            assert float(stats["acceptance"][k, r]) > 0
            assert not torch.equal(
                recorder.starts[k].x[r], recorder.current.x[r] if k == n_stages - 1 else recorder.starts[k + 1].x[r]
            )


def test_replicas_choose_their_own_times_in_a_run():
    """In a full SMC run the replicas' adaptive times differ (each follows its own particles),
    and replicas reach t = 1 at different stages; the run lasts until the last one does."""
    # reference="prior": "auto" would start at the Laplace fit, exact on a Gaussian (one stage).
    res = sampler.sample(far_gaussian(), "smc", n_particles=300, n_replicas=8, seed=0, dtype=DTYPE, reference="prior")
    t = res.stats["t"]
    assert t.shape == (len(res.steps), 8)
    assert_times_reach_one(t)
    below = t < 1.0
    assert torch.all(t[0, 1:] != t[0, 0])  # from the first stage on
    differ = (t != t[:, :1]).any(1)
    assert torch.all(differ[below.any(1)])  # at every stage where some replica is below 1
    finish = finishing_stage(t)
    assert int(finish.max()) == len(res.steps) - 1
    assert int(finish.min()) < int(finish.max()), t


def test_weighted_samples_are_each_replicas_state_after_its_reweighting_to_one():
    """``weighted_samples`` / ``log_weights`` of a replica are its particles and weights right
    after the reweighting that took it to t = 1, not after later stages (where only its MCMC
    moves continue)."""
    target = far_gaussian()
    snapshot, recorder = Snapshot(), Recorder()
    pipeline = sampler.Pipeline(
        schedule=Adaptive(target_ess=0.5),
        steps=[snapshot, sampler.corrector("resample", threshold=0.5), sampler.corrector("mala", n_steps=5), recorder],
    )
    n = 1000
    res = pipeline.run(target, n_particles=n, n_replicas=8, seed=0, dtype=DTYPE)  # a seed with a mixed finish
    t = res.stats["t"]
    finish = finishing_stage(t)
    assert bool((finish < len(res.steps) - 1).any()), t  # some replica finished early
    for r in range(8):
        at_one = snapshot.after_reweighting[int(finish[r])]
        assert torch.equal(res.weighted_samples[r], at_one.x[r])
        normalized = res.log_weights[r] - torch.logsumexp(res.log_weights[r], -1)
        assert torch.allclose(normalized, at_one.log_weights[r], rtol=0, atol=1e-12)
        assert torch.allclose(log_mean_exp(res.log_weights[r]), res.log_Z_per_replica[r], rtol=0, atol=1e-10)
        if int(finish[r]) < len(res.steps) - 1:
            # Later stages moved its particles: the final state is not the weighted one.
            assert not torch.equal(res.weighted_samples[r], snapshot.after_reweighting[-1].x[r])
            assert not torch.equal(res.weighted_samples[r], recorder.current.x[r])


# ---------------------------------------------------------------------------------------------
# 4. The returned weights.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, options",
    [
        ("smc", dict(resample_threshold=0.5)),
        ("smc", dict()),
        ("ais", dict(n_temps=8)),
    ],
)
def test_log_weights_average_to_log_z(method, options):
    """log-mean-exp over a replica's particles of ``log_weights`` is that replica's log Z (round-off only)."""
    target = sampler.get_target("double-well")
    res = sampler.sample(target, method=method, n_particles=300, n_replicas=3, seed=4, dtype=DTYPE, **options)
    assert res.log_weights.shape == (3, 300) and res.weighted_samples.shape == (3, 300, 2)
    assert torch.allclose(log_mean_exp(res.log_weights), res.log_Z_per_replica, rtol=0, atol=1e-10)


def test_log_weights_are_importance_weights_of_weighted_samples():
    """One stage (Linear(1)): every particle is a reference draw reweighted straight to the
    target, so its log weight is exactly ``log target(x) - log ref(x)`` at ``weighted_samples``."""
    target = sampler.get_target("double-well")
    res = sampler.sample(target, method="ais", n_particles=300, n_replicas=3, seed=8, dtype=DTYPE, schedule=Linear(1))
    ref = sampler.make_reference(target)
    x = res.weighted_samples
    expected = target.log_prob(x).double() - ref.log_prob(x)
    assert torch.allclose(res.log_weights, expected, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# 5. gmm40: every mode found, log Z right.
# ---------------------------------------------------------------------------------------------


def test_smc_gmm40_covers_all_modes_and_log_z():
    target = sampler.get_target("gmm40")
    res = sampler.sample(target, method="smc", n_particles=2000, n_replicas=4, seed=11, dtype=DTYPE)
    modes = torch.as_tensor(target.modes, dtype=DTYPE)
    labels = torch.cdist(res.samples, modes.expand(4, -1, -1)).argmin(-1)  # (R, N) nearest mode
    counts = torch.stack([torch.bincount(labels[r], minlength=40) for r in range(4)])  # (R, 40)
    # Pooled over replicas: every one of the 40 modes is visited (expected 200 samples each).
    assert torch.all(counts.sum(0) > 0), counts.sum(0)
    # Each replica on its own: expected 50 per mode; even with a design effect of 3 from the
    # genealogy the count's sd is ~sqrt(150) ~ 12, so an empty mode is > 4 sd away.
    assert torch.all(counts > 0), counts.min(1)
    # log Z = 0 exactly; the standard error comes from 4 replicas (3 degrees of freedom): the t bound.
    assert target.log_Z == 0.0
    se = res.log_Z_stderr
    assert 0 < se < 0.2
    assert abs(res.log_Z) < t_bound(4) * se, f"log Z {res.log_Z:.4f} +- {se:.4f}"
