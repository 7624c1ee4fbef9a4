"""The summary's PSIS Pareto k, R-hat and bulk ESS against ArviZ's, which they replace on the hot path.

`sampler.core.psis.pareto_k` and `sampler.analysis.stats.rhat_and_ess` are written from the
papers so that a run and its summary need not import ArviZ; here they must agree with
`arviz.psislw`, `arviz.rhat` and `arviz.ess(method="bulk")` to rounding (1e-9 relative), on
autocorrelated chains, particles with ties (resampled), odd lengths, one chain, degenerate and
NaN coordinates, and light to very heavy-tailed importance weights.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from sampler.analysis.stats import pareto_k, rhat_and_ess
from sampler.io._arviz import arviz


def _arviz_rhat_ess(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    az = arviz()
    data = az.convert_to_dataset({"x": x})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.rhat(data)["x"].values, az.ess(data, method="bulk")["x"].values


def _ar1(rng: np.random.Generator, chains: int, draws: int, d: int, phi: float) -> np.ndarray:
    x = np.empty((chains, draws, d))
    x[:, 0] = rng.standard_normal((chains, d))
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + np.sqrt(1 - phi**2) * rng.standard_normal((chains, d))
    return x


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shifted = _ar1(rng, 4, 300, 3, 0.5)
    shifted[0] += 0.8  # one chain off: R-hat well above 1
    ties = rng.integers(0, 5, size=(4, 200, 3)).astype(float)  # resampled particles: many ties
    heavy = rng.standard_cauchy((3, 151, 2))  # odd length, heavy tails
    return {
        "ar1 mixing": _ar1(rng, 4, 500, 5, 0.3),
        "ar1 slow": _ar1(rng, 4, 400, 3, 0.97),
        "anticorrelated": _ar1(rng, 2, 301, 2, -0.6),
        "chains disagree": shifted,
        "ties": ties,
        "cauchy, odd draws": heavy,
        "one chain": _ar1(rng, 1, 200, 3, 0.6),
        "short": rng.standard_normal((2, 5, 2)),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_rhat_and_bulk_ess_equal_arviz(name):
    x = _cases()[name]
    rhat, ess = rhat_and_ess(torch.from_numpy(x))
    ref_rhat, ref_ess = _arviz_rhat_ess(x)
    np.testing.assert_allclose(ess, ref_ess, rtol=1e-9)
    np.testing.assert_allclose(rhat, ref_rhat, rtol=1e-9)  # NaN where ArviZ's is (one chain)


def test_degenerate_coordinates():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 100, 3))
    x[..., 1] = 2.5  # never varies
    x[2, 7, 2] = np.nan
    rhat, ess = rhat_and_ess(torch.from_numpy(x))
    ref_rhat, ref_ess = _arviz_rhat_ess(x)
    np.testing.assert_allclose(ess[:2], ref_ess[:2], rtol=1e-9)
    assert ess[1] == 400 and np.isnan(ess[2]) and np.isnan(ref_ess[2])
    np.testing.assert_allclose(rhat[[0, 2]], ref_rhat[[0, 2]], rtol=1e-9)
    rhat, ess = rhat_and_ess(torch.zeros(4, 3, 2))  # fewer than 4 draws
    assert np.isnan(rhat).all() and np.isnan(ess).all()


def test_rhat_flags_disagreeing_chains():
    rhat, _ = rhat_and_ess(torch.from_numpy(_cases()["chains disagree"]))
    assert (rhat > 1.01).all()  # the summary's warning threshold


@pytest.mark.parametrize("n", [12, 100, 1000, 4000])
@pytest.mark.parametrize("tail", ["gaussian", "t3", "cauchy", "pareto"])
def test_pareto_k_equals_arviz(n, tail):
    gen = torch.Generator().manual_seed(n)
    base = torch.randn(3, n, generator=gen, dtype=torch.float64)
    log_w = {
        "gaussian": 0.5 * base,  # light: k well below 0.5
        "t3": torch.distributions.StudentT(3.0).sample((3, n)).double().abs().log(),
        "cauchy": torch.distributions.Cauchy(0.0, 1.0).sample((3, n)).double().abs().log(),
        "pareto": 1.5 * base.exp(),  # log-normal-ish log weights: very heavy
    }[tail]
    log_w[1, :3] = -torch.inf  # zero weights count as such
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ref = arviz().psislw(np.where(np.isfinite(log_w.numpy()), log_w.numpy(), -1e300))
    np.testing.assert_allclose(pareto_k(log_w), ref, rtol=1e-9)


def test_pareto_k_shapes_and_degenerate_input():
    assert pareto_k(torch.zeros(2, 5, 50)).shape == (2, 5)
    assert np.isnan(pareto_k(torch.zeros(3, 50))).all()  # equal weights
    assert np.isnan(pareto_k(torch.randn(2, 9))).all()  # too few
    assert pareto_k(torch.randn(40, dtype=torch.float32)).shape == (1,)


def test_a_run_and_its_summary_do_not_import_arviz():
    code = (
        "import sys, sampler\n"
        "r = sampler.sample('gmm40', n_particles=200, n_replicas=2, seed=0)\n"
        "str(sampler.summary(r))\n"
        "assert 'arviz' not in sys.modules, 'arviz imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
