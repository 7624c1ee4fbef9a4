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
group of more than one rank): each rank draws its share (:func:`sampler.distributed.local_batch`)
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

import attrs
import torch
from torch import Tensor

from sampler.distributed import all_reduce_sum, local_batch, sum_gradients, world_size
from sampler.errors import ConfigurationError, RunError, check_positive_int
from sampler.paths import EvaluationCounter
from sampler.progress import progress_bar
from sampler.targets.base import Target

from sampler_plugins.snf.flow import SNF

__all__ = ["TrainingLog", "fit"]


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


def _masked_mean(log_w: Tensor) -> Tensor:
    """``mean(log w)`` over the finite entries (a path through zero density carries no gradient)."""
    ok = torch.isfinite(log_w.detach())
    if not bool(ok.any()):
        raise RunError("every training path hit a non-finite target density; check the target and the reference")
    return torch.where(ok, log_w, torch.zeros_like(log_w)).sum() / ok.sum()


def _global_acceptance(model: SNF, info: dict[str, Tensor], share: float) -> dict[str, Tensor]:
    """Acceptance statistics of all ranks: per layer, ``sum_k share_k mean_k`` (one ``all_reduce``)."""
    names = [name for name, _ in model.stochastic_layers() if name in info]  # the same order on every rank
    if not names:
        return {}
    local = torch.stack([info[name].detach().double().mean() * share for name in names])
    return dict(zip(names, all_reduce_sum(local, "acceptance statistics")))


def _warmup(model: SNF, target_of, samples, data, iterations: int, batch_size: int, gain: float, generator, counter, share: float | None = None) -> None:
    """Adapt the step sizes on forward paths without gradients (evaluations counted).

    With ``share`` (data-parallel: ``batch_size`` is this rank's part, ``share`` its fraction of
    the global batch) the acceptance driving the adaptation is that of all ranks' paths.
    """
    device, dtype = model.device, model.dtype
    with torch.no_grad():
        for _ in range(iterations):
            cond = None
            if callable(samples) and data is None:
                _, cond = samples(batch_size, generator)
                cond = None if cond is None else cond.to(device=device, dtype=dtype)[None]
            path = model.make_path(target_of(cond), counter)
            info = model.forward_path(path, batch_size, generator).info
            if share is not None:
                info = _global_acceptance(model, info, share)
            for name, layer in model.stochastic_layers():
                if name in info:
                    layer.adapt(float(info[name].mean()), gain)


