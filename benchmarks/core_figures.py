"""Figures of the core issue: ``smc`` on ``gmm40`` and MALA throughput.

Run: ``python -m sampler_benchmarks.core_figures [--seeds 5] [--particles 2000] [--out docs/figures/core.json]``

1. ``smc`` (adaptive tempered SMC, 10 MALA sweeps per temperature) on ``gmm40`` with N particles,
   one replica per seed: energy distance to N exact samples (exact O(N^2) V-statistic, the
   docs/benchmarks.md convention), the exact-vs-exact floor at the same N, modes covered out of 40,
   |log Z error|, target/gradient evaluations and wall time; medians over seeds.
2. MALA throughput: particle-steps per second of the ``mala`` corrector on ``gmm40`` for
   4 replicas x 10,000 particles (50 sweeps after one warm-up application), float32 and float64.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

import sampler
from sampler.analysis.metrics import energy_distance, modes_covered


def smc_on_gmm40(seeds: int, n: int, **options) -> dict:
    target = sampler.get_target("gmm40")
    rows = []
    for seed in range(seeds):
        res = sampler.sample(
            target, method="smc", n_particles=n, n_replicas=1, seed=seed, n_steps=10, progress=False, **options
        )
        exact = target.sample(n, torch.Generator().manual_seed(10_000 + seed), dtype=torch.float64)
        exact2 = target.sample(n, torch.Generator().manual_seed(20_000 + seed), dtype=torch.float64)
        rows.append(
            dict(
                seed=seed,
                energy_distance=energy_distance(res.samples[0], exact),
                floor=energy_distance(exact2, exact),
                modes_covered=modes_covered(res.samples[0], target.modes),
                log_Z_error=abs(res.log_Z - target.log_Z),
                target_evals=res.n_target_evals,
                grad_evals=res.n_grad_evals,
                steps=len(res.steps),
                wall_time=res.wall_time,
            )
        )
    keys = [k for k in rows[0] if k != "seed"]
    return {
        "runs": rows,
        "median": {k: statistics.median(r[k] for r in rows) for k in keys},
        "min": {k: min(r[k] for r in rows) for k in keys},
        "max": {k: max(r[k] for r in rows) for k in keys},
    }


def mala_throughput(
    dtype: torch.dtype, replicas: int = 4, particles: int = 10_000, sweeps: int = 50, repeats: int = 3
) -> float:
    target = sampler.get_target("gmm40")
    path = sampler.GeometricPath(sampler.make_reference(target), target)
    x = target.sample(replicas * particles, torch.Generator().manual_seed(0), dtype=dtype).reshape(
        replicas, particles, 2
    )
    state = sampler.Particles(
        x=x,
        log_weights=torch.full((replicas, particles), -math.log(particles), dtype=torch.float64),
        log_Z=torch.zeros(replicas, dtype=torch.float64),
        evaluation=path.evaluate(x, grad=True),
    )
    ctx = sampler.StepContext(
        path=path, t=1.0, t_from=1.0, step=1, generator=torch.Generator().manual_seed(1), needs_grad=True
    )
    kernel = sampler.corrector("mala", n_steps=sweeps)
    out = kernel.apply(state, kernel.init(state, ctx), ctx)  # warm-up: adapts the step size
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = kernel.apply(out.particles, out.state, ctx)
        rates.append(replicas * particles * sweeps / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "smc_gmm40": smc_on_gmm40(args.seeds, args.particles),
        "mala_particle_steps_per_s": {str(dt): mala_throughput(dt) for dt in (torch.float32, torch.float64)},
    }
    med = report["smc_gmm40"]["median"]
    print(
        f"smc on gmm40, N={args.particles}, 10 MALA sweeps/temperature, "
        f"median of {args.seeds} seeds ({report['machine']}):"
    )
    for k, v in med.items():
        print(f"  {k:<16} {v:.4g}   [min {report['smc_gmm40']['min'][k]:.4g}, max {report['smc_gmm40']['max'][k]:.4g}]")
    for k, v in report["mala_particle_steps_per_s"].items():
        print(f"MALA throughput ({k}, 4 x 10,000 particles on gmm40): {v:.3g} particle-steps/s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
