"""Diagnostics of a result: the summary table (log Z, weight ESS, Pareto k, R-hat, bulk ESS)."""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np
import torch

from sampler.analysis.estimators import estimate, list_estimators
from sampler.analysis.metrics import nearest_mode
from sampler.analysis.stats import pareto_k, rhat_and_ess
from sampler.core.particles import ess as kish_ess
from sampler.core.result import Result

__all__ = ["Summary", "summary", "pareto_k", "rhat_and_ess"]


@attrs.frozen
class Summary:
    """A diagnostics table; ``str(summary)`` renders it, :meth:`as_dict` gives the numbers.

    Attributes:
        rows: (label, value) lines of the table.
        values: the numbers behind the table.
        warnings: what makes the result untrustworthy, in words a user acts on; printed first.
    """

    rows: tuple[tuple[str, str], ...]
    values: dict[str, Any]
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The numbers behind the table."""
        return dict(self.values)

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self.rows)
        table = "\n".join(f"{k:<{width}}  {v}" for k, v in self.rows)
        return "".join(f"WARNING: {w}\n" for w in self.warnings) + table

    def __repr__(self) -> str:
        return str(self)


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def summary(result: Result, target: Any = None) -> Summary:
    """Diagnostics of ``result``: log Z ± se, weight ESS, Pareto k, R-hat and bulk ESS, costs.

    R-hat and bulk ESS compare the replicas (or MCMC chains) coordinate by coordinate; the
    table shows the worst coordinate. Weight ESS and Pareto k describe the importance weights
    of the particles before the final resampling. Chains with an adapted trajectory (``hmc``'s
    ChEES) add its final length and the mean leapfrog steps per kept iteration.

    Pass the ``target`` that was sampled to add, when it exposes ``modes`` ``(K, d)`` and the
    result has at least 2 replicas, the mode-weight concentration: a Dirichlet fitted (by the
    registered estimator ``dirichlet-vbmm``, if a plugin provides it) to the replicas' mode
    fractions; ``alpha_0`` near N means the replicas reproduce the weights as well as
    independent exact draws would.
    """
    r, n, d = result.samples.shape
    v: dict[str, Any] = {"method": result.method, "target": result.target, "replicas": r, "particles": n, "dim": d}
    rows: list[tuple[str, str]] = [
        ("method", result.method),
        ("target", f"{result.target} (d={d})"),
        ("chains x draws" if result.kind == "mcmc" else "replicas x particles", f"{r} x {n}"),
    ]
    if "reference" in result.options:
        v["reference"] = str(result.options["reference"])
        rows.append(("reference", v["reference"]))
    if result.log_Z is None:
        rows.append(("log Z", "n/a (the method gives no density)"))
    else:
        v["log_Z"], v["log_Z_stderr"] = result.log_Z, result.log_Z_stderr
        rows.append(("log Z", f"{result.log_Z:.4f} ± {_fmt(result.log_Z_stderr, '.2g')} (across {r} replicas)"))
        if result.exact_log_Z is not None:
            err = result.log_Z - result.exact_log_Z
            v["exact_log_Z"], v["log_Z_error"] = result.exact_log_Z, err
            rows.append(("exact log Z", f"{result.exact_log_Z:.4f} (error {err:+.4f})"))
    if result.kind == "smc":
        w_ess = kish_ess(result.log_weights).cpu()
        k = pareto_k(result.log_weights)
        v["weight_ess"] = float(w_ess.mean())
        v["pareto_k"] = float(np.nanmax(k)) if np.isfinite(k).any() else math.nan
        rows.append(("weight ESS", f"{float(w_ess.mean()):.3f} of N (min {float(w_ess.min()):.3f} over replicas)"))
        rows.append(("Pareto k (max)", f"{_fmt(v['pareto_k'], '.2f')} {_k_verdict(v['pareto_k'])}"))
    rh, es = rhat_and_ess(result.samples)
    v["rhat_max"] = float(np.nanmax(rh)) if np.isfinite(rh).any() else math.nan
    v["ess_bulk_min"] = float(np.nanmin(es)) if np.isfinite(es).any() else math.nan
    rows.append(("R-hat (max over dims)", f"{_fmt(v['rhat_max'], '.3f')}{_rhat_verdict(v['rhat_max'])}"))
    rows.append(("bulk ESS (min over dims)", _fmt(v["ess_bulk_min"], ".0f")))
    stats = result.stats
    if "acceptance" in stats:
        if "warmup" in stats:  # MCMC chains: average over the kept iterations
            kept = stats["acceptance"][stats["warmup"][:, 0] == 0]
            acc, label = float(torch.nanmean(kept)) if kept.numel() else math.nan, "acceptance (after warm-up)"
        else:
            acc, label = float(torch.nanmean(stats["acceptance"][-1])), "acceptance (last step)"
        v["acceptance"] = acc
        rows.append((label, _fmt(acc, ".3f")))
    divergent = result.divergences(stats)
    if divergent is not None and "warmup" in stats:  # hmc chains
        after = divergent[stats["warmup"][:, 0] == 0]
        v["divergent"], v["divergent_warmup"] = int(after.sum()), int(divergent.sum() - after.sum())
        share = v["divergent"] / max(after.numel(), 1)
        counts = f"{v['divergent']:,} of {after.numel():,} after warm-up ({share:.2%})"
        rows.append(("divergent transitions", f"{counts}; {v['divergent_warmup']:,} during warm-up"))
    if "trajectory_length" in stats and "warmup" in stats:  # chains with an adapted trajectory (ChEES)
        kept_steps = stats["n_leapfrog"][stats["warmup"][:, 0] == 0]
        v["trajectory_length"] = float(stats["trajectory_length"][-1].mean())
        v["leapfrog_per_iteration"] = float(kept_steps.mean()) if kept_steps.numel() else math.nan
        rows.append(
            (
                "trajectory length",
                f"{v['trajectory_length']:.3g} (whitened; "
                f"{_fmt(v['leapfrog_per_iteration'], '.1f')} leapfrog steps per iteration after warm-up)",
            )
        )
    v.update(
        steps=len(result.steps),
        n_target_evals=result.n_target_evals,
        n_grad_evals=result.n_grad_evals,
        n_nonfinite=result.n_nonfinite,
        wall_time=result.wall_time,
    )
    if result.kind == "smc" and result.steps:
        per_replica = (stats["t"] < 1).sum(0) + 1  # each replica's stages up to reaching t = 1
        lo, hi = int(per_replica.min()), int(per_replica.max())
        v["annealing_steps"] = hi
        rows.append(("annealing steps", str(hi) if lo == hi else f"{lo}-{hi} (per replica)"))
    _mode_weight_row(result, target, rows, v)
    _parameter_rows(result, rows, v)
    rows.append(("target / gradient evals", f"{result.n_target_evals:,} / {result.n_grad_evals:,}"))
    rows.append(("non-finite log densities", str(result.n_nonfinite)))
    rows.append(("wall time", f"{result.wall_time:.2f} s on {result.device or 'n/a'}"))
    return Summary(rows=tuple(rows), values=v, warnings=_warnings(result, v))


#: At most this many parameter elements are listed in the summary (all are in ``values["parameters"]``).
MAX_PARAMETER_ROWS = 20


def _parameter_rows(result: Result, rows: list[tuple[str, str]], v: dict[str, Any]) -> None:
    """For a model: mean, sd, R-hat and bulk ESS of each constrained parameter element, by name.

    Elements that never vary (the fixed entries of a Cholesky factor) are left out.
    """
    if result.layout is None or not result.draws:
        return
    labels = result.layout.element_names()
    flat = result.layout.flatten(result.draws).detach().to("cpu", torch.float64)  # (R, N, k)
    pooled = flat.flatten(0, 1)
    mean, sd = pooled.mean(0), pooled.std(0)
    rh, es = rhat_and_ess(flat)
    table = {
        label: {"mean": float(mean[j]), "sd": float(sd[j]), "rhat": float(rh[j]), "ess_bulk": float(es[j])}
        for j, label in enumerate(labels)
        if float(sd[j]) > 0
    }
    v["parameters"] = table
    rows.append(("parameters", f"{'mean':>10} {'sd':>10} {'R-hat':>7} {'bulk ESS':>9}"))
    for label, s in list(table.items())[:MAX_PARAMETER_ROWS]:
        rows.append(
            (
                f"  {label}",
                f"{s['mean']:>10.4g} {s['sd']:>10.4g} {_fmt(s['rhat'], '>7.3f')} {_fmt(s['ess_bulk'], '>9.0f')}",
            )
        )
    if len(table) > MAX_PARAMETER_ROWS:
        rows.append(("  ...", f"{len(table) - MAX_PARAMETER_ROWS} more (summary.values['parameters'], az.summary)"))


#: Replicas whose log Z estimates spread more than this (sd, nats) give a log Z biased low by
#: about the spread's variance over 2 or more, which no error bar from the replicas shows.
LOG_Z_SPREAD_LIMIT = 1.0


def _warnings(result: Result, v: dict[str, Any]) -> tuple[str, ...]:
    """Plain-language warnings: replicas that disagree, log Z estimates too spread to pool, bad weights."""
    out = []
    rhat = v.get("rhat_max", math.nan)
    if not math.isnan(rhat) and rhat > RHAT_LIMIT:
        unit = "chains" if result.kind == "mcmc" else "replicas"
        if result.kind == "mcmc":
            work = "longer chains and more warm-up"
        elif "waste_free" in result.options:
            work = "longer chains per stage: waste_free=; more particles"
        else:
            parts = ["more MCMC moves per stage: n_steps="] if "n_steps" in result.options else []
            if result.method == "smc" and result.options.get("kernel") == "mala":
                # n_steps alone may not do: MALA's local steps never crossed the centered eight
                # schools' funnel (n_steps=100 failed), 10-step HMC moves did (docs/posteriors.md).
                parts.append(
                    "longer moves, which cross funnels that MALA's local steps do not: kernel='hmc', n_leapfrog=10"
                )
            work = "; ".join([*parts, "more particles"])
        # a path from the target's own prior is not improved by a Gaussian reference (which those options ask for)
        from_prior = str(result.options.get("reference", "")).startswith("target prior")
        reference = "" if from_prior else " or a reference closer to the target (reference_loc=, reference_scale=)"
        out.append(
            f"the {unit} disagree (R-hat {rhat:.3f} > {RHAT_LIMIT}): they did not reach one distribution, so the "
            f"samples, moments and error bars are not to be trusted. Give the sampler more work ({work}){reference}."
        )
    if (divergent := v.get("divergent", 0)) > 0:
        out.append(
            f"{divergent:,} HMC transition{'s' if divergent > 1 else ''} after warm-up diverged (energy error "
            "above ~745 nats): the trajectories left a region their step size can follow (a funnel's neck, a sharp "
            "ridge), so the draws may miss or misweight it even where R-hat looks fine. Reparameterize where you can "
            "(e.g. non-centered hierarchical parameters); a smaller step (target_acceptance= closer to 1) helps less "
            "reliably."
        )
    lz = result.log_Z_per_replica
    if lz is not None and lz.numel() > 1:
        spread = float(lz.detach().to(torch.float64).std())
        v["log_Z_spread"] = spread
        if spread > LOG_Z_SPREAD_LIMIT:
            out.append(
                f"the replicas' log Z estimates spread over {spread:.2g} nats (sd): the pooled log Z is carried by "
                "one replica and is likely biased low by more than its error bar shows. Use more particles (N) or "
                "more annealing stages until the replicas agree to within a nat."
            )
    if v.get("pareto_k", math.nan) >= 0.7:
        out.append(
            f"the importance weights are too heavy-tailed to trust (Pareto k {v['pareto_k']:.2f} >= 0.7): "
            "estimates from them (log Z, weighted moments) may be far off. Use more particles or annealing stages."
        )
    return tuple(out)


#: The estimator the summary's mode-weight row uses (registered by the ``vbmm`` plugin).
MODE_WEIGHT_ESTIMATOR = "dirichlet-vbmm"
#: Its options: mode fractions are highly concentrated (alpha_0 ~ N), where majorization-
#: minimization needs thousands of iterations and Newton's method a handful.
MODE_WEIGHT_OPTIONS: dict[str, Any] = {"solver": "newton"}


def _mode_weight_row(result: Result, target: Any, rows: list[tuple[str, str]], v: dict[str, Any]) -> None:
    """Add the mode-weight Dirichlet concentration when the target has modes and R >= 2."""
    modes = getattr(target, "modes", None)
    r, n, _ = result.samples.shape
    if modes is None or r < 2 or len(modes) < 2:
        return
    if MODE_WEIGHT_ESTIMATOR not in list_estimators():
        return
    k = len(modes)
    idx = nearest_mode(result.samples.detach(), modes)  # (R, N)
    counts = torch.zeros(r, k, dtype=torch.float64, device=idx.device).scatter_add_(
        1, idx, torch.ones_like(idx, dtype=torch.float64)
    )
    fractions = (counts + 0.5) / (n + 0.5 * k)  # Jeffreys pseudocount keeps missed modes finite
    try:
        fit = estimate(MODE_WEIGHT_ESTIMATOR, fractions, **MODE_WEIGHT_OPTIONS)
        a0 = float(fit.concentration)
    except Exception as exc:  # a diagnostic row must never break the summary
        rows.append(("mode weights (Dirichlet a0)", f"n/a ({type(exc).__name__}: {exc})"))
        return
    v["mode_weight_concentration"] = a0
    rows.append(("mode weights (Dirichlet a0)", f"{a0:.4g} over {r} replicas, {k} modes (independent draws: ~{n})"))


def _k_verdict(k: float) -> str:
    if math.isnan(k):
        return ""
    if k < 0.5:
        return "(good)"
    if k < 0.7:
        return "(ok)"
    return "(bad: weights too heavy-tailed to trust)"


#: R-hat above this means the replicas (chains) disagree (Vehtari et al. 2021).
RHAT_LIMIT = 1.01


def _rhat_verdict(r: float) -> str:
    if math.isnan(r):
        return ""
    return "" if r < RHAT_LIMIT else f" (replicas disagree: > {RHAT_LIMIT})"
