"""The throughput benchmark (benchmarks/throughput.py): cases run, tables and files written, bad input refused.

Speed itself is measured by the benchmark, never asserted here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import sampler
from sampler.cli import main
from sampler.errors import ConfigurationError
from sampler_benchmarks import throughput


def test_every_case_runs_and_counts_gradients_without_peers(tmp_path):
    rows = throughput.run_throughput(
        ["smc", "chains", "sweep"],
        repeats=1,
        smc_sizes=[100],
        sweep_sizes=[100],
        sweep_dims=[2],
        chain_draws=20,
        peers=False,
        progress=None,
    )
    chains = [r for r in rows if r.case == "chains"]
    assert [r.case for r in rows] == ["smc"] * 6 + ["chains"] * len(chains) + ["sweep"]
    assert [(r.target, r.kernel) for r in chains] == list(throughput.CHAIN_CASES)
    assert {(r.target, r.kernel) for r in rows if r.case == "smc"} == {
        (t, k) for t in throughput.SMC_TARGETS for k in ("hmc", "mala")
    }
    for r in rows:
        assert r.ours.grads > 0 and r.ours.rate > 0 and r.peer is None and math.isnan(r.ratio)
    for row in chains:  # 4 chains, 30 iterations, 5 leapfrog steps (HMC) or 1 (MALA)
        assert row.ours.grads >= 4 * 30 * (throughput.N_LEAPFROG if row.kernel == "hmc" else 1)
    table = throughput.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "n/a" in table
    out = throughput.write(rows, tmp_path / "tp")
    assert len(json.loads((out / "results.json").read_text())) == len(rows)
    assert "torch" in (out / "results.md").read_text()


def test_our_smc_starts_from_the_prior_reference_as_blackjax_does(monkeypatch):
    """BlackJAX's SMC starts at the prior it is given: ours must not first fit smc's default Laplace reference."""
    seen = []
    real = sampler.sample

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(throughput.sampler, "sample", spy)
    for name in throughput.SMC_TARGETS:
        throughput.ours_smc(name, 50, "mala", seed=0)
    assert [r.options["reference"] for r in seen] == ["prior"] * len(throughput.SMC_TARGETS)
    assert all(list(r.options.get("reference_evals", [0, 0])) == [0, 0] for r in seen)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cases=["smc", "fast"]), "cases must be among"),
        (dict(cases=[]), "cases must be among"),
        (dict(cases=["smc"], repeats=0), "repeats must be a positive integer"),
    ],
)
def test_bad_settings_are_configuration_errors(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        throughput.run_throughput(**kwargs, progress=None)


def test_cli_suite_throughput_writes_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(throughput, "peers_available", lambda: False)
    out = tmp_path / "tp"
    assert main(["bench", "--suite", "throughput", "--cases", "chains", "--seeds", "1", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| chains | funnel | hmc |" in printed and (out / "results.md").exists()


def test_cli_compile_option_reaches_our_kernels_and_times_their_compilation(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(throughput, "peers_available", lambda: False)
    calls = []

    def fake(n_draws, n_warmup, seed, compile=False, name="funnel", kernel="hmc"):
        calls.append((name, kernel, seed, compile))
        return throughput.Measurement(100, 9.0 if seed == 2 else 1.0)  # seed 2: the extra first run

    monkeypatch.setattr(throughput, "ours_chains", fake)
    argv = ["bench", "--suite", "throughput", "--cases", "chains", "--seeds", "2", "-o", "compile=true", "-q"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert calls == [(name, kernel, seed, True) for name, kernel in throughput.CHAIN_CASES for seed in (2, 0, 1)]
    printed = capsys.readouterr().out
    assert "| chains | funnel | hmc | 1000 | 10 | 100 (9.0) | n/a | n/a |" in printed
    assert "| chains | logreg | hmc | 1000 | 25 | 100 (9.0) | n/a | n/a |" in printed
    assert "| chains | logreg | mala | 1000 | 25 | 100 (9.0) | n/a | n/a |" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--suite", "throughput", "-o", "n_steps=3"], "takes one option, compile=true|false"),
        (["bench", "--cases", "smc"], "--cases applies to --suite throughput"),
        (["bench", "--suite", "throughput", "--methods", "smc"], "--suite throughput takes"),
        (["bench", "--suite", "throughput", "--cases", "nope"], "cases must be among"),
    ],
)
def test_cli_throughput_bad_input(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("name", ["gmm40", "funnel", "manywell", "gaussian", "logreg"])
def test_jax_transcriptions_match_our_log_densities(name):
    """The peers' targets are ours: same log density (constants included) at random points."""
    pytest.importorskip("jax", reason="the optional peers extra (jax, blackjax) is not installed")
    import jax
    import jax.numpy as jnp

    target = throughput._target(name, 3 if name == "gaussian" else None)
    x = torch.randn(16, target.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    ours = target.log_prob(x).numpy()
    theirs = np.asarray(jax.vmap(throughput._jax_log_density(target))(jnp.asarray(x.numpy(), dtype=jnp.float32)))
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-3)


def test_reference_of_the_peer_is_ours():
    pytest.importorskip("jax", reason="the optional peers extra (jax, blackjax) is not installed")
    import jax.numpy as jnp

    target = sampler.get_target("funnel")
    loc, scale, log_ref = throughput._jax_reference(target)
    x = np.linspace(-1, 1, target.dim)
    ref = torch.distributions.Normal(torch.tensor(np.array(loc), dtype=torch.float64), torch.tensor(np.array(scale)))
    expected = ref.log_prob(torch.as_tensor(x)).sum().item()
    assert float(log_ref(jnp.asarray(x, dtype=jnp.float32))) == pytest.approx(expected, rel=1e-5)
