"""Result: shapes, pooled log Z, per-step statistics, summary table and ArviZ export."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
import torch

import sampler
from sampler.core.records import StepBlock, StepRecords, StepStats
from sampler.core.result import pooled_log_Z
from sampler.io._arviz import arviz


@pytest.fixture(scope="module")
def smc_result():
    return sampler.sample(
        "double-well", method="smc", n_particles=500, n_replicas=4, seed=3, n_steps=3, dtype=torch.float64
    )


@pytest.fixture(scope="module")
def mcmc_result():
    target = sampler.targets.Gaussian(mean=[1.0, -1.0], cov=[[1.0, 0.5], [0.5, 2.0]])
    return sampler.sample(
        target, method="mala", n_particles=300, n_replicas=3, seed=0, n_warmup=200, dtype=torch.float64
    )


def test_result_shapes_and_counts(smc_result):
    r = smc_result
    assert r.samples.shape == r.weighted_samples.shape == (4, 500, 2)
    assert r.log_weights.shape == (4, 500) and r.log_weights.dtype == torch.float64
    assert r.log_Z_per_replica.shape == (4,)
    assert r.n_target_evals > 0 and r.n_grad_evals > 0
    # + the initial evaluation and the reference's fit (reference="auto")
    fit = r.options["reference_evals"][0]
    assert r.n_target_evals == sum(s.target_evals for s in r.steps) + 4 * 500 + fit
    stats = r.stats
    t = stats["t"]
    assert t.shape == (len(r.steps), 4) and t.dtype == torch.float64
    assert all(s.t.shape == (4,) for s in r.steps)
    torch.testing.assert_close(t, torch.stack([s.t for s in r.steps]), rtol=0, atol=0)
    # Per replica: strictly increasing up to 1, then 1 (a replica that finished early waits).
    assert bool((t[-1] == 1.0).all())
    done = torch.cummax(t == 1.0, dim=0).values
    assert bool((t[done] == 1.0).all())
    assert bool((t.diff(dim=0)[~done[:-1]] > 0).all())
    assert stats["log_Z_increment"].shape == (len(r.steps), 4)
    assert bool((stats["log_Z_increment"][1:][done[:-1]] == 0).all())  # nothing after reaching 1
    assert stats["ess"].shape == (len(r.steps), 4)
    assert stats["acceptance"].shape == (len(r.steps), 4)


def _row(step: int, r: int = 2, **info: float) -> StepStats:
    values = {k: torch.full((r,), v, dtype=torch.float64) for k, v in info.items()}
    return StepStats(step, torch.full((r,), 0.5), torch.ones(r), torch.zeros(r), 10, 10, 0, values)


def test_step_blocks_read_as_their_rows(smc_result):
    """A StepBlock is K StepStats stacked: its rows, the stacked statistics and Result.steps agree."""
    k, r = 3, 2
    acceptance = torch.rand(k, r, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    evals, bad = torch.tensor([4, 6, 8]), torch.tensor([0, 1, 0])
    t = torch.linspace(0.6, 0.8, k)[:, None].expand(k, r)
    block = StepBlock(2, t, torch.ones(k, r), torch.zeros(k, r), evals, evals, bad, {"acceptance": acceptance})
    records = StepRecords([_row(1, step_size=0.1), block, _row(5, acceptance=0.9)])
    assert len(records) == 5 and [s.step for s in records] == [1, 2, 3, 4, 5]
    assert (records[2].grad_evals, records[2].nonfinite) == (6, 1) and type(records[2].nonfinite) is int
    last = block.last()
    assert (last.step, last.grad_evals, last.nonfinite) == (4, 8, 0)
    assert torch.equal(last.info["acceptance"], acceptance[2])
    # stacked without the rows equals the rows stacked one by one (NaN where a step lacks a key)
    stacked, rows = records.stacked(), list(records)
    nan = torch.full((r,), math.nan, dtype=torch.float64)
    for key in ("acceptance", "step_size"):
        expected = torch.stack([s.info.get(key, nan).to(torch.float64) for s in rows])
        torch.testing.assert_close(stacked[key], expected, equal_nan=True, rtol=0, atol=0)
    for key in ("t", "ess", "log_Z_increment"):
        torch.testing.assert_close(stacked[key], torch.stack([getattr(s, key).double() for s in rows]), rtol=0, atol=0)
    assert stacked["step"].tolist() == [1, 2, 3, 4, 5] and stacked["grad_evals"].tolist() == [10, 4, 6, 8, 10]
    assert stacked["nonfinite"].tolist() == [0, 0, 1, 0, 0] and stacked["step"].dtype == torch.int64
    # a Result converts whatever records it is given
    res = attrs.evolve(smc_result, steps=[_row(1), block])
    assert isinstance(res.steps, StepRecords) and len(res.steps) == 4 and res.stats["t"].shape == (4, r)
    with pytest.raises(ValueError, match="first dimension 3"):
        StepBlock(1, t, torch.ones(2, r), torch.zeros(k, r), evals, evals, bad)


def test_step_blocks_save_and_load_as_their_rows(smc_result, tmp_path):
    """The export stacks blocks without rows; a key some records lack is marked, and comes back missing."""
    k, r = 3, smc_result.n_replicas
    acceptance = torch.rand(k, r, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    evals = torch.tensor([4, 6, 8])
    block = StepBlock(
        2, torch.ones(k, r), torch.ones(k, r), torch.zeros(k, r), evals, evals, 0 * evals, {"acceptance": acceptance}
    )
    res = attrs.evolve(smc_result, steps=[_row(1, r=r, step_size=0.1), block])
    stats = res.to_arviz().sample_stats
    assert stats.coords["step"].values.tolist() == [1, 2, 3, 4] and stats["grad_evals"].values.tolist() == [10, 4, 6, 8]
    assert stats["acceptance"].attrs["present_steps"].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(stats["acceptance"].values[:, 1:], acceptance.T.numpy())
    back = sampler.load(res.save(tmp_path / "blocks.nc"))
    assert [s.step for s in back.steps] == [1, 2, 3, 4] and "acceptance" not in back.steps[0].info
    torch.testing.assert_close(back.steps[2].info["acceptance"], acceptance[1], rtol=0, atol=0)
    for key, value in res.stats.items():
        torch.testing.assert_close(back.stats[key], value, rtol=0, atol=0, equal_nan=True)


def test_log_weights_give_log_Z_per_replica(smc_result):
    lw = smc_result.log_weights
    per_replica = torch.logsumexp(lw, -1) - math.log(lw.shape[-1])
    torch.testing.assert_close(per_replica, smc_result.log_Z_per_replica)


def test_pooled_log_Z_matches_definition():
    lz = torch.tensor([0.1, -0.2, 0.05, 0.3], dtype=torch.float64)
    pooled, se = pooled_log_Z(lz)
    z = lz.exp()
    assert pooled == pytest.approx(float(z.mean().log()))
    # The larger of the delta method and the spread of the logs (docs/concepts.md, "log Z and its error").
    assert se == pytest.approx(max(float(z.std() / math.sqrt(4) / z.mean()), float(lz.std() / math.sqrt(4))))
    assert math.isnan(pooled_log_Z(lz[:1])[1])


def test_summary_table(smc_result, mcmc_result):
    s = sampler.summary(smc_result)
    text = str(s)
    for row in ("log Z", "exact log Z", "weight ESS", "Pareto k", "R-hat", "bulk ESS", "non-finite"):
        assert row in text
    v = s.as_dict()
    assert v["log_Z"] == pytest.approx(smc_result.log_Z)
    assert 0 < v["weight_ess"] <= 1
    m = sampler.summary(mcmc_result)
    assert "n/a (the method gives no density)" in str(m)
    assert m.as_dict()["rhat_max"] < 1.1


def test_to_arviz_smc_roundtrips_through_summary_and_netcdf(smc_result, tmp_path):
    az = arviz()
    idata = smc_result.to_arviz()
    assert dict(idata.posterior["x"].sizes) == {"chain": 4, "draw": 500, "x_dim_0": 2}
    assert idata.sample_stats["log_weight"].shape == (4, 500)
    # The weighted particle set: log_weight[c, n] is the weight of weighted_x[c, n].
    assert dict(idata.sample_stats["weighted_x"].sizes) == {"chain": 4, "draw": 500, "x_dim_0": 2}
    np.testing.assert_array_equal(idata.sample_stats["weighted_x"].values, smc_result.weighted_samples.numpy())
    assert idata.attrs["log_Z"] == pytest.approx(smc_result.log_Z)
    assert idata.attrs["method"] == "smc" and idata.attrs["target"] == "double-well"
    table = az.summary(idata, kind="diagnostics")
    assert len(table) == 2 and np.isfinite(table["r_hat"]).all()
    path = tmp_path / "res.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    np.testing.assert_array_equal(back.posterior["x"].values, smc_result.samples.numpy())
    np.testing.assert_array_equal(back.sample_stats["log_weight"].values, smc_result.log_weights.numpy())
    np.testing.assert_array_equal(back.sample_stats["weighted_x"].values, smc_result.weighted_samples.numpy())
    assert back.attrs["log_Z"] == pytest.approx(smc_result.log_Z)
    assert back.attrs["n_grad_evals"] == smc_result.n_grad_evals


def test_to_arviz_mcmc_chains(mcmc_result):
    az = arviz()
    idata = mcmc_result.to_arviz()
    assert dict(idata.posterior["x"].sizes) == {"chain": 3, "draw": 300, "x_dim_0": 2}
    assert "log_Z" not in idata.attrs and idata.attrs["kind"] == "mcmc"
    assert "weighted_x" not in idata.sample_stats  # chains carry no weighted particle set
    ess = az.ess(idata)["x"].values
    assert (ess > 10).all()
