"""Annealing schedules: fixed time grids, the conditional ESS, and the adaptive schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sampler
from sampler import schedules
from sampler.errors import ConfigurationError, RunError, SamplerError
from sampler.targets import Gaussian

R = 3  # replicas of the particle sets the schedules are given


def any_particles(r: int = R) -> sampler.Particles:
    """A particle set of ``r`` replicas (fixed schedules only read its shape and device)."""
    target = Gaussian(dim=2)
    path = sampler.GeometricPath(sampler.GaussianReference(2), target)
    x = torch.zeros(r, 4, 2, dtype=torch.float64)
    return sampler.Particles(
        x=x,
        log_weights=torch.full((r, 4), -math.log(4), dtype=torch.float64),
        log_Z=torch.zeros(r, dtype=torch.float64),
        evaluation=path.evaluate(x),
    )


def walk(schedule: schedules.Schedule, r: int = R) -> list[float]:
    """All the times of a fixed schedule, obtained through ``next_time`` with per-replica times.

    Every call must return float64 times ``(r,)``, the same for every replica.
    """
    particles = any_particles(r)
    t = torch.zeros(r, dtype=torch.float64)
    ts = [0.0]
    for step in range(schedule.n_steps):
        t = schedule.next_time(step, t, particles, None)
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.shape == (r,)
        assert bool((t == t[0]).all()), t
        ts.append(float(t[0]))
    return ts


def assert_valid_times(ts, n_steps):
    assert len(ts) == n_steps + 1
    assert ts[0] == 0.0 and ts[-1] == 1.0
    assert all(b > a for a, b in zip(ts, ts[1:])), ts


# --------------------------------------------------------------------------------------------
# Fixed schedules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, n_steps",
    [
        (schedules.Fixed([0.0, 1.0]), 1),
        (schedules.Fixed([0, 0.1, 0.5, 1]), 3),
        (schedules.Fixed(np.array([0.0, 0.25, 1.0])), 2),
        (schedules.Fixed(torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)), 2),
        (schedules.Linear(1), 1),
        (schedules.Linear(7), 7),
        (schedules.Linear(1000), 1000),
        (schedules.Power(1), 1),
        (schedules.Power(10), 10),
        (schedules.Power(500, exponent=6.0), 500),
        (schedules.Power(5, exponent=0.5), 5),
        (schedules.Geometric(1), 1),
        (schedules.Geometric(2), 2),
        (schedules.Geometric(20, t_min=1e-6), 20),
        (schedules.Geometric(2000, t_min=1e-12), 2000),
    ],
    ids=repr,
)
def test_fixed_schedules_are_strictly_increasing_from_0_to_1(schedule, n_steps):
    assert schedule.n_steps == n_steps
    assert_valid_times(schedule.times, n_steps)
    assert walk(schedule) == schedule.times
    assert walk(schedule, r=1) == schedule.times


@pytest.mark.parametrize(
    "schedule",
    [schedules.Fixed([0.0, 0.2, 0.7, 1.0]), schedules.Linear(5), schedules.Power(4), schedules.Geometric(6)],
    ids=repr,
)
def test_fixed_schedules_give_every_replica_the_same_time(schedule):
    """A fixed schedule's next time depends only on the step: one time for all replicas, whatever
    their current times (a float time is broadcast to every replica)."""
    r = 5
    particles = any_particles(r)
    for step in range(schedule.n_steps):
        expected = torch.full((r,), schedule.times[step + 1], dtype=torch.float64)
        current = torch.linspace(0.0, schedule.times[step], r, dtype=torch.float64)  # replicas disagree
        for t in (current, schedule.times[step], torch.full((r,), schedule.times[step], dtype=torch.float64)):
            got = schedule.next_time(step, t, particles, None)
            assert got.dtype == torch.float64 and got.shape == (r,)
            assert torch.equal(got, expected), (step, t, got)


def test_linear_times():
    np.testing.assert_allclose(schedules.Linear(4).times, [0, 0.25, 0.5, 0.75, 1], rtol=0, atol=1e-15)


def test_power_times():
    s = schedules.Power(4, exponent=3.0)
    np.testing.assert_allclose(s.times, (np.arange(5) / 4) ** 3, rtol=1e-15, atol=0)


def test_geometric_times():
    s = schedules.Geometric(5, t_min=1e-4)
    ts = np.array(s.times)
    assert ts[0] == 0.0
    np.testing.assert_allclose(ts[1], 1e-4, rtol=1e-12)
    ratios = ts[2:] / ts[1:-1]  # t_1 .. t_K = 1 geometrically spaced
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)
    np.testing.assert_allclose(ratios[0], (1e-4) ** (-1 / 4), rtol=1e-12)


@pytest.mark.parametrize(
    "times",
    [
        [],
        [0.0],
        [1.0],
        [0.1, 1.0],  # does not start at 0
        [-0.1, 0.5, 1.0],
        [0.0, 0.9],  # does not end at 1
        [0.0, 0.5, 1.1],
        [0.0, 0.5, 0.5, 1.0],  # not strictly increasing
        [0.0, 0.6, 0.4, 1.0],
        [0.0, 1.0, 1.0],
        [0.0, 1.5, 1.0],
    ],
)
def test_fixed_rejects_invalid_times(times):
    with pytest.raises(ConfigurationError):
        schedules.Fixed(times)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_fixed_rejects_non_finite_times(bad):
    # [0, nan, 1] is not a strictly increasing sequence of times in [0, 1].
    with pytest.raises(ConfigurationError):
        schedules.Fixed([0.0, bad, 1.0])


@pytest.mark.parametrize("cls", [schedules.Linear, schedules.Power, schedules.Geometric])
@pytest.mark.parametrize("n_steps", [0, -1, -10, 2.5, 3.0, "4", None])
def test_bad_n_steps(cls, n_steps):
    with pytest.raises(ConfigurationError):
        cls(n_steps)


@pytest.mark.parametrize("exponent", [0.0, -1.0, math.nan, -math.inf])
def test_power_bad_exponent(exponent):
    with pytest.raises(ConfigurationError):
        schedules.Power(5, exponent=exponent)


@pytest.mark.parametrize("t_min", [0.0, 1.0, 1.5, -0.1, math.nan])
def test_geometric_bad_t_min(t_min):
    with pytest.raises(ConfigurationError):
        schedules.Geometric(5, t_min=t_min)


# --------------------------------------------------------------------------------------------
# Conditional ESS
# --------------------------------------------------------------------------------------------


def numpy_cess(lw: np.ndarray, inc: np.ndarray) -> np.ndarray:
    """(sum_i W_i g_i)^2 / sum_i W_i g_i^2 with W = normalized exp(lw), g = exp(inc)."""
    w = np.exp(lw - lw.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    g = np.exp(inc - inc.max(-1, keepdims=True))  # the ratio is invariant to scaling g
    return (w * g).sum(-1) ** 2 / (w * g**2).sum(-1)


def test_conditional_ess_matches_numpy():
    rng = np.random.default_rng(0)
    lw = rng.normal(size=(6, 200)) * 2 + 30.0  # unnormalized log weights
    inc = rng.normal(size=(6, 200)) * np.linspace(0.01, 3, 6)[:, None]
    got = schedules.conditional_ess(torch.as_tensor(lw), torch.as_tensor(inc))
    assert got.shape == (6,)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), numpy_cess(lw, inc), rtol=1e-10)
    assert ((got > 0) & (got <= 1)).all()


def test_conditional_ess_with_minus_inf_and_large_values():
    rng = np.random.default_rng(1)
    lw = rng.normal(size=(4, 50))
    inc = rng.normal(size=(4, 50)) * 2 + 800.0  # exp overflows without log-space arithmetic
    lw[0, :10] = -np.inf
    inc[1, 5:30] = -np.inf
    got = schedules.conditional_ess(torch.as_tensor(lw), torch.as_tensor(inc)).numpy()
    np.testing.assert_allclose(got, numpy_cess(lw, inc), rtol=1e-10)


def test_conditional_ess_is_one_for_zero_increments():
    lw = torch.randn(5, 100, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = schedules.conditional_ess(lw, torch.zeros_like(lw))
    np.testing.assert_allclose(got.numpy(), 1.0, rtol=1e-12)
    # constant increments too: the conditional ESS is invariant to scaling g
    got = schedules.conditional_ess(lw, torch.full_like(lw, -37.5))
    np.testing.assert_allclose(got.numpy(), 1.0, rtol=1e-12)


def test_conditional_ess_is_zero_when_every_increment_is_minus_inf():
    lw = torch.zeros(2, 10, dtype=torch.float64)
    inc = torch.full_like(lw, -math.inf)
    inc[1, 3] = 0.0  # a single surviving particle: (W g)^2 / (W g^2) = W_3 = 1/10
    got = schedules.conditional_ess(lw, inc)
    assert got[0].item() == 0.0
    np.testing.assert_allclose(got[1].item(), 0.1, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Adaptive
# --------------------------------------------------------------------------------------------


def make_particles(target, r=3, n=2000, seed=0, log_weights=None, x=None):
    """Particles drawn from the path's reference (or at ``x``), with their cached evaluations."""
    ref = sampler.GaussianReference(target.dim)
    path = sampler.GeometricPath(ref, target)
    if x is None:
        x = ref.sample((r, n), torch.Generator().manual_seed(seed), torch.float64)
    r, n = x.shape[:2]
    if log_weights is None:
        log_weights = torch.full((r, n), -math.log(n), dtype=torch.float64)
    particles = sampler.Particles(
        x=x,
        log_weights=log_weights,
        log_Z=torch.zeros(r, dtype=torch.float64),
        evaluation=path.evaluate(x),
    )
    return particles, path


