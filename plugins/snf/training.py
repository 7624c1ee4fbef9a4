"""Training an SNF: reverse KL (energy), forward KL (maximum likelihood on samples), or a mix.

* **Reverse KL**: ``E[-log w]`` over forward paths ``z ~ ref``, reparameterized: gradients flow
  through the couplings, the Langevin noise and drifts and the accepted Metropolis proposals;
  the accept/reject indicator is a mask without gradient (the standard biased choice of both
  reference implementations). ``E[-log w] = KL(forward path || backward path) - log Z``.
* **Forward KL** (maximum likelihood): ``E[+log w]`` over backward paths started at samples of
  the target (or, for a conditional SNF, at joint samples ``(x, y)``),
  ``= KL(backward || forward) + log Z``. For a purely deterministic flow ``log w = log pi_1(x) -
  log q(x)``, so this is the negative log-likelihood up to a constant.

During training the step size of every Langevin and Metropolis layer is adapted toward its
acceptance goal after each iteration (``log eps += gain (acceptance - goal)``); afterwards the
layers are fixed kernels. Every target and gradient evaluation made is counted.

**Data-parallel training** (``data_parallel=True``, the default under a ``torch.distributed``
group of more than one rank): each rank draws its share (:func:`sampler.engine.distributed.local_batch`)
of every batch of paths from its own generator. One ``all_reduce`` per iteration sums the
statistics every rank needs to take the same decisions: the sums and counts of the finite
log weights (so the loss is the masked mean over the whole batch, each rank's part divided by
the global count) and the acceptance statistics of the stochastic layers (so the step sizes
adapt identically); a second sums the gradients before the identical Adam step. The logged
losses and acceptances are those of the whole batch and the counts are totals over the ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor

from sampler.ext import (
    ConfigurationError,
    EvaluationCounter,
    RunError,
    Target,
    all_reduce_sum,
    check_positive_int,
    local_batch,
    progress_bar,
    sum_gradients,
    world_size,
)
from sampler_plugins.snf.flow import SNF

__all__ = ["TrainingLog", "TrainingSettings", "fit"]

_LOSSES = ("reverse", "forward", "mix")

Samples = Tensor | Callable[[int, torch.Generator], tuple[Tensor, Tensor | None]]
"""The ``samples`` argument of :func:`fit`: target samples for the forward KL, or a function drawing them."""


@attrs.frozen
class TrainingSettings:
    """Hyper-parameters of :func:`fit` (validated).

    Attributes:
        iterations: Adam steps.
        batch_size: paths per step (data-parallel: the global batch, split over the ranks).
        lr: Adam learning rate.
        loss: ``"reverse"`` (energy), ``"forward"`` (maximum likelihood; needs target samples) or
            ``"mix"``: ``(1 - forward_weight) reverse + forward_weight forward``.
        forward_weight: weight of the forward KL in ``"mix"``, in [0, 1].
        adapt_gain: gain of the step-size adaptation during training (0 freezes the step sizes).
        warmup: iterations of step-size adaptation alone (no gradient, gain ``warmup_gain``)
            before training, so the first gradients do not come from unstable Langevin steps.
        warmup_gain: adaptation gain of the warm-up.
        grad_clip: gradient-norm clipping.
    """

    iterations: int = 300
    batch_size: int = 256
    lr: float = 5e-3
    loss: str = "reverse"
    forward_weight: float = 0.5
    adapt_gain: float = 0.1
    warmup: int = 30
    warmup_gain: float = 0.7
    grad_clip: float = 100.0

    def __attrs_post_init__(self) -> None:
        check_positive_int("iterations", self.iterations)
        check_positive_int("batch_size", self.batch_size)
        if self.loss not in _LOSSES:
            raise ConfigurationError(f"loss must be 'reverse', 'forward' or 'mix', got {self.loss!r}")
        if self.loss == "mix" and not 0 <= self.forward_weight <= 1:
            raise ConfigurationError(f"forward_weight must lie in [0, 1], got {self.forward_weight!r}")

    @property
    def forward_share(self) -> float:
        """Weight ``a`` of the forward KL in the loss: 0 (reverse), 1 (forward) or ``forward_weight`` (mix)."""
        return {"reverse": 0.0, "forward": 1.0, "mix": float(self.forward_weight)}[self.loss]


@attrs.define
class TrainingLog:
    """What a training run did and cost.

    Attributes:
        iterations: optimizer steps taken.
        loss: per-iteration loss (``(1 - a) E_fwd[-log w] + a E_bwd[log w]``), Python floats.
        target_evals, grad_evals: evaluations spent (one per point).
        nonfinite: non-finite target values met (those paths were left out of the loss).
        wall_time: seconds.
        step_sizes: final step size per stochastic layer name.
        acceptance: last acceptance statistic per stochastic layer name.
    """

    iterations: int = 0
    loss: list[float] = attrs.field(factory=list)
    target_evals: int = 0
    grad_evals: int = 0
    nonfinite: int = 0
    wall_time: float = 0.0
    step_sizes: dict[str, float] = attrs.field(factory=dict)
    acceptance: dict[str, float] = attrs.field(factory=dict)

    def summary(self, every: int = 25) -> dict:
        """A JSON-friendly digest (the loss every ``every`` iterations)."""
        return {
            "iterations": self.iterations,
            "final_loss": self.loss[-1] if self.loss else math.nan,
            "loss_trace": self.loss[::every],
            "target_evals": self.target_evals,
            "grad_evals": self.grad_evals,
            "nonfinite": self.nonfinite,
            "wall_time": self.wall_time,
            "step_sizes": dict(self.step_sizes),
        }


def fit(
    model: SNF,
    target: Target | Callable[[Tensor | None], Target],
    *,
    settings: TrainingSettings | None = None,
    samples: Samples | None = None,
    generator: torch.Generator | None = None,
    counter: EvaluationCounter | None = None,
    progress: bool | None = None,
    log: TrainingLog | None = None,
    data_parallel: bool | None = None,
    **hyper_parameters: Any,
) -> TrainingLog:
    """Train ``model`` with Adam; return a :class:`TrainingLog`.

    Args:
        model: the flow (trained in place, on its device and dtype).
        target: the target; for a conditional SNF, a function ``condition -> target`` (called
            with the batch's observations ``(1, B, m)``, or ``None`` in reverse mode without samples).
        settings: the hyper-parameters (a :class:`TrainingSettings`; its defaults if omitted).
        samples: target samples ``(M, d)`` for the forward KL, or a function
            ``(n, generator) -> (x (n, d), condition (n, m) or None)`` drawing fresh (joint) samples.
        generator: random generator on the model's device (a fresh unseeded one if omitted).
        counter: where evaluations are counted (a fresh one if omitted; totals are in the log).
        progress: progress bar (``None``: on a terminal only).
        log: continue an earlier log (counts and losses accumulate).
        data_parallel: train on all ranks of the default process group together (default: when
            one of more than one rank is initialized; see the module docstring). Every rank
            calls ``fit`` with the same model (identical parameters and step sizes, e.g. after
            :func:`sampler.engine.distributed.broadcast_parameters`) and options, and its **own**
            ``generator``; ``batch_size`` is the global batch, split over the ranks. The
            models stay identical; ``counter`` counts this rank's evaluations, the log totals.
        **hyper_parameters: fields of :class:`TrainingSettings` (``iterations``, ``batch_size``,
            ``lr``, ``loss``, ``forward_weight``, ``adapt_gain``, ``warmup``, ``warmup_gain``,
            ``grad_clip``), overriding those of ``settings``.
    """
    if settings is None:
        settings = TrainingSettings(**hyper_parameters)
    elif hyper_parameters:
        settings = attrs.evolve(settings, **hyper_parameters)
    run = _TrainingRun.start(model, target, settings, samples, generator, counter, log, data_parallel)
    model.train()
    if settings.warmup and model.stochastic_layers():
        _warmup(run)
    with progress_bar(total=settings.iterations, enabled=progress, desc="training snf") as bar:
        for _ in range(settings.iterations):
            _iterate(run)
            bar.advance(1, step=run.log.iterations)
    model.eval()
    return _finish(run)


@attrs.frozen
class _TrainingRun:
    """What the phases of one :func:`fit` call share (the log and the model change in place)."""

    model: SNF
    settings: TrainingSettings
    target_of: Callable[[Tensor | None], Target]
    samples: Samples | None
    data: Tensor | None  # tensor samples on the model's device and dtype
    generator: torch.Generator
    counter: EvaluationCounter
    seen: EvaluationCounter  # the counts before training
    log: TrainingLog
    batch_size: int  # this rank's paths per iteration
    share: float | None  # data-parallel: this rank's fraction of the global batch; None otherwise
    params: list[Tensor]
    opt: torch.optim.Optimizer | None
    start_time: float

    @classmethod
    def start(
        cls,
        model: SNF,
        target: Target | Callable[[Tensor | None], Target],
        settings: TrainingSettings,
        samples: Samples | None,
        generator: torch.Generator | None,
        counter: EvaluationCounter | None,
        log: TrainingLog | None,
        data_parallel: bool | None,
    ) -> _TrainingRun:
        """Set-up: check the samples, fill in the defaults, split the batch over the ranks, build Adam."""
        if settings.loss != "reverse" and samples is None:
            raise ConfigurationError(f"loss={settings.loss!r} needs target samples (samples=...) for the forward KL")
        if generator is None:
            generator = torch.Generator(device=model.device)
            generator.seed()
        counter = counter if counter is not None else EvaluationCounter()
        parallel = world_size() > 1 if data_parallel is None else bool(data_parallel)
        batch_size = local_batch(settings.batch_size) if parallel else settings.batch_size
        params = [p for p in model.parameters() if p.requires_grad]
        return cls(
            model=model,
            settings=settings,
            target_of=_conditional(target),
            samples=samples,
            data=samples.to(device=model.device, dtype=model.dtype) if isinstance(samples, Tensor) else None,
            generator=generator,
            counter=counter,
            seen=attrs.evolve(counter),
            log=log if log is not None else TrainingLog(),
            batch_size=batch_size,
            share=batch_size / settings.batch_size if parallel else None,
            params=params,
            opt=torch.optim.Adam(params, lr=settings.lr) if params else None,
            start_time=time.perf_counter(),
        )


def _conditional(target: Target | Callable[[Tensor | None], Target]) -> Callable[[Tensor | None], Target]:
    """``target`` as a function ``condition -> target`` (a plain target ignores the condition)."""
    if isinstance(target, Target) or hasattr(target, "log_prob") or not callable(target):
        return lambda cond: target  # type: ignore[return-value]
    return target


def _draw(run: _TrainingRun) -> tuple[Tensor, Tensor | None]:
    """A batch of target samples ``(B, d)`` for the forward KL and its observations ``(1, B, m)`` (or ``None``)."""
    device, dtype = run.model.device, run.model.dtype
    if run.data is not None:
        idx = torch.randint(run.data.shape[0], (run.batch_size,), generator=run.generator, device=device)
        return run.data[idx], None
    x, cond = run.samples(run.batch_size, run.generator)  # type: ignore[misc, operator]
    return x.to(device=device, dtype=dtype), None if cond is None else cond.to(device=device, dtype=dtype)[None]


def _acceptance(info: dict[str, Tensor]) -> dict[str, float]:
    """The acceptance statistic of each stochastic layer: the mean of its per-path values."""
    return {name: float(value.mean()) for name, value in info.items()}


def _adapt(model: SNF, acceptance: dict[str, float], gain: float) -> None:
    """Move the step size of every stochastic layer with a statistic toward its acceptance goal."""
    for name, layer in model.stochastic_layers():
        if name in acceptance:
            layer.adapt(acceptance[name], gain)


def _warmup(run: _TrainingRun) -> None:
    """Adapt the step sizes on forward paths without gradients (gain ``warmup_gain``; evaluations counted).

    Data-parallel (``run.share`` set), the acceptance driving the adaptation is that of all ranks' paths.
    """
    model = run.model
    with torch.no_grad():
        for _ in range(run.settings.warmup):
            cond = _draw(run)[1] if callable(run.samples) else None
            path = model.make_path(run.target_of(cond), run.counter)
            info = model.forward_path(path, run.batch_size, run.generator).info
            if run.share is not None:
                info = _global_acceptance(model, info, run.share)
            _adapt(model, _acceptance(info), run.settings.warmup_gain)


def _iterate(run: _TrainingRun) -> None:
    """One training iteration: the batch, the loss, an Adam step, the step-size adaptation, the log."""
    settings = run.settings
    x_data, cond = _draw(run) if settings.forward_share > 0 or callable(run.samples) else (None, None)
    loss = _loss if run.share is None else _parallel_loss
    total, value, acceptance = loss(run, run.target_of(cond), x_data)
    _adam_step(run, total)
    if settings.adapt_gain > 0:
        _adapt(run.model, acceptance, settings.adapt_gain)
    run.log.loss.append(value)
    run.log.iterations += 1
    run.log.acceptance.update(acceptance)


def _adam_step(run: _TrainingRun, total: Tensor) -> None:
    """Minimize ``total`` by one Adam step (data-parallel: on the gradients summed over the ranks), norm clipped."""
    if run.opt is None or not total.requires_grad:
        return
    run.opt.zero_grad(set_to_none=True)
    total.backward()
    if run.share is not None:
        sum_gradients(run.params)
    torch.nn.utils.clip_grad_norm_(run.params, run.settings.grad_clip)
    run.opt.step()


def _path_log_weights(
    run: _TrainingRun, tgt: Target, x_data: Tensor | None
) -> tuple[Tensor | None, Tensor | None, dict[str, Tensor]]:
    """Differentiable log weights ``(1, B)`` of this iteration's paths and their acceptance statistics.

    Returns the forward paths' log weights (if the loss has a reverse-KL part, else ``None``),
    the backward paths' from ``x_data`` (if it has a forward-KL part, else ``None``) and the
    forward paths' per-layer acceptance statistics (empty without forward paths).
    """
    model, share = run.model, run.settings.forward_share
    fwd = bwd = None
    info: dict[str, Tensor] = {}
    if share < 1:
        path = model.make_path(tgt, run.counter, differentiable=True)
        out = model.forward_path(path, run.batch_size, run.generator)
        fwd, info = out.log_weights, dict(out.info)
    if share > 0:
        path = model.make_path(tgt, run.counter, differentiable=True)
        bwd = model.backward_path(path, x_data[None], run.generator).log_weights  # type: ignore[index]
    return fwd, bwd, info


def _masked_mean(log_w: Tensor) -> Tensor:
    """``mean(log w)`` over the finite entries (a path through zero density carries no gradient)."""
    ok = torch.isfinite(log_w.detach())
    if not bool(ok.any()):
        raise RunError("every training path hit a non-finite target density; check the target and the reference")
    return torch.where(ok, log_w, torch.zeros_like(log_w)).sum() / ok.sum()


def _loss(run: _TrainingRun, tgt: Target, x_data: Tensor | None) -> tuple[Tensor, float, dict[str, float]]:
    """The loss of one iteration (float64 scalar with gradient), its value and the acceptance statistics."""
    a = run.settings.forward_share
    fwd, bwd, info = _path_log_weights(run, tgt, x_data)
    total = torch.zeros((), dtype=torch.float64, device=run.model.device)
    if fwd is not None:
        total = total - (1 - a) * _masked_mean(fwd)
    if bwd is not None:
        total = total + a * _masked_mean(bwd)
    return total, float(total.detach()), _acceptance(info)


def _global_acceptance(model: SNF, info: dict[str, Tensor], share: float) -> dict[str, Tensor]:
    """Acceptance statistics of all ranks: per layer, ``sum_k share_k mean_k`` (one ``all_reduce``)."""
    names = [name for name, _ in model.stochastic_layers() if name in info]  # the same order on every rank
    if not names:
        return {}
    local = torch.stack([info[name].detach().double().mean() * share for name in names])
    return dict(zip(names, all_reduce_sum(local, "acceptance statistics")))


def _finite_sum(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of the finite entries of ``log w`` (with gradient) and their count (float64 scalar, no gradient)."""
    ok = torch.isfinite(log_w.detach())
    return torch.where(ok, log_w, torch.zeros_like(log_w)).sum(), ok.sum().to(torch.float64)


def _parallel_loss(run: _TrainingRun, tgt: Target, x_data: Tensor | None) -> tuple[Tensor, float, dict[str, float]]:
    """This rank's part of the loss of one data-parallel iteration, the whole batch's loss, and the global acceptances.

    Runs this rank's paths, then one ``all_reduce`` of ``[sum, count]`` of the finite log
    weights of each direction and of the acceptance statistics. The returned loss is
    ``-(1 - a) S_fwd / C_fwd + a S_bwd / C_bwd`` with ``S`` this rank's sum and ``C`` the global
    count, so the gradients summed over the ranks are those of the whole batch's masked mean.
    The second value is the loss of the whole batch; the third maps each stochastic layer's
    name to its acceptance statistic over all ranks' paths.
    """
    a = run.settings.forward_share
    fwd, bwd, info = _path_log_weights(run, tgt, x_data)
    zero = torch.zeros((), dtype=torch.float64, device=run.model.device)
    (s_fwd, c_fwd), (s_bwd, c_bwd) = (_finite_sum(lw) if lw is not None else (zero, zero) for lw in (fwd, bwd))
    names = [name for name, _ in run.model.stochastic_layers() if name in info]
    acc = [info[name].detach().double().mean() * run.share for name in names]  # type: ignore[operator]
    stats = torch.stack([s_fwd.detach(), c_fwd, s_bwd.detach(), c_bwd, *acc])
    stats = all_reduce_sum(stats, "loss and acceptance statistics")
    for used, count in ((fwd is not None, stats[1]), (bwd is not None, stats[3])):
        if used and float(count) == 0:
            raise RunError("every training path hit a non-finite target density; check the target and the reference")
    total, value = zero, zero
    if fwd is not None:
        total = total - (1 - a) * s_fwd / stats[1]
        value = value - (1 - a) * stats[0] / stats[1]
    if bwd is not None:
        total = total + a * s_bwd / stats[3]
        value = value + a * stats[2] / stats[3]
    return total, float(value), {name: float(acc) for name, acc in zip(names, stats[4:])}


def _finish(run: _TrainingRun) -> TrainingLog:
    """Add this call's evaluations (data-parallel: those of all ranks), wall time and final step sizes to the log."""
    counter, seen, log = run.counter, run.seen, run.log
    spent = [
        counter.target_evals - seen.target_evals,
        counter.grad_evals - seen.grad_evals,
        counter.nonfinite - seen.nonfinite,
    ]
    if run.share is not None:  # the work of all ranks
        spent_all = all_reduce_sum(torch.tensor(spent, dtype=torch.int64, device=run.model.device), "evaluation counts")
        spent = [int(v) for v in spent_all.tolist()]
    log.target_evals += spent[0]
    log.grad_evals += spent[1]
    log.nonfinite += spent[2]
    log.wall_time += time.perf_counter() - run.start_time
    log.step_sizes = {name: layer.step_size for name, layer in run.model.stochastic_layers()}
    return log
