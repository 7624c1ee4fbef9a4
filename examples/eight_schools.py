"""Eight schools (Rubin 1981; Gelman et al., BDA3 §5.5): a hierarchical model with named parameters.

Two parameterizations of the same posterior over the overall effect ``mu``, the spread ``tau``
and the school effects ``theta``:

* centered: ``theta_j ~ Normal(mu, tau)`` -- a funnel in (tau, theta) that troubles samplers;
* non-centered: ``theta_j = mu + tau * eta_j`` with ``eta_j ~ Normal(0, 1)``.

Run it: ``python examples/eight_schools.py`` (or ``sampler run examples/eight_schools.py:noncentered``).
"""

from __future__ import annotations

import torch
from torch import distributions as dist
from torch.distributions import constraints

import sampler

SCHOOLS = (
    "Choate",
    "Deerfield",
    "Phillips Andover",
    "Phillips Exeter",
    "Hotchkiss",
    "Lawrenceville",
    "St. Paul's",
    "Mt. Hermon",
)
DATA = {
    "y": [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0],  # estimated coaching effects
    "sigma": [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0],  # their standard errors
}
COORDS = {"school": SCHOOLS}


def _priors(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return dist.Normal(0.0, 5.0).log_prob(p["mu"]) + dist.HalfCauchy(5.0).log_prob(p["tau"])


def _likelihood(theta: torch.Tensor, data: dict[str, torch.Tensor]) -> torch.Tensor:
    return dist.Normal(theta, data["sigma"]).log_prob(data["y"]).sum(-1)


def centered_prior(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """``mu ~ Normal(0, 5)``, ``tau ~ HalfCauchy(5)``, ``theta_j ~ Normal(mu, tau)`` (a funnel itself)."""
    mu, tau = p["mu"][..., None], p["tau"][..., None]  # (..., 1): meet theta (..., 8)
    return _priors(p) + dist.Normal(mu, tau).log_prob(p["theta"]).sum(-1)


def centered_log_prob(p: dict[str, torch.Tensor], data: dict[str, torch.Tensor]) -> torch.Tensor:
    """The prior and ``y_j ~ Normal(theta_j, sigma_j)``; every value has batch axes in front."""
    return centered_prior(p) + _likelihood(p["theta"], data)


def noncentered_prior(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """``mu ~ Normal(0, 5)``, ``tau ~ HalfCauchy(5)``, ``eta_j ~ Normal(0, 1)``."""
    return _priors(p) + dist.Normal(0.0, 1.0).log_prob(p["eta"]).sum(-1)


def noncentered_log_prob(p: dict[str, torch.Tensor], data: dict[str, torch.Tensor]) -> torch.Tensor:
    """The prior and ``y_j ~ Normal(mu + tau eta_j, sigma_j)``."""
    return noncentered_prior(p) + _likelihood(p["mu"][..., None] + p["tau"][..., None] * p["eta"], data)


def _prior_draws(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """``mu``, ``tau`` (|Cauchy(0, 5)|: a ratio of normals) and eight standard normals ``eta``."""
    e = torch.randn(n, 11, generator=g)
    return {"mu": 5.0 * e[:, 8], "tau": 5.0 * (e[:, 9] / e[:, 10]).abs(), "eta": e[:, :8]}


def centered_prior_sample(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """``n`` prior draws of the centered model: ``theta = mu + tau eta``."""
    d = _prior_draws(n, g)
    return {"mu": d["mu"], "tau": d["tau"], "theta": d["mu"][:, None] + d["tau"][:, None] * d["eta"]}


def centered() -> sampler.Model:
    """The centered model: parameters ``mu``, ``tau`` (positive) and ``theta`` (one per school).

    It declares its prior, so ``smc`` starts from the prior's draws, which fill the funnel's neck
    (small ``tau``, ``theta`` close together) from the start.
    """
    params = {"mu": (), "tau": constraints.positive, "theta": sampler.Param((8,), dims=("school",))}
    return sampler.model(
        centered_log_prob,
        params,
        data=DATA,
        coords=COORDS,
        name="eight-schools-centered",
        prior_log_prob=centered_prior,
        prior_sample=centered_prior_sample,
    )


def noncentered() -> sampler.Model:
    """The non-centered model: parameters ``mu``, ``tau`` (positive) and ``eta`` (one per school)."""
    params = {"mu": (), "tau": constraints.positive, "eta": sampler.Param((8,), dims=("school",))}
    return sampler.model(
        noncentered_log_prob,
        params,
        data=DATA,
        coords=COORDS,
        name="eight-schools-noncentered",
        prior_log_prob=noncentered_prior,
        prior_sample=_prior_draws,
    )


def main(n_particles: int = 2000, seed: int = 0) -> sampler.Result:
    """Sample both parameterizations; print the non-centered summary, the school effects, and tau from each."""
    res = sampler.sample(noncentered(), method="smc", n_particles=n_particles, n_replicas=4, seed=seed)
    print(sampler.summary(res))
    theta = res.draws["mu"][..., None] + res.draws["tau"][..., None] * res.draws["eta"]  # (R, N, 8)
    for school, effect in zip(SCHOOLS, theta.flatten(0, 1).mean(0).tolist(), strict=True):
        print(f"  {school:<17} {effect:6.2f}")
    funnel = sampler.sample(centered(), method="smc", n_particles=n_particles, n_replicas=4, seed=seed)
    rhat = sampler.summary(funnel).values["rhat_max"]
    print(
        f"tau: mean {float(res.draws['tau'].mean()):.2f} (non-centered), {float(funnel.draws['tau'].mean()):.2f} "
        f"(centered, R-hat {rhat:.3f}: its funnel is harder to sample; both start from their priors)"
    )
    return res


if __name__ == "__main__":
    main()
