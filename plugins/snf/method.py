"""The ``snf`` method: build an SNF for the target, train it, sample it with the engine.

Under a ``torch.distributed`` process group of K > 1 ranks the training is data-parallel
(:func:`~sampler_plugins.snf.training.fit`): the flow starts from rank 0's initialization and
every rank trains it on its share of each batch of paths, so all ranks hold the same flow. The
sampling run is not sharded (the SNF steps draw their noise from the run's generator, not from
per-particle streams): every rank runs the same sampling run, with a warning that says so.
Training counts are totals over the ranks; sampling counts those of one (each) rank's run.

Every random number of a run comes from its ``seed`` (so repeating a run with its seed repeats
it bit for bit, whatever the global random state): the couplings' initial weights from
``derived_seed(seed, INIT_SALT)`` (:func:`sampler.ext.derived_seed`; torch's global generator
is forked, seeded and restored), the training batches from a generator seeded with
``train_seed = (seed * 1_000_003 + 99_991) mod 2^63`` (per rank: :func:`~sampler.ext.rank_seed` of it), the
sampling run from ``seed`` itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch import Tensor

from sampler.ext import (
    ConfigurationError,
    EvaluationCounter,
    Result,
    RunSettings,
    agree,
    as_target,
    broadcast_parameters,
    check_positive_int,
    derived_seed,
    is_main_process,
    make_reference,
    rank_seed,
    replicated_sampling,
    world_size,
)
from sampler_plugins.snf.flow import SNF
from sampler_plugins.snf.training import TrainingLog, TrainingSettings, fit

__all__ = ["SNFMethod", "build_snf"]

#: Salt of the SNF's initial weights in the ``snf`` method: ``derived_seed(run seed, INIT_SALT)``.
INIT_SALT = int.from_bytes(b"snf-init", "big")  # the ASCII bytes of "snf-init"


class SNFMethod:
    """Runner of the ``snf`` method (``sampler.sample(target, method="snf", ...)``).

    ``run`` builds an :class:`~sampler_plugins.snf.flow.SNF` from the target's reference
    (``N(reference_loc, reference_scale^2)``), trains it (:func:`~sampler_plugins.snf.training.fit`),
    then samples R replicas of N particles through ``sampler.Pipeline`` (the flow's stages as a
    fixed schedule). The Result's log weights are the SNF path weights; ``log_Z`` per replica is
    ``log mean w`` (with ``resample_threshold`` set: the SMC estimate, also unbiased for Z).
    ``n_target_evals`` / ``n_grad_evals`` and ``wall_time`` include training;
    ``options["training"]`` breaks the training part down (so the per-stage statistics sum to
    the totals minus R x N minus the training evaluations). The trained flow is kept as
    :attr:`model` (``save``/``load``, ``sample``) and in the Result's ``models["snf"]``, so
    ``result.save(path)`` stores it beside the samples and ``sampler.load(path)`` rebuilds it.

    Args:
        n_stages, n_couplings, hidden, langevin_steps, mh_steps, mh_kernel, langevin_step_size,
            mh_step_size, clamp: the flow (see :class:`~sampler_plugins.snf.flow.SNF`).
            ``n_couplings=0`` with ``deterministic=False`` gives a purely stochastic flow
            (AIS with Langevin/Metropolis layers); ``langevin_steps=mh_steps=0`` a plain RealNVP.
        deterministic: include the coupling blocks.
        iterations, batch_size, lr, warmup: training (Adam; ``warmup`` step-size-only iterations).
        loss: ``"reverse"`` (default; needs no samples), ``"forward"`` or ``"mix"``.
        forward_weight: weight of the forward KL in ``"mix"``.
        train_samples: target samples ``(M, d)`` for the forward KL, or ``"exact"`` to draw M =
            ``n_train_samples`` from the target's exact sampler (benchmarks only: a sampler
            that is given exact samples is not a fair comparison; say so when reporting).
        n_train_samples: M for ``train_samples="exact"``.
        resample_threshold: if set, ESS-triggered resampling after each stage's reweighting.
        reference_loc, reference_scale: override the target's reference.
    """

    def __init__(
        self,
        n_stages: int = 3,
        n_couplings: int = 2,
        hidden: Sequence[int] = (64, 64),
        langevin_steps: int = 1,
        mh_steps: int = 2,
        mh_kernel: str = "mala",
        langevin_step_size: float = 0.05,
        mh_step_size: float | None = None,
        clamp: float = 2.0,
        deterministic: bool = True,
        iterations: int = 300,
        batch_size: int = 256,
        lr: float = 5e-3,
        warmup: int = 30,
        loss: str = "reverse",
        forward_weight: float = 0.5,
        train_samples: Tensor | str | None = None,
        n_train_samples: int = 2000,
        resample_threshold: float | None = None,
        reference_loc: Any = None,
        reference_scale: Any = None,
    ):
        self.train_options = dict(
            iterations=iterations, batch_size=batch_size, lr=lr, warmup=warmup, loss=loss, forward_weight=forward_weight
        )
        self.train_settings = TrainingSettings(**self.train_options)
        if loss != "reverse" and train_samples is None:
            raise ConfigurationError(f"loss={loss!r} needs train_samples (a tensor of target samples, or 'exact')")
        if isinstance(train_samples, str) and train_samples != "exact":
            raise ConfigurationError(f"train_samples must be a tensor or 'exact', got {train_samples!r}")
        if resample_threshold is not None and not 0 < resample_threshold <= 1:
            raise ConfigurationError(f"resample_threshold must lie in (0, 1], got {resample_threshold!r}")
        self.flow_options = dict(
            n_stages=n_stages,
            n_couplings=n_couplings,
            hidden=tuple(hidden),
            langevin_steps=langevin_steps,
            mh_steps=mh_steps,
            mh_kernel=mh_kernel,
            langevin_step_size=langevin_step_size,
            mh_step_size=mh_step_size,
            clamp=clamp,
            deterministic=deterministic,
        )
        self.train_samples = train_samples
        self.n_train_samples = check_positive_int("n_train_samples", n_train_samples)
        self.resample_threshold = resample_threshold
        self.reference_loc = reference_loc
        self.reference_scale = reference_scale
        self.model: SNF | None = None
        self.training: TrainingLog | None = None

    def options(self) -> dict[str, Any]:
        """The options as recorded in results."""
        samples = (
            self.train_samples
            if isinstance(self.train_samples, str) or self.train_samples is None
            else f"tensor{tuple(self.train_samples.shape)}"
        )
        return {
            **self.flow_options,
            **self.train_options,
            "train_samples": samples,
            "resample_threshold": self.resample_threshold,
        }

    def run(
        self, target, *, n_particles: int, n_replicas: int = 1, seed=None, device=None, dtype=None, progress=None
    ) -> Result:
        """Train an SNF on ``target`` and sample R x N particles with it; see the class docstring."""
        cfg = RunSettings.create(target, n_particles, n_replicas, seed, device, dtype, progress)
        target = as_target(target)
        parallel = world_size() > 1
        if parallel:  # one seed for all ranks (each may have drawn its own at random)
            cfg = attrs.evolve(cfg, seed=agree(cfg.seed))
        start = time.perf_counter()
        ref = make_reference(target, self.reference_loc, self.reference_scale)
        # initial weights from the run's seed alone (the same on every rank), global random state untouched
        init_seed = derived_seed(cfg.seed, INIT_SALT)
        model = SNF(target.dim, ref.loc, ref.scale, **self.flow_options, seed=init_seed)
        model = model.to(device=cfg.device, dtype=cfg.dtype)
        train_seed = (cfg.seed * 1_000_003 + 99_991) % 2**63  # training stream, distinct from sampling
        gen = torch.Generator(device=cfg.device)
        gen.manual_seed(train_seed)
        samples = self.train_samples
        if isinstance(samples, str):  # the same training samples on every rank
            try:
                samples = target.sample(self.n_train_samples, generator=gen, device=cfg.device, dtype=cfg.dtype)
            except NotImplementedError:
                raise ConfigurationError(
                    f"train_samples='exact' needs a target with an exact sampler; {target.name} has none"
                ) from None
        if parallel:  # rank 0's initial flow everywhere (already so by the seed); each rank its own training batches
            broadcast_parameters([*model.parameters(), *model.buffers()])
            gen = torch.Generator(device=cfg.device).manual_seed(rank_seed(train_seed))
        counter = EvaluationCounter()
        progress = cfg.progress if is_main_process() else False
        log = fit(
            model,
            target,
            settings=self.train_settings,
            samples=samples,
            generator=gen,
            counter=counter,
            progress=progress,
            data_parallel=parallel,
        )
        self.model, self.training = model, log
        options = {**self.options(), "training": log.summary()}
        with replicated_sampling(
            "snf", model.pipeline(self.resample_threshold).unshardable(short=True), trained=parallel
        ):
            res = model.run(
                target,
                n_particles=cfg.n_particles,
                n_replicas=cfg.n_replicas,
                seed=cfg.seed,
                progress=cfg.progress,
                resample_threshold=self.resample_threshold,
                options=options,
            )
        return attrs.evolve(
            res,
            n_target_evals=res.n_target_evals + log.target_evals,
            n_grad_evals=res.n_grad_evals + log.grad_evals,
            n_nonfinite=res.n_nonfinite + log.nonfinite,
            wall_time=time.perf_counter() - start,
            device=str(cfg.device),
            models={"snf": model},
        )


def build_snf(**options: Any) -> SNFMethod:
    """Stochastic normalizing flow: RealNVP couplings + Langevin + Metropolis layers, trained by reverse KL,
    with exact path weights (options: :class:`SNFMethod`)."""
    return SNFMethod(**options)
