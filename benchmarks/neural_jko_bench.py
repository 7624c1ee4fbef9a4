"""Figures of the ``neural-jko`` issue: energy distance and log Z error of importance-corrected
neural JKO sampling at a budget, beside the published ICNJ figures and our ``smc``.

Run::

    python -m sampler_benchmarks.neural_jko_bench                       # cpu preset, 3 seeds
    python -m sampler_benchmarks.neural_jko_bench --targets mustache,8modes --seeds 5
    python -m sampler_benchmarks.neural_jko_bench --preset paper --device cuda --particles 50000

Each run trains a model (seeded) and draws ``--particles`` samples (the energy distance compares
them with as many exact samples; the published tables use 50,000 vs 50,000). The table gives the
energy distance of the weighted result (the model draws with their importance weights, what
``Result`` represents) and of the raw, unweighted model draws. ``smc`` runs at the
harness's ``cpu`` budget (N = 2000) unless ``--no-smc``. Writes ``results.json`` and
``results.md`` under ``--out`` (default ``results/neural_jko``) and prints the table with the
published figures of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from sampler_benchmarks.harness import BUDGETS, Budget, machine_description, run_suite

#: Published ICNJ energy distances and ELBO log Z errors (docs/neural_jko.md).
PUBLISHED = {
    "mustache": (2.9e-3, 7.3e-3),
    "8modes": (1.2e-5, 5e-6),
    "8peaky": (3.4e-5, 2.1e-3),
    "funnel": (1.4e-2, 7.1e-3),
    "gmm10-10": (5.3e-5, 3.5e-3),
    "gmm10-20": (1.1e-4, 6.4e-3),
    "gmm10-50": (1.0e-4, 1.1e-2),
    "gmm10-100": (6.0e-4, 3.9e-2),
    "gmm10-200": (3.3e-3, 5.6e-2),
}

DEFAULT = ("mustache", "8modes", "8peaky", "gmm40", "funnel")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(
        prog="python -m sampler_benchmarks.neural_jko_bench", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--targets", default=",".join(DEFAULT))
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds")
    ap.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed, ..., first-seed + seeds - 1")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument(
        "--particles", type=int, default=2000, help="samples per run (and exact samples for the energy distance)"
    )
    ap.add_argument("--directions", type=int, default=1000)
    ap.add_argument("--option", "-o", action="append", default=[], help="KEY=VALUE neural-jko option (python literal)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-smc", action="store_true")
    ap.add_argument("--out", default="results/neural_jko")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import ast

    options: dict = {"preset": args.preset}
    for item in args.option:
        key, _, value = item.partition("=")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    targets = [t for t in args.targets.split(",") if t]
    budget = Budget(
        name=f"neural-jko-{args.preset}",
        n_particles=args.particles,
        n_directions=args.directions,
        seeds=args.seeds,
        method_options={"neural-jko": options},
        description=(
            f"neural-jko preset {args.preset!r}, N = {args.particles} samples vs {args.particles} exact, "
            f"{args.seeds} seeds"
        ),
    )
    command = "python -m sampler_benchmarks.neural_jko_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    report = run_suite(
        ["neural-jko"],
        targets,
        seeds=seeds,
        budget=budget,
        device=args.device,
        keep_results=False,
        progress=print,
        command=command,
    )
    if not args.no_smc:
        smc = run_suite(
            ["smc"],
            targets,
            seeds=seeds,
            budget=BUDGETS["cpu"],
            device=args.device,
            keep_results=False,
            progress=print,
            command=command,
        )
        report.records.extend(smc.records)
    out = report.write(args.out, plots=False)
    print(report.markdown())
    print(
        "| target | ICNJ published ED | ours: weighted ED (the result) | ours: ED of the raw model draws | floor "
        "| published log Z err. (ELBO) | ours: IS log Z err. | weight ESS |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in report.summary():
        if row["method"] != "neural-jko":
            continue
        pub = PUBLISHED.get(row["target"], (None, None))
        fmt = lambda v: "—" if v is None else f"{v:.2e}"  # noqa: E731
        med = lambda col, row=row: row[col]["median"] if col in row else None  # noqa: E731
        cells = [
            fmt(pub[0]),
            fmt(med("weighted_energy_distance")),
            fmt(med("energy_distance")),
            fmt(med("floor")),
            fmt(pub[1]),
            fmt(med("log_Z_error")),
            "—" if med("weight_ess") is None else f"{med('weight_ess'):.2f}",
        ]
        print(f"| {row['target']} | " + " | ".join(cells) + " |")
    print(f"\n{machine_description(args.device)}; total {time.perf_counter() - start:.0f} s; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
