"""The benchmark harness: methods x targets x seeds at a named budget, against exact answers.

Python API::

    from sampler_benchmarks import run_suite
    report = run_suite(["smc"], ["gmm40", "funnel"], seeds=5, budget="cpu")
    report.write("results/bench")          # results.json, results.md, plots/*.png

Each run is one call of ``sampler.sample`` with one replica of N particles (seed = the run's
seed); its samples are compared with N exact samples of the target (sliced energy distance,
docs/benchmarks.md convention), beside the exact-vs-exact floor at the same N. Costs are counted by
the engine (target and gradient evaluations), timed (wall clock) and measured (peak memory).
Medians and spreads are over seeds.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import attrs
import torch

import sampler
from sampler import metrics
from sampler.errors import ConfigurationError, SamplerError

log = logging.getLogger("sampler.bench")

__all__ = ["Budget", "BUDGETS", "RunRecord", "Report", "run_one", "run_suite", "DEFAULT_TARGETS"]

#: Targets of the default suite (docs/benchmarks.md), in table order.
DEFAULT_TARGETS = (
    "gmm40",
    "mustache",
    "8modes",
    "8peaky",
    "funnel",
    "gmm10-10",
    "gmm10-20",
    "gmm10-50",
    "gmm10-100",
    "gmm10-200",
    "manywell",
    "double-well",
    "lgcp",
)


@attrs.frozen
class Budget:
    """How much each run may spend.

    Attributes:
        name: ``cpu`` or ``paper`` (or a custom name).
        n_particles: particles (or draws per chain) per run; the energy distance compares this
            many samples with as many exact samples.
        n_directions: slicing directions of the energy distance.
        seeds: default number of seeds.
        method_options: options per method name (e.g. ``{"smc": {"n_steps": 10}}``).
        target_particles: per-target overrides of ``n_particles`` (expensive targets).
        description: what the budget is for and what it costs.
    """

    name: str
    n_particles: int
    n_directions: int = 1000
    seeds: int = 5
    method_options: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    target_particles: Mapping[str, int] = attrs.field(factory=dict)
    description: str = ""

    def particles_for(self, target: str) -> int:
        """N for ``target``."""
        return int(self.target_particles.get(target, self.n_particles))


BUDGETS: dict[str, Budget] = {
    "cpu": Budget(
        name="cpu",
        n_particles=2000,
        n_directions=1000,
        seeds=5,
        method_options={
            "smc": {"n_steps": 10},
            "ais": {"n_temps": 200},
            "mala": {"n_warmup": 1000},
            "hmc": {"n_warmup": 1000},
            # plugin methods (their docs pages): tt-smc with 2 MALA sweeps per stage matches smc's
            # 10 on the 2-D targets at about a third of the gradients (docs/tt_continuity.md)
            "tt-smc": {"n_steps": 2},
            "neural-jko": {"preset": "cpu"},
        },
        target_particles={"lgcp": 256},
        description="2 CPU cores: N = 2000 (256 on lgcp), 5 seeds; the default suite finishes in well under 30 minutes",
    ),
    "smoke": Budget(
        name="smoke",
        n_particles=200,
        n_directions=100,
        seeds=2,
        method_options={
            "smc": {"n_steps": 2},
            "ais": {"n_temps": 20},
            "mala": {"n_warmup": 100},
            "hmc": {"n_warmup": 100},
            "tt-smc": {"n_steps": 1},
            "flow-smc": {"n_steps": 1, "plain_steps": 1, "n_fit": 20, "n_refit": 5},
            "neural-jko": {"preset": "tiny"},
            "snf": {"iterations": 10},
        },
        target_particles={"lgcp": 32},
        description="seconds per target: checks that the harness runs, not what methods achieve",
    ),
    "paper": Budget(
        name="paper",
        n_particles=50_000,
        n_directions=1000,
        seeds=5,
        method_options={
            "smc": {"n_steps": 20},
            "flow-smc": {"n_steps": 10, "plain_steps": 10},  # smc's 20 sweeps
            "ais": {"n_temps": 1000},
            "mala": {"n_warmup": 2000},
            "hmc": {"n_warmup": 2000},
            "neural-jko": {"preset": "paper"},
        },
        target_particles={"lgcp": 2000},
        description="published scale: N = 50,000 samples vs 50,000 exact (for a GPU)",
    ),
}


@attrs.frozen
class RunRecord:
    """One method on one target with one seed: metrics and costs (``None`` where not defined).

    ``energy_distance`` scores ``result.samples`` as equally weighted points (what a user who
    ignores the weights gets); ``weighted_energy_distance`` scores the weighted set the result
    represents (``samples`` with the normalized ``exp(log_weights)``), computed only when the
    weights are not all equal (``None`` otherwise), with the same exact sample and directions.
    """

    method: str
    target: str
    seed: int
    n_particles: int
    energy_distance: float | None
    floor: float | None
    log_Z: float | None
    log_Z_error: float | None
    weight_ess: float | None
    pareto_k: float | None
    modes_covered: int | None
    n_modes: int | None
    mode_weight_error: float | None
    target_evals: int
    grad_evals: int
    wall_time: float
    peak_memory_mb: float
    device: str
    error: str | None = None
    weighted_energy_distance: float | None = None


def _reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak-memory measurement for the next run, where the platform allows it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM).
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the figure stays the process's peak so far (documented in the table)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last :func:`_reset_peak_memory`: device memory on CUDA, resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    # ru_maxrss: peak resident set size of the whole process (KiB on Linux, bytes on macOS).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def run_one(
    method: str,
    target_name: str,
    seed: int,
    budget: Budget,
    options: Mapping[str, Any] | None = None,
    device: str | None = None,
    floor_cache: dict[tuple[str, int], float] | None = None,
) -> tuple[RunRecord, sampler.Result | None]:
    """Run ``method`` on ``target_name`` once and score it against exact samples."""
    target = sampler.get_target(target_name)
    n = budget.particles_for(target_name)
    opts = {**budget.method_options.get(method, {}), **(options or {})}
    dev = torch.device(device) if device else torch.device("cpu")
    _reset_peak_memory(dev)
    try:
        res = sampler.sample(
            target, method=method, n_particles=n, n_replicas=1, seed=seed, device=device, progress=False, **opts
        )
    except SamplerError as exc:
        log.warning("%s on %s (seed %d) failed: %s", method, target_name, seed, exc)
        return RunRecord(
            method,
            target_name,
            seed,
            n,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            0,
            0,
            math.nan,
            math.nan,
            str(dev),
            str(exc),
        ), None
    peak_mb = _peak_memory_mb(dev)  # the sampler's own peak, before scoring allocates exact samples

    x = res.samples[0].to(torch.float64)
    ed = weighted_ed = floor = None
    gen = torch.Generator(device=x.device).manual_seed(1_000_003 * seed + 17)
    try:
        exact = target.sample(n, gen, device=x.device, dtype=torch.float64)
    except NotImplementedError:
        exact = None
    if exact is not None:
        state = gen.get_state()
        ed = metrics.sliced_energy_distance(x, exact, n_directions=budget.n_directions, generator=gen)
        weights = _normalized_weights(res)
        if weights is not None:
            gen.set_state(state)  # the same directions as the unweighted score
            weighted_ed = metrics.sliced_energy_distance(
                x, exact, n_directions=budget.n_directions, generator=gen, weights=weights
            )
        key = (target_name, n)
        if floor_cache is not None and key in floor_cache:
            floor = floor_cache[key]
        else:
            floor = metrics.exact_floor(
                target, n, torch.Generator(device=x.device).manual_seed(7), n_directions=budget.n_directions
            )
            if floor_cache is not None:
                floor_cache[key] = floor
    modes = getattr(target, "modes", None)
    covered = n_modes = mode_err = None
    if modes is not None:
        n_modes = len(modes)
        covered = metrics.modes_covered(x, modes)
        mode_err = metrics.mode_weight_error(x, modes)
    log_z = res.log_Z
    exact_log_z = getattr(target, "log_Z", None)
    record = RunRecord(
        method=method,
        target=target_name,
        seed=seed,
        n_particles=n,
        energy_distance=ed,
        floor=floor,
        log_Z=log_z,
        log_Z_error=None if log_z is None or exact_log_z is None else abs(log_z - exact_log_z),
        weight_ess=float(metrics.kish_ess(res.log_weights).mean()) if res.kind == "smc" else None,
        pareto_k=_finite_or_none(float(metrics.pareto_k(res.log_weights).max())) if res.kind == "smc" else None,
        modes_covered=covered,
        n_modes=n_modes,
        mode_weight_error=mode_err,
        target_evals=res.n_target_evals,
        grad_evals=res.n_grad_evals,
        wall_time=res.wall_time,
        peak_memory_mb=peak_mb,
        device=res.device,
        weighted_energy_distance=weighted_ed,
    )
    return record, res


def _normalized_weights(res: sampler.Result) -> torch.Tensor | None:
    """The first replica's normalized weights ``(N,)`` float64, or ``None`` when they are all equal."""
    lw = getattr(res, "log_weights", None)
    if lw is None or res.kind != "smc":
        return None
    lw = lw[0].to(torch.float64)
    finite = lw[torch.isfinite(lw)]
    if finite.numel() == lw.numel() and bool((finite == finite[0]).all()):
        return None
    return torch.softmax(lw, dim=0)


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


