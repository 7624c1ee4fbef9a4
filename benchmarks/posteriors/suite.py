"""The posterior suite: methods x posteriors x seeds, scored against posteriordb's reference draws.

Python API::

    from sampler_benchmarks.posteriors import run_posterior_suite
    report = run_posterior_suite(["smc", "hmc"], ["arK-arK", "garch-garch11"], seeds=3)
    report.write("results/posteriors")     # results.json, results.md
    print(report.markdown())

Command line: ``sampler bench --suite posteriors [--methods smc,hmc] [--targets arK-arK,...]``.

Each run is one call of ``sampler.sample(target, method, n_particles=N, n_replicas=R, seed=s)``
on the unconstrained space. It is scored on the constrained parameters
(``target.constrain(result.samples)``, pooled over the R replicas and N draws): per parameter,
``z = |mean - reference mean| / reference sd`` and the sd ratio ``sd / reference sd``. A run
passes when ``max z <= 0.1`` and every sd ratio lies in ``[0.9, 1.1]``; a posterior/method cell
passes when every seed passes. Where the target's log Z is exact, ``|log Ẑ - log Z|`` and the
run's reported standard error are shown. Costs are the engine's counts of target and gradient
evaluations and the sampling run's wall time. Medians are over seeds.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import attrs
import torch

import sampler
from sampler.errors import SamplerError
from sampler_benchmarks.posteriors.base import Posterior
from sampler_benchmarks.posteriors.catalog import get_posterior, list_posteriors

log = logging.getLogger("sampler.bench")

__all__ = ["Z_MAX", "SD_RATIO_RANGE", "PosteriorRun", "PosteriorReport", "score", "run_posterior_suite"]

#: A run passes when max z <= Z_MAX ...
Z_MAX = 0.1
#: ... and every sd ratio lies in this closed interval.
SD_RATIO_RANGE = (0.9, 1.1)


@attrs.frozen
class PosteriorRun:
    """One method on one posterior with one seed.

    Attributes:
        posterior, method, seed: what ran.
        n_particles, n_replicas: N particles per replica (draws per chain) and R replicas (chains).
        z: per parameter, ``|mean - reference mean| / reference sd`` (``None`` if the run failed).
        sd_ratio: per parameter, ``sd / reference sd`` (``None`` if the run failed).
        log_Z, log_Z_stderr: the run's estimate and reported standard error (``None`` without one).
        log_Z_error: ``|log_Z - exact log Z|`` where the exact value is known.
        grad_evals, target_evals: the engine's counts (one per point).
        wall_time: seconds of the sampling run (not the scoring).
        error: the error message of a run that raised, else ``None``.
        reference: the run's ``options["reference"]`` (which reference an annealing run started
            from, and for ``"auto"`` why), else ``None``.
        warnings: the warnings of the run's summary (:func:`sampler.summary`): what a user of
            the run would have been told without a reference to score against.
    """

    posterior: str
    method: str
    seed: int
    n_particles: int
    n_replicas: int
    z: dict[str, float] | None
    sd_ratio: dict[str, float] | None
    log_Z: float | None
    log_Z_stderr: float | None
    log_Z_error: float | None
    grad_evals: int
    target_evals: int
    wall_time: float
    error: str | None = None
    reference: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def max_z(self) -> float:
        """The largest z over parameters (NaN if any is NaN or the run failed)."""
        return _nanmax(self.z.values()) if self.z else math.nan

    @property
    def sd_ratio_range(self) -> tuple[float, float]:
        """``(min, max)`` sd ratio over parameters (NaN if any is NaN or the run failed)."""
        if not self.sd_ratio:
            return math.nan, math.nan
        vals = list(self.sd_ratio.values())
        if any(math.isnan(v) for v in vals):
            return math.nan, math.nan
        return min(vals), max(vals)

    @property
    def passed(self) -> bool:
        """``max z <= Z_MAX`` and every sd ratio in ``SD_RATIO_RANGE`` (False when NaN or failed)."""
        lo, hi = self.sd_ratio_range
        return self.max_z <= Z_MAX and SD_RATIO_RANGE[0] <= lo and hi <= SD_RATIO_RANGE[1]


def _nanmax(values: Iterable[float]) -> float:
    vals = list(values)
    return math.nan if not vals or any(math.isnan(v) for v in vals) else max(vals)


def score(target: Posterior, samples: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
    """``(z, sd_ratio)`` per parameter of equally weighted ``samples`` ``(..., dim)`` (leading dims pooled).

    Non-finite draws make that parameter's figures NaN (a failed run, never a silent pass).
    """
    with torch.no_grad():
        params = target.constrain(samples.to(torch.float64))
    z, ratio = {}, {}
    for name in target.param_names:
        v = params[name].reshape(-1)
        mean, sd = float(v.mean()), float(v.std())
        z[name] = abs(mean - target.reference_mean[name]) / target.reference_sd[name]
        ratio[name] = sd / target.reference_sd[name]
    return z, ratio


def _run_one(
    target: Posterior,
    method: str,
    seed: int,
    n_particles: int,
    n_replicas: int,
    options: Mapping[str, Any],
    dtype: torch.dtype,
    device: str | None,
) -> PosteriorRun:
    """Sample ``target`` once and score it; a :class:`SamplerError` becomes a failed run."""
    common = dict(posterior=target.name, method=method, seed=seed, n_particles=n_particles, n_replicas=n_replicas)
    try:
        res = sampler.sample(
            target,
            method=method,
            n_particles=n_particles,
            n_replicas=n_replicas,
            seed=seed,
            dtype=dtype,
            device=device,
            progress=False,
            **options,
        )
    except SamplerError as exc:
        log.warning("%s on %s (seed %d) failed: %s", method, target.name, seed, exc)
        return PosteriorRun(**common, z=None, sd_ratio=None, log_Z=None, log_Z_stderr=None, log_Z_error=None,
                            grad_evals=0, target_evals=0, wall_time=math.nan, error=str(exc))  # fmt: skip
    z, ratio = score(target, res.samples)
    log_z = res.log_Z
    return PosteriorRun(
        **common,
        z=z,
        sd_ratio=ratio,
        log_Z=log_z,
        log_Z_stderr=res.log_Z_stderr,
        log_Z_error=None if log_z is None or target.log_Z is None else abs(log_z - target.log_Z),
        grad_evals=res.n_grad_evals,
        target_evals=res.n_target_evals,
        wall_time=res.wall_time,
        reference=res.options.get("reference"),
        warnings=sampler.summary(res).warnings,
    )


def run_posterior_suite(
    methods: Sequence[str],
    posteriors: Sequence[str] | None = None,
    seeds: int = 3,
    n_particles: int = 1000,
    n_replicas: int = 4,
    options: Mapping[str, Any] | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
    command: str = "",
) -> PosteriorReport:
    """Run every method on every posterior with seeds ``0..seeds-1`` and score them.

    Args:
        methods: registered method names (``sampler.list_methods()``).
        posteriors: posteriordb names (default: all of :func:`list_posteriors`).
        seeds: number of seeds per (posterior, method).
        n_particles: N particles per replica (draws per chain for MCMC methods).
        n_replicas: R replicas (chains) per run; the scores pool all R x N draws.
        options: options for every method (``sampler.sample(**options)``).
        method_options: options per method name, over ``options``.
        dtype: the run's precision (float64 by default: several posteriors sit at scales where
            float32 loses digits).
        device: torch device (default: torch's default).
        progress: called with one line per finished run.
        command: the command line recorded in the report.
    """
    names = list(posteriors) if posteriors else list_posteriors()
    targets = [get_posterior(n) for n in names]  # unknown names fail before any run
    runs = []
    for target in targets:
        for method in methods:
            opts = {**(options or {}), **((method_options or {}).get(method, {}))}
            for seed in range(seeds):
                run = _run_one(target, method, seed, n_particles, n_replicas, opts, dtype, device)
                runs.append(run)
                if progress is not None:
                    progress(_progress_line(run))
    settings = dict(
        n_particles=n_particles,
        n_replicas=n_replicas,
        seeds=seeds,
        options=dict(options or {}),
        method_options={k: dict(v) for k, v in (method_options or {}).items()},
        dtype=str(dtype).removeprefix("torch."),
        device=device or str(torch.empty(0).device),
    )
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    return PosteriorReport(runs=runs, settings=settings, machine=machine, command=command)


def _progress_line(run: PosteriorRun) -> str:
    """One line per finished run for ``progress``."""
    if run.error:
        return f"{run.posterior:<42} {run.method:<8} seed {run.seed}: FAILED: {run.error}"
    lo, hi = run.sd_ratio_range
    return (
        f"{run.posterior:<42} {run.method:<8} seed {run.seed}: max z {run.max_z:.3g}, sd ratio [{lo:.3g}, {hi:.3g}], "
        f"{run.wall_time:.1f} s{', warned' if run.warnings else ''}"
    )


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else None


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


@attrs.define
class PosteriorReport:
    """All runs of a posterior suite, with per-cell summaries and JSON / markdown writers.

    Attributes:
        runs: every :class:`PosteriorRun`.
        settings: N, R, seeds, options, dtype and device of the runs.
        machine: where it ran.
        command: the command line that produced it.
    """

    runs: list[PosteriorRun]
    settings: dict[str, Any]
    machine: str
    command: str = ""

    def cells(self) -> list[dict[str, Any]]:
        """One summary per (posterior, method), in run order: medians over seeds, worst cases, pass."""
        keys = list(dict.fromkeys((r.posterior, r.method) for r in self.runs))
        out = []
        for posterior, method in keys:
            runs = [r for r in self.runs if r.posterior == posterior and r.method == method]
            ok = [r for r in runs if r.error is None]
            ranges = [r.sd_ratio_range for r in ok]
            names = list(ok[0].z or {}) if ok else []
            out.append(
                {
                    "posterior": posterior,
                    "method": method,
                    "dim": get_posterior(posterior).dim,
                    "seeds": len(runs),
                    "max_z": _median(r.max_z for r in ok),
                    "max_z_worst": _nanmax(r.max_z for r in runs) if len(ok) == len(runs) else math.nan,
                    "sd_ratio_min": _median(lo for lo, _ in ranges),
                    "sd_ratio_max": _median(hi for _, hi in ranges),
                    "log_Z_error": _median(r.log_Z_error for r in ok),
                    "log_Z_stderr": _median(r.log_Z_stderr for r in ok if r.log_Z_error is not None),
                    "grad_evals": _median(r.grad_evals for r in ok),
                    "target_evals": _median(r.target_evals for r in ok),
                    "wall_time": _median(r.wall_time for r in ok),
                    "passed": all(r.passed for r in runs),
                    "n_passed": sum(r.passed for r in runs),
                    "n_warned": sum(bool(r.warnings) for r in ok),
                    "failed_unwarned": sum(not r.passed and not r.warnings for r in ok),
                    "failures": [r.error for r in runs if r.error],
                    "z": {n: _median(r.z[n] for r in ok if r.z) for n in names},
                    "sd_ratio": {n: _median(r.sd_ratio[n] for r in ok if r.sd_ratio) for n in names},
                }
            )
        return out

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-serializable (NaN as ``null``)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return clean(
            {
                "date": date.today().isoformat(),
                "machine": self.machine,
                "command": self.command,
                "settings": self.settings,
                "thresholds": {"max_z": Z_MAX, "sd_ratio": list(SD_RATIO_RANGE)},
                "cells": self.cells(),
                "runs": [attrs.asdict(r) for r in self.runs],
            }
        )

    def markdown(self, per_parameter: bool = True) -> str:
        """The summary table (and, with ``per_parameter``, the per-parameter z and sd ratios)."""
        s = self.settings
        lines = [
            f"Command: `{self.command}`  " if self.command else "",
            f"Date: {date.today().isoformat()}; machine: {self.machine}; N = {s['n_particles']} per replica, "
            f"R = {s['n_replicas']} replicas, {s['seeds']} seeds, {s['dtype']}, options {s['options'] or 'default'}.",
            "",
            "Scored on the constrained parameters, all R x N draws pooled: z = |mean - ref mean| / ref sd, "
            "sd ratio = sd / ref sd (posteriordb reference, 10,000 draws). Median over seeds; "
            "'worst' is over seeds. Pass: every seed has max z <= "
            f"{Z_MAX} and sd ratios in [{SD_RATIO_RANGE[0]}, {SD_RATIO_RANGE[1]}]. "
            "log Z error |log Ẑ - log Z| and the run's reported stderr where log Z is exact (— otherwise). "
            "'warned k/n': runs whose summary (sampler.summary) warned, as a user would have seen.",
            "",
            "| posterior | d | method | max z | max z (worst) | sd ratio min | sd ratio max | log Z error "
            "| log Z stderr | grad evals | target evals | wall time (s) | pass |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        cells = self.cells()
        for c in cells:
            status = "pass" if c["passed"] else f"FAIL ({c['n_passed']}/{c['seeds']})"
            if c["n_warned"]:  # runs whose summary warned; a failure it did not warn about is the worst kind
                unwarned = f", {c['failed_unwarned']} failing unwarned" if c["failed_unwarned"] else ""
                status += f"; warned {c['n_warned']}/{c['seeds']}{unwarned}"
            elif not c["passed"]:
                status += "; no warning"
            if c["failures"]:
                status += f", {len(c['failures'])} error(s)"
            lines.append(
                f"| {c['posterior']} | {c['dim']} | {c['method']} | {_fmt(c['max_z'])} | {_fmt(c['max_z_worst'])} "
                f"| {_fmt(c['sd_ratio_min'])} | {_fmt(c['sd_ratio_max'])} | {_fmt(c['log_Z_error'])} "
                f"| {_fmt(c['log_Z_stderr'])} | {_fmt(c['grad_evals'], ',.0f')} | {_fmt(c['target_evals'], ',.0f')} "
                f"| {_fmt(c['wall_time'], '.1f')} | {status} |"
            )
        errors = [(c["posterior"], c["method"], e) for c in cells for e in c["failures"]]
        if errors:
            lines += ["", "Errors:", ""] + [f"- {p} / {m}: {e}" for p, m, e in errors]
        if per_parameter:
            lines += ["", "Per parameter (median over seeds): z / sd ratio.", ""]
            for c in cells:
                if not c["z"]:
                    continue
                cols = ", ".join(f"{n} {_fmt(c['z'][n], '.2f')}/{_fmt(c['sd_ratio'][n], '.2f')}" for n in c["z"])
                lines.append(f"- {c['posterior']} / {c['method']}: {cols}")
        return "\n".join(lines).lstrip("\n") + "\n"

    def write(self, out: str | Path) -> Path:
        """Write ``results.json`` and ``results.md`` into the folder ``out``; returns it."""
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        (path / "results.json").write_text(json.dumps(self.to_json(), indent=1))
        (path / "results.md").write_text(self.markdown())
        return path
