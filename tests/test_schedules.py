"""Annealing schedules: fixed time grids, the conditional ESS, and the adaptive schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sampler
from sampler import schedules
from sampler.errors import ConfigurationError
from sampler.targets import Gaussian


def walk(schedule: schedules.Schedule) -> list[float]:
    """All the times of a fixed schedule, obtained through ``next_time``."""
    ts = [0.0]
    for step in range(schedule.n_steps):
        ts.append(schedule.next_time(step, ts[-1], None, None))
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


def make_particles(target, r=3, n=2000, seed=0, log_weights=None):
    """Particles drawn from the path's reference, with their cached evaluations."""
    ref = sampler.GaussianReference(target.dim)
    path = sampler.GeometricPath(ref, target)
    x = ref.sample((r, n), torch.Generator().manual_seed(seed), torch.float64)
    if log_weights is None:
        log_weights = torch.full((r, n), -math.log(n), dtype=torch.float64)
    particles = sampler.Particles(
        x=x,
        log_weights=log_weights,
        log_Z=torch.zeros(r, dtype=torch.float64),
        evaluation=path.evaluate(x),
    )
    return particles, path


def cess_at(particles, path, t, t_next) -> np.ndarray:
    ev = particles.evaluation
    inc = path.log_weight_increment(ev, t, ev, t_next)
    return schedules.conditional_ess(particles.log_weights, inc).numpy()


@pytest.mark.parametrize("target_ess", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("t", [0.0, 0.37])
def test_adaptive_next_time_hits_target_ess(target_ess, t):
    target = Gaussian(mean=[3.0, -2.0, 1.0], scale=[0.3, 0.5, 2.0])
    particles, path = make_particles(target)
    sched = schedules.Adaptive(target_ess)
    t_next = sched.next_time(0, t, particles, path)
    assert t < t_next < 1.0
    # Every replica keeps at least the goal.
    assert (cess_at(particles, path, t, t_next) >= target_ess).all()
    # Close to the goal: the bisection stops with cess(hi) < goal and hi - lo <= max(min_step,
    # tol (hi - t)) <= max(min_step, tol (1 - t)); the conditional ESS decreases with the step
    # (log cess(s) = 2 K(s) - K(2 s) for the cumulant generating function K, convex), so some
    # replica is below the goal at that bound.
    bound = min(1.0, t_next + max(sched.min_step, sched.tol * (1 - t)))
    assert (cess_at(particles, path, t, bound) < target_ess).any()


def test_adaptive_shared_time_is_the_most_cautious_replica():
    # Replica 1 has weights concentrated on few particles, so its conditional ESS falls first:
    # the shared time is its choice, and the other replicas stay above the goal.
    target = Gaussian(mean=[2.0, 2.0], scale=0.4)
    r, n = 3, 1000
    g = torch.Generator().manual_seed(3)
    lw = torch.full((r, n), -math.log(n), dtype=torch.float64)
    lw[1] = torch.log_softmax(3 * torch.randn(n, generator=g, dtype=torch.float64), 0)
    particles, path = make_particles(target, r=r, n=n, seed=4, log_weights=lw)
    sched = schedules.Adaptive(0.5)
    t_next = sched.next_time(0, 0.0, particles, path)
    at = cess_at(particles, path, 0.0, t_next)
    assert (at >= 0.5).all()
    bound = t_next + max(sched.min_step, sched.tol)
    after = cess_at(particles, path, 0.0, bound)
    assert after[1] < 0.5
    assert after.argmin() == 1


def test_adaptive_returns_one_when_the_target_is_reachable():
    # The target equals the reference: every increment is 0, conditional ESS 1.
    target = Gaussian(dim=2)  # unnormalized N(0, I): increments are a constant log_Z
    particles, path = make_particles(target)
    assert schedules.Adaptive(0.99).next_time(0, 0.0, particles, path) == 1.0
    assert schedules.Adaptive(0.5).next_time(5, 0.8, particles, path) == 1.0


def test_adaptive_takes_at_least_min_step():
    # A target so far away that any step collapses the conditional ESS: the step is min_step.
    target = Gaussian(mean=[200.0, 200.0], scale=0.01)
    particles, path = make_particles(target)
    sched = schedules.Adaptive(0.9, min_step=1e-3)
    t_next = sched.next_time(0, 0.25, particles, path)
    assert t_next >= 0.25 + 1e-3 - 1e-15
    assert t_next < 0.25 + 2e-3


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
    assert 1e-3 < t_next < 1.0
    assert (cess_at(particles, path, 0.0, t_next) >= 0.5).all()
    bound = t_next + max(sched.min_step, sched.tol)
    assert (cess_at(particles, path, 0.0, bound) < 0.5).any()


@pytest.mark.parametrize("target_ess", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_adaptive_bad_target_ess(target_ess):
    with pytest.raises(ConfigurationError):
        schedules.Adaptive(target_ess)


@pytest.mark.parametrize("min_step", [0.0, 1.0, -1e-3, math.nan])
def test_adaptive_bad_min_step(min_step):
    with pytest.raises(ConfigurationError):
        schedules.Adaptive(0.5, min_step=min_step)


def test_adaptive_max_steps_exceeded():
    target = Gaussian(mean=[3.0, 0.0], scale=0.5)
    particles, path = make_particles(target)
    sched = schedules.Adaptive(0.5, max_steps=3)
    assert sched.n_steps is None
    sched.next_time(2, 0.0, particles, path)  # the third step is allowed
    with pytest.raises(ConfigurationError, match="max_steps"):
        sched.next_time(3, 0.5, particles, path)
