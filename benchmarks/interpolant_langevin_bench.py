"""Accuracy/cost sweeps of ``interpolant-langevin`` (issue 5): the initialization time T0 and the
inner-chain budget (chains x sweeps per velocity estimate).

Run: ``python -m sampler_benchmarks.interpolant_langevin_bench [--targets 8modes,gmm40] [--seeds 2]
[--particles 1000] [--out docs/figures/interpolant_langevin]``

Each point is one ``sampler_benchmarks.run_one`` run (one replica of N particles, cpu budget
conventions: sliced energy distance with 1000 directions against N exact samples, beside the
exact-vs-exact floor); medians over seeds. Writes ``sweep.json`` and ``sweep.png`` (energy
distance against gradient evaluations per sample, one curve per sweep and target).
The method-versus-``smc`` table comes from ``sampler bench`` (see docs/interpolant_langevin.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from sampler_benchmarks.harness import BUDGETS, machine_description, run_one

T0S = (0.1, 0.3, 0.5, 0.7, 0.9)
#: (chains, sweeps) per velocity estimate.
INNER = ((2, 1), (4, 2), (8, 4), (16, 4), (32, 8))


def sweep(targets: list[str], seeds: int, n: int) -> list[dict]:
    """Run both sweeps; one row per (target, sweep, setting) with medians over seeds."""
    budget = BUDGETS["cpu"]
    budget = type(budget)(name="il-sweep", n_particles=n, n_directions=1000, seeds=seeds)
    settings = [("t0", {"t0": t0}) for t0 in T0S] + [("inner", {"n_chains": m, "inner_steps": k}) for m, k in INNER]
    rows = []
    floors: dict = {}
    for target in targets:
        for kind, opts in settings:
            recs = [
                run_one("interpolant-langevin", target, seed, budget, opts, floor_cache=floors)[0]
                for seed in range(seeds)
            ]
            ok = [r for r in recs if r.error is None]
            if not ok:
                row = dict(target=target, sweep=kind, options=opts, seeds=0, error=recs[0].error)
                print(json.dumps(row), flush=True)
                rows.append(row)
                continue
            row = dict(
                target=target,
                sweep=kind,
                options=opts,
                seeds=len(ok),
                energy_distance=statistics.median(r.energy_distance for r in ok),
                floor=ok[0].floor,
                grad_evals_per_sample=statistics.median(r.grad_evals for r in ok) / n,
                wall_time=statistics.median(r.wall_time for r in ok),
                mode_weight_error=statistics.median(r.mode_weight_error for r in ok)
                if ok[0].mode_weight_error is not None
                else None,
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Energy distance against gradient evaluations per sample, per target and sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted({r["target"] for r in rows})
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for kind, marker in (("t0", "o"), ("inner", "s")):
            pts = [r for r in rows if r["target"] == target and r["sweep"] == kind and r["seeds"] > 0]
            xs = [r["grad_evals_per_sample"] for r in pts]
            ys = [r["energy_distance"] for r in pts]
            ax.plot(xs, ys, marker=marker, label="T0 sweep" if kind == "t0" else "inner budget sweep")
            for r, x, y in zip(pts, xs, ys):
                lab = (
                    f"T0={r['options']['t0']}"
                    if kind == "t0"
                    else f"{r['options']['n_chains']}x{r['options']['inner_steps']}"
                )
                ax.annotate(lab, (x, y), fontsize=7)
        floor = next(r["floor"] for r in rows if r["target"] == target and r["seeds"] > 0)
        ax.axhline(floor, color="gray", ls="--", label="exact-vs-exact floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gradient evaluations per sample")
        ax.set_ylabel("energy distance")
        ax.set_title(target)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="8modes,gmm40")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--out", default="docs/figures/interpolant_langevin")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = sweep(args.targets.split(","), args.seeds, args.particles)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(machine=machine_description(), particles=args.particles, seeds=args.seeds, rows=rows)
    (out / "sweep.json").write_text(json.dumps(meta, indent=1))
    plot(rows, out / "sweep.png")
    print("wrote", out / "sweep.json", out / "sweep.png")


if __name__ == "__main__":
    main()
