"""Figures of the mmd_flow issue: sorting gradients, direction schemes, fast sums, deweighting.

Run ``python -m sampler_benchmarks.mmd_flow_figures [--quick] [--out DIR] [--only NAME ...]``.
Writes ``mmd_flow_figures.json`` and plots under ``DIR`` (default ``results/mmd_flow``). Timings
are medians of repeated runs on this machine (``torch.get_num_threads()`` threads, stated in the
output). Figures:

* ``scaling``: time of the sliced energy-distance gradient for N = M from 10^4 to 10^6 in
  d = 50 with P = 256 directions (chunked over directions: memory O((N + M) chunk)), the fitted
  exponent of time vs N, and the peak resident memory of each size.
* ``error_vs_P``: at N = M = 20,000 in d = 50 (``--quick``: 4,000), relative error of the
  sliced gradient against the exact O(N^2) one as a function of P for iid, orthogonal and QMC
  directions (median over seeds), the sqrt(d / P) reference line, and the speed-up over the
  exact computation.
* ``kernel_sum``: fast negative-distance kernel sums vs brute force: relative error
  ``sum |fast - exact| / sum |exact|`` and time, as a function of P.
* ``deweight``: ``mmd-deweight`` vs systematic resampling of the final weighted particles of
  ``smc`` on ``gmm40`` and ``8modes`` (N = 2000): energy distance to exact samples and number of
  unique particles (median over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import sampler
from sampler import metrics
from sampler_benchmarks.harness import machine_description
from sampler_plugins.mmd_flow import (
    deweight,
    energy_kernel_sum,
    exact_energy_kernel_sum,
    exact_witness_gradient,
    sliced_witness_gradient,
)
from sampler_plugins.mmd_flow.directions import draw_directions


def _median_time(fn, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scaling(quick: bool) -> dict[str, Any]:
    """Gradient time vs N (= M), d = 50, P = 256."""
    sizes = [10_000, 30_000, 100_000] if quick else [10_000, 30_000, 100_000, 300_000, 1_000_000]
    d, p = 50, 256
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in sizes:
        x = torch.randn(n, d, generator=gen)
        y = torch.randn(n, d, generator=gen) + 0.1
        dirs = draw_directions(p, d, "iid", gen)
        t, _ = _median_time(
            lambda x=x, y=y, dirs=dirs: sliced_witness_gradient(x, y, directions=dirs), 1 if n >= 300_000 else 3
        )
        rows.append({"n": n, "seconds": t, "peak_rss_mb": _peak_rss_mb()})
        print(f"scaling: N = M = {n:>9,}  d = {d}  P = {p}: {t:.2f} s", flush=True)
    ln = torch.log(torch.tensor([r["n"] for r in rows], dtype=torch.float64))
    lt = torch.log(torch.tensor([r["seconds"] for r in rows], dtype=torch.float64))
    slope = float(((ln - ln.mean()) * (lt - lt.mean())).sum() / ((ln - ln.mean()) ** 2).sum())
    print(f"scaling: fitted exponent of time vs N: {slope:.2f}", flush=True)
    return {"d": d, "P": p, "dtype": "float32", "rows": rows, "exponent": slope}


def error_vs_P(quick: bool) -> dict[str, Any]:
    """Relative gradient error vs P for each direction scheme, and the speed-up over exact."""
    n = 4_000 if quick else 20_000
    d = 50
    seeds = 3 if quick else 5
    ps = [16, 64, 256, 1024] if quick else [16, 64, 256, 1024, 4096]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, dtype=torch.float64, generator=gen)
    y = 1.2 * torch.randn(n, d, dtype=torch.float64, generator=gen) + 0.2
    t_exact, exact = _median_time(lambda: exact_witness_gradient(x, y, chunk=512), 1)
    print(f"error_vs_P: exact O(N^2) gradient at N = M = {n}: {t_exact:.1f} s", flush=True)
    out: dict[str, Any] = {"n": n, "d": d, "exact_seconds": t_exact, "schemes": {}}
    for scheme in ("iid", "orthogonal", "qmc"):
        rows = []
        for p in ps:
            errs, times = [], []
            for s in range(seeds):
                g = torch.Generator().manual_seed(100 + s)
                t = time.perf_counter()
                got = sliced_witness_gradient(x, y, n_directions=p, scheme=scheme, generator=g)[0]
                times.append(time.perf_counter() - t)
                errs.append(float((got - exact).norm() / exact.norm()))
            rows.append(
                {
                    "P": p,
                    "rel_error": statistics.median(errs),
                    "seconds": statistics.median(times),
                    "speedup": t_exact / statistics.median(times),
                }
            )
            print(
                f"error_vs_P: {scheme:<10} P = {p:>5}: rel. error {rows[-1]['rel_error']:.3f}, "
                f"{rows[-1]['seconds']:.2f} s, speed-up {rows[-1]['speedup']:.0f}x",
                flush=True,
            )
        out["schemes"][scheme] = rows
    return out


def kernel_sum(quick: bool) -> dict[str, Any]:
    """Fast kernel sums vs brute force."""
    n = 5_000 if quick else 20_000
    d = 50
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(n, d, dtype=torch.float64, generator=gen)
    y = torch.randn(n, d, dtype=torch.float64, generator=gen)
    w = torch.rand(n, dtype=torch.float64, generator=gen)
    t_exact, exact = _median_time(lambda: exact_energy_kernel_sum(x, y, w), 1)
    rows = []
    for scheme in ("iid", "qmc"):
        for p in (16, 64, 256, 1024):
            g = torch.Generator().manual_seed(3)
            t, fast = _median_time(
                lambda p=p, scheme=scheme, g=g: energy_kernel_sum(x, y, w, n_directions=p, scheme=scheme, generator=g),
                3,
            )
            err = float((fast - exact).abs().sum() / exact.abs().sum())
            rows.append({"scheme": scheme, "P": p, "rel_error": err, "seconds": t, "speedup": t_exact / t})
            print(
                f"kernel_sum: {scheme:<4} P = {p:>5}: rel. error {err:.2e}, {t:.3f} s (exact {t_exact:.2f} s)",
                flush=True,
            )
    return {"n": n, "m": n, "d": d, "exact_seconds": t_exact, "rows": rows}


def deweight_vs_resampling(quick: bool) -> dict[str, Any]:
    """mmd-deweight vs systematic resampling of smc's final weighted particles."""
    seeds = 2 if quick else 5
    n = 2000
    out: dict[str, Any] = {"n": n, "targets": {}}
    for name in ("gmm40", "8modes"):
        target = sampler.get_target(name)
        rows = []
        for seed in range(seeds):
            res = sampler.sample(target, "smc", n_particles=n, n_replicas=1, seed=seed, progress=False, n_steps=10)
            x, lw = res.weighted_samples[0].to(torch.float64), res.log_weights[0]
            g = torch.Generator().manual_seed(10_000 + seed)
            exact = target.sample(n, g).to(torch.float64)
            idx = sampler.core.resampling.get_scheme("systematic")(lw[None], g)[0]
            t = time.perf_counter()
            dw = deweight(x, lw, generator=g).x[0]
            t_dw = time.perf_counter() - t
            ed = lambda z, w=None, exact=exact, seed=seed: metrics.sliced_energy_distance(
                z, exact, generator=torch.Generator().manual_seed(seed), weights=w
            )  # noqa: E731
            rows.append(
                {
                    "seed": seed,
                    "weight_ess": float(metrics.kish_ess(lw)),
                    "ed_weighted": ed(x, torch.softmax(lw, 0)),
                    "ed_systematic": ed(x[idx]),
                    "ed_deweight": ed(dw),
                    "unique_systematic": int(torch.unique(idx).numel()),
                    "unique_deweight": int(torch.unique(dw, dim=0).shape[0]),
                    "ed_smc_samples": ed(res.samples[0].to(torch.float64)),
                    "deweight_seconds": t_dw,
                }
            )
            print(
                f"deweight: {name} seed {seed}: "
                + ", ".join(f"{k} {v:.3g}" for k, v in rows[-1].items() if k != "seed"),
                flush=True,
            )
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "seed"}
        floor = metrics.exact_floor(target, n, torch.Generator().manual_seed(7))
        out["targets"][name] = {"runs": rows, "median": med, "floor": floor}
        print(
            f"deweight: {name} median: " + ", ".join(f"{k} {v:.3g}" for k, v in med.items()) + f"; floor {floor:.3g}",
            flush=True,
        )
    return out


