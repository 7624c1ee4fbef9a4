"""Greedy layer-wise training of the importance-corrected neural JKO model, and its presets.

Schedule: ``n_flow`` CNF layers, then ``n_blocks`` blocks of one CNF layer and
``rejections_per_block`` rejection layers. Before each layer a fresh training set of
``n_train`` draws is taken from the current model; the layer is fitted on it and frozen.

CNF layer ``k`` (``tau_k = tau0 * tau_growth**k``) minimizes, over mini-batches,

    E[-log q(z(1))] - E[l(1)] + E[w(1)] / tau_k

(reverse KL to the target up to ``log Z`` and the constant ``E[e_old]``, plus the
Benamou-Brenier ``W2^2 / tau``; in the textbook JKO convention ``KL + W2^2 / (2h)`` this is
``h = tau / 2``). The target's gradient enters through the surrogate ``-(grad log q . z)``, so
any target with ``log_prob_and_grad`` works; every target and gradient evaluation goes through a
counting :class:`~sampler.GeometricPath`.

**Data-parallel training** (``data_parallel=True``, the default under a ``torch.distributed``
group of more than one rank): every rank draws its share (:func:`sampler.engine.distributed.local_batch`)
of each layer's training set and of every mini-batch from its own generator, scales its loss by
its share of the batch, and the gradients are summed over the ranks before every rank takes the
same Adam step, so all ranks hold the same model. A new CNF layer starts from rank 0's
initialization; a rejection layer's ``log c`` (the bisection) and ``r_bar`` come from rates
summed over all ranks' training draws; the recorded losses, ELBOs and evaluation counts are
totals over the ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from sampler.ext import (
    ConfigurationError,
    GeometricPath,
    PathEvaluation,
    RunError,
    all_reduce_sum,
    broadcast_parameters,
    derived_seed,
    local_batch,
    progress_bar,
    seeded_init,
    sum_gradients,
    world_size,
)
from sampler_plugins.neural_jko.cnf import CNFLayer, Flow
from sampler_plugins.neural_jko.model import NeuralJKOModel, _Draw
from sampler_plugins.neural_jko.rejection import RejectionLayer

__all__ = [
    "NeuralJKOConfig",
    "PRESETS",
    "PRESET_OVERRIDES",
    "resolve_config",
    "train_model",
    "fit_cnf",
    "cnf_surrogate",
]


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not value > 0:
        raise ConfigurationError(f"neural-jko option {attribute.name} must be positive, got {value!r}")


def _nonneg_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"neural-jko option {attribute.name} must be a non-negative integer, got {value!r}")


@attrs.frozen
class NeuralJKOConfig:
    """Hyperparameters of the model and its training (defaults: the paper's global defaults).

    Attributes:
        n_flow: CNF layers before the first rejection block.
        n_blocks: blocks of one CNF layer followed by ``rejections_per_block`` rejection layers.
        rejections_per_block: rejection layers per block (3).
        tau0, tau_growth: JKO step sizes ``tau_k = tau0 * tau_growth**k`` (loss ``KL + W2^2/tau``).
        width: hidden width of each velocity MLP (``None``: ``2 d + 50``).
        lr, lr_decay: Adam learning rate, multiplied by ``lr_decay`` every 100 iterations.
        n_iters: Adam iterations per CNF layer.
        batch_size: mini-batch drawn from the layer's fixed training set.
        n_train: training-set size drawn fresh from the model before each layer (also the
            sample that sets ``log c`` and ``r_bar`` of a rejection layer).
        rejection_rate: rejection rate each rejection layer is tuned to.
        n_rk4_steps: fixed RK4 steps on [0, 1] for training and sampling.
        latent_loc, latent_scale: the latent Gaussian (scalar or per-coordinate list), or
            ``"target"`` for the target's ``reference_loc`` / ``reference_scale`` hints.
        exact_max_dim: exact divergence at sampling/evaluation when ``d <= exact_max_dim``
            (32: the exact trace costs ``d + 1`` rows per matrix product against ``n_probes + 1``
            for Hutchinson, so up to d = 32 it is at most about twice the cost of 16 probes and
            the density carries no estimator noise), otherwise Hutchinson with ``n_probes``
            probes per solve (noise reported).
        train_exact_max_dim: exact divergence during training when ``d <= train_exact_max_dim``,
            otherwise one Rademacher probe per solve (unbiased gradients).
        n_probes: Hutchinson probes at sampling/evaluation time.
        grad_clip: clip the gradient norm of each Adam step (``None``: no clipping).
    """

    n_flow: int = attrs.field(default=4, validator=_nonneg_int)
    n_blocks: int = attrs.field(default=6, validator=_nonneg_int)
    rejections_per_block: int = attrs.field(default=3, validator=_nonneg_int)
    tau0: float = attrs.field(default=0.01, validator=_positive)
    tau_growth: float = attrs.field(default=4.0, validator=_positive)
    width: int | None = None
    lr: float = attrs.field(default=5e-3, validator=_positive)
    lr_decay: float = attrs.field(default=0.95, validator=_positive)
    n_iters: int = attrs.field(default=5000, validator=_nonneg_int)
    batch_size: int = attrs.field(default=5000, validator=_positive)
    n_train: int = attrs.field(default=50_000, validator=_positive)
    rejection_rate: float = 0.2
    n_rk4_steps: int = attrs.field(default=10, validator=_positive)
    latent_loc: Any = 0.0
    latent_scale: Any = 1.0
    exact_max_dim: int = 32
    train_exact_max_dim: int = 5
    n_probes: int = attrs.field(default=16, validator=_positive)
    grad_clip: float | None = None

    def __attrs_post_init__(self) -> None:
        if not 0.0 < self.rejection_rate < 1.0:
            raise ConfigurationError(
                f"neural-jko option rejection_rate must lie in (0, 1), got {self.rejection_rate!r}"
            )
        if self.n_flow + self.n_blocks == 0:
            raise ConfigurationError("neural-jko needs at least one CNF layer (n_flow + n_blocks > 0)")

    def layer_kinds(self) -> list[str]:
        """The layer schedule, e.g. ``['cnf', 'cnf', 'cnf', 'rejection', ...]``."""
        return ["cnf"] * self.n_flow + (["cnf"] + ["rejection"] * self.rejections_per_block) * self.n_blocks


#: Base settings of each preset.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's global defaults (docs/neural_jko.md, "Presets and costs"), for a GPU.
    "paper": {},
    # Two CPU cores, about 10 minutes or less per 2D target (measured: docs/neural_jko.md).
    "cpu": dict(n_flow=3, n_blocks=3, n_iters=300, batch_size=500, n_train=5000, n_rk4_steps=4, lr=1e-2, lr_decay=0.8),
    # Seconds: checks that everything runs (tests, examples, smoke benchmarks), no accuracy.
    "tiny": dict(n_flow=1, n_blocks=1, n_iters=30, batch_size=256, n_train=1000, n_rk4_steps=3, lr=1e-2, lr_decay=0.8),
}

#: Per-target overrides of each preset (by target name; docs/neural_jko.md, "Presets and costs" for ``paper``).
PRESET_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "mustache": dict(n_flow=6, n_blocks=6, tau0=0.01),  # the released config's 0.05 is a typo that never applies
        "8modes": dict(n_flow=2, n_blocks=4, tau0=0.05),
        "8peaky": dict(n_flow=2, n_blocks=4, tau0=0.01),
        "funnel": dict(tau0=5.0, width=256, n_iters=10_000, n_train=200_000, lr_decay=0.98),
        "gmm10-10": dict(tau0=0.0025, tau_growth=2.0),
        "gmm10-20": dict(tau0=0.0025, tau_growth=2.0),
        "gmm10-50": dict(tau0=0.0025, tau_growth=2.0, n_blocks=7),
        "gmm10-100": dict(tau0=0.0025, tau_growth=2.0, n_blocks=7),
        "gmm10-200": dict(tau0=0.001, tau_growth=2.0, n_flow=5, n_blocks=8, width=512, lr=1e-3, batch_size=2000),
        # The paper's GMM40 is 50-dimensional with unit std; ours is the 2D FAB target. Latent std 40
        # as in the paper (no untrained gradient-flow first layer).
        "gmm40": dict(tau0=1.0, tau_growth=2.0, n_blocks=7, latent_scale=40.0, width=256, n_iters=2000, lr=1e-3),
        "lgcp": dict(tau0=5.0, n_flow=3, width=1024, lr=5e-4, n_iters=10_000, n_train=100_000, batch_size=500),
    },
    "cpu": {
        "mustache": dict(tau0=0.01),
        "8modes": dict(tau0=0.05),
        "8peaky": dict(tau0=0.01),
        "funnel": dict(tau0=5.0, width=128),
        "gmm10-10": dict(tau0=0.0025, tau_growth=2.0),
        "gmm10-20": dict(tau0=0.0025, tau_growth=2.0),
        "gmm40": dict(tau0=1.0, tau_growth=2.0, latent_scale=40.0),
    },
    "tiny": {},
}


def resolve_config(preset: str, target_name: str, overrides: Mapping[str, Any] | None = None) -> NeuralJKOConfig:
    """The configuration of ``preset`` for the target called ``target_name``, with ``overrides``."""
    if preset not in PRESETS:
        raise ConfigurationError(f"unknown neural-jko preset {preset!r}; choose from {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **PRESET_OVERRIDES[preset].get(target_name, {}), **dict(overrides or {})}
    known = {f.name for f in attrs.fields(NeuralJKOConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown neural-jko option(s) {', '.join(unknown)}; options are: {', '.join(sorted(known))}"
        )
    return NeuralJKOConfig(**values)


def _latent(value: Any, hint: Any, dim: int) -> Tensor:
    v = hint if isinstance(value, str) and value == "target" else value
    if isinstance(value, str) and value != "target":
        raise ConfigurationError(f"latent_loc/latent_scale must be numbers or 'target', got {value!r}")
    return torch.as_tensor(v, dtype=torch.float64).expand(dim).clone()


def cnf_surrogate(
    layer: CNFLayer, x: Tensor, path: GeometricPath, tau: float, exact: bool, generator: torch.Generator
) -> tuple[Tensor, Tensor, Flow, PathEvaluation]:
    """The training loss of ``layer`` on the batch ``x`` ``(B, d)``.

    Returns the surrogate (a scalar whose gradient is that of the batch mean of
    ``-log q(z) - l + w / tau``), the mean kinetic energy ``E[w]`` (scalar), the layer's
    :class:`~sampler_plugins.neural_jko.cnf.Flow` and the target evaluation at its end points
    (``(B,)`` log densities and ``(B, d)`` gradients, counted by ``path``).
    """
    flow = layer.integrate(x, exact=exact, n_probes=1, generator=generator)
    ev = path.evaluate(flow.z.detach(), grad=True)
    if ev.grad_target is None:  # evaluate(grad=True) always returns it
        raise RunError("the path evaluation returned no target gradient")
    grad = ev.grad_target.to(flow.z.dtype)
    kin = flow.kinetic.mean()
    surrogate = -(grad * flow.z).sum(-1).mean() - flow.ell.mean() + kin / tau
    return surrogate, kin, flow, ev


def fit_cnf(
    layer: CNFLayer,
    x_train: Tensor,
    path: GeometricPath,
    config: NeuralJKOConfig,
    tau: float,
    exact: bool,
    generator: torch.Generator,
    data_parallel: bool = False,
) -> dict[str, Any]:
    """Train ``layer`` on the fixed draws ``x_train`` ``(n, d)``; return a training record.

    The record has the mean loss (``E[-log q(z) - l + w / tau]``) over the first and last 10% of
    the iterations, the mean kinetic energy ``E[w]`` at the end, and the wall time.

    With ``data_parallel`` (all ranks of the default process group call this together, with
    the same ``layer`` and their own ``x_train`` share and ``generator``): each mini-batch of
    ``B = min(batch_size, total n)`` draws is split over the ranks (:func:`local_batch`), each
    rank's loss is scaled by ``B_local / B`` and the gradients are summed (one ``all_reduce`` of
    the layer's parameters per step), so every rank takes the same step. The losses in the
    record are over the whole batch (one ``all_reduce`` at the end).
    """
    opt = torch.optim.Adam(layer.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=config.lr_decay)
    n = x_train.shape[0]
    losses, kins = [], []
    if data_parallel:
        n_all = int(all_reduce_sum(torch.tensor(n, dtype=torch.int64, device=x_train.device), "training-set sizes"))
        bs_all = min(config.batch_size, n_all)
        bs = local_batch(bs_all)
        params = list(layer.parameters())
        # per iteration: sum of the finite loss terms, their count, sum of the kinetic energies
        stats = torch.zeros(config.n_iters, 3, dtype=torch.float64, device=x_train.device)
    else:
        bs = min(config.batch_size, n)
    start = time.perf_counter()
    for it in range(config.n_iters):
        idx = torch.randint(n, (bs,), generator=generator, device=x_train.device)
        surrogate, kin, flow, ev = cnf_surrogate(layer, x_train[idx], path, tau, exact, generator)
        opt.zero_grad(set_to_none=True)
        if data_parallel:
            (surrogate * (bs / bs_all)).backward()
            sum_gradients(params)
        else:
            surrogate.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(layer.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            lt = ev.log_target
            ok = torch.isfinite(lt)
            terms = -lt[ok] - flow.ell.detach().double()[ok] + flow.kinetic.detach().double()[ok] / tau
            if data_parallel:
                stats[it, 0], stats[it, 1], stats[it, 2] = terms.sum(), ok.sum(), flow.kinetic.detach().double().sum()
            else:
                losses.append(float(terms.mean()))
                kins.append(float(kin.detach()))
    if data_parallel and config.n_iters:
        stats = all_reduce_sum(stats, "training losses")
        losses = (stats[:, 0] / stats[:, 1]).tolist()
        kins = (stats[:, 2] / bs_all).tolist()
    for p in layer.parameters():
        p.requires_grad_(False)
    k = max(1, len(losses) // 10)
    return {
        "kind": "cnf",
        "tau": tau,
        "loss_start": sum(losses[:k]) / k if losses else math.nan,
        "loss_end": sum(losses[-k:]) / k if losses else math.nan,
        "kinetic_end": sum(kins[-k:]) / k if kins else math.nan,
        "wall_time": time.perf_counter() - start,
    }


def train_model(
    target: Any,
    config: NeuralJKOConfig,
    path: GeometricPath,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
    data_parallel: bool | None = None,
    init_seed: int | None = None,
) -> NeuralJKOModel:
    """Build and train a model for ``target``; evaluations are counted by ``path.counter``.

    ``path`` evaluates the target (its reference is not used). Each layer's record (kind, tau,
    losses, ``r_bar``, ``log c``, the ELBO of the training draws, wall time) goes to
    ``model.history``.

    ``data_parallel`` (default: when a process group of more than one rank is initialized)
    trains on all ranks together (see the module docstring): every rank must call this with the
    same ``config`` and its **own** ``generator`` (e.g. seeded with
    :func:`sampler.engine.distributed.rank_seed`); the returned models are identical. ``path.counter``
    then counts this rank's evaluations only, while the records' ``target_evals`` and
    ``grad_evals`` are totals over the ranks.

    The initial weights of CNF layer ``i`` (its position in the schedule) come from the seed
    ``derived_seed(init_seed, i)`` (:func:`sampler.ext.derived_seed`): they depend on
    that alone, and torch's global random state is left as it was. ``init_seed`` defaults to
    ``generator.initial_seed()`` (the seed the generator was given; its stream is not used);
    data-parallel, every rank then starts each layer from rank 0's weights anyway.
    """
    if init_seed is None:
        init_seed = generator.initial_seed()
    if data_parallel is None:
        data_parallel = world_size() > 1
    reduce = all_reduce_sum if data_parallel else None
    n_draw = local_batch(config.n_train) if data_parallel else config.n_train
    d = target.dim
    loc = _latent(config.latent_loc, getattr(target, "reference_loc", 0.0), d)
    scale = _latent(config.latent_scale, getattr(target, "reference_scale", 1.0), d)
    model = NeuralJKOModel(d, loc, scale, exact_max_dim=config.exact_max_dim, n_probes=config.n_probes).to(device)
    model.attach(target)
    kinds = config.layer_kinds()
    train_exact = d <= config.train_exact_max_dim
    k_cnf = 0
    name = getattr(target, "name", "target")
    with progress_bar(total=len(kinds), enabled=progress, desc=f"training neural-jko on {name}") as bar:
        for i, kind in enumerate(kinds):
            start = time.perf_counter()
            seen = path.counter.target_evals, path.counter.grad_evals
            with torch.no_grad():
                batch = model.draw(n_draw, generator, path)
            if kind == "cnf":
                tau = config.tau0 * config.tau_growth**k_cnf
                with seeded_init(derived_seed(init_seed, i)):
                    layer = CNFLayer(d, width=config.width, tau=tau, n_steps=config.n_rk4_steps)
                layer = layer.to(device=model.device, dtype=dtype)
                if data_parallel:  # every rank starts from rank 0's initialization
                    broadcast_parameters([*layer.parameters(), *layer.buffers()])
                record = fit_cnf(
                    layer, batch.x.to(dtype), path, config, tau, train_exact, generator, data_parallel=data_parallel
                )
                k_cnf += 1
            else:
                with torch.no_grad():
                    batch = model._evaluate(batch, _draw_state(generator, path))
                layer = RejectionLayer(rate=config.rejection_rate).to(model.device)
                layer.fit(batch.e + batch.log_target, reduce=reduce)
                record = {"kind": "rejection", "log_c": float(layer.log_c), "r_bar": float(layer.r_bar)}
            counts = torch.tensor(
                [path.counter.target_evals - seen[0], path.counter.grad_evals - seen[1]], dtype=torch.int64
            )
            if data_parallel:
                elbo = _elbo_sharded(batch)
                counts = all_reduce_sum(counts.to(model.device), "evaluation counts").cpu()
            else:
                lw = batch.log_target - (-batch.e) if not bool(torch.isnan(batch.log_target).any()) else None
                elbo = None if lw is None else float(lw[torch.isfinite(lw)].mean())
            record.update(
                layer=i,
                elbo_before=elbo,
                target_evals=int(counts[0]),
                grad_evals=int(counts[1]),
                wall_time=time.perf_counter() - start,
            )
            model.layers.append(layer)
            model.history.append(record)
            bar.advance(1, step=i + 1)
    return model


def _elbo_sharded(batch: Any) -> float | None:
    """The mean finite log weight ``log q + e`` over all ranks' training draws.

    ``None`` if the draws were not evaluated on some rank.
    """
    lt = batch.log_target
    evaluated = not bool(torch.isnan(lt).any())
    lw = lt + batch.e if evaluated else torch.zeros_like(lt)
    ok = torch.isfinite(lw)
    sums = torch.stack(
        [
            torch.where(ok, lw, torch.zeros_like(lw)).sum(),
            ok.sum().double(),
            torch.tensor(float(not evaluated), dtype=torch.float64, device=lt.device),
        ]
    )
    sums = all_reduce_sum(sums, "ELBO statistics")
    if float(sums[2]) > 0 or float(sums[1]) == 0:
        return None
    return float(sums[0] / sums[1])


def _draw_state(generator: torch.Generator, path: GeometricPath) -> _Draw:
    return _Draw(generator, path)
