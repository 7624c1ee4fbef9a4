"""Fused loops: ``compile=True`` runs many MCMC transitions in one compiled call.

A compiled transition (:mod:`sampler_plugins.mcmc.compiled`) still costs one call per
transition, and a call costs about 100 microseconds of Dynamo guards and wrappers on a CPU, next
to a few microseconds of arithmetic for four chains or a few hundred for 2000 particles; the
caller's own bookkeeping costs as much again. A fused loop is a ``scan``
(``torch._higher_order_ops.scan``) over whole transitions (an HMC trajectory and its Metropolis
choice, or a MALA step), compiled by TorchInductor with its C++ wrapper (``cpp_wrapper``) so that
the loop itself runs in generated C++:

* :func:`_sweeps`: a corrector's ``n_steps`` sweeps at one temperature, each followed by its
  step-size adaptation (:meth:`~sampler_plugins.mcmc.kernels.MetropolisCorrector.sweeps`);
* :func:`_segment`: up to :data:`SEGMENT_ITERATIONS` iterations of ``hmc`` or ``mala`` chains,
  each followed by the warm-up's dual-averaging update
  (:class:`~sampler_plugins.mcmc.chains.MCMCChains`). The number of iterations ``K`` is a
  dynamic size: one compilation serves every segment length. Outside, between segments: the
  windowed metric adaptation (segments end where windows start and end), freezing the averaged
  step size at the end of warm-up, keeping the draws and recording each iteration's statistics.
  ChEES chains run each trajectory as a ``while_loop`` of its own length
  (:func:`hmc_loop_trajectory`); during warm-up :func:`chees_warmup_segment` also adapts the
  trajectory length in the graph.

The caller draws a loop's random numbers before the call, from the run's generator: all the
momenta or noise ``(K, R, N, d)``, then all the uniforms ``(K, R, N)``. That is another order
than the eager loops' (momenta and uniforms per transition), so a seeded fused run is
reproducible but another realization than an eager one.

HMC's jittered trajectory lengths (``jitter > 0``) vary from transition to transition; a loop
runs every trajectory for the longest length and freezes it once it has made its own number of
steps (the steps after that are computed and discarded: they count in no evaluation count, and
cost wall time). The transitions are the eager kernels' arithmetic
(:func:`~sampler_plugins.mcmc.kernels.leapfrog_step`, :func:`~sampler_plugins.mcmc.kernels.hmc_choice`,
:func:`~sampler_plugins.mcmc.kernels.hmc_transition`, :func:`~sampler_plugins.mcmc.kernels.mala_transition`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch._higher_order_ops.scan import scan
from torch._higher_order_ops.while_loop import while_loop

from sampler.ext import GeometricPath
from sampler_plugins.mcmc.chees import chees_gradient, chees_update
from sampler_plugins.mcmc.compiled import CompiledStep
from sampler_plugins.mcmc.kernels import (
    _down,
    adapted_step_size,
    dual_averaging_step,
    hmc_choice,
    hmc_transition,
    leapfrog_step,
    mala_transition,
    whiten,
)

#: The most iterations one compiled call runs (progress and Ctrl-C act between segments).
SEGMENT_ITERATIONS = 500

#: TorchInductor's C++ wrapper runs the scan's loop in generated code: 15 microseconds per
#: iteration of 4 HMC chains (5 leapfrog steps, a 10-dimensional funnel) against 36 with the
#: default Python wrapper (x86_64, 1 thread, torch 2.13.0+cpu).
COMPILE_OPTIONS = {"cpp_wrapper": True}

#: What a fused loop that fails to compile (a target Dynamo cannot capture whole, a compiler
#: error) leaves running: the kernel's per-transition compiled steps, which may split the graph.
FALLBACK = "running its transitions one call each"

Evaluation = tuple[Tensor, Tensor, Tensor, Tensor]


def hmc_masked_transition(
    path: GeometricPath,
    x: Tensor,
    ev_x: Evaluation,
    p0: Tensor,
    u: Tensor,
    eps: Tensor,
    metric: Tensor | None,
    t: Tensor,
    log_norm: Tensor,
    n_leapfrog: Tensor,
    max_leapfrog: int,
) -> tuple[Tensor, Evaluation, Tensor, Tensor]:
    """One HMC transition of ``n_leapfrog`` steps (a ``()`` tensor) in a graph of ``max_leapfrog`` steps.

    The eager trajectory's arithmetic (:func:`leapfrog_step`, the last kick a half one), with
    the position, momentum and evaluation frozen after step ``n_leapfrog``; then
    :func:`hmc_choice`.

    Returns:
        ``(x', ev', log_alpha, nonfinite)``: the chosen state, its evaluation, the cleaned log
        acceptance probabilities ``(R, N)`` and the trajectory's count of non-finite values.
    """
    p = p0 + 0.5 * eps * _down(GeometricPath.mix_grad(ev_x[2], ev_x[3], t), metric)
    y, ev_y, half = x, ev_x, 0.5 * eps
    nonfinite = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(max_leapfrog):
        live = n_leapfrog > i
        kick = torch.where(n_leapfrog == i + 1, half, eps)
        out = leapfrog_step(path, y, p, eps, kick, metric, t, log_norm)
        y, p = torch.where(live, out[0], y), torch.where(live, out[1], p)
        ev_y = (
            torch.where(live, out[2], ev_y[0]),
            torch.where(live, out[3], ev_y[1]),
            torch.where(live, out[4], ev_y[2]),
            torch.where(live, out[5], ev_y[3]),
        )
        nonfinite = nonfinite + torch.where(live, out[6], 0)
    chosen = hmc_choice(path, x, ev_x, y, ev_y, p0, p, u, t)
    return chosen[0], (chosen[1], chosen[2], chosen[3], chosen[4]), chosen[5], nonfinite


def hmc_fixed_transition(
    path: GeometricPath,
    x: Tensor,
    ev_x: Evaluation,
    p0: Tensor,
    u: Tensor,
    eps: Tensor,
    metric: Tensor | None,
    t: Tensor,
    log_norm: Tensor,
    n_leapfrog: Tensor,
    max_leapfrog: int,
) -> tuple[Tensor, Evaluation, Tensor, Tensor]:
    """:func:`hmc_transition` of ``max_leapfrog`` steps, every iteration (no jitter; ``n_leapfrog`` unused).

    Without the masks the trajectory's inner evaluations are dead code the compiler drops: 15
    against 17 microseconds per iteration of 4 chains on the funnel.
    """
    out = hmc_transition(path, x, ev_x, p0, u, eps, metric, t, log_norm, max_leapfrog)
    return out[0], (out[1], out[2], out[3], out[4]), out[5], out[12]


def hmc_loop_trajectory(
    path: GeometricPath,
    x: Tensor,
    ev_x: Evaluation,
    p0: Tensor,
    eps: Tensor,
    metric: Tensor | None,
    t: Tensor,
    log_norm: Tensor,
    n_leapfrog: Tensor,
) -> tuple[Tensor, Evaluation, Tensor, Tensor]:
    """An HMC trajectory of ``n_leapfrog`` steps (a ``()`` tensor) as a ``while_loop``: one graph
    for every length, however long (ChEES's adapted lengths).

    The eager trajectory's arithmetic (:func:`leapfrog_step`, the last kick a half one).

    Returns:
        ``(y, ev_y, p, nonfinite)``: the proposal, its evaluation, its momentum and the
        trajectory's count of non-finite values.
    """
    p = p0 + 0.5 * eps * _down(GeometricPath.mix_grad(ev_x[2], ev_x[3], t), metric)
    half = 0.5 * eps

    def more(i: Tensor, *_: Tensor) -> Tensor:
        return i < n_leapfrog

    def step(i: Tensor, y: Tensor, p: Tensor, *ev_and_count: Tensor) -> tuple[Tensor, ...]:
        out = leapfrog_step(path, y, p, eps, torch.where(i + 1 == n_leapfrog, half, eps), metric, t, log_norm)
        return (i + 1, *(v.contiguous() for v in out[:6]), ev_and_count[-1] + out[6])

    zero = torch.zeros((), dtype=torch.int64, device=x.device)
    start = (zero, _own(x), p.contiguous(), *(_own(v) for v in ev_x), zero.clone())
    _, y, p, lr, lt, gr, gt, nonfinite = while_loop(more, step, start)
    return y, (lr, lt, gr, gt), p, nonfinite


def hmc_loop_transition(
    path: GeometricPath,
    x: Tensor,
    ev_x: Evaluation,
    p0: Tensor,
    u: Tensor,
    eps: Tensor,
    metric: Tensor | None,
    t: Tensor,
    log_norm: Tensor,
    n_leapfrog: Tensor,
    max_leapfrog: int,
) -> tuple[Tensor, Evaluation, Tensor, Tensor]:
    """:func:`hmc_loop_trajectory` and :func:`hmc_choice` (``max_leapfrog`` unused); returns as
    :func:`hmc_masked_transition`."""
    y, ev_y, p, nonfinite = hmc_loop_trajectory(path, x, ev_x, p0, eps, metric, t, log_norm, n_leapfrog)
    chosen = hmc_choice(path, x, ev_x, y, ev_y, p0, p, u, t)
    return chosen[0], (chosen[1], chosen[2], chosen[3], chosen[4]), chosen[5], nonfinite


def mala_masked_transition(
    path: GeometricPath,
    x: Tensor,
    ev_x: Evaluation,
    xi: Tensor,
    u: Tensor,
    eps: Tensor,
    metric: Tensor | None,
    t: Tensor,
    log_norm: Tensor,
    n_leapfrog: Tensor,
    max_leapfrog: int,
) -> tuple[Tensor, Evaluation, Tensor, Tensor]:
    """:func:`mala_transition` with :func:`hmc_masked_transition`'s signature and returns (lengths unused)."""
    out = mala_transition(path, x, ev_x, xi, u, eps, metric, t, log_norm)
    return out[0], (out[1], out[2], out[3], out[4]), out[5], out[11]


def _own(tensor: Tensor) -> Tensor:
    """A contiguous copy: a scan takes no inputs that share memory (a view of the run's time, a
    shared metric) and carries each tensor with the same strides from step to step (the loop
    body makes its carries contiguous: a dense reference's gradient comes out transposed)."""
    return tensor.clone(memory_format=torch.contiguous_format)


def _segment(
    transition: Any,
    path: GeometricPath,
    x: Tensor,
    ev_x: Evaluation,
    tuning: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
    noise: Tensor,
    u: Tensor,
    lengths: Tensor,
    adapting: Tensor,
    active: Tensor,
    metric: Tensor | None,
    t: Tensor,
    log_norm: Tensor,
    max_leapfrog: int,
) -> tuple[Any, ...]:
    """``K`` iterations of ``transition`` with dual averaging where ``adapting``, as one ``scan``.

    Args:
        transition: :func:`hmc_masked_transition`, :func:`hmc_fixed_transition` or
            :func:`mala_masked_transition`.
        path: a plain :class:`GeometricPath` (the chains run it at t = 1).
        x: ``(R, 1, d)`` the chains; ``ev_x`` their evaluation's ``(log_ref, log_target,
            grad_ref, grad_target)``.
        tuning: float64 dual-averaging state (:class:`~sampler_plugins.mcmc.chains.DualAveraging`):
            ``mu, h_bar, log_eps, log_eps_bar`` ``(R,)``, the update count ``m`` ``()`` and
            the constants ``(target, gamma, t0, kappa)`` ``(4,)``.
        noise: ``(K, R, 1, d)`` momenta (HMC) or Langevin noise (MALA); ``u`` ``(K, R, 1)``
            float64 uniforms.
        lengths: ``(K,)`` int64 leapfrog steps per iteration (HMC; ignored by MALA).
        adapting: ``(K,)`` bool, whether the iteration updates the step size.
        active: ``(K,)`` bool, whether the iteration runs at all: a segment of one iteration
            is padded with an inactive one (a length of 1 would be compiled apart).
        metric, t, log_norm: as in :func:`leapfrog_step`.
        max_leapfrog: the trajectory graph's length (``>= lengths.max()``).

    Returns:
        ``(x, ev, h_bar, log_eps, log_eps_bar, m)`` after the segment, then per iteration
        ``draws`` ``(K, R, d)``, ``acceptance`` ``(K, R)`` float64, ``step_size`` ``(K, R)``
        float64 (the size the next iteration uses) and ``nonfinite`` ``(K,)``.
    """
    mu, h_bar, log_eps, log_eps_bar, m, constants = (_own(v) for v in tuning)
    x, t, log_norm = _own(x), _own(t), _own(log_norm)
    lr, lt, gr, gt = (_own(v) for v in ev_x)
    metric = None if metric is None else _own(metric)

    def body(carry: tuple[Tensor, ...], xs: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        x, lr, lt, gr, gt, h_bar, log_eps, log_eps_bar, m = carry
        noise_k, u_k, n_k, adapt_k, active_k = xs
        eps = log_eps.exp().to(x.dtype)[:, None, None]
        x, ev, log_alpha, nonfinite = transition(
            path, x, (lr, lt, gr, gt), noise_k, u_k, eps, metric, t, log_norm, n_k, max_leapfrog
        )
        alpha = log_alpha.exp().mean(-1)
        tuned = _dual_averaged(mu, constants, (h_bar, log_eps, log_eps_bar, m), alpha, adapt_k)
        moved = (x.contiguous(), *(v.contiguous() for v in ev), *tuned)
        carry = tuple(torch.where(active_k, new, old) for new, old in zip(moved, carry))
        return carry, (carry[0][:, 0].clone(), alpha, carry[6].exp(), nonfinite.clone())

    init = (x, lr, lt, gr, gt, h_bar, log_eps, log_eps_bar, m)
    carry, ys = scan(body, init, (noise, u, lengths, adapting, active))
    return (*carry, *ys)


def _dual_averaged(
    mu: Tensor, constants: Tensor, state: tuple[Tensor, Tensor, Tensor, Tensor], alpha: Tensor, adapt: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(h_bar, log_eps, log_eps_bar, m)`` after a :func:`dual_averaging_step` on ``alpha`` where ``adapt``."""
    h_bar, log_eps, log_eps_bar, m = state
    m_next = m + 1.0
    h_next, log_eps_next, bar_next = dual_averaging_step(mu, h_bar, log_eps_bar, alpha, m_next, *constants.unbind())
    return (
        torch.where(adapt, h_next, h_bar),
        torch.where(adapt, log_eps_next, log_eps),
        torch.where(adapt, bar_next, log_eps_bar),
        torch.where(adapt, m_next, m),
    )


def chees_warmup_segment(
    path: GeometricPath,
    x: Tensor,
    ev_x: Evaluation,
    tuning: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
    chees: Tensor,
    center: Tensor,
    noise: Tensor,
    u: Tensor,
    jitter: Tensor,
    rate: Tensor,
    adapting: Tensor,
    active: Tensor,
    metric: Tensor | None,
    t: Tensor,
    log_norm: Tensor,
    max_leapfrog: int,
) -> tuple[Any, ...]:
    """``K`` warm-up iterations of ChEES chains as one ``scan`` (``compile=True`` compiles it).

    Per iteration :meth:`~sampler_plugins.mcmc.chains.MCMCChains._chees_transition` in the
    graph: ``ceil(h_k T / mean eps)`` leapfrog steps (in ``[1, max_leapfrog]``) as a loop
    (:func:`hmc_loop_trajectory`), the Metropolis choice, the running centre, the ChEES gradient
    and Adam step on ``log T`` (:func:`~sampler_plugins.mcmc.chees.chees_update`), then dual
    averaging of the shared step size on the chains' harmonic-mean acceptance where ``adapting``.

    Args:
        path, x, ev_x, tuning, noise (the momenta), u, adapting, active, metric, t, log_norm:
            as in :func:`_segment`.
        chees: float64 ``(3,)``, the :class:`~sampler_plugins.mcmc.chees.ChEES` state
            ``(log T, second moment, updates)``; ``center`` float64 ``(d,)`` the running centre.
        jitter: float64 ``(K,)`` the Halton points ``h_k``; ``rate`` float64 ``(K,)`` the
            centre's update rates.
        max_leapfrog: the chains' bound on the steps of a trajectory.

    Returns:
        As :func:`_segment`, with ``chees`` and ``center`` after ``m``, and per iteration also
        the leapfrog steps ``(K,)`` int64 and the trajectory length ``T`` ``(K,)`` it used.
    """
    mu, h_bar, log_eps, log_eps_bar, m, constants = (_own(v) for v in tuning)
    x, t, log_norm, chees, center = _own(x), _own(t), _own(log_norm), _own(chees), _own(center)
    lr, lt, gr, gt = (_own(v) for v in ev_x)
    metric = None if metric is None else _own(metric)

    def body(carry: tuple[Tensor, ...], xs: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        x, lr, lt, gr, gt, h_bar, log_eps, log_eps_bar, m, chees, center = carry
        p0, u_k, h_k, rate_k, adapt_k, active_k = xs
        ev = (lr, lt, gr, gt)
        step_sizes, length = log_eps.exp(), chees[0].exp()
        n = torch.ceil(h_k * length / step_sizes.mean()).clamp(1, max_leapfrog).to(torch.int64)
        eps = step_sizes.to(x.dtype)[:, None, None]
        y, ev_y, p, nonfinite = hmc_loop_trajectory(path, x, ev, p0, eps, metric, t, log_norm, n)
        chosen = hmc_choice(path, x, ev, y, ev_y, p0, p, u_k, t)
        log_alpha = chosen[5]
        alpha = log_alpha.exp()[:, 0]
        center = center + rate_k * (chosen[0][:, 0].to(torch.float64).mean(0) - center)
        z0, z1, zc = (whiten(v, metric)[:, 0] for v in (x, y, center.to(x.dtype).expand_as(x)))
        gradient = chees_gradient(z0, z1, p[:, 0], log_alpha[:, 0], h_k * length, zc[0])
        harmonic = 1.0 / (1.0 / alpha.clamp(min=1e-300)).mean()
        tuned = _dual_averaged(mu, constants, (h_bar, log_eps, log_eps_bar, m), harmonic.expand_as(alpha), adapt_k)
        moved = (*(v.contiguous() for v in chosen[:5]), *tuned, chees_update(chees, gradient), center)
        carry = tuple(torch.where(active_k, new, old) for new, old in zip(moved, carry))
        return carry, (carry[0][:, 0].clone(), alpha, carry[6].exp(), nonfinite.clone(), n, length)

    init = (x, lr, lt, gr, gt, h_bar, log_eps, log_eps_bar, m, chees, center)
    carry, ys = scan(body, init, (noise, u, jitter, rate, adapting, active))
    return (*carry, *ys)


def hmc_chain_segment(path: GeometricPath, *args: Any) -> tuple[Any, ...]:
    """:func:`_segment` of HMC transitions of varying lengths (``compile=True`` compiles it)."""
    return _segment(hmc_masked_transition, path, *args)


def hmc_loop_chain_segment(path: GeometricPath, *args: Any) -> tuple[Any, ...]:
    """:func:`_segment` of HMC transitions of any lengths, as loops (``compile=True`` compiles it)."""
    return _segment(hmc_loop_transition, path, *args)


def hmc_fixed_chain_segment(path: GeometricPath, *args: Any) -> tuple[Any, ...]:
    """:func:`_segment` of HMC transitions of one length (``compile=True`` compiles it)."""
    return _segment(hmc_fixed_transition, path, *args)


def mala_chain_segment(path: GeometricPath, *args: Any) -> tuple[Any, ...]:
    """:func:`_segment` of MALA transitions (``compile=True`` compiles it)."""
    return _segment(mala_masked_transition, path, *args)


def _sweeps(
    transition: Any,
    path: GeometricPath,
    x: Tensor,
    ev_x: Evaluation,
    eps: Tensor,
    adaptation: Tensor,
    noise: Tensor,
    u: Tensor,
    lengths: Tensor,
    metric: Tensor | None,
    t: Tensor,
    log_norm: Tensor,
    max_leapfrog: int,
) -> tuple[Tensor, ...]:
    """``S`` sweeps of ``transition`` at pi_t with the corrector's step-size adaptation, as one ``scan``.

    :meth:`~sampler_plugins.mcmc.kernels.MetropolisCorrector.sweeps` in the graph: after each
    sweep :func:`~sampler_plugins.mcmc.kernels.adapted_step_size` where ``adaptation`` is on.

    Args:
        transition, path, metric, t, log_norm, max_leapfrog: as in :func:`_segment`.
        x: ``(R, N, d)`` particles; ``ev_x`` their evaluation.
        eps: ``(R,)`` float64 step sizes.
        adaptation: float64 ``(3,)``: ``(adapt, gain, target acceptance)``.
        noise: ``(S, R, N, d)`` momenta or noise; ``u`` ``(S, R, N)`` float64 uniforms;
            ``lengths`` ``(S,)`` int64 leapfrog steps per sweep.

    Returns:
        ``(x, log_ref, log_target, grad_ref, grad_target, eps, acceptance, nonfinite)``: the
        particles after the sweeps, their evaluation, the adapted step sizes, the mean
        acceptance probability per replica over the sweeps ``(R,)`` and the non-finite count.
    """
    x, t, log_norm, eps, adaptation = _own(x), _own(t), _own(log_norm), _own(eps), _own(adaptation)
    lr, lt, gr, gt = (_own(v) for v in ev_x)
    metric = None if metric is None else _own(metric)
    n_sweeps = noise.shape[0]

    def body(carry: tuple[Tensor, ...], xs: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        x, lr, lt, gr, gt, eps, acceptance, nonfinite = carry
        noise_k, u_k, n_k = xs
        adapt, gain, target = adaptation.unbind()
        step = eps.to(x.dtype)[:, None, None]
        x, ev, log_alpha, bad = transition(
            path, x, (lr, lt, gr, gt), noise_k, u_k, step, metric, t, log_norm, n_k, max_leapfrog
        )
        rate = log_alpha.exp().mean(-1)
        eps = torch.where(adapt > 0, adapted_step_size(eps, rate, gain, target), eps)
        ev = tuple(v.contiguous() for v in ev)
        return (x.contiguous(), *ev, eps, acceptance + rate / n_sweeps, nonfinite + bad), ()

    zero = torch.zeros_like(eps)
    init = (x, lr, lt, gr, gt, eps, zero, torch.zeros((), dtype=torch.int64, device=x.device))
    carry, _ = scan(body, init, (noise, u, lengths))
    return tuple(carry)


def hmc_sweeps(path: GeometricPath, *args: Any) -> tuple[Tensor, ...]:
    """:func:`_sweeps` of HMC transitions of varying lengths (``compile=True`` compiles it)."""
    return _sweeps(hmc_masked_transition, path, *args)


def hmc_fixed_sweeps(path: GeometricPath, *args: Any) -> tuple[Tensor, ...]:
    """:func:`_sweeps` of HMC transitions of one length (``compile=True`` compiles it)."""
    return _sweeps(hmc_fixed_transition, path, *args)


def mala_sweeps(path: GeometricPath, *args: Any) -> tuple[Tensor, ...]:
    """:func:`_sweeps` of MALA transitions (``compile=True`` compiles it)."""
    return _sweeps(mala_masked_transition, path, *args)


#: The most random numbers (S sweeps x R x N x d) a fused :func:`_sweeps` call draws at once;
#: larger runs call the compiled transition once per sweep, where the call's cost is small
#: beside the sweep's.
SWEEP_NUMBERS = 1 << 22

#: The sweep functions by kind of transition: each is its own compiled code object.
SWEEPS = {"hmc": hmc_sweeps, "hmc-fixed": hmc_fixed_sweeps, "mala": mala_sweeps}


#: The segment functions by kind of transition: each is its own compiled code object.
SEGMENTS = {
    "hmc": hmc_chain_segment,
    "hmc-fixed": hmc_fixed_chain_segment,
    "hmc-loop": hmc_loop_chain_segment,
    "mala": mala_chain_segment,
}


def compiled_loop(function: Any) -> CompiledStep:
    """A fused loop (a value of :data:`SWEEPS` or :data:`SEGMENTS`, or :func:`chees_warmup_segment`),
    compiled at its first call with :data:`COMPILE_OPTIONS`."""
    return CompiledStep(function, COMPILE_OPTIONS, scalar_outputs=True, fallback=FALLBACK)


def mark_segment_length(*tensors: Tensor) -> None:
    """Mark the leading (iteration) axis of a segment's inputs dynamic: one graph for every ``K``."""
    for tensor in tensors:
        torch._dynamo.maybe_mark_dynamic(tensor, 0)
