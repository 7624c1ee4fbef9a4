"""Figures of the ``snf`` issue: double-well mode weights (flow alone vs SNF vs smc) and the
benchmark targets against ``smc``.

    python -m sampler_benchmarks.snf_bench [--seeds 3] [--iterations 300] [--targets ...] [--out results/snf]

Each run is ``sampler_benchmarks.run_one`` (one replica of N = 2000 particles at the ``cpu``
budget, scored against N exact samples); ``smc`` runs with the budget's options. For the double
well it also reports, per seed, the fraction of mass in the deeper well ``x1 > 0`` of the
resampled (importance-corrected) samples and of the raw, unweighted flow outputs, against the
exact 0.8443 (mode-weight error = ``2 (fraction - 0.8443)^2``, the two-mode "mode MSE"), and the
Kish ESS of the importance weights. Variants:

* ``flow``: the same coupling blocks, no stochastic layers (a plain RealNVP of the same size);
* ``snf``: the default SNF (couplings + 1 Langevin + 2 MALA steps per stage);
* ``*-ml``: trained with the mix of reverse KL and maximum likelihood on 2000 exact samples (the
  Wu et al. protocol; it is given exact samples, so it is not a fair comparison with ``smc``).

Medians over seeds. Prints markdown tables and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import sampler
from sampler_benchmarks.harness import BUDGETS, machine_description, run_one

VARIANTS = {
    "flow": dict(langevin_steps=0, mh_steps=0),
    "snf": {},
    "flow-ml": dict(langevin_steps=0, mh_steps=0, loss="mix", train_samples="exact"),
    "snf-ml": dict(loss="mix", train_samples="exact"),
}


def _median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def double_well(seeds: list[int], iterations: int) -> list[dict]:
    """Mode weights and ESS on ``double-well`` for the variants and ``smc``."""
    target = sampler.get_target("double-well")
    p = target.positive_mode_weight()
    budget = BUDGETS["cpu"]
    rows = []
    runs = [(name, "snf", {**opts, "iterations": iterations}) for name, opts in VARIANTS.items()] + [("smc", "smc", {})]
    for label, method, opts in runs:
        recs = []
        for seed in seeds:
            rec, res = run_one(method, "double-well", seed, budget, opts)
            if res is None:
                continue
            resampled = float((res.samples[0, :, 0] > 0).double().mean())
            raw = float((res.weighted_samples[0, :, 0] > 0).double().mean()) if method == "snf" else None
            recs.append(
                dict(
                    seed=seed,
                    fraction=resampled,
                    raw_fraction=raw,
                    mode_weight_error=2 * (resampled - p) ** 2,
                    raw_mode_weight_error=None if raw is None else 2 * (raw - p) ** 2,
                    ess=rec.weight_ess,
                    log_Z_error=rec.log_Z_error,
                    energy_distance=rec.energy_distance,
                    grad_evals=rec.grad_evals,
                    wall_time=rec.wall_time,
                )
            )
            print(f"double-well {label} seed {seed}: {recs[-1]}", flush=True)
        row = {"variant": label, "exact_fraction": p}
        for key in (
            "fraction",
            "raw_fraction",
            "mode_weight_error",
            "raw_mode_weight_error",
            "ess",
            "log_Z_error",
            "energy_distance",
            "grad_evals",
            "wall_time",
        ):
            row[key] = _median(r[key] for r in recs)
        row["runs"] = recs
        rows.append(row)
    return rows


def suite(targets: list[str], seeds: list[int], iterations: int) -> list[dict]:
    """``snf`` (reverse KL, no samples) and ``smc`` on the benchmark targets."""
    budget = BUDGETS["cpu"]
    rows = []
    for target in targets:
        for method, opts in (("snf", {"iterations": iterations}), ("smc", {})):
            recs = []
            for seed in seeds:
                rec, _ = run_one(method, target, seed, budget, opts)
                recs.append(rec)
                print(
                    f"{target} {method} seed {seed}: ed={rec.energy_distance} logZerr={rec.log_Z_error} "
                    f"ess={rec.weight_ess} grad={rec.grad_evals} t={rec.wall_time:.1f}s err={rec.error}",
                    flush=True,
                )
            row = {"target": target, "method": method}
            for key in (
                "energy_distance",
                "floor",
                "log_Z_error",
                "weight_ess",
                "mode_weight_error",
                "grad_evals",
                "target_evals",
                "wall_time",
            ):
                row[key] = _median(getattr(r, key) for r in recs)
            row["failures"] = [r.error for r in recs if r.error]
            rows.append(row)
    return rows


def _fmt(v, spec=".3g"):
    return "—" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=300, help="SNF training iterations")
    ap.add_argument("--targets", default="8modes,mustache,gmm10-10,gmm40,manywell")
    ap.add_argument("--skip-double-well", action="store_true")
    ap.add_argument("--out", default="results/snf")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    start = time.perf_counter()
    out: dict = {
        "machine": machine_description(),
        "seeds": seeds,
        "iterations": args.iterations,
        "budget": "cpu (N = 2000)",
    }
    if not args.skip_double_well:
        out["double_well"] = double_well(seeds, args.iterations)
    targets = [t for t in args.targets.split(",") if t]
    out["suite"] = suite(targets, seeds, args.iterations) if targets else []
    out["wall_time"] = time.perf_counter() - start
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "snf_bench.json").write_text(json.dumps(out, indent=2, default=str))
    print(f"\n{out['machine']}; medians over seeds {seeds}; N = 2000; SNF training iterations {args.iterations}\n")
    if "double_well" in out:
        print(
            "| double-well | mass x1>0 (resampled) | raw flow output | mode-weight err. | raw mode-weight err. "
            "| weight ESS | abs. log Z err. | grad evals | wall (s) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in out["double_well"]:
            print(
                f"| {r['variant']} | {_fmt(r['fraction'], '.4f')} | {_fmt(r['raw_fraction'], '.4f')} "
                f"| {_fmt(r['mode_weight_error'])} | {_fmt(r['raw_mode_weight_error'])} | {_fmt(r['ess'], '.2f')} "
                f"| {_fmt(r['log_Z_error'])} | {_fmt(r['grad_evals'], '.2g')} | {_fmt(r['wall_time'], '.1f')} |"
            )
        print(f"(exact mass of x1 > 0: {out['double_well'][0]['exact_fraction']:.4f})\n")
    if out["suite"]:
        print(
            "| target | method | energy distance | floor | abs. log Z err. | weight ESS | mode-weight err. "
            "| grad evals | wall (s) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in out["suite"]:
            print(
                f"| {r['target']} | {r['method']} | {_fmt(r['energy_distance'])} | {_fmt(r['floor'])} "
                f"| {_fmt(r['log_Z_error'])} | {_fmt(r['weight_ess'], '.2f')} | {_fmt(r['mode_weight_error'])} "
                f"| {_fmt(r['grad_evals'], '.2g')} | {_fmt(r['wall_time'], '.1f')} |"
            )
    print(f"\ntotal wall time {out['wall_time']:.0f} s")


if __name__ == "__main__":
    main()
