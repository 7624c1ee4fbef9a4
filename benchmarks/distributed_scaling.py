"""Strong scaling of a sharded SMC run: the same run (same N, same seed) on 1, 2, ... CPU processes.

Usage::

    OMP_NUM_THREADS=1 python -m sampler_benchmarks.distributed_scaling --ranks 1,2 --particles 20000

Each rank count is a fresh set of Gloo processes (``torch.multiprocessing.spawn``, one thread
each). The time is the wall time of ``Pipeline.run`` on rank 0 after a barrier (process start,
imports and rendezvous excluded), the best of ``--repeats``; the run also reports the time spent
inside collectives and rank 0's CPU time (its share of the work, whatever else the machine
runs). Every rank count must give the same log Z bits (checked). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _pipeline(kernel_steps: int, n_stages: int):
    import sampler
    from sampler.schedules import Linear

    return sampler.method("smc", n_steps=kernel_steps, schedule=Linear(n_stages))


def _comm_clock():
    """Wrap the Shard collectives to add up the wall time spent in them (rank-local)."""
    from sampler.distributed import Shard

    spent = [0.0]
    inner = Shard._collective

    def timed(self, what, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(self, what, fn, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    Shard._collective = timed
    return spent


def _worker(rank: int, world: int, rendezvous: str, out: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    import sampler

    if world > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{rendezvous}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=600),
        )
    spent = _comm_clock()
    target = sampler.get_target(args.target)
    best, best_comm, best_cpu, log_z = float("inf"), 0.0, 0.0, None
    for _ in range(args.repeats):
        if world > 1:
            dist.barrier()
        spent[0] = 0.0
        start, cpu = time.perf_counter(), time.process_time()
        res = _pipeline(args.kernel_steps, args.stages).run(
            target, n_particles=args.particles, n_replicas=args.replicas, seed=0, progress=False, distributed=True
        )
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        if wall < best:
            best, best_comm, best_cpu = wall, spent[0], cpu
        log_z = res.log_Z_per_replica
    if rank == 0:
        torch.save({"wall": best, "comm": best_comm, "cpu": best_cpu, "log_Z": log_z, "evals": res.n_target_evals}, out)
    if world > 1:
        dist.destroy_process_group()


def measure(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.ranks:
            out = str(Path(tmp) / f"k{k}.pt")
            mp.spawn(_worker, args=(k, str(Path(tmp) / f"rdv{k}"), out, args), nprocs=k)
            rows.append({"ranks": k, **torch.load(out)})
    ref = rows[0]["log_Z"]
    for row in rows:
        if not torch.equal(row["log_Z"], ref):
            raise AssertionError(f"log Z differs between 1 and {row['ranks']} ranks: {row['log_Z']} vs {ref}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="funnel")
    parser.add_argument("--particles", type=int, default=20000)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--stages", type=int, default=10, help="annealing stages (a fixed linear schedule)")
    parser.add_argument("--kernel-steps", type=int, default=5, help="MALA sweeps per stage")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    args.ranks = [int(k) for k in args.ranks.split(",")]
    rows = measure(args)
    print(
        f"{args.target}, N={args.particles} x R={args.replicas}, "
        f"{args.stages} stages x {args.kernel_steps} MALA sweeps, "
        f"{rows[0]['evals']:,} target evaluations; log Z identical for every rank count"
    )
    print("| processes | wall time (s) | speed-up | efficiency | CPU time of rank 0 (s) | in collectives, rank 0 (s) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        s = rows[0]["wall"] / row["wall"]
        print(
            f"| {row['ranks']} | {row['wall']:.2f} | {s:.2f} | {s / row['ranks']:.0%} "
            f"| {row['cpu']:.2f} | {row['comm']:.2f} |"
        )


if __name__ == "__main__":
    main()
