"""Sharded runs (sampler.distributed): Gloo process groups on the CPU, a few small runs.

The contract: with a given seed a sharded run gives the same bits (samples, weights, log Z,
schedule, counts) for 1, 2 or 4 ranks; a rank that raises or stalls makes the whole run fail
with an error, not hang; the Z estimate stays unbiased; ``sampler run`` works under torchrun
and writes once; a checkpoint of a 2-rank run resumes in one process to the same result.
Trainable methods (``neural-jko``, ``snf``) train data-parallel: the ranks end with the same
parameters, and the summed gradient of the split batch is that of the whole batch.

Ranks are started with ``torch.multiprocessing.spawn`` (file rendezvous, no ports) and write
their results to files the test reads back.
"""

from __future__ import annotations

import datetime
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sampler
from sampler import distributed as sdist
from sampler.distributed import ParticleStreams, Shard, block_size, shard_bounds
from sampler.errors import ConfigurationError
from sampler.io.checkpoint import read_checkpoint
from sampler.schedules import Linear

N, R, SEED = 300, 2, 11
SMALL = dict(n_steps=3)  # MALA sweeps per stage, fewer than the default to stay fast

# Unbiasedness (as in test_smc.py): fixed schedule and fixed kernel, many replicas.
UNBIASED_R, UNBIASED_N = 100, 64
FIXED = dict(kernel="mala", n_steps=2, step_size=0.5, adapt=False, resample_threshold=1.0)


def _record(res: sampler.Result) -> dict:
    """What must not depend on the number of ranks."""
    stats = res.stats
    return {
        "samples": res.samples,
        "log_weights": res.log_weights,
        "weighted_samples": res.weighted_samples,
        "log_Z": res.log_Z_per_replica,
        "t": stats["t"],
        "ess": stats["ess"],
        "log_Z_increment": stats["log_Z_increment"],
        "acceptance": stats["acceptance"],
        "step_size": stats["step_size"],
        "target_evals": torch.tensor([res.n_target_evals, res.n_grad_evals]),
        "step_evals": stats["target_evals"],
        "fit_evals": torch.tensor(res.options["reference_evals"]),
    }


def _runs(workdir: Path | None = None, **run) -> dict:
    """The runs compared across rank counts (``run``: extra arguments, e.g. distributed=True)."""
    out = {
        "gmm40": _record(
            sampler.sample("gmm40", "smc", n_particles=N, n_replicas=R, seed=SEED, progress=False, **SMALL, **run)
        ),
        "funnel": _record(
            sampler.sample("funnel", "smc", n_particles=N, n_replicas=R, seed=SEED, progress=False, **SMALL, **run)
        ),
        # HMC (momenta from the streams), stratified resampling, N not divisible by the ranks, float64.
        "funnel-hmc": _record(
            sampler.sample(
                "funnel",
                "smc",
                n_particles=N + 1,
                n_replicas=R,
                seed=SEED,
                progress=False,
                dtype="float64",
                kernel="hmc",
                n_steps=2,
                scheme="stratified",
                **run,
            )
        ),
    }
    if workdir is not None:  # a periodic checkpoint, resumed in one process by the test
        ckpt = workdir / "funnel.ckpt"
        pipe = sampler.method("smc", **SMALL)
        res = pipe.run(
            sampler.get_target("funnel"),
            n_particles=N,
            n_replicas=R,
            seed=SEED,
            progress=False,
            checkpoint=ckpt,
            checkpoint_every=3,
            **run,
        )
        out["checkpointed"] = _record(res)
    return out


def _init(rank: int, world: int, rendezvous: str, timeout: float = 60.0) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
    )


