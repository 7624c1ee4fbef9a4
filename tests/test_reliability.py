"""Honest failures and honest error bars: each test here failed before the fix it checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sampler
from sampler.cli import main
from sampler.core.result import pooled_log_Z
from sampler.errors import ConfigurationError, TargetError


def test_log_Z_stderr_is_not_capped_when_replicas_disagree():
    """Replicas 36 nats apart used to print "± 1": the delta method saturates when one replica
    carries the whole mean; the spread of the logs does not."""
    lz = torch.tensor([0.0, -36.0, -36.5, -37.0], dtype=torch.float64)
    _, se = pooled_log_Z(lz)
    assert se == pytest.approx(float(lz.std()) / 2)
    assert se > 9
    # Replicas that agree: both estimates are close, and the larger one is reported.
    close = torch.tensor([0.01, -0.02, 0.005, 0.0], dtype=torch.float64)
    rel = torch.exp(close - torch.logsumexp(close, 0) + math.log(4))
    delta, spread = float(rel.std()) / 2, float(close.std()) / 2
    assert pooled_log_Z(close)[1] == pytest.approx(max(delta, spread))
    assert delta == pytest.approx(spread, rel=0.05)


def test_a_hopeless_run_says_so_first():
    """d = 1000 with N = 8: every replica is biased low by nats, which no spread-based error bar can
    show; the summary says, before the table, that the replicas disagree and log Z is not to be
    trusted (it used to print a tidy "± 0.75" only)."""
    target = sampler.targets.Gaussian(mean=[1.0] * 1000)
    res = sampler.sample(target, "smc", n_particles=8, n_replicas=4, seed=0, progress=False)
    assert abs(res.log_Z - target.log_Z) > 3  # the run is useless ...
    report = sampler.summary(res)
    text = str(report)
    assert text.startswith("WARNING: the replicas disagree")  # ... and the summary says so first
    assert "log Z estimates spread" in text and report.values["log_Z_spread"] > 1
    assert "n_steps=" in report.warnings[0]
    assert "kernel='hmc', n_leapfrog=10" in report.warnings[0]  # MALA runs are also told of longer moves


def test_the_advice_names_the_option_the_run_has():
    """A waste-free run is told about waste_free=, not about n_steps= (which it refuses)."""
    target = sampler.targets.Gaussian(mean=[1.0] * 1000)
    res = sampler.sample(target, "smc", waste_free=2, n_particles=8, n_replicas=4, seed=0, progress=False)
    advice = sampler.summary(res).warnings[0]
    assert "waste_free=" in advice and "n_steps=" not in advice
    hmc = sampler.sample(target, "smc", kernel="hmc", n_particles=8, n_replicas=4, seed=0, progress=False)
    advice = sampler.summary(hmc).warnings[0]
    assert "n_steps=" in advice and "kernel='hmc'" not in advice  # already HMC moves


def _gaussian_hmc_chains(step_size: float, **options):
    target = sampler.target(log_prob=lambda x: -0.5 * (x**2).sum(-1), dim=2, name="normal")
    options.setdefault("n_particles", 50)
    return sampler.sample(
        target,
        "hmc",
        n_replicas=3,
        seed=0,
        n_warmup=0,
        step_size=step_size,
        trajectory="fixed",
        n_leapfrog=10,
        metric="identity",
        progress=False,
        **options,
    )


def test_diverging_hmc_chains_are_counted_warned_and_exported(tmp_path):
    """Leapfrog steps of 3 on a standard normal are unstable (an amplification of ~6.9 per step):
    every trajectory's energy error explodes, every transition diverges. The summary used to
    report only an acceptance of 0; a step of 0.3 diverges nowhere."""
    bad = _gaussian_hmc_chains(3.0, thin=2)
    divergent = bad.divergences()
    assert divergent.shape == (100, 3) and bool(divergent.all())  # (iterations, chains)
    report = sampler.summary(bad)
    assert report.values["divergent"] == 300 and report.values["divergent_warmup"] == 0
    assert any("300 HMC transitions after warm-up diverged" in w and "target_acceptance=" in w for w in report.warnings)
    assert "divergent transitions" in dict(report.rows)
    diverging = bad.to_arviz().sample_stats["diverging"]  # ArviZ's name and layout
    assert diverging.dims == ("chain", "draw") and diverging.shape == (3, 50) and bool(diverging.values.all())
    back = sampler.load(bad.save(tmp_path / "bad.nc"))
    assert torch.equal(back.divergent_draws(), bad.divergent_draws())

    good = _gaussian_hmc_chains(0.3)
    assert not bool(good.divergences().any()) and not bool(good.to_arviz().sample_stats["diverging"].values.any())
    assert sampler.summary(good).values["divergent"] == 0
    assert not any("diverged" in w for w in sampler.summary(good).warnings)
    mala = sampler.sample("gmm40", "mala", n_particles=20, n_replicas=2, n_warmup=10, seed=0, progress=False)
    assert mala.divergences() is None and "diverging" not in mala.to_arviz().sample_stats


def test_divergent_draws_follow_the_thinning():
    """Steps of 2.01 are just unstable: a trajectory diverges or not by where it starts. Thinning
    by 2 keeps every second iteration of the same chains, and their divergences with them."""
    every = _gaussian_hmc_chains(2.01, n_particles=100).divergent_draws()  # (R, 100) iterations
    assert 0.1 < float(every.double().mean()) < 0.9  # some diverge, some do not
    thinned = _gaussian_hmc_chains(2.01, thin=2).divergent_draws()  # (R, 50)
    assert torch.equal(thinned, every[:, 1::2])


def test_a_good_run_has_no_warning():
    res = sampler.sample("gmm40", n_particles=1000, n_replicas=4, seed=0, progress=False)
    assert sampler.summary(res).warnings == ()


@pytest.mark.parametrize("seed", [2**64, -1, 1.5, True])
def test_bad_seeds_are_configuration_errors(seed):
    with pytest.raises(ConfigurationError, match="seed"):
        sampler.sample("gmm40", n_particles=10, seed=seed, progress=False)


def test_the_largest_seed_works():
    assert sampler.sample("gmm40", n_particles=10, n_replicas=1, seed=2**64 - 1, progress=False).seed == 2**64 - 1


def test_an_energy_autograd_cannot_differentiate_is_refused():
    """NumPy inside the energy used to give a silent zero gradient (MALA then samples the wrong law)."""
    target = sampler.target(energy=lambda x: torch.as_tensor(np.sum(x.detach().numpy() ** 2, -1)), dim=2)
    with pytest.raises(TargetError, match="autograd cannot differentiate"):
        sampler.sample(target, n_particles=20, n_replicas=1, seed=0, progress=False)


def test_a_constant_log_density_still_has_a_zero_gradient():
    flat = sampler.target(log_prob=lambda x: torch.zeros(x.shape[:-1], dtype=x.dtype), dim=2)
    lp, grad = flat.log_prob_and_grad(torch.randn(5, 2))
    assert torch.equal(grad, torch.zeros(5, 2)) and torch.equal(lp, torch.zeros(5))


@pytest.mark.parametrize("out", ["", "{tmp}", "{tmp}/file.txt/sub.nc"])
def test_out_is_checked_before_sampling(tmp_path, capsys, out):
    (tmp_path / "file.txt").write_text("x")
    assert main(["run", "--out", out.format(tmp=tmp_path), "--particles", "50", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "--out" in captured.err and "log Z" not in captured.out  # refused before any sampling


def test_a_failed_write_saves_to_a_fallback_and_says_where(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real_save = sampler.Result.save
    target_path = tmp_path / "run.nc"

    def failing_save(self, path):
        if str(path) == str(target_path):
            raise OSError("disk full")
        return real_save(self, path)

    monkeypatch.setattr(sampler.Result, "save", failing_save)
    args = ["run", "gmm40", "--out", str(target_path), "--particles", "50", "--seed", "1", "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    fallback = tmp_path / "sampler-gmm40-smc-seed1.nc"
    assert "disk full" in err and str(fallback) in err
    assert sampler.load(fallback).seed == 1


def test_bench_with_no_seeds_is_an_error(capsys):
    assert main(["bench", "--seeds", "0", "--methods", "smc", "--targets", "gmm40"]) == 2
    assert "--seeds must be a positive integer" in capsys.readouterr().err


def test_a_plain_run_says_it_is_repeated_with_its_seed_and_a_sharded_one_with_distributed(capsys):
    assert main(["run", "gmm40", "--particles", "64", "--seed", "5", "--quiet"]) == 0
    assert "(repeat with --seed 5)" in capsys.readouterr().out
    assert main(["run", "gmm40", "--particles", "64", "--seed", "5", "--quiet", "--distributed"]) == 0
    assert "(repeat with --seed 5 --distributed)" in capsys.readouterr().out


@pytest.mark.parametrize("method, options, other", [("smc", {"n_steps": 2}, {"n_steps": 3}), ("mala", {}, {"thin": 2})])
def test_resuming_with_other_options_is_refused(tmp_path, method, options, other):
    """A runner built with options other than the run's cannot continue its checkpoint."""
    ck = tmp_path / "run.ckpt"
    base = {"n_warmup": 10} if method == "mala" else {}
    sampler.sample(
        "gmm40", method, n_particles=32, n_replicas=2, seed=0, checkpoint=ck, checkpoint_every=1, **base, **options
    )
    runner = sampler.method(method, **base, **other)
    with pytest.raises(ConfigurationError, match="other options"):
        runner.resume(ck, sampler.get_target("gmm40"))
    assert sampler.method(method, **base, **options).resume(ck, sampler.get_target("gmm40")).seed == 0
