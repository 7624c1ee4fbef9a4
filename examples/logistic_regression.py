"""Bayesian logistic regression on the Challenger O-ring data (23 launches, shipped in examples/data).

``distress_i ~ Bernoulli(sigmoid(alpha + beta * z_i))`` with ``z_i`` the launch temperature,
standardized; weakly informative priors ``alpha, beta ~ Normal(0, 2.5)`` (Gelman et al. 2008).
The question of 28 January 1986: the probability of O-ring distress at 31 degrees F.

Run it: ``python examples/logistic_regression.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import distributions as dist

import sampler

DATA_FILE = Path(__file__).parent / "data" / "challenger.csv"


def load_data() -> dict[str, np.ndarray]:
    """``temperature`` (degrees F) and ``distress`` (0/1) of the 23 launches."""
    table = np.loadtxt(DATA_FILE, delimiter=",", comments="#", skiprows=5)
    return {"temperature": table[:, 0], "distress": table[:, 1]}


def make_model() -> sampler.Model:
    """The model: parameters ``alpha`` (intercept) and ``beta`` (slope per standard deviation of temperature)."""
    raw = load_data()
    temp = raw["temperature"]
    data = {"z": (temp - temp.mean()) / temp.std(), "distress": raw["distress"]}

    def log_prob(p: dict[str, torch.Tensor], d: dict[str, torch.Tensor]) -> torch.Tensor:
        prior = dist.Normal(0.0, 2.5).log_prob(p["alpha"]) + dist.Normal(0.0, 2.5).log_prob(p["beta"])
        logits = p["alpha"][..., None] + p["beta"][..., None] * d["z"]  # (..., 23)
        return prior + dist.Bernoulli(logits=logits).log_prob(d["distress"]).sum(-1)

    return sampler.model(log_prob, {"alpha": (), "beta": ()}, data=data, name="challenger-logistic")


def distress_probability(res: sampler.Result, temperature: float) -> torch.Tensor:
    """Posterior draws ``(R * N,)`` of the probability of distress at ``temperature`` (degrees F)."""
    temp = load_data()["temperature"]
    z = (temperature - temp.mean()) / temp.std()
    return torch.sigmoid(res.draws["alpha"] + res.draws["beta"] * z).flatten()


def main(n_particles: int = 2000, seed: int = 0) -> sampler.Result:
    """Sample the posterior, print the summary and the predicted risk at 31 degrees F."""
    res = sampler.sample(make_model(), method="smc", n_particles=n_particles, n_replicas=4, seed=seed)
    print(sampler.summary(res))
    p31 = distress_probability(res, 31.0)
    lo, hi = torch.quantile(p31.double(), torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
    print(f"P(distress at 31 F): posterior mean {p31.mean():.3f}, 90% interval [{lo:.3f}, {hi:.3f}]")
    return res


if __name__ == "__main__":
    main()