#: Columns summarized by median [min, max] over seeds.
SUMMARY_COLUMNS = (
    "energy_distance",
    "weighted_energy_distance",
    "floor",
    "log_Z_error",
    "log_Z",
    "weight_ess",
    "pareto_k",
    "modes_covered",
    "mode_weight_error",
    "target_evals",
    "grad_evals",
    "wall_time",
    "peak_memory_mb",
)


@attrs.define
class Report:
    """All runs of a suite, with medians over seeds, and writers for JSON, markdown and plots."""

    budget: Budget
    records: list[RunRecord]
    machine: str
    command: str
    results: dict[tuple[str, str], sampler.Result] = attrs.field(factory=dict, repr=False)

    def summary(self) -> list[dict[str, Any]]:
        """One row per (method, target): median, min and max over seeds of each column."""
        rows = []
        keys = sorted({(r.method, r.target) for r in self.records}, key=lambda k: (_target_order(k[1]), k[0]))
        for method, target in keys:
            runs = [r for r in self.records if r.method == method and r.target == target]
            row: dict[str, Any] = {
                "method": method,
                "target": target,
                "seeds": len(runs),
                "n_particles": runs[0].n_particles,
            }
            for col in SUMMARY_COLUMNS:
                vals = [getattr(r, col) for r in runs if getattr(r, col) is not None and not _isnan(getattr(r, col))]
                if vals:
                    row[col] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
            row["n_modes"] = runs[0].n_modes
            row["failures"] = [r.error for r in runs if r.error]
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-serializable."""
        return {
            "date": date.today().isoformat(),
            "machine": self.machine,
            "command": self.command,
            "budget": attrs.asdict(self.budget),
            "summary": self.summary(),
            "runs": [attrs.asdict(r) for r in self.records],
        }

    def markdown(self) -> str:
        """The results table (median [min, max] over seeds), with how it was made."""
        lines = [
            f"Command: `{self.command}`  ",
            f"Date: {date.today().isoformat()}; machine: {self.machine}; "
            f"budget `{self.budget.name}`: {self.budget.description}.",
            "",
            "Energy distance: sliced (docs/benchmarks.md convention, "
            f"{self.budget.n_directions} directions), N samples vs N exact samples; "
            "floor = exact vs exact at the same N. "
            "Median [min, max] over seeds. Each run is one replica of N particles (MCMC methods: one chain of N draws "
            "after warm-up). Where the exact log Z is unknown the table shows the estimate (est.). "
            "Peak memory: on CPU the process's peak resident set during the sampling run "
            "(interpreter and torch included), "
            "on CUDA the peak allocated device memory. "
            "Energy distance scores the returned samples as equally weighted points; "
            "weighted ED scores the weighted set a result with unequal weights represents "
            "(— when the weights are equal or absent).",
            "",
            "| target | method | N | energy distance | weighted ED | floor | abs. log Z error | modes covered "
            "| mode weight err. | weight ESS | grad evals | target evals | wall time (s) | peak memory (MB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.summary():
            modes = _fmt_cell(row, "modes_covered", "{:.0f}")
            if row.get("n_modes") and modes != "—":
                modes += f" / {row['n_modes']}"
            lines.append(
                "| "
                + " | ".join(
                    [
                        row["target"],
                        row["method"],
                        str(row["n_particles"]),
                        _fmt_cell(row, "energy_distance"),
                        _fmt_cell(row, "weighted_energy_distance"),
                        _fmt_cell(row, "floor", spread=False),
                        _log_z_cell(row),
                        modes,
                        _fmt_cell(row, "mode_weight_error"),
                        _fmt_cell(row, "weight_ess", "{:.2f}", spread=False),
                        _fmt_cell(row, "grad_evals", "{:.2g}", spread=False),
                        _fmt_cell(row, "target_evals", "{:.2g}", spread=False),
                        _fmt_cell(row, "wall_time", "{:.2f}", spread=False),
                        _fmt_cell(row, "peak_memory_mb", "{:.0f}", spread=False),
                    ]
                )
                + " |"
            )
            if row["failures"]:
                lines.append(f"|  | ↳ {len(row['failures'])} failed run(s): {row['failures'][0][:120]} |" + " |" * 11)
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path, plots: bool = True) -> Path:
        """Write ``results.json``, ``results.md`` and (optionally) ``plots/*.png`` under ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(self.to_json(), indent=2, default=_json_default))
        (out / "results.md").write_text(self.markdown())
        if plots and self.results:
            from sampler_benchmarks.plots import plot_result

            (out / "plots").mkdir(exist_ok=True)
            for (method, target), res in self.results.items():
                plot_result(res, sampler.get_target(target), out / "plots" / f"{target}_{method}.png")
        return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return str(obj)


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _fmt_cell(row: Mapping[str, Any], col: str, fmt: str = "{:.2e}", spread: bool = True) -> str:
    cell = row.get(col)
    if cell is None:
        return "—"
    text = fmt.format(cell["median"])
    if spread and cell["min"] != cell["max"]:
        text += " [" + fmt.format(cell["min"]) + ", " + fmt.format(cell["max"]) + "]"
    return text


def _log_z_cell(row: Mapping[str, Any]) -> str:
    """The log Z error, or the estimate itself (marked ``est.``) where the exact value is unknown."""
    if row.get("log_Z_error") is None and row.get("log_Z") is not None:
        return "est. " + _fmt_cell(row, "log_Z", "{:.2f}")
    return _fmt_cell(row, "log_Z_error")


def _target_order(name: str) -> int:
    return DEFAULT_TARGETS.index(name) if name in DEFAULT_TARGETS else len(DEFAULT_TARGETS)


def machine_description(device: str | None = None) -> str:
    """Where the suite ran: CPU/GPU, threads, torch version."""
    dev = torch.device(device) if device else torch.device("cpu")
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.machine()} CPU"
    return (
        f"{where}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def run_suite(
    methods: Sequence[str],
    targets: Sequence[str] = DEFAULT_TARGETS,
    seeds: int | Iterable[int] | None = None,
    budget: str | Budget = "cpu",
    options: Mapping[str, Any] | None = None,
    device: str | None = None,
    keep_results: bool = True,
    progress: Callable[[str], None] | None = None,
    command: str = "",
) -> Report:
    """Run every method on every target for every seed; return a :class:`Report`.

    ``options`` apply to every method (on top of the budget's per-method options). The first
    seed's result of each (method, target) is kept for plots when ``keep_results``.
    """
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ConfigurationError(f"unknown budget {budget!r}; choose from {', '.join(BUDGETS)}")
        budget = BUDGETS[budget]
    bud = budget
    if seeds is None:
        seed_list = list(range(bud.seeds))
    elif isinstance(seeds, int):
        seed_list = list(range(seeds))
    else:
        seed_list = list(seeds)
    for name in targets:
        sampler.get_target(name)  # fail early on unknown names
    for name in methods:
        sampler.method(name)
    report = Report(budget=bud, records=[], machine=machine_description(device), command=command)
    floors: dict[tuple[str, int], float] = {}
    for target in targets:
        for method in methods:
            for seed in seed_list:
                start = time.perf_counter()
                record, res = run_one(method, target, seed, bud, options, device, floors)
                report.records.append(record)
                if keep_results and res is not None and (method, target) not in report.results:
                    report.results[(method, target)] = res
                if progress is not None:
                    ed = "n/a" if record.energy_distance is None else f"{record.energy_distance:.3g}"
                    if record.weighted_energy_distance is not None:
                        ed += f" (weighted {record.weighted_energy_distance:.3g})"
                    progress(
                        f"{target:<11} {method:<6} seed {seed}: energy distance {ed}, "
                        f"{time.perf_counter() - start:.1f} s"
                    )
    return report
