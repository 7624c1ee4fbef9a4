"""What a run returns: samples, weights, log Z with its error, costs and per-step statistics."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from sampler.core.paths import EvaluationCounter
from sampler.core.records import Record, StepRecords, StepStats, as_step_records
from sampler.core.settings import RunSettings
from sampler.targets.base import Target
from sampler.targets.model import ParameterLayout

__all__ = ["StepStats", "StepRecords", "Result", "pooled_log_Z", "provide"]

#: What the layers above the core provide for :class:`Result`'s convenience methods, by name:
#: ``"to_arviz"`` and ``"save"`` (:mod:`sampler.io.persistence`), ``"plot"``
#: (:mod:`sampler.analysis.plotting`). They register themselves when imported, and
#: :mod:`sampler.api` and the first use of any ``sampler.<name>`` import them, so the core never
#: imports a higher layer.
_PROVIDERS: dict[str, Callable[..., Any]] = {}


def provide(name: str, function: Callable[..., Any]) -> None:
    """Register ``function`` as the implementation of ``Result.<name>`` (called by higher layers)."""
    _PROVIDERS[name] = function


def _provided(name: str) -> Callable[..., Any]:
    try:
        return _PROVIDERS[name]
    except KeyError:
        raise RuntimeError(
            f"Result.{name} is provided by the package's upper layers: use sampler.sample (or import sampler.api)"
        ) from None


def pooled_log_Z(log_Z_per_replica: Tensor) -> tuple[float, float]:
    """Pool independent replicas: ``log mean_r Z_r`` and its standard error.

    The mean of unbiased estimates of Z is unbiased. Its standard error in log space is the
    larger of two estimates:

    * the delta method, ``sd(Z_r) / (sqrt(R) mean(Z_r))``, right when the replicas agree to
      within a nat or so;
    * the spread of the replicas' logs, ``sd(log Z_r) / sqrt(R)``, which stays honest when they
      do not: the delta method saturates there (at 1 for R = 4, whatever the spread, since one
      replica then carries the whole mean), while replicas 36 nats apart are 36 nats apart.

    Nothing caps it. With one replica the error is unknown (NaN).
    """
    lz = log_Z_per_replica.detach().to(torch.float64).flatten()
    r = lz.numel()
    pooled = torch.logsumexp(lz, 0) - math.log(r)
    if r < 2 or not torch.isfinite(pooled):
        return float(pooled), math.nan
    rel = torch.exp(lz - pooled)  # Z_r / mean(Z)
    delta = float(rel.std(unbiased=True)) / math.sqrt(r)
    finite = lz[torch.isfinite(lz)]
    spread = float(finite.std(unbiased=True)) / math.sqrt(r) if finite.numel() == r else math.inf
    return float(pooled), max(delta, spread)


@attrs.frozen(eq=False)
class Result:
    """The outcome of :func:`sampler.sample` or ``Pipeline.run``.

    Attributes:
        samples: equally weighted samples ``(R, N, d)``: the final particles, resampled if their
            weights are not equal (for MCMC methods, R chains of N draws).
        log_weights: ``(R, N)`` float64 importance log weights of ``weighted_samples``: the
            particles right after the last reweighting (to t = 1), before the final stage's
            resampling and moves; scaled so that log-mean-exp over a replica's particles is that
            replica's log Z estimate. Zeros for MCMC chains.
        weighted_samples: ``(R, N, d)`` the particles ``log_weights`` belong to.
        log_Z_per_replica: ``(R,)`` float64 log normalizer per replica, or ``None`` when the
            method gives no density (plain MCMC).
        n_target_evals: target log-density evaluations (one per point).
        n_grad_evals: gradient evaluations (one per point).
        n_nonfinite: NaN/+inf log densities met (those points got zero weight or were rejected).
        steps: per-stage (per-iteration) statistics, a sequence of :class:`StepStats`
            (any iterable of them, or of :class:`~sampler.core.records.StepBlock`, converts).
        method: method name; ``target``: target name.
        kind: ``"smc"`` (weighted particles, replicas), ``"mcmc"`` (chains x draws) or
            ``"flow"`` (equally weighted transported particles, replicas; no weights).
        seed, wall_time (seconds), device, options: how it was run.
        exact_log_Z: the target's exact log Z when it is known.
        dim_names: the target's coordinate names (``Target.dim_names``), if it has them.
        models: trained models the method produced (flows, JKO stacks, TT fields), by name;
            :meth:`save` stores them beside the result and ``sampler.load`` rebuilds them.
        layout: the parameters of a :func:`sampler.model` target (names, shapes, supports,
            dims), or ``None`` for a target over plain coordinates.
        draws: for a model, the constrained draws of each parameter, name -> ``(R, N, *shape)``
            (``samples`` mapped through the model's bijections); empty otherwise.
    """

    samples: Tensor
    log_weights: Tensor
    weighted_samples: Tensor
    log_Z_per_replica: Tensor | None
    n_target_evals: int
    n_grad_evals: int
    n_nonfinite: int
    steps: StepRecords = attrs.field(converter=as_step_records)
    method: str
    target: str
    kind: str = "smc"
    seed: int | None = None
    wall_time: float = math.nan
    device: str = ""
    options: Mapping[str, Any] = attrs.field(factory=dict)
    exact_log_Z: float | None = None
    dim_names: tuple[str, ...] | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))
    models: Mapping[str, Any] = attrs.field(factory=dict)
    layout: ParameterLayout | None = None
    draws: Mapping[str, Tensor] = attrs.field(factory=dict)

    @classmethod
    def from_run(
        cls,
        target: Target,
        settings: RunSettings,
        method: str,
        *,
        samples: Tensor,
        evals: EvaluationCounter | tuple[int, int, int],
        kind: str = "smc",
        log_weights: Tensor | None = None,
        weighted_samples: Tensor | None = None,
        log_Z_per_replica: Tensor | None = None,
        steps: Iterable[Record] = (),
        wall_time: float = math.nan,
        options: Mapping[str, Any] | None = None,
        models: Mapping[str, Any] | None = None,
    ) -> Result:
        """The one way a runner packages its outcome: target and settings fill in the rest.

        A target with a parameter ``layout`` (a :func:`sampler.model`) also gets its constrained
        ``draws``: its ``constrain`` applied to ``samples``.

        Args:
            target: the target sampled (its ``name``, exact ``log_Z`` and ``dim_names`` are recorded).
            settings: the run's :class:`~sampler.RunSettings` (seed and device are recorded).
            method: the method name.
            samples: equally weighted samples ``(R, N, d)``.
            evals: the run's evaluation counts: an :class:`~sampler.paths.EvaluationCounter`
                or ``(target evaluations, gradient evaluations, non-finite values)``.
            kind: ``"smc"``, ``"mcmc"`` or ``"flow"`` (see the class docstring).
            log_weights: ``(R, N)`` importance log weights of ``weighted_samples``; default
                zeros (an equally weighted set).
            weighted_samples: ``(R, N, d)``; default ``samples``.
            log_Z_per_replica: ``(R,)`` or ``None`` when the method gives no density.
            steps, wall_time, options, models: as the attributes of the same names.
        """
        if isinstance(evals, EvaluationCounter):
            evals = (evals.target_evals, evals.grad_evals, evals.nonfinite)
        if log_weights is None:
            log_weights = torch.zeros(samples.shape[:2], dtype=torch.float64, device=samples.device)
        layout = getattr(target, "layout", None)
        draws: dict[str, Tensor] = {}
        if isinstance(layout, ParameterLayout):
            with torch.no_grad():
                draws = {k: v.detach() for k, v in target.constrain(samples.detach()).items()}  # type: ignore[attr-defined]
        else:
            layout = None
        return cls(
            samples=samples,
            log_weights=log_weights,
            weighted_samples=samples if weighted_samples is None else weighted_samples,
            log_Z_per_replica=log_Z_per_replica,
            n_target_evals=int(evals[0]),
            n_grad_evals=int(evals[1]),
            n_nonfinite=int(evals[2]),
            steps=as_step_records(steps),
            method=method,
            target=target.name,
            kind=kind,
            seed=settings.seed,
            wall_time=wall_time,
            device=str(settings.device),
            options=dict(options or {}),
            exact_log_Z=getattr(target, "log_Z", None),
            dim_names=getattr(target, "dim_names", None),
            models=dict(models or {}),
            layout=layout,
            draws=draws,
        )

    def divergences(self, stats: Mapping[str, Tensor] | None = None) -> Tensor | None:
        """Which transitions of ``hmc`` chains diverged: ``(K, R)`` bool over the K iterations, warm-up included.

        A transition diverged where its acceptance probability is 0 in float64 (the ``acceptance``
        statistic each iteration records): an energy error above about 745 nats, where ``exp``
        underflows, or a non-finite one (Stan, NumPyro and BlackJAX count errors above 1000). The
        trajectory then left the region its step size can follow, as at a funnel's neck, and the
        chains may be biased where the target is sharpest. ``None`` for other methods and for
        results without per-iteration statistics. ``stats``: :attr:`stats`, where the caller
        already has them (stacking every iteration's record costs milliseconds per thousand).
        """
        if not self._hmc_chains():
            return None
        acceptance = (self.stats if stats is None else stats).get("acceptance")
        return None if acceptance is None else acceptance == 0

    def divergent_draws(self) -> Tensor | None:
        """:meth:`divergences` of the kept draws: ``(R, N)`` bool, as ArviZ's ``sample_stats.diverging``.

        The draws are the iterations after warm-up (``warmup`` statistic 0), one every ``thin``
        (``options["thin"]``). ``None`` where :meth:`divergences` is, or where the iterations do
        not match the draws (a result assembled by hand).
        """
        if not self._hmc_chains():
            return None
        stats = self.stats
        divergent = self.divergences(stats)
        if divergent is None or "warmup" not in stats:
            return None
        thin = int(self.options.get("thin", 1))
        kept = divergent[stats["warmup"][:, 0] == 0][thin - 1 :: thin]  # (N, R)
        return kept.T if kept.shape == (self.n_particles, self.n_replicas) else None

    def _hmc_chains(self) -> bool:
        """Whether this is a run of ``hmc`` chains with per-iteration statistics (which record divergences)."""
        return self.kind == "mcmc" and self.method == "hmc" and bool(self.steps)

    @property
    def n_replicas(self) -> int:
        """R."""
        return self.samples.shape[0]

    @property
    def n_particles(self) -> int:
        """N (draws per chain for MCMC methods)."""
        return self.samples.shape[1]

    @property
    def dim(self) -> int:
        """d."""
        return self.samples.shape[2]

    @property
    def log_Z(self) -> float | None:
        """Pooled log normalizer over replicas (``log mean_r Z_r``), or ``None`` without a density."""
        return None if self.log_Z_per_replica is None else pooled_log_Z(self.log_Z_per_replica)[0]

    @property
    def log_Z_stderr(self) -> float | None:
        """Standard error of :attr:`log_Z` from the spread across replicas (NaN for one replica)."""
        return None if self.log_Z_per_replica is None else pooled_log_Z(self.log_Z_per_replica)[1]

    @property
    def stats(self) -> dict[str, Tensor]:
        """Per-step statistics stacked over steps, on the CPU: ``t`` and ``ess`` ``(K, R)``,
        and each info key (NaN where a step did not report it)."""
        return self.steps.stacked()

    def to_arviz(self) -> Any:
        """Export to :class:`arviz.InferenceData`.

        ``posterior.x`` ``(chain=R, draw=N, x_dim_0=d)`` holds the equally weighted
        :attr:`samples`, for every ArviZ diagnostic and plot. ``sample_stats`` holds the
        weighted set (``weighted_x`` with ``log_weight``, paired by index; the weights do not
        belong to ``posterior.x``), log Z per replica, and the per-stage statistics on a
        ``step`` axis; ``attrs`` carry method, options, seed, log Z ± se, costs and versions.
        For a :func:`sampler.model`, ``posterior`` holds one variable per parameter
        (constrained, with the model's dims and coords) and ``x`` moves to
        ``unconstrained_posterior``. The layout is described in :mod:`sampler.io.persistence`.
        """
        return _provided("to_arviz")(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to ``path`` (ArviZ NetCDF) and its :attr:`models` to ``<stem>.models/``.

        ``sampler.load(path)`` reads it back: tensors bit for bit, per-step statistics and
        metadata included.
        """
        return _provided("save")(self, path)

    def with_models(self, models: Mapping[str, Any]) -> Result:
        """A copy of this result carrying ``models``."""
        return attrs.evolve(self, models=dict(models))

    def plot(self, kind: str = "auto", **options: Any) -> Any:
        """Draw the result (see :func:`sampler.analysis.plotting.plot` for kinds and options); returns the figure."""
        return _provided("plot")(self, kind, **options)

    def __repr__(self) -> str:
        lz = "n/a" if self.log_Z is None else f"{self.log_Z:.4f} ± {self.log_Z_stderr:.2g}"
        return (
            f"Result(method={self.method!r}, target={self.target!r}, samples={tuple(self.samples.shape)}, "
            f"log_Z={lz}, target_evals={self.n_target_evals}, grad_evals={self.n_grad_evals})"
        )


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()
