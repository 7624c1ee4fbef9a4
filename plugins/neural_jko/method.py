"""The ``neural-jko`` method: train the model (or take a trained one), then sample it through the engine.

``sampler.sample(target, method="neural-jko", preset="cpu")`` trains a
:class:`~sampler_plugins.neural_jko.model.NeuralJKOModel` greedily, then runs a one-stage
:class:`sampler.Pipeline` whose transport is the whole model and whose reference is the model's
latent. The result's log weights are ``log q(x) - log p_model(x)`` (so log Z is the
importance-sampling estimate per replica, with the ELBO ``mean(log w)`` alongside), its
``samples`` are the model's iid draws (or their importance resampling, ``importance_resample``),
and it carries the model (``result.model``) for later sampling, ``save`` and ``log_prob``.
Training costs (target and gradient evaluations, wall time) are added to the result's counts.

Under a ``torch.distributed`` process group of K > 1 ranks the training is data-parallel
(:func:`~sampler_plugins.neural_jko.train.train_model`): every rank trains the same model on
its share of each training batch. The sampling run is not sharded (the model transport draws
from the model as a whole): every rank draws the same samples from the same model, with a
warning that says so. Training counts in the result are totals over the ranks; sampling counts
are those of one (each) rank's identical sampling run.

Every random number of a run comes from its ``seed`` (repeating a run with its seed repeats it
bit for bit, whatever the global random state): CNF layer ``i``'s initial weights from
``derived_seed(derived_seed(seed, INIT_SALT), i)`` (:func:`sampler.ext.derived_seed`;
torch's global generator is forked, seeded and restored), the training draws from a generator
seeded with :func:`~sampler.ext.rank_seed` ``(seed)`` (``seed`` itself in a single process), the
sampling run from ``seed + training_seed_offset``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from sampler.ext import (
    ConfigurationError,
    Corrector,
    EvaluationCounter,
    GaussianReference,
    GeometricPath,
    Linear,
    Pipeline,
    Result,
    RunSettings,
    Target,
    agree,
    all_reduce_sum,
    as_target,
    derived_seed,
    is_main_process,
    rank_seed,
    replicated_sampling,
    world_size,
)
from sampler_plugins.neural_jko.model import NeuralJKOModel
from sampler_plugins.neural_jko.train import NeuralJKOConfig, resolve_config, train_model
from sampler_plugins.neural_jko.transports import ModelTransport

__all__ = ["NeuralJKO", "NeuralJKOResult", "build_neural_jko"]

#: Salt of the method's initial weights: ``init_seed = derived_seed(run seed, INIT_SALT)``, and CNF layer ``i``
#: is built from ``derived_seed(init_seed, i)`` (:func:`~sampler_plugins.neural_jko.train.train_model`).
INIT_SALT = int.from_bytes(b"jko-init", "big")  # the ASCII bytes of "jko-init"


@attrs.frozen(eq=False, repr=False)
class NeuralJKOResult(Result):
    """A :class:`sampler.Result` that also carries the trained model.

    The model is also in ``models["neural-jko"]``: ``result.save(path)`` stores it beside the
    samples and ``sampler.load(path).models["neural-jko"]`` rebuilds it (``attach`` a target
    before sampling from it).

    Attributes:
        model: the :class:`NeuralJKOModel` (attached to the target).
        config: the :class:`NeuralJKOConfig` it was trained with (``None`` for a given model).
        elbo_per_replica: ``(R,)`` float64 ``mean_i log w_i``, a lower bound on log Z in expectation.
        training_target_evals, training_grad_evals, training_time: cost of training alone
            (already included in ``n_target_evals``, ``n_grad_evals`` and ``wall_time``);
            with data-parallel training, evaluations summed over the ranks.
    """

    model: NeuralJKOModel | None = None
    config: NeuralJKOConfig | None = None
    elbo_per_replica: torch.Tensor | None = None
    training_target_evals: int = 0
    training_grad_evals: int = 0
    training_time: float = 0.0

    @property
    def elbo(self) -> float | None:
        """ELBO averaged over replicas."""
        return None if self.elbo_per_replica is None else float(self.elbo_per_replica.mean())


class NeuralJKO:
    """Runner of the ``neural-jko`` method (built by :func:`build_neural_jko`).

    Args:
        preset: ``cpu`` (default), ``paper`` or ``tiny`` (see :data:`PRESETS`); per-target
            overrides apply by target name.
        model: a trained model to sample instead of training one (``config`` options ignored).
        importance_resample: return the importance resampling of the model draws as
            ``samples`` (default ``False``: the model's iid draws themselves, as in the paper).
        correctors: extra correctors run at t = 1 after the model (e.g. resampling then MALA);
            ``samples`` are then the particles after them.
        training_seed_offset: the training generator uses ``seed``, sampling ``seed + offset``.
        **options: any :class:`NeuralJKOConfig` field (``n_flow``, ``n_blocks``, ``tau0``, ...).
    """

    def __init__(
        self,
        preset: str = "cpu",
        model: NeuralJKOModel | None = None,
        importance_resample: bool = False,
        correctors: Sequence[Corrector] = (),
        training_seed_offset: int = 1_000_003,
        **options: Any,
    ):
        resolve_config(preset, "", options)  # validate names and values before any work
        self.preset = preset
        self.model = model
        self.importance_resample = bool(importance_resample)
        self.correctors = list(correctors)
        for c in self.correctors:
            if not isinstance(c, Corrector):
                raise ConfigurationError(f"correctors must be sampler.Corrector instances, got {c!r}")
        self.training_seed_offset = int(training_seed_offset)
        self.options = dict(options)

    def run(
        self,
        target: Target,
        *,
        n_particles: int,
        n_replicas: int = 4,
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        progress: bool | None = None,
    ) -> NeuralJKOResult:
        """Train (unless a model was given) and draw ``n_replicas`` x ``n_particles`` samples."""
        cfg = RunSettings.create(target, n_particles, n_replicas, seed, device, dtype, progress)
        target = as_target(target)
        parallel = world_size() > 1
        if parallel:  # one seed for all ranks (each may have drawn its own at random)
            cfg = attrs.evolve(cfg, seed=agree(cfg.seed))
        start = time.perf_counter()
        config = None
        counter = EvaluationCounter()
        if self.model is None:
            config = resolve_config(self.preset, target.name, self.options)
            # each rank its own training stream (the run's seed itself in a single process)
            gen = torch.Generator(device=cfg.device).manual_seed(rank_seed(cfg.seed))
            path = GeometricPath(GaussianReference(target.dim), target, counter)  # counts training evaluations
            progress = cfg.progress if is_main_process() else False
            model = train_model(
                target,
                config,
                path,
                gen,
                device=cfg.device,
                dtype=cfg.dtype,
                progress=progress,
                data_parallel=parallel,
                init_seed=derived_seed(cfg.seed, INIT_SALT),  # the same initial weights on every rank
            )
            if parallel:  # the training work of all ranks
                totals = all_reduce_sum(
                    torch.tensor([counter.target_evals, counter.grad_evals, counter.nonfinite], dtype=torch.int64),
                    "evaluation counts",
                )
                counter = EvaluationCounter(*(int(v) for v in totals.tolist()))
        else:
            model = self.model
            if model.dim != target.dim:
                raise ConfigurationError(f"the model has dim {model.dim} but the target has dim {target.dim}")
            model.attach(target)
        training_time = time.perf_counter() - start
        options = {"preset": self.preset, **self.options, "importance_resample": self.importance_resample}
        pipe = Pipeline(
            schedule=Linear(1),
            steps=[ModelTransport(model), *self.correctors],
            reference=model.latent_reference(),
            name="neural-jko",
            options=options,
        )
        with replicated_sampling("neural-jko", pipe.unshardable(short=True), trained=parallel and self.model is None):
            res = pipe.run(
                target,
                n_particles=cfg.n_particles,
                n_replicas=cfg.n_replicas,
                seed=(cfg.seed + self.training_seed_offset) % 2**62,
                device=cfg.device,
                dtype=model.dtype,
                progress=cfg.progress,
            )
        samples = res.samples
        if not self.importance_resample and not self.correctors:
            samples = res.weighted_samples
        return NeuralJKOResult(
            **{
                **{f.name: getattr(res, f.name) for f in attrs.fields(Result)},
                "samples": samples,
                "n_target_evals": res.n_target_evals + counter.target_evals,
                "n_grad_evals": res.n_grad_evals + counter.grad_evals,
                "n_nonfinite": res.n_nonfinite + counter.nonfinite,
                "seed": cfg.seed,
                "wall_time": res.wall_time + training_time,
                "models": {"neural-jko": model},
            },
            model=model,
            config=config,
            elbo_per_replica=res.log_weights.mean(-1),
            training_target_evals=counter.target_evals,
            training_grad_evals=counter.grad_evals,
            training_time=training_time,
        )


def build_neural_jko(
    preset: str = "cpu",
    model: NeuralJKOModel | None = None,
    importance_resample: bool = False,
    correctors: Sequence[Corrector] = (),
    **options: Any,
) -> NeuralJKO:
    """Importance-corrected neural JKO sampling (Hertrich & Gruhlke, ICML 2025): a trained CNF + rejection model.

    Args:
        preset: ``cpu`` (2 CPU cores, minutes per 2D target), ``paper`` (published settings,
            for a GPU) or ``tiny`` (seconds, no accuracy).
        model: a trained :class:`NeuralJKOModel` to sample (skips training).
        importance_resample: importance-resample the model draws for ``samples``.
        correctors: correctors run at t = 1 after the model.
        **options: :class:`NeuralJKOConfig` fields overriding the preset.
    """
    return NeuralJKO(
        preset=preset, model=model, importance_resample=importance_resample, correctors=correctors, **options
    )