def _worker_runs(rank: int, world: int, rendezvous: str, workdir: str) -> None:
    _init(rank, world, rendezvous)
    out = _runs(Path(workdir) if world == 2 else None)
    if world == 2:
        target = sampler.get_target("double-well")
        res = sampler.sample(
            target,
            "smc",
            n_particles=UNBIASED_N,
            n_replicas=UNBIASED_R,
            seed=77,
            dtype="float64",
            schedule=Linear(10),
            progress=False,
            **FIXED,
        )
        out["unbiased"] = {
            "log_Z": res.log_Z_per_replica,
            "exact": torch.tensor(target.log_Z),
            "steps": torch.tensor(len(res.steps)),
        }
    torch.save(out, Path(workdir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _spawn(fn, world: int, tmp_path: Path, *args) -> None:
    mp.spawn(fn, args=(world, str(tmp_path / "rendezvous"), str(tmp_path), *args), nprocs=world)


@pytest.fixture(scope="module")
def single() -> dict:
    """The sharded scheme in this process, without a process group."""
    return _runs(distributed=True)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("two")
    _spawn(_worker_runs, 2, tmp)
    return tmp, [torch.load(tmp / f"rank{r}.pt") for r in range(2)]


def _assert_same(a: dict, b: dict) -> None:
    for run in ("gmm40", "funnel", "funnel-hmc"):
        for key, value in a[run].items():
            assert torch.equal(value, b[run][key]), f"{run}: {key} differs"


# -- rank-independence ------------------------------------------------------------------------------
def test_two_ranks_match_one_process_exactly(single, two_ranks):
    """gmm40 and funnel with 2 Gloo ranks: every rank returns the bits of the 1-process run."""
    _, ranks = two_ranks
    for out in ranks:
        _assert_same(single, out)
    assert single["gmm40"]["t"].shape[0] > 2  # an adaptive schedule with several stages
    assert single["gmm40"]["samples"].shape == (R, N, 2)


def test_four_ranks_match_one_process_exactly(single, tmp_path):
    _spawn(_worker_runs, 4, tmp_path)
    for r in range(4):
        _assert_same(single, torch.load(tmp_path / f"rank{r}.pt"))


def test_sharded_scheme_is_a_proper_smc_run(single):
    """The per-particle streams drive a normal run: ESS within bounds, weights normalized, counts."""
    for run in single.values():
        assert torch.all((run["ess"] > 0) & (run["ess"] <= 1 + 1e-12))
        assert torch.allclose(
            torch.logsumexp(run["log_weights"] - run["log_Z"][:, None], -1),
            torch.full((R,), math.log(run["log_weights"].shape[1]), dtype=torch.float64),
        )
        initial, fit = run["log_weights"].numel(), int(run["fit_evals"][0])
        assert int(run["step_evals"].sum()) + initial + fit == int(run["target_evals"][0])


def test_log_Z_unbiased_when_sharded(two_ranks):
    """E[Z_hat / Z] = 1 with the particles split over 2 ranks: mean over R = 100 replicas within
    3 standard errors (fixed schedule and kernel, resampling every stage; as in test_smc.py)."""
    _, ranks = two_ranks
    u = ranks[0]["unbiased"]
    assert int(u["steps"]) == 10
    ratio = torch.exp(u["log_Z"] - u["exact"]).numpy()
    se = ratio.std(ddof=1) / math.sqrt(UNBIASED_R)
    assert abs(ratio.mean() - 1) < 3 * se, f"mean Z_hat/Z = {ratio.mean():.4f} +- {se:.4f}"
    assert torch.equal(u["log_Z"], ranks[1]["unbiased"]["log_Z"])


def test_checkpoint_of_two_ranks_resumes_in_one_process(two_ranks):
    """A sharded checkpoint holds all N particles: resumed without a process group (1 rank),
    the run ends with the bits of the uninterrupted 2-rank run."""
    tmp, ranks = two_ranks
    data = read_checkpoint(tmp / "funnel.ckpt")
    n_stages = ranks[0]["checkpointed"]["t"].shape[0]
    assert data.run["sharded"] and data.step % 3 == 0 and 0 < data.step < n_stages  # the last periodic save
    assert data.state["particles"]["x"].shape == (R, N, 10)  # all N particles of the funnel, from both ranks
    res = sampler.method("smc", **SMALL).resume(tmp / "funnel.ckpt", sampler.get_target("funnel"), progress=False)
    resumed = _record(res)
    for key, value in ranks[0]["checkpointed"].items():
        assert torch.equal(value, resumed[key]), key


# -- failures ---------------------------------------------------------------------------------------
class _Faulty(sampler.BoltzmannTarget):
    """A double well whose evaluation on one rank raises, or stalls, after a few calls."""

    dim = 2
    name = "faulty"

    def __init__(self, mode: str):
        self.mode, self.calls = mode, 0

    def energy(self, x):
        self.calls += 1
        if dist.get_rank() == 1 and self.calls == 6:
            if self.mode == "raise":
                raise RuntimeError("rank 1 target exploded")
            time.sleep(60)
        return (x[..., 0] ** 2 - 1) ** 2 + 0.5 * x[..., 1] ** 2


def _worker_faulty(rank: int, world: int, rendezvous: str, workdir: str, mode: str, timeout: float) -> None:
    _init(rank, world, rendezvous, timeout)
    sampler.sample(_Faulty(mode), "smc", n_particles=64, n_replicas=1, seed=0, progress=False, n_steps=2)


def test_a_rank_that_raises_fails_the_run(tmp_path):
    """The job ends with the error, not through the 60 s timeout (whose error would say so).
    spawn reports the first rank it sees fail: rank 1 with its own error, or rank 0, whose
    collective broke when rank 1's process ended, with a DistributedError that says so."""
    with pytest.raises(mp.ProcessRaisedException) as info:
        _spawn(_worker_faulty, 2, tmp_path, "raise", 60.0)
    message = str(info.value)
    assert "rank 1 target exploded" in message or (
        "DistributedError: rank 0 of 2" in message and "Another rank probably raised" in message
    ), message


def test_a_stalled_rank_times_out_with_a_clear_error(tmp_path):
    """Rank 1 stops answering; rank 0 gives up after the group's timeout (3 s) with DistributedError."""
    with pytest.raises(mp.ProcessRaisedException) as info:
        _spawn(_worker_faulty, 2, tmp_path, "stall", 3.0)
    message = str(info.value)
    assert "DistributedError" in message and "rank 0 of 2" in message and "timeout" in message


# -- pieces, in one process -------------------------------------------------------------------------
def test_streams_depend_on_the_global_index_only():
    """Rows [a, b) of a draw are the same whichever split of [0, N) draws them."""
    n = 1000
    assert block_size(n) == 256
    whole = ParticleStreams(5, n, 0, n, torch.device("cpu"))
    ref_n, ref_u = whole.randn((3, n, 2), torch.float32), whole.rand((3, n), torch.float64)
    for k in (2, 3, 4, 7):
        bounds = shard_bounds(n, k)
        parts = [ParticleStreams(5, n, a, b, torch.device("cpu")) for a, b in zip(bounds, bounds[1:])]
        assert torch.equal(torch.cat([p.randn((3, p.stop - p.start, 2), torch.float32) for p in parts], 1), ref_n)
        assert torch.equal(torch.cat([p.rand((3, p.stop - p.start), torch.float64) for p in parts], 1), ref_u)
    assert not torch.equal(whole.randn((3, n, 2), torch.float32), ref_n)  # each draw is new
    other = ParticleStreams(6, n, 0, n, torch.device("cpu")).randn((3, n, 2), torch.float32)
    assert not torch.equal(other, ref_n)
    assert abs(float(ref_n.mean())) < 0.05 and abs(float(ref_n.std()) - 1) < 0.05


def test_exact_mean_of_probabilities():
    shard = Shard(10, "cpu")
    p = torch.rand(3, 10, dtype=torch.float64)
    assert torch.allclose(shard.mean_probability(p), p.mean(-1), atol=1e-11, rtol=0)


def test_sharded_runs_refuse_steps_that_do_not_support_them():
    class Plain(sampler.Corrector):
        def apply(self, particles, state, ctx):
            return sampler.StepOutput(particles, state)

    pipe = sampler.Pipeline(schedule=Linear(2), steps=[Plain()])
    with pytest.raises(ConfigurationError, match="cannot shard"):
        pipe.run(sampler.get_target("gaussian"), n_particles=8, seed=0, distributed=True)
    pipe.run(sampler.get_target("gaussian"), n_particles=8, seed=0)  # no process group: an ordinary run
    with pytest.raises(ConfigurationError, match="cannot shard"):
        sampler.sample("gaussian", "mala", n_particles=8, seed=0, distributed=True)


def test_ordinary_runs_keep_their_random_stream(single):
    """distributed=False is the default without a group; it differs from the per-particle scheme."""
    res = sampler.sample(
        "gmm40", "smc", n_particles=N, n_replicas=R, seed=SEED, progress=False, distributed=False, **SMALL
    )
    plain = sampler.sample("gmm40", "smc", n_particles=N, n_replicas=R, seed=SEED, progress=False, **SMALL)
    assert torch.equal(res.samples, plain.samples)
    assert not torch.equal(res.samples, single["gmm40"]["samples"])


# -- the command line under torchrun ----------------------------------------------------------------
def test_cli_under_torchrun_prints_and_writes_once(tmp_path):
    out = tmp_path / "result.nc"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAMPLER_DIST_TIMEOUT": "60"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "sampler",
        "run",
        "gmm40",
        "--particles",
        "200",
        "--replicas",
        "2",
        "--seed",
        "4",
        "-o",
        "n_steps=2",
        "--out",
        str(out),
        "-q",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("replicas x particles") == 1 and proc.stdout.count("saved") == 1, proc.stdout
    res = sampler.load(out)
    single = sampler.sample(
        "gmm40", "smc", n_particles=200, n_replicas=2, seed=4, progress=False, n_steps=2, distributed=True
    )
    np.testing.assert_array_equal(res.log_Z_per_replica.numpy(), single.log_Z_per_replica.numpy())
    np.testing.assert_array_equal(res.samples.numpy(), single.samples.numpy())


# -- data-parallel training -------------------------------------------------------------------------
JKO_DDP = dict(preset="tiny", n_iters=8, n_train=300, batch_size=101)  # batches of 101 split 50 / 51
SNF_DDP = dict(n_stages=2, hidden=(16, 16), iterations=8, batch_size=33, warmup=2)  # 16 / 17 paths


def _dp_gradients(rank: int, world: int) -> dict:
    """One CNF step on a batch of 63 points: the summed gradient of the split batch (each rank's
    loss scaled by its share) and the gradient of the whole batch on this rank; plus the helpers."""
    from sampler.paths import EvaluationCounter, GaussianReference, GeometricPath
    from sampler_plugins.neural_jko.cnf import CNFLayer
    from sampler_plugins.neural_jko.train import cnf_surrogate

    torch.manual_seed(5)  # the same initialization on both ranks
    layer = CNFLayer(2, width=16, n_steps=3).to(torch.float64)
    params = list(layer.parameters())
    x = torch.randn(63, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    path = GeometricPath(GaussianReference(2), sampler.get_target("double-well"), EvaluationCounter())
    gen = torch.Generator()
    whole = torch.autograd.grad(cnf_surrogate(layer, x, path, 0.5, True, gen)[0], params)
    bounds = shard_bounds(63, world)
    n_local = sdist.local_batch(63)
    assert n_local == bounds[rank + 1] - bounds[rank]
    part, *_ = cnf_surrogate(layer, x[bounds[rank] : bounds[rank + 1]], path, 0.5, True, gen)
    (part * (n_local / 63)).backward()
    sent = sdist.sum_gradients(params)
    # average_gradients, with a parameter that has a gradient on rank 0 only and one with none anywhere
    a, b, c = (torch.zeros(3, requires_grad=True) for _ in range(3))
    a.grad = torch.full((3,), float(rank + 1))
    if rank == 0:
        b.grad = torch.ones(3)
    sdist.average_gradients([a, b, c])
    stat = sdist.all_reduce_sum(torch.tensor([float(rank + 1)], dtype=torch.float64))
    return {
        "whole": [g.clone() for g in whole],
        "summed": [p.grad.clone() for p in params],
        "bytes": sent,
        "n_params": sum(p.numel() for p in params) + len(params),
        "a": a.grad.clone(),
        "b": b.grad.clone(),
        "c_is_none": c.grad is None,
        "stat": stat,
        "seed": sdist.rank_seed(9),
    }


def _worker_ddp(rank: int, world: int, rendezvous: str, workdir: str) -> None:
    _init(rank, world, rendezvous)
    out: dict = {"grads": _dp_gradients(rank, world)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jko = sampler.sample(
            "double-well", "neural-jko", n_particles=64, n_replicas=1, seed=3, progress=False, **JKO_DDP
        )
        snf = sampler.sample("double-well", "snf", n_particles=64, n_replicas=1, seed=3, progress=False, **SNF_DDP)
    out["warnings"] = [str(w.message) for w in caught]
    out["jko"] = {
        "state": {k: v.clone() for k, v in jko.model.state_dict().items()},
        "history": [{k: v for k, v in h.items() if k != "wall_time"} for h in jko.model.history],
        "samples": jko.samples,
        "training_evals": (jko.training_target_evals, jko.training_grad_evals),
    }
    out["snf"] = {
        "state": {k: v.clone() for k, v in snf.models["snf"].state_dict().items()},
        "training": {k: v for k, v in snf.options["training"].items() if k != "wall_time"},
        "samples": snf.samples,
        "log_Z": snf.log_Z_per_replica,
    }
    torch.save(out, Path(workdir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    _spawn(_worker_ddp, 2, tmp)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(2)]


def test_data_parallel_gradient_is_the_whole_batch_gradient(ddp_ranks):
    """Split 31 / 32 over 2 ranks, losses scaled by their shares, gradients summed: the gradient
    of the whole batch's loss (to rounding), the same on both ranks; one all_reduce of
    (parameters + flags) x 8 bytes."""
    for out in ddp_ranks:
        g = out["grads"]
        for summed, whole in zip(g["summed"], g["whole"]):
            torch.testing.assert_close(summed, whole, rtol=1e-10, atol=1e-12)
        assert g["bytes"] == 8 * g["n_params"]
        assert torch.equal(g["a"], torch.full((3,), 1.5))  # the mean over the ranks
        assert torch.equal(g["b"], torch.full((3,), 0.5))  # no gradient on rank 1 counts as zero
        assert g["c_is_none"]  # no gradient anywhere: left alone
        assert float(g["stat"]) == 3.0
    a, b = (out["grads"] for out in ddp_ranks)
    for x, y in zip(a["summed"], b["summed"]):
        assert torch.equal(x, y)
    assert a["seed"] != b["seed"]  # each rank its own training stream


def test_data_parallel_training_ends_with_identical_models(ddp_ranks):
    """neural-jko (CNF and rejection layers) and snf (couplings and adapted step sizes) trained
    over 2 ranks: bit-identical parameters and buffers, records and counts on both ranks."""
    a, b = ddp_ranks
    for method in ("jko", "snf"):
        sa, sb = a[method]["state"], b[method]["state"]
        assert sa.keys() == sb.keys() and len(sa) > 0
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{method}: {key} differs between the ranks"
        assert torch.equal(a[method]["samples"], b[method]["samples"])  # the replicated sampling run
    assert a["jko"]["history"] == b["jko"]["history"]
    assert a["snf"]["training"] == b["snf"]["training"]
    rejections = [h for h in a["jko"]["history"] if h["kind"] == "rejection"]
    assert rejections and all(abs(h["r_bar"] - 0.2) < 1e-3 for h in rejections)  # log c from the rates of both shares
    assert any(k.endswith("log_c") for k in a["jko"]["state"])
    assert a["jko"]["training_evals"] == b["jko"]["training_evals"] and a["jko"]["training_evals"][1] > 0
    assert a["snf"]["training"]["iterations"] == SNF_DDP["iterations"]
    assert all(math.isfinite(v) for v in a["snf"]["training"]["loss_trace"])


def test_data_parallel_methods_say_that_sampling_is_replicated(ddp_ranks):
    for out in ddp_ranks:
        said = " ".join(out["warnings"])
        assert "'neural-jko' trained data-parallel over 2 rank(s), but its sampling run cannot be sharded" in said
        assert "'snf' trained data-parallel over 2 rank(s)" in said
        assert "every rank runs the whole run instead" not in said


def _worker_faulty_training(rank: int, world: int, rendezvous: str, workdir: str) -> None:
    _init(rank, world, rendezvous, 60.0)
    sampler.sample(_Faulty("raise"), "neural-jko", n_particles=32, n_replicas=1, seed=0, progress=False, **JKO_DDP)


def test_a_rank_that_raises_during_training_fails_the_run(tmp_path):
    """Rank 1's target raises in the middle of the first CNF layer's training: the job ends with
    that error (or rank 0's DistributedError from the broken gradient all-reduce), not a hang
    (nor the 60 s timeout, whose error would say so)."""
    with pytest.raises(mp.ProcessRaisedException) as info:
        _spawn(_worker_faulty_training, 2, tmp_path)
    message = str(info.value)
    assert "rank 1 target exploded" in message or (
        "DistributedError: rank 0 of 2" in message and "Another rank probably raised" in message
    ), message


def test_data_parallel_helpers_without_a_group():
    """No process group: the whole batch, the run's own seed, no-op reductions."""
    assert sdist.local_batch(7) == 7
    assert sdist.rank_seed(123) == 123
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.ones(2)
    assert sdist.sum_gradients([p]) == 0 and sdist.average_gradients([p]) == 0
    assert torch.equal(p.grad, torch.ones(2))
    t = torch.arange(3.0)
    assert sdist.all_reduce_sum(t) is t
    sdist.broadcast_parameters([p])
    assert torch.equal(p, torch.zeros(2))
    assert shard_bounds(101, 2) == [0, 50, 101]