def _finite_sum(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of the finite entries of ``log w`` (with gradient) and their count (float64 scalar, no gradient)."""
    ok = torch.isfinite(log_w.detach())
    return torch.where(ok, log_w, torch.zeros_like(log_w)).sum(), ok.sum().to(torch.float64)


def fit(
    model: SNF,
    target: Target | Callable[[Tensor | None], Target],
    iterations: int = 300,
    batch_size: int = 256,
    lr: float = 5e-3,
    loss: str = "reverse",
    forward_weight: float = 0.5,
    samples: Tensor | Callable[[int, torch.Generator], tuple[Tensor, Tensor | None]] | None = None,
    generator: torch.Generator | None = None,
    adapt_gain: float = 0.1,
    warmup: int = 30,
    warmup_gain: float = 0.7,
    grad_clip: float = 100.0,
    counter: EvaluationCounter | None = None,
    progress: bool | None = None,
    log: TrainingLog | None = None,
    data_parallel: bool | None = None,
) -> TrainingLog:
    """Train ``model`` with Adam; return a :class:`TrainingLog`.

    Args:
        model: the flow (trained in place, on its device and dtype).
        target: the target; for a conditional SNF, a function ``condition -> target`` (called
            with the batch's observations ``(1, B, m)``, or ``None`` in reverse mode without samples).
        iterations, batch_size, lr: Adam steps, paths per step, learning rate.
        loss: ``"reverse"`` (energy), ``"forward"`` (maximum likelihood; needs ``samples``) or
            ``"mix"``: ``(1 - forward_weight) reverse + forward_weight forward``.
        samples: target samples ``(M, d)`` for the forward KL, or a function
            ``(n, generator) -> (x (n, d), condition (n, m) or None)`` drawing fresh (joint) samples.
        generator: random generator on the model's device (a fresh unseeded one if omitted).
        adapt_gain: gain of the step-size adaptation during training (0 freezes the step sizes).
        warmup: iterations of step-size adaptation alone (no gradient, gain ``warmup_gain``)
            before training, so the first gradients do not come from unstable Langevin steps.
        warmup_gain: adaptation gain of the warm-up.
        grad_clip: gradient-norm clipping.
        counter: where evaluations are counted (a fresh one if omitted; totals are in the log).
        progress: progress bar (``None``: on a terminal only).
        log: continue an earlier log (counts and losses accumulate).
        data_parallel: train on all ranks of the default process group together (default: when
            one of more than one rank is initialized; see the module docstring). Every rank
            calls ``fit`` with the same model (identical parameters and step sizes, e.g. after
            :func:`sampler.distributed.broadcast_parameters`) and options, and its **own**
            ``generator``; ``batch_size`` is the global batch, split over the ranks. The
            models stay identical; ``counter`` counts this rank's evaluations, the log totals.
    """
    check_positive_int("iterations", iterations)
    check_positive_int("batch_size", batch_size)
    if loss not in ("reverse", "forward", "mix"):
        raise ConfigurationError(f"loss must be 'reverse', 'forward' or 'mix', got {loss!r}")
    if loss != "reverse" and samples is None:
        raise ConfigurationError(f"loss={loss!r} needs target samples (samples=...) for the forward KL")
    if loss == "mix" and not 0 <= forward_weight <= 1:
        raise ConfigurationError(f"forward_weight must lie in [0, 1], got {forward_weight!r}")
    w_fwd = {"reverse": 0.0, "forward": 1.0, "mix": float(forward_weight)}[loss]
    device, dtype = model.device, model.dtype
    if generator is None:
        generator = torch.Generator(device=device)
        generator.seed()
    counter = counter if counter is not None else EvaluationCounter()
    log = log if log is not None else TrainingLog()
    seen = attrs.evolve(counter)
    parallel = world_size() > 1 if data_parallel is None else bool(data_parallel)
    global_batch = batch_size
    if parallel:
        batch_size = local_batch(global_batch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if params else None
    target_of = target if callable(target) and not isinstance(target, Target) and not hasattr(target, "log_prob") else (lambda c: target)
    data = samples.to(device=device, dtype=dtype) if isinstance(samples, Tensor) else None
    start = time.perf_counter()
    model.train()
    if warmup and model.stochastic_layers():
        _warmup(model, target_of, samples, data, warmup, batch_size, warmup_gain, generator, counter, batch_size / global_batch if parallel else None)
    with progress_bar(total=iterations, enabled=progress, desc="training snf") as bar:
        for _ in range(iterations):
            total = torch.zeros((), dtype=torch.float64, device=device)
            info: dict[str, Tensor] = {}
            x_data = cond = None
            if w_fwd > 0 or callable(samples):
                if data is not None:
                    idx = torch.randint(data.shape[0], (batch_size,), generator=generator, device=device)
                    x_data = data[idx]
                else:
                    x_data, cond = samples(batch_size, generator)  # type: ignore[misc]
                    x_data = x_data.to(device=device, dtype=dtype)
                    cond = None if cond is None else cond.to(device=device, dtype=dtype)[None]
            tgt = target_of(cond)
            if parallel:
                total, value, info = _parallel_loss(model, tgt, counter, w_fwd, x_data, batch_size, batch_size / global_batch, generator)
                if opt is not None and total.requires_grad:
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    sum_gradients(params)
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                    opt.step()
                if adapt_gain > 0:
                    for name, layer in model.stochastic_layers():
                        if name in info:
                            layer.adapt(float(info[name]), adapt_gain)
                log.loss.append(float(value))
                log.iterations += 1
                for name, acc in info.items():
                    log.acceptance[name] = float(acc)
                bar.advance(1, step=log.iterations)
                continue
            if w_fwd < 1:
                path = model.make_path(tgt, counter, differentiable=True)
                fwd = model.forward_path(path, batch_size, generator)
                total = total - (1 - w_fwd) * _masked_mean(fwd.log_weights)
                info = dict(fwd.info)
            if w_fwd > 0:
                path = model.make_path(tgt, counter, differentiable=True)
                bwd = model.backward_path(path, x_data[None], generator)  # type: ignore[index]
                total = total + w_fwd * _masked_mean(bwd.log_weights)
            if opt is not None and total.requires_grad:
                opt.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
            if adapt_gain > 0:
                for name, layer in model.stochastic_layers():
                    if name in info:
                        layer.adapt(float(info[name].mean()), adapt_gain)
            log.loss.append(float(total.detach()))
            log.iterations += 1
            for name, value in info.items():
                log.acceptance[name] = float(value.mean())
            bar.advance(1, step=log.iterations)
    model.eval()
    spent = [counter.target_evals - seen.target_evals, counter.grad_evals - seen.grad_evals, counter.nonfinite - seen.nonfinite]
    if parallel:  # the work of all ranks
        spent = [int(v) for v in all_reduce_sum(torch.tensor(spent, dtype=torch.int64, device=device), "evaluation counts").tolist()]
    log.target_evals += spent[0]
    log.grad_evals += spent[1]
    log.nonfinite += spent[2]
    log.wall_time += time.perf_counter() - start
    log.step_sizes = {name: layer.step_size for name, layer in model.stochastic_layers()}
    return log


def _parallel_loss(
    model: SNF, tgt: Target, counter: EvaluationCounter, w_fwd: float, x_data: Tensor | None, n: int, share: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """This rank's part of the loss of one data-parallel iteration, the whole batch's loss, and the global acceptances.

    Runs this rank's ``n`` paths, then one ``all_reduce`` of ``[sum, count]`` of the finite
    log weights of each direction and of the acceptance statistics. The returned loss is
    ``-(1 - w) S_fwd / C_fwd + w S_bwd / C_bwd`` with ``S`` this rank's sum and ``C`` the global
    count, so the gradients summed over the ranks are those of the whole batch's masked mean.
    The second value (float64 scalar, no gradient) is the loss of the whole batch; the third
    maps each stochastic layer's name to its acceptance statistic over all ranks' paths.
    """
    device = model.device
    zero = torch.zeros((), dtype=torch.float64, device=device)
    parts: list[tuple[Tensor, Tensor]] = [(zero, zero), (zero, zero)]
    info: dict[str, Tensor] = {}
    if w_fwd < 1:
        path = model.make_path(tgt, counter, differentiable=True)
        fwd = model.forward_path(path, n, generator)
        parts[0] = _finite_sum(fwd.log_weights)
        info = dict(fwd.info)
    if w_fwd > 0:
        path = model.make_path(tgt, counter, differentiable=True)
        bwd = model.backward_path(path, x_data[None], generator)  # type: ignore[index]
        parts[1] = _finite_sum(bwd.log_weights)
    names = [name for name, _ in model.stochastic_layers() if name in info]
    acc = [info[name].detach().double().mean() * share for name in names]
    stats = torch.stack([parts[0][0].detach(), parts[0][1], parts[1][0].detach(), parts[1][1], *acc])
    stats = all_reduce_sum(stats, "loss and acceptance statistics")
    for used, count in ((w_fwd < 1, stats[1]), (w_fwd > 0, stats[3])):
        if used and float(count) == 0:
            raise RunError("every training path hit a non-finite target density; check the target and the reference")
    total, value = zero, zero
    if w_fwd < 1:
        total = total - (1 - w_fwd) * parts[0][0] / stats[1]
        value = value - (1 - w_fwd) * stats[0] / stats[1]
    if w_fwd > 0:
        total = total + w_fwd * parts[1][0] / stats[3]
        value = value + w_fwd * stats[2] / stats[3]
    return total, value, dict(zip(names, stats[4:]))
