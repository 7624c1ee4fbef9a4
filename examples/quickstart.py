"""Quick start: define a Boltzmann target, sample it with SMC, read the summary, export to ArviZ.

Run: python examples/quickstart.py [--out result.nc]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import sampler


class DoubleWell(sampler.BoltzmannTarget):
    """p(x) ∝ exp(-U(x)) with two wells at x1 = ±1."""

    dim = 2

    def energy(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., 2) -> (...)
        return (x[..., 0] ** 2 - 1) ** 2 / 0.1 + 0.5 * x[..., 1] ** 2


def main(out: str | None = None, n_particles: int = 2000) -> sampler.Result:
    res = sampler.sample(DoubleWell(), method="smc", n_particles=n_particles, n_replicas=4, seed=0)
    print(sampler.summary(res))
    print("samples:", tuple(res.samples.shape), " P(x1 > 0) =", float((res.samples[..., 0] > 0).double().mean()))

    idata = res.to_arviz()  # arviz.InferenceData: posterior x (chain=replica, draw=particle, x_dim_0)
    path = Path(out) if out else Path(tempfile.mkdtemp()) / "double_well.nc"
    idata.to_netcdf(str(path))
    print("saved", path)
    return res


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="NetCDF file to write")
    main(parser.parse_args().out)
