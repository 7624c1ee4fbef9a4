"""`sampler bench` and its Python API at the smoke budget: it runs, scores, writes, plots."""

from __future__ import annotations

import json
import os

import pytest

from sampler.cli import main
from sampler_benchmarks import BUDGETS, run_suite


def test_run_suite_scores_against_exact_samples(tmp_path):
    report = run_suite(["smc", "mala"], ["double-well", "8modes"], seeds=2, budget="smoke")
    assert len(report.records) == 2 * 2 * 2
    for r in report.records:
        assert r.error is None
        assert r.energy_distance is not None and r.energy_distance >= 0
        assert r.floor is not None and r.floor >= 0
        assert r.target_evals > 0 and r.wall_time > 0 and r.peak_memory_mb > 0
    smc = [r for r in report.records if r.method == "smc"]
    assert all(r.log_Z_error is not None for r in smc)
    assert all(r.log_Z is None for r in report.records if r.method == "mala")
    # smc ends with unequal weights: the weighted set is scored too; chains have no weights
    assert all(r.weighted_energy_distance is not None and r.weighted_energy_distance >= 0 for r in smc)
    assert all(r.weighted_energy_distance is None for r in report.records if r.method == "mala")
    modes = [r for r in report.records if r.target == "8modes"]
    assert all(r.n_modes == 8 and 0 <= r.modes_covered <= 8 for r in modes)
    rows = report.summary()
    assert {(row["method"], row["target"]) for row in rows} == {
        (m, t) for m in ("smc", "mala") for t in ("double-well", "8modes")
    }
    out = report.write(tmp_path / "bench")
    data = json.loads((out / "results.json").read_text())
    assert data["budget"]["name"] == "smoke" and len(data["runs"]) == 8
    table = (out / "results.md").read_text()
    assert "| double-well | smc |" in table and "energy distance" in table
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["8modes_mala.png", "8modes_smc.png", "double-well_mala.png", "double-well_smc.png"]
    assert all((out / "plots" / p).stat().st_size > 1000 for p in pngs)


def test_built_in_plugin_methods_run_in_the_harness():
    """Every built-in plugin method runs through the same harness (smoke budget options) and is scored."""
    methods = ["tt-smc", "flow-smc", "snf", "interpolant-langevin", "mmd-flow"]
    report = run_suite(methods, ["8modes"], seeds=1, budget="smoke")
    assert [r.method for r in report.records] == methods
    for r in report.records:
        assert r.error is None and r.energy_distance is not None and r.grad_evals > 0
    no_density = {r.method: r.log_Z for r in report.records}
    assert (
        no_density["interpolant-langevin"] is None
        and no_density["tt-smc"] is not None
        and no_density["flow-smc"] is not None
    )


def test_weighted_energy_distance_scores_the_weighted_set():
    """The weighted score uses the result's normalized weights and the unweighted score's directions."""
    import torch

    import sampler
    from sampler import metrics
    from sampler_benchmarks.harness import run_one

    budget = BUDGETS["smoke"]
    record, res = run_one("smc", "8modes", 3, budget)
    target = sampler.get_target("8modes")
    x = res.samples[0].to(torch.float64)
    gen = torch.Generator().manual_seed(1_000_003 * 3 + 17)
    exact = target.sample(x.shape[0], gen, dtype=torch.float64)
    state = gen.get_state()
    assert record.energy_distance == metrics.sliced_energy_distance(
        x, exact, n_directions=budget.n_directions, generator=gen
    )
    gen.set_state(state)
    w = torch.softmax(res.log_weights[0].to(torch.float64), 0)
    assert record.weighted_energy_distance == metrics.sliced_energy_distance(
        x, exact, n_directions=budget.n_directions, generator=gen, weights=w
    )
    assert record.weighted_energy_distance != record.energy_distance


def test_high_dimensional_marginal_plot_and_unknown_log_Z(tmp_path):
    report = run_suite(["smc"], ["funnel"], seeds=1, budget="smoke")
    out = report.write(tmp_path)
    assert (out / "plots" / "funnel_smc.png").stat().st_size > 1000


def test_bench_cli(tmp_path, capsys):
    code = main(
        [
            "bench",
            "--methods",
            "smc",
            "--targets",
            "gmm40",
            "--seeds",
            "1",
            "--budget",
            "smoke",
            "--out",
            str(tmp_path),
            "--no-plots",
            "-q",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| gmm40 | smc | 200 |" in out
    assert (tmp_path / "results.json").exists() and not (tmp_path / "plots").exists()


@pytest.mark.parametrize(
    "argv, message",
    [(["bench", "--budget", "huge"], "unknown budget"), (["bench", "--targets", "gmm41"], "unknown target")],
)
def test_bench_cli_bad_input(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path), "-q"]) == 2
    assert message in capsys.readouterr().err


def test_budgets_are_documented():
    assert {"cpu", "paper", "smoke"} <= set(BUDGETS)
    assert all(b.description for b in BUDGETS.values())


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_is_per_run_not_the_process_high_water_mark():
    import numpy as np

    from sampler_benchmarks.harness import run_one

    big = np.ones(2**27)  # 1 GiB resident before the run
    del big
    record, _ = run_one("smc", "double-well", 0, BUDGETS["smoke"])
    assert record.peak_memory_mb < 1024
