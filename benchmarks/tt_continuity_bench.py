"""Figures of the ``tt_continuity`` issue: does the TT flow reduce the MCMC work SMC needs?

Run: ``python -m sampler_benchmarks.tt_continuity_bench [--targets double-well,manywell] [--seeds 3]
[--particles 2000] [--steps 1,2,5,10] [--scaling] [--out docs/figures/tt_continuity.json]``

1. Accuracy versus cost: on each target, ``smc`` (adaptive tempered SMC, MALA, resampling) and
   ``tt-smc`` (the same pipeline plus the TT flow at the start of each stage) with ``n_steps`` MALA
   sweeps per stage for each value of ``--steps`` (``tt-smc`` also with 0). One replica of N
   particles per seed; energy distance of the N samples to N exact samples (sliced, 1000
   directions, docs/benchmarks.md convention) beside the exact-vs-exact floor, |log Z error|, gradient
   evaluations (the flow's included: one per particle and stage), stages and wall time; medians
   [min, max] over seeds, and the curve of error against gradient evaluations (``--out`` with
   ``.png``).
2. ``--scaling``: ``manywell`` with 4, 8, 16 wells (d = 8, 16, 32) at the default settings, to show
   how the cost (wall time, gradient evaluations) and accuracy grow with d.

Everything is written to ``--out`` (JSON, with the command and machine) and printed as markdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import sampler
from sampler import metrics
from sampler.targets.manywell import ManyWell

DEFAULT_TARGETS = ("double-well", "8modes", "mustache", "gmm40", "manywell")


def _target(name: str):
    if name.startswith("manywell-"):
        return ManyWell(n_wells=int(name.split("-")[1]))
    return sampler.get_target(name)


def run_once(target_name: str, method: str, seed: int, n: int, n_directions: int = 1000, **options) -> dict:
    """One run of one method (one replica of ``n`` particles), scored against exact samples."""
    target = _target(target_name)
    start = time.perf_counter()
    res = sampler.sample(target, method=method, n_particles=n, n_replicas=1, seed=seed, progress=False, **options)
    wall = time.perf_counter() - start
    x = res.samples[0].to(torch.float64)
    gen = torch.Generator().manual_seed(1_000_003 * seed + 17)
    exact = target.sample(n, gen, dtype=torch.float64)
    ed = metrics.sliced_energy_distance(x, exact, n_directions=n_directions, generator=gen)
    row = dict(
        target=target_name,
        method=method,
        seed=seed,
        n_particles=n,
        options={k: v for k, v in options.items()},
        energy_distance=ed,
        log_Z_error=abs(res.log_Z - target.log_Z),
        grad_evals=res.n_grad_evals,
        stages=len(res.steps),
        wall_time=wall,
    )
    st = res.stats
    if "tt_residual" in st:
        row.update(
            tt_residual_median=float(st["tt_residual"].nanmedian()),
            flow_share_median=float(st["flow_share"].nanmedian()),
            flow_scale_median=float(st["flow_scale"].nanmedian()),
            tt_rank_max=float(st["tt_rank"].nan_to_num(0).max()),
            tt_seconds=float(st["tt_seconds"].nansum()),
        )
    return row


def summarize(rows: list[dict]) -> list[dict]:
    """Median [min, max] over seeds per (target, method, n_steps)."""
    keys = sorted({(r["target"], r["method"], r["options"].get("n_steps")) for r in rows}, key=str)
    out = []
    for target, method, steps in keys:
        group = [r for r in rows if (r["target"], r["method"], r["options"].get("n_steps")) == (target, method, steps)]
        row = dict(target=target, method=method, n_steps=steps, seeds=len(group))
        for col in (
            "energy_distance",
            "log_Z_error",
            "grad_evals",
            "stages",
            "wall_time",
            "tt_residual_median",
            "flow_share_median",
            "flow_scale_median",
            "tt_rank_max",
            "tt_seconds",
        ):
            vals = [r[col] for r in group if r.get(col) is not None]
            if vals:
                row[col] = dict(median=statistics.median(vals), min=min(vals), max=max(vals))
        out.append(row)
    return out


def markdown(summary: list[dict], floors: dict[str, float]) -> str:
    lines = [
        "| target | method | MALA sweeps / stage | energy distance [floor] | abs. log Z error | grad evals | stages "
        "| wall time (s) | TT residual | flow share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(row, col, fmt="{:.2e}"):
        c = row.get(col)
        if c is None:
            return "—"
        txt = fmt.format(c["median"])
        return txt + (
            f" [{fmt.format(c['min'])}, {fmt.format(c['max'])}]"
            if c["min"] != c["max"] and col in ("energy_distance", "log_Z_error")
            else ""
        )

    for row in summary:
        lines.append(
            f"| {row['target']} | {row['method']} | {row['n_steps']} | {cell(row, 'energy_distance')} "
            f"[{floors.get(row['target'], float('nan')):.1e}] | "
            f"{cell(row, 'log_Z_error')} | {cell(row, 'grad_evals', '{:.2g}')} | {cell(row, 'stages', '{:.0f}')} "
            f"| {cell(row, 'wall_time', '{:.1f}')} | "
            f"{cell(row, 'tt_residual_median', '{:.2f}')} | {cell(row, 'flow_share_median', '{:.2f}')} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], floors: dict[str, float], file: Path) -> None:
    """The curve the issue asks for: error against gradient evaluations, ``smc`` vs ``tt-smc``.

    One column per target; energy distance (top, with the exact-vs-exact floor) and |log Z
    error| (bottom) against gradient evaluations, medians over seeds, each point labelled with
    its MALA sweeps per stage.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    targets = list(dict.fromkeys(r["target"] for r in summary))
    fig, axes = plt.subplots(2, len(targets), figsize=(3.4 * len(targets), 6.2), squeeze=False)
    for j, target in enumerate(targets):
        for method, style in (("smc", "o-"), ("tt-smc", "s--")):
            rows = sorted(
                (r for r in summary if r["target"] == target and r["method"] == method),
                key=lambda r: r["grad_evals"]["median"],
            )
            if not rows:
                continue
            g = [r["grad_evals"]["median"] for r in rows]
            for i, col in enumerate(("energy_distance", "log_Z_error")):
                ax = axes[i, j]
                y = [r[col]["median"] for r in rows]
                ax.plot(g, y, style, label=method, ms=4)
                for gi, yi, r in zip(g, y, rows):
                    ax.annotate(str(r["n_steps"]), (gi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
        if target in floors:
            axes[0, j].axhline(floors[target], color="grey", lw=0.8, ls=":", label="exact-vs-exact floor")
        axes[0, j].set_title(target)
        for i, label in enumerate(("energy distance", "|log Z error|")):
            ax = axes[i, j]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(alpha=0.3, which="both")
            ax.set_xlabel("gradient evaluations")
            if j == 0:
                ax.set_ylabel(label)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        "tt-smc vs smc: accuracy against gradient evaluations (medians over seeds; labels: MALA sweeps per stage)"
    )
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--steps", default="1,2,5,10", help="MALA sweeps per stage to compare (tt-smc also runs 0)")
    parser.add_argument(
        "--tt-option", "-o", action="append", default=[], help="KEY=VALUE option for tt-smc (Python literal)"
    )
    parser.add_argument("--no-zero", action="store_true", help="skip tt-smc with 0 MALA sweeps")
    parser.add_argument("--scaling", action="store_true", help="also run manywell with d = 8, 16, 32")
    parser.add_argument("--out", default="results/tt_continuity/tt_continuity.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tt_opts = {}
    for item in args.tt_option:
        key, _, value = item.partition("=")
        try:
            import ast

            tt_opts[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            tt_opts[key] = value
    steps = [int(s) for s in args.steps.split(",") if s]
    rows: list[dict] = []
    floors: dict[str, float] = {}
    targets = [t for t in args.targets.split(",") if t]
    if args.scaling:
        targets += [t for t in ("manywell-4", "manywell-8", "manywell-16") if t not in targets]
    for target in targets:
        floors[target] = metrics.exact_floor(
            _target(target), args.particles, torch.Generator().manual_seed(7), n_directions=1000
        )
        runs = [("smc", k) for k in steps] + [("tt-smc", k) for k in ([] if args.no_zero else [0]) + steps]
        if target.startswith("manywell-"):  # the scaling family: the cpu-budget pair only
            runs = [("smc", 10), ("tt-smc", 2)]
        for method, k in runs:
            for seed in range(args.seeds):
                opts = dict(n_steps=k, **(tt_opts if method == "tt-smc" else {}))
                row = run_once(target, method, seed, args.particles, **opts)
                rows.append(row)
                print(
                    f"{target:<12} {method:<6} n_steps {k:>2} seed {seed}: ED {row['energy_distance']:.2e} "
                    f"|dlogZ| {row['log_Z_error']:.3f} "
                    f"grads {row['grad_evals']:.2e} {row['wall_time']:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
    summary = summarize(rows)
    report = dict(
        command="python -m sampler_benchmarks.tt_continuity_bench "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        machine=f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        n_particles=args.particles,
        seeds=args.seeds,
        floors=floors,
        summary=summary,
        runs=rows,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    plot([r for r in summary if not r["target"].startswith("manywell-")], floors, out.with_suffix(".png"))
    print(markdown(summary, floors))
    return report


if __name__ == "__main__":
    main()
