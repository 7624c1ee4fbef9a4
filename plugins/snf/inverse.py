"""Conditional SNFs for Bayesian inverse problems (Hagemann, Hertrich & Steidl 2022).

A problem has a prior ``p(x)`` on ``R^d`` and a forward model ``y = A(x) + noise``; the
posterior ``p(x | y) ∝ p(x) p(y | x)`` has the evidence ``p(y)`` as its normalizer. A
conditional SNF has couplings conditioned on ``y`` and Langevin/Metropolis layers on the
intermediate posterior energies ``E_t = (1 - t) E_latent + t (-log p(x) - log p(y | x))``. It is
trained on joint samples ``(x, y)`` from prior x forward model (forward KL, amortized over y),
optionally mixed with the reverse KL; at inference it samples the posterior of a new ``y`` with
exact path weights, so ``log Z`` of the result estimates ``log p(y)``.

:class:`LinearGaussianProblem` has everything in closed form (posterior mean and covariance,
evidence, exact posterior samples): the worked example and the tests use it.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sampler.ext import ConfigurationError, EvaluationCounter, Result, Target
from sampler_plugins.snf.flow import SNF
from sampler_plugins.snf.training import TrainingLog, fit

__all__ = ["InverseProblem", "LinearGaussianProblem", "PosteriorTarget", "ConditionalSNF"]


class InverseProblem(abc.ABC):
    """A Bayesian inverse problem: prior on ``R^dim``, observations in ``R^obs_dim``.

    Subclasses implement the (normalized) :meth:`log_prior`, :meth:`log_likelihood` and
    :meth:`sample_joint`. Everything is batched over leading axes.
    """

    dim: int
    obs_dim: int
    #: Location and scale of the prior (the conditional SNF's latent Gaussian).
    prior_loc: Any = 0.0
    prior_scale: Any = 1.0

    @abc.abstractmethod
    def log_prior(self, x: Tensor) -> Tensor:
        """``log p(x)`` for ``x`` ``(..., dim)``, shape ``(...)``."""

    @abc.abstractmethod
    def log_likelihood(self, y: Tensor, x: Tensor) -> Tensor:
        """``log p(y | x)`` for ``y`` ``(..., obs_dim)`` and ``x`` ``(..., dim)`` (broadcast), shape ``(...)``."""

    @abc.abstractmethod
    def sample_joint(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` joint draws ``(x (n, dim), y (n, obs_dim))`` on the generator's device."""

    def posterior(self, y: Tensor) -> PosteriorTarget:
        """The posterior target for the observation ``y`` ``(obs_dim,)``."""
        return PosteriorTarget(self, y)


class LinearGaussianProblem(InverseProblem):
    """``x ~ N(m0, diag(s0^2))``, ``y = A x + sigma ξ``: the posterior is Gaussian in closed form.

    Args:
        A: ``(obs_dim, dim)`` forward operator.
        prior_mean: ``(dim,)`` or scalar ``m0``.
        prior_std: ``(dim,)`` or scalar ``s0``.
        noise_std: ``sigma``.
    """

    def __init__(self, A, prior_mean=0.0, prior_std=1.0, noise_std: float = 0.1):
        self.A = np.atleast_2d(np.asarray(A, dtype=np.float64))
        self.obs_dim, self.dim = self.A.shape
        self.prior_loc = np.broadcast_to(np.asarray(prior_mean, dtype=np.float64), (self.dim,)).copy()
        self.prior_scale = np.broadcast_to(np.asarray(prior_std, dtype=np.float64), (self.dim,)).copy()
        if not (self.prior_scale > 0).all() or not noise_std > 0:
            raise ConfigurationError("prior_std and noise_std must be positive")
        self.noise_std = float(noise_std)

    def _t(self, name: str, like: Tensor) -> Tensor:
        return torch.as_tensor(getattr(self, name), device=like.device, dtype=like.dtype)

    def log_prior(self, x: Tensor) -> Tensor:
        z = (x - self._t("prior_loc", x)) / self._t("prior_scale", x)
        return -0.5 * (z**2).sum(-1) - float(np.log(self.prior_scale).sum()) - 0.5 * self.dim * math.log(2 * math.pi)

    def log_likelihood(self, y: Tensor, x: Tensor) -> Tensor:
        r = (y - x @ self._t("A", x).T) / self.noise_std
        return -0.5 * (r**2).sum(-1) - self.obs_dim * (math.log(self.noise_std) + 0.5 * math.log(2 * math.pi))

    def sample_joint(self, n, generator=None, dtype=None):
        device = generator.device if generator is not None else None
        dtype = dtype or torch.get_default_dtype()
        e = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        x = self._t("prior_loc", e) + self._t("prior_scale", e) * e
        y = x @ self._t("A", x).T + self.noise_std * torch.randn(
            n, self.obs_dim, generator=generator, device=device, dtype=dtype
        )
        return x, y

    def posterior_moments(self, y) -> tuple[np.ndarray, np.ndarray]:
        """Exact posterior mean ``(dim,)`` and covariance ``(dim, dim)`` for ``y`` ``(obs_dim,)``."""
        y = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y, dtype=np.float64)
        prec = np.diag(self.prior_scale**-2) + self.A.T @ self.A / self.noise_std**2
        cov = np.linalg.inv(prec)
        mean = cov @ (self.prior_loc / self.prior_scale**2 + self.A.T @ y / self.noise_std**2)
        return mean, 0.5 * (cov + cov.T)

    def log_evidence(self, y) -> float:
        """``log p(y)``: ``y ~ N(A m0, A S0 A^T + sigma^2 I)``."""
        y = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y, dtype=np.float64)
        cov = self.A @ np.diag(self.prior_scale**2) @ self.A.T + self.noise_std**2 * np.eye(self.obs_dim)
        r = y - self.A @ self.prior_loc
        _, logdet = np.linalg.slogdet(2 * math.pi * cov)
        return float(-0.5 * r @ np.linalg.solve(cov, r) - 0.5 * logdet)


