"""The base of the posteriordb targets: :class:`Posterior`, Stan's densities, transforms and a 1-D quadrature.

A :class:`Posterior` is a :class:`sampler.Target` on Stan's *unconstrained* space: its
``log_prob(x)`` is the Stan model's ``target`` at the constrained parameters ``constrain(x)``
plus the log-Jacobian of Stan's constraining transform, with every density's normalizing constant
kept (as ``target += normal_lpdf(...)`` keeps it; a ``~`` statement would drop it), so that
``log_Z = log ∫ exp(log_prob(x)) dx`` is a well-defined number. Improper flat priors contribute 0,
as in Stan. Priors on positive parameters are Stan's full densities restricted to (0, ∞) and not
renormalized (a ``real<lower=0> sigma`` with ``sigma ~ cauchy(0, s)`` integrates to 1/2).
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from scipy import integrate
from torch import Tensor

import sampler

__all__ = [
    "Posterior",
    "normal_lpdf",
    "cauchy_lpdf",
    "gamma_lpdf",
    "poisson_log_lpmf",
    "interval_transform",
    "interval_inverse",
    "log_quad_1d",
]

DATA_DIR = Path(__file__).parent / "data"
LOG_2PI = math.log(2.0 * math.pi)


@functools.cache
def _load(kind: str, name: str) -> dict[str, np.ndarray]:
    """The arrays of ``data/<kind>-<name>.npz`` (``kind``: ``data`` or ``ref``), read once."""
    with np.load(DATA_DIR / f"{kind}-{name}.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# --- Stan's densities, full (normalizing constants kept); elementwise, broadcasting -----------------


def normal_lpdf(
    y: Tensor, mu: Tensor | float, sigma: Tensor | float, log_sigma: Tensor | float | None = None
) -> Tensor:
    """``log N(y | mu, sigma²)`` elementwise; pass ``log_sigma`` when it is known exactly (``sigma = exp(u)``)."""
    if log_sigma is None:
        log_sigma = torch.log(sigma) if isinstance(sigma, Tensor) else math.log(sigma)
    return -0.5 * ((y - mu) / sigma) ** 2 - log_sigma - 0.5 * LOG_2PI


def cauchy_lpdf(y: Tensor, mu: float, scale: float) -> Tensor:
    """``log Cauchy(y | mu, scale)`` elementwise."""
    return -math.log(math.pi * scale) - torch.log1p(((y - mu) / scale) ** 2)


def gamma_lpdf(log_y: Tensor, shape: float, rate: float) -> Tensor:
    """``log Gamma(y | shape, rate)`` at ``y = exp(log_y)`` elementwise (Stan's ``gamma_lpdf``)."""
    return shape * math.log(rate) - math.lgamma(shape) + (shape - 1.0) * log_y - rate * torch.exp(log_y)


def poisson_log_lpmf(k: Tensor, eta: Tensor) -> Tensor:
    """``log Poisson(k | exp(eta))`` elementwise (Stan's ``poisson_log_lpmf``)."""
    return k * eta - torch.exp(eta) - torch.lgamma(k + 1.0)


# --- Stan's constraining transforms ---------------------------------------------------------------


def interval_transform(u: Tensor, lower: Tensor | float, upper: Tensor | float) -> tuple[Tensor, Tensor]:
    """Stan's ``real<lower=L, upper=U>``: ``(L + (U - L) inv_logit(u), log-Jacobian)`` elementwise.

    The log-Jacobian is ``log(U - L) + log inv_logit(u) + log(1 - inv_logit(u))``.
    """
    width = upper - lower
    log_width = torch.log(width) if isinstance(width, Tensor) else math.log(width)
    value = lower + width * torch.sigmoid(u)
    log_jac = log_width + torch.nn.functional.logsigmoid(u) + torch.nn.functional.logsigmoid(-u)
    return value, log_jac


def interval_inverse(v: Tensor, lower: Tensor | float, upper: Tensor | float) -> Tensor:
    """The inverse of :func:`interval_transform`: ``logit((v - L) / (U - L))``."""
    p = (v - lower) / (upper - lower)
    return torch.log(p) - torch.log1p(-p)


# --- quadrature -------------------------------------------------------------------------------------


def log_quad_1d(log_f: Callable[[np.ndarray], np.ndarray], half_width: float = 40.0) -> float:
    """``log ∫ exp(log_f(s)) ds`` over the real line for a smooth, unimodal ``log_f``.

    ``log_f`` is vectorized over a NumPy array of ``s``. The integrand is located on a grid of
    ``[-w, w]`` (step 0.005; ``w`` starts at ``half_width`` and doubles, up to 320, until the
    integrand at both ends is below ``e^-80`` of its peak); the integral is then taken by adaptive
    Gauss–Kronrod (``scipy.integrate.quad``, relative tolerance 1e-12) over the range where
    ``log_f`` is within 80 of its maximum, with the maximum factored out.

    Raises:
        ValueError: if the integrand is still not negligible at ``±320``.
    """
    w = half_width
    while True:
        grid = np.arange(-w, w, 0.005)
        vals = log_f(grid)
        vals = np.where(np.isfinite(vals), vals, -np.inf)
        i_max = int(np.argmax(vals))
        peak = float(vals[i_max])
        inside = np.nonzero(vals > peak - 80.0)[0]
        if inside[0] > 0 and inside[-1] < len(grid) - 1:
            break
        if w >= 320.0:
            raise ValueError("the integrand is not negligible at s = ±320")
        w *= 2.0
    a, b = float(grid[inside[0] - 1]), float(grid[inside[-1] + 1])
    value, _ = integrate.quad(
        lambda s: math.exp(float(log_f(np.asarray([s]))[0]) - peak),
        a,
        b,
        points=[float(grid[i_max])],
        limit=500,
        epsabs=0.0,
        epsrel=1e-12,
    )
    return peak + math.log(value)


# --- the base class ---------------------------------------------------------------------------------


class Posterior(sampler.Target):
    """A posteriordb posterior on Stan's unconstrained space, with its reference draws.

    Subclasses set the class attributes below, ``dim`` and ``dim_names`` (the unconstrained
    coordinates), and implement :meth:`log_prob`, :meth:`constrain` and :meth:`unconstrain`.

    Attributes:
        posterior_name: posteriordb's posterior name (``"<data>-<model>"``), also :attr:`name`.
        data_name: the posteriordb dataset (``data/data-<data_name>.npz``).
        reference_name: the posteriordb reference posterior (``data/ref-<reference_name>.npz``).
        param_names: posteriordb's names of the constrained parameters, ``(P,)``, in the
            reference's order (``"theta[1]"`` ... 1-based, as Stan names them).
        reference_mean, reference_sd: mean and sd (ddof 1) of every reference draw, by name.
        reference_draws: ``(n, P)`` float64 NumPy array, the shipped thinned reference draws
            (every 10th draw of each of posteriordb's 10 chains: n = 1000), columns in
            ``param_names`` order.
        n_reference_draws: how many draws ``reference_mean`` and ``reference_sd`` are from.
        log_Z: ``log ∫ exp(log_prob(x)) dx`` where computable exactly, else ``None``.
    """

    posterior_name: str
    data_name: str
    reference_name: str

    def __init__(self) -> None:
        self.data = _load("data", self.data_name)
        ref = _load("ref", self.reference_name)
        self.param_names: tuple[str, ...] = tuple(str(n) for n in ref["names"])
        self.reference_mean: dict[str, float] = {n: float(m) for n, m in zip(self.param_names, ref["mean"])}
        self.reference_sd: dict[str, float] = {n: float(s) for n, s in zip(self.param_names, ref["sd"])}
        self.reference_draws: np.ndarray = ref["draws"]
        self.n_reference_draws = int(ref["n_draws"])
        self.source = str(ref["source"])

    @property
    def name(self) -> str:
        """posteriordb's posterior name."""
        return self.posterior_name

    @abc.abstractmethod
    def constrain(self, x: Tensor) -> dict[str, Tensor]:
        """The constrained parameters at unconstrained ``x`` ``(..., dim)``: name -> ``(...)``."""

    @abc.abstractmethod
    def unconstrain(self, params: Mapping[str, Tensor]) -> Tensor:
        """The inverse of :meth:`constrain`: name -> ``(...)`` to ``(..., dim)``."""

    def constrained(self, x: Tensor) -> Tensor:
        """:meth:`constrain` stacked in ``param_names`` order, ``(..., P)``."""
        params = self.constrain(x)
        return torch.stack([params[n] for n in self.param_names], dim=-1)

    def reference_unconstrained(self, dtype: torch.dtype = torch.float64, device: str | None = None) -> Tensor:
        """The shipped reference draws on the unconstrained space, ``(n, dim)``."""
        draws = torch.as_tensor(self.reference_draws, dtype=dtype, device=device)
        return self.unconstrain({n: draws[:, i] for i, n in enumerate(self.param_names)})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.posterior_name!r}, dim={self.dim})"