def replica(particles, path, r):
    """Replica ``r`` alone, as a one-replica particle set (evaluated afresh)."""
    one, _ = make_particles(path.target, x=particles.x[r : r + 1], log_weights=particles.log_weights[r : r + 1])
    return one


def cess_at(particles, path, t, t_next) -> np.ndarray:
    ev = particles.evaluation
    inc = path.log_weight_increment(ev, t, ev, t_next)
    return schedules.conditional_ess(particles.log_weights, inc).numpy()


def as_times(t, r=3) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64).expand(r)


def assert_times(t_next, r=3):
    assert isinstance(t_next, torch.Tensor) and t_next.dtype == torch.float64 and t_next.shape == (r,)


@pytest.mark.parametrize("target_ess", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("t", [0.0, 0.37, (0.0, 0.37, 0.2)], ids=["0", "0.37", "per-replica"])
def test_adaptive_next_time_hits_target_ess(target_ess, t):
    target = Gaussian(mean=[3.0, -2.0, 1.0], scale=[0.3, 0.5, 2.0])
    particles, path = make_particles(target)
    sched = schedules.Adaptive(target_ess)
    t = t if isinstance(t, float) else torch.tensor(t, dtype=torch.float64)
    t_next = sched.next_time(0, t, particles, path)
    assert_times(t_next)
    tt = as_times(t).numpy()
    assert ((tt < t_next.numpy()) & (t_next.numpy() < 1.0)).all()
    # Every replica keeps at least the goal, at its own time.
    assert (cess_at(particles, path, t, t_next) >= target_ess).all()
    # Each replica is close to its goal: its bisection stops with cess(hi) < goal and
    # hi - lo <= max(min_step, tol (hi - t)) <= max(min_step, tol (1 - t)); the conditional ESS
    # decreases with the step (log cess(s) = 2 K(s) - K(2 s) for the cumulant generating function
    # K, convex), so every replica is below the goal at its own bound.
    bound = torch.clamp(t_next + torch.clamp(sched.tol * (1 - as_times(t)), min=sched.min_step), max=1.0)
    assert (cess_at(particles, path, t, bound) < target_ess).all()


@pytest.mark.parametrize("n_candidates", [1, 4, 32])
def test_adaptive_search_with_any_number_of_candidates_hits_the_goal(monkeypatch, n_candidates):
    # SEARCH_BUDGET sets the candidates per round (N = 2000 here): one is a bisection. Each
    # keeps the goal at its time and misses it one tolerance later, so all agree to the tolerance.
    target = Gaussian(mean=[3.0, -2.0, 1.0], scale=[0.3, 0.5, 2.0])
    particles, path = make_particles(target)
    monkeypatch.setattr(schedules, "SEARCH_BUDGET", 2000 * n_candidates)
    sched = schedules.Adaptive(0.5)
    t = torch.tensor([0.0, 0.37, 0.2], dtype=torch.float64)
    t_next = sched.next_time(0, t, particles, path)
    assert_times(t_next)
    assert (cess_at(particles, path, t, t_next) >= 0.5).all()
    bound = torch.clamp(t_next + torch.clamp(sched.tol * (1 - t), min=sched.min_step), max=1.0)
    assert (cess_at(particles, path, t, bound) < 0.5).all()
    monkeypatch.setattr(schedules, "SEARCH_BUDGET", 2**16)
    reference = sched.next_time(0, t, particles, path)
    assert (abs(t_next - reference) <= sched.tol * (1 - t)).all()


def test_adaptive_search_takes_few_rounds(monkeypatch):
    # 32 candidates per round at N = 2000: the conditional ESS is evaluated once at t = 1 and
    # in at most 3 rounds, against 10-20 rounds of a bisection to the same tolerance.
    target = Gaussian(mean=[3.0, -2.0, 1.0], scale=[0.3, 0.5, 2.0])
    particles, path = make_particles(target)
    calls = []
    real = schedules.conditional_ess
    monkeypatch.setattr(schedules, "conditional_ess", lambda w, inc: calls.append(inc.shape) or real(w, inc))
    schedules.Adaptive(0.5).next_time(0, torch.tensor([0.0, 0.37, 0.2], dtype=torch.float64), particles, path)
    assert calls[0] == (3, 2000) and calls[1:] and all(shape == (32, 3, 2000) for shape in calls[1:])
    assert len(calls) <= 4


def test_adaptive_times_are_per_replica():
    # Every replica holds the SAME particles; replica 1 has weights concentrated on few of them,
    # so its conditional ESS moves differently with the step: it gets another time than the
    # equally weighted replicas 0 and 2 (which get identical times), and each replica hits its
    # own goal.
    target = Gaussian(mean=[2.0, 2.0], scale=0.4)
    r, n = 3, 1000
    g = torch.Generator().manual_seed(3)
    lw = torch.full((r, n), -math.log(n), dtype=torch.float64)
    lw[1] = torch.log_softmax(3 * torch.randn(n, generator=g, dtype=torch.float64), 0)
    x0, _ = make_particles(target, r=1, n=n, seed=4)
    particles, path = make_particles(target, x=x0.x.expand(r, -1, -1).clone(), log_weights=lw)
    assert torch.equal(particles.x[0], particles.x[1]) and torch.equal(particles.x[1], particles.x[2])
    sched = schedules.Adaptive(0.5)
    t_next = sched.next_time(0, 0.0, particles, path)
    assert_times(t_next)
    assert t_next[0] == t_next[2]
    assert bool(((0 < t_next) & (t_next < 1)).all())
    # Far apart compared with the bisection's resolution (tol = 1e-3 of the step).
    assert abs(float(t_next[1] - t_next[0])) > 10 * sched.tol * float(t_next.max())
    at = cess_at(particles, path, 0.0, t_next)
    assert (at >= 0.5).all()
    bound = t_next + max(sched.min_step, sched.tol)
    assert (cess_at(particles, path, 0.0, bound) < 0.5).all()
    # A single shared time (the most cautious replica's) would leave the other replicas above
    # their own choice's conditional ESS; per-replica times do not hold them back.
    later = t_next > t_next.min()
    assert bool(later.any())
    shared = cess_at(particles, path, 0.0, t_next.min().expand(r))
    assert (shared[later.numpy()] > at[later.numpy()]).all()


def test_adaptive_replicas_are_independent():
    # Each replica's next time is exactly the one it gets when it is scheduled alone, whatever
    # the other replicas hold (here: different particles, weights and current times).
    target = Gaussian(mean=[3.0, -2.0, 1.0], scale=[0.3, 0.5, 2.0])
    r, n = 4, 1000
    lw = torch.full((r, n), -math.log(n), dtype=torch.float64)
    lw[2] = torch.log_softmax(2 * torch.randn(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64), 0)
    particles, path = make_particles(target, r=r, n=n, seed=6, log_weights=lw)
    t = torch.tensor([0.0, 0.05, 0.0, 0.3], dtype=torch.float64)
    sched = schedules.Adaptive(0.5)
    t_next = sched.next_time(0, t, particles, path)
    assert_times(t_next, r)
    assert len(set(t_next.tolist())) == r  # every replica chose its own time
    for i in range(r):
        alone = sched.next_time(0, t[i : i + 1], replica(particles, path, i), path)
        assert alone.shape == (1,)
        assert alone[0] == t_next[i], i


def test_adaptive_replica_at_one_stays_at_one_with_zero_log_z_increment():
    # Replica 0 has finished (t = 1): it stays at 1, its increments are exactly 0 (so is its
    # log Z increment after reweighting), and the other replicas get the times they would get
    # without it.
    target = Gaussian(mean=[3.0, -2.0, 1.0], scale=[0.3, 0.5, 2.0])
    particles, path = make_particles(target)
    sched = schedules.Adaptive(0.5)
    t = torch.tensor([1.0, 0.0, 0.37], dtype=torch.float64)
    t_next = sched.next_time(4, t, particles, path)
    assert_times(t_next)
    assert t_next[0] == 1.0
    assert ((t[1:] < t_next[1:]) & (t_next[1:] < 1.0)).all()
    for i in (1, 2):
        assert sched.next_time(4, t[i : i + 1], replica(particles, path, i), path)[0] == t_next[i]
    ev = particles.evaluation
    inc = path.log_weight_increment(ev, t, ev, t_next)
    assert torch.equal(inc[0], torch.zeros_like(inc[0]))
    _, dlogz = sampler.reweight(particles, inc, 5, t_next)
    assert dlogz[0] == 0.0
    assert (dlogz[1:] != 0).all()
    # All replicas at 1: all stay there.
    assert torch.equal(
        sched.next_time(4, torch.ones(3, dtype=torch.float64), particles, path), torch.ones(3, dtype=torch.float64)
    )
    assert torch.equal(sched.next_time(4, 1.0, particles, path), torch.ones(3, dtype=torch.float64))


def test_adaptive_returns_one_when_the_target_is_reachable():
    # The target equals the reference: every increment is 0, conditional ESS 1.
    target = Gaussian(dim=2)  # unnormalized N(0, I): increments are a constant log_Z
    particles, path = make_particles(target)
    for got in (
        schedules.Adaptive(0.99).next_time(0, 0.0, particles, path),
        schedules.Adaptive(0.5).next_time(5, 0.8, particles, path),
        schedules.Adaptive(0.5).next_time(5, torch.tensor([0.8, 0.0, 0.5], dtype=torch.float64), particles, path),
    ):
        assert_times(got)
        assert bool((got == 1.0).all()), got


def test_adaptive_takes_at_least_min_step():
    # A target so far away that any step collapses the conditional ESS: the step is min_step.
    target = Gaussian(mean=[200.0, 200.0], scale=0.01)
    particles, path = make_particles(target)
    sched = schedules.Adaptive(0.9, min_step=1e-3)
    for t in (0.25, torch.tensor([0.25, 0.0, 0.6], dtype=torch.float64)):
        t_next = sched.next_time(0, t, particles, path)
        assert_times(t_next)
        tt = as_times(t)
        assert bool((t_next >= tt + 1e-3 - 1e-15).all()), (t, t_next)
        assert bool((t_next < tt + 2e-3).all()), (t, t_next)


def test_adaptive_ignores_dead_particles():
    # Particles with zero target density (log_target = -inf, here x1 < -1.5: ~7% of the
    # reference draws) get -inf increments, never NaN; the conditional ESS of any step is at
    # most the surviving fraction ~0.93 > 0.5, so the schedule still finds a proper time.
    def log_prob(x):
        return torch.where(x[..., 0] > -1.5, -0.5 * ((x - 1.0) ** 2).sum(-1), torch.full_like(x[..., 0], -math.inf))

    target = sampler.target(log_prob=log_prob, dim=2)
    particles, path = make_particles(target)
    sched = schedules.Adaptive(0.5)
    t_next = sched.next_time(0, 0.0, particles, path)
    assert_times(t_next)
    assert bool(((1e-3 < t_next) & (t_next < 1.0)).all()), t_next
    assert (cess_at(particles, path, 0.0, t_next) >= 0.5).all()
    bound = t_next + max(sched.min_step, sched.tol)
    assert (cess_at(particles, path, 0.0, bound) < 0.5).all()


@pytest.mark.parametrize("target_ess", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_adaptive_bad_target_ess(target_ess):
    with pytest.raises(ConfigurationError):
        schedules.Adaptive(target_ess)


@pytest.mark.parametrize("min_step", [0.0, 1.0, -1e-3, math.nan])
def test_adaptive_bad_min_step(min_step):
    with pytest.raises(ConfigurationError):
        schedules.Adaptive(0.5, min_step=min_step)


@pytest.mark.parametrize("max_steps", [0, -1, 2.5, "10", True, None])
def test_adaptive_bad_max_steps(max_steps):
    with pytest.raises(ConfigurationError, match="max_steps"):
        schedules.Adaptive(0.5, max_steps=max_steps)


def test_adaptive_max_steps_exceeded():
    target = Gaussian(mean=[3.0, 0.0], scale=0.5)
    particles, path = make_particles(target)
    sched = schedules.Adaptive(0.5, max_steps=3)
    assert sched.n_steps is None
    sched.next_time(2, 0.0, particles, path)  # the third step is allowed
    # Running out of steps is a run-time failure, not a configuration error.
    with pytest.raises(RunError, match="max_steps") as err:
        sched.next_time(3, torch.tensor([0.5, 0.7, 1.0], dtype=torch.float64), particles, path)
    assert isinstance(err.value, SamplerError) and not isinstance(err.value, ConfigurationError)
    assert "t=0.5" in str(err.value)  # the least advanced replica