class PosteriorTarget(Target):
    """The unnormalized posterior ``p(x) p(y | x)`` of ``problem`` given ``y``.

    ``condition`` is ``y`` as a tensor ``(..., obs_dim)``: one observation ``(obs_dim,)`` for
    inference, or one per particle ``(1, B, obs_dim)`` in amortized training; conditional SNF
    layers read it. ``log_Z = log p(y)`` when the problem knows its evidence (one observation);
    ``sample`` draws exact posterior samples when the problem knows its posterior in closed form.
    """

    def __init__(self, problem: InverseProblem, y: Tensor | np.ndarray):
        self.problem = problem
        y = torch.as_tensor(y) if not isinstance(y, Tensor) else y
        if y.shape[-1] != problem.obs_dim:
            raise ConfigurationError(f"observation must end in size {problem.obs_dim}, got shape {tuple(y.shape)}")
        self.condition = y
        self.dim = problem.dim
        self.reference_loc = problem.prior_loc
        self.reference_scale = problem.prior_scale
        single = y.ndim == 1
        self.log_Z = problem.log_evidence(y) if single and hasattr(problem, "log_evidence") else None

    @property
    def name(self) -> str:
        return "posterior"

    def log_prob(self, x: Tensor) -> Tensor:
        y = self.condition.to(device=x.device, dtype=x.dtype)
        return self.problem.log_prior(x) + self.problem.log_likelihood(y, x)

    def sample(self, n, generator=None, device=None, dtype=None) -> Tensor:
        """Exact posterior draws ``(n, dim)`` (closed-form problems with one observation only)."""
        moments = getattr(self.problem, "posterior_moments", None)
        if moments is None or self.condition.ndim != 1:
            raise NotImplementedError("exact posterior samples need a closed-form problem and one observation")
        mean, cov = moments(self.condition)
        device = self.sample_device(generator, device)
        dtype = dtype or torch.get_default_dtype()
        e = torch.randn(n, self.dim, generator=generator, device=device, dtype=torch.float64)
        chol = torch.as_tensor(np.linalg.cholesky(cov), device=e.device)
        return (torch.as_tensor(mean, device=e.device) + e @ chol.T).to(dtype)


class ConditionalSNF:
    """An SNF conditioned on observations, for an :class:`InverseProblem`.

    Args:
        problem: the inverse problem (its prior's location/scale is the latent Gaussian).
        **flow_options: passed to :class:`~sampler_plugins.snf.flow.SNF` (``n_stages``,
            ``n_couplings``, ``hidden``, ``langevin_steps``, ``mh_steps``, ...; ``seed`` for
            initial weights that depend on it alone, leaving torch's global random state alone).

    Use :meth:`fit` (forward KL on joint samples by default), then :meth:`posterior` for a new
    observation. :attr:`model` is the underlying :class:`SNF` (``save``/``load`` it).
    """

    def __init__(self, problem: InverseProblem, **flow_options: Any):
        self.problem = problem
        self.model = SNF(
            problem.dim, problem.prior_loc, problem.prior_scale, context_dim=problem.obs_dim, **flow_options
        )

    def to(self, *args: Any, **kwargs: Any) -> ConditionalSNF:
        """Move the flow (``torch.nn.Module.to``)."""
        self.model.to(*args, **kwargs)
        return self

    def fit(
        self,
        iterations: int = 500,
        batch_size: int = 256,
        lr: float = 2e-3,
        loss: str = "forward",
        forward_weight: float = 0.5,
        generator: torch.Generator | None = None,
        counter: EvaluationCounter | None = None,
        progress: bool | None = None,
        **options: Any,
    ) -> TrainingLog:
        """Train on fresh joint samples ``(x, y)`` each iteration (amortized over ``y``).

        ``loss="forward"`` (maximum likelihood on joint samples, the inverse-problem SNF paper's
        choice), ``"mix"`` adds the reverse KL on the posteriors of the batch's observations, or
        ``"reverse"`` (the batch's observations only). Other options go to :func:`~sampler_plugins.snf.training.fit`.
        """
        problem = self.problem
        dtype = self.model.dtype

        def joint(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
            return problem.sample_joint(n, gen, dtype)

        return fit(
            self.model,
            lambda cond: PosteriorTarget(problem, cond),
            iterations=iterations,
            batch_size=batch_size,
            lr=lr,
            loss=loss,
            forward_weight=forward_weight,
            samples=joint,
            generator=generator,
            counter=counter,
            progress=progress,
            **options,
        )

    def posterior(
        self, y: Tensor, n_particles: int = 2000, n_replicas: int = 1, seed: int | None = None, **kwargs: Any
    ) -> Result:
        """Sample the posterior of ``y`` ``(obs_dim,)``: a :class:`sampler.Result` with weighted
        samples, equally weighted ``samples`` and ``log_Z`` estimating ``log p(y)``."""
        y = torch.as_tensor(y, dtype=self.model.dtype, device=self.model.device)
        if y.shape != (self.problem.obs_dim,):
            raise ConfigurationError(
                f"posterior() takes one observation of shape ({self.problem.obs_dim},), got {tuple(y.shape)}"
            )
        return self.model.run(
            PosteriorTarget(self.problem, y), n_particles=n_particles, n_replicas=n_replicas, seed=seed, **kwargs
        )