FIGURES = {"scaling": scaling, "error_vs_P": error_vs_P, "kernel_sum": kernel_sum, "deweight": deweight_vs_resampling}


def plot(results: dict[str, Any], out: Path) -> None:
    """Log-log plots of the scaling and of the gradient error vs P."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "error_vs_P" in results:
        r = results["error_vs_P"]
        fig, ax = plt.subplots(figsize=(5, 4))
        for scheme, rows in r["schemes"].items():
            ax.loglog([q["P"] for q in rows], [q["rel_error"] for q in rows], "o-", label=scheme)
        ps = [q["P"] for q in next(iter(r["schemes"].values()))]
        ax.loglog(ps, [math.sqrt(r["d"] / p) * 0.5 for p in ps], "k--", label="0.5 sqrt(d/P)")
        ax.set(xlabel="directions P", ylabel="relative gradient error", title=f"N = M = {r['n']}, d = {r['d']}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "gradient_error_vs_P.png", dpi=120)
        plt.close(fig)
    if "scaling" in results:
        r = results["scaling"]
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.loglog(
            [q["n"] for q in r["rows"]], [q["seconds"] for q in r["rows"]], "o-", label=f"slope {r['exponent']:.2f}"
        )
        ax.set(xlabel="N = M", ylabel="seconds", title=f"sliced gradient, d = {r['d']}, P = {r['P']}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "gradient_scaling.png", dpi=120)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (minutes instead of tens of minutes)")
    ap.add_argument("--out", default="results/mmd_flow")
    ap.add_argument("--only", nargs="*", choices=sorted(FIGURES), help="figures to run (default all)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine_description(), "quick": args.quick}
    print(f"machine: {results['machine']}", flush=True)
    for name in args.only or list(FIGURES):
        results[name] = FIGURES[name](args.quick)
        (out / "mmd_flow_figures.json").write_text(json.dumps(results, indent=2))
    plot(results, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
