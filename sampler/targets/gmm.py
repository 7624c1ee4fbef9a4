"""Gaussian mixtures with isotropic components, and the ``gmm40`` benchmark target."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sampler.errors import ConfigurationError
from sampler.targets.base import Target

#: softplus(1), the per-coordinate standard deviation of FAB's GMM40 components.
FAB_GMM40_STD = math.log1p(math.e)


#: Up to this dimension the squared distances to the means are summed coordinate by coordinate
#: (5x faster than a reduction over a last axis of length 2 on the CPU, and exactly the same).
_SMALL_DIM = 8


def _log_sum_exp(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``logsumexp`` over the last axis ``(...)`` and the softmax weights ``(..., K)``, skipping negligible terms.

    Terms more than ``log(eps / K) - 5`` below the largest are set to zero instead of
    exponentiated (together they weigh less than 1% of one unit in the last place): torch's CPU
    ``exp`` is 15-25 times slower on arguments whose result underflows, and most components of
    a well-separated mixture are that far below the nearest one.
    """
    k = logits.shape[-1]
    floor = math.log(torch.finfo(logits.dtype).eps / k) - 5.0
    top = logits.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # all -inf: sum 0, log -inf
    shifted = logits - top
    terms = torch.exp(shifted.clamp_min(floor)) * (shifted > floor)
    total = terms.sum(-1, keepdim=True)
    return (top + torch.log(total))[..., 0], terms / total


class GaussianMixture(Target):
    """Equal-weight mixture of ``N(means[k], std^2 I)``, normalized (``log_Z = 0``).

    Args:
        means: ``(K, d)`` component means (the modes, used for coverage metrics).
        std: per-coordinate standard deviation shared by all components.
        name: display name.
    """

    log_Z = 0.0

    def __init__(self, means, std: float, name: str = "gmm"):
        means = np.asarray(means.detach().cpu() if isinstance(means, Tensor) else means, dtype=np.float64)
        if means.ndim != 2 or means.shape[0] < 1:
            raise ConfigurationError(f"means must have shape (K, d), got {means.shape}")
        if not std > 0:
            raise ConfigurationError(f"std must be positive, got {std!r}")
        self.means = means
        self.std = float(std)
        self.dim = means.shape[1]
        self._name = name
        spread = means.std(axis=0).max() if means.shape[0] > 1 else 0.0
        self.reference_loc = means.mean(axis=0)
        self.reference_scale = float(math.hypot(spread, self.std))

    @property
    def name(self) -> str:
        return self._name

    @property
    def modes(self) -> np.ndarray:
        """The component means ``(K, d)``."""
        return self.means

    def _component_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component log densities up to the shared constant ``(..., K)``, and the means."""
        means = self.constant("means", x)
        if self.dim <= _SMALL_DIM:  # summing a short last axis is slow in torch: add the coordinates one by one
            sq = (x[..., None, 0] - means[:, 0]) ** 2
            for j in range(1, self.dim):
                sq = sq + (x[..., None, j] - means[:, j]) ** 2
        else:
            sq = ((x[..., None, :] - means) ** 2).sum(-1)
        return -0.5 * sq / self.std**2, means

    def _log_norm(self) -> float:
        k, d = self.means.shape
        return -d * (math.log(self.std) + 0.5 * math.log(2 * math.pi)) - math.log(k)

    def log_prob(self, x: Tensor) -> Tensor:
        logits, _ = self._component_logits(x)
        return _log_sum_exp(logits)[0] + self._log_norm()

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Log density and its analytic gradient ``sum_k r_k(x) (mu_k - x) / std^2`` (r: responsibilities)."""
        logits, means = self._component_logits(x)
        lse, resp = _log_sum_exp(logits)
        return lse + self._log_norm(), (resp @ means - x) / self.std**2

    def grad_log_prob(self, x: Tensor) -> Tensor:
        return self.log_prob_and_grad(x)[1]

    def sample(self, n, generator=None, device=None, dtype=None) -> Tensor:
        """``n`` exact draws ``(n, d)``: a uniform component, then its Gaussian."""
        device = self.sample_device(generator, device)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        k = torch.randint(self.means.shape[0], (n,), generator=generator, device=z.device)
        return self.constant("means", z)[k] + self.std * z


class GMM40(GaussianMixture):
    """40 equal-weight 2D Gaussians with std softplus(1) ~ 1.3133 (FAB's GMM40 convention).

    Means are uniform on [-40, 40]^2, drawn exactly as FAB does: a CPU generator seeded with
    ``seed`` (default 0), ``(torch.rand(40, 2) - 0.5) * 80`` in float32. Normalized: ``log_Z = 0``.
    The default reference is centred on the means with their spread as scale.
    """

    def __init__(self, seed: int = 0, n_modes: int = 40, dim: int = 2, loc_scaling: float = 40.0):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        means = (torch.rand(n_modes, dim, generator=gen, device="cpu", dtype=torch.float32) - 0.5) * 2 * loc_scaling
        super().__init__(means.double().numpy(), FAB_GMM40_STD, name="gmm40")


def shifted_circle_means(n_modes: int = 8) -> np.ndarray:
    """``(cos(2 pi k / K) - 1, sin(2 pi k / K))`` for ``k = 0..K-1``: the unit circle centred at (-1, 0)."""
    angle = 2 * np.pi * np.arange(n_modes) / n_modes
    return np.stack([np.cos(angle) - 1.0, np.sin(angle)], axis=-1)


class EightModes(GaussianMixture):
    """8 equal-weight 2D Gaussians on a shifted unit circle, covariance ``0.01 I`` (normalized).

    Means ``(cos(2 pi k / 8) - 1, sin(2 pi k / 8))``, ``k = 0..7`` (the circle centred at
    ``(-1, 0)``), covariance ``variance * I`` with ``variance = 0.01`` (std 0.1); ``log_Z = 0``.
    Adjacent means are ``2 sin(pi / 8) ~ 0.765`` apart (7.7 std). ``modes`` gives the means.

    Provenance: "shifted 8 modes" of the importance-corrected neural JKO paper (Vidal et al.).

    Reference hint (the :class:`GaussianMixture` rule, the moment-matched isotropic Gaussian):
    ``loc = (-1, 0)``, the centre of the circle, and ``scale = hypot(sqrt(1/2), std) ~ 0.714``,
    the mixture's per-coordinate standard deviation.
    """

    default_variance = 0.01
    default_name = "8modes"

    def __init__(self, variance: float | None = None) -> None:
        variance = self.default_variance if variance is None else float(variance)
        if not (math.isfinite(variance) and variance > 0):
            raise ConfigurationError(f"variance must be positive and finite, got {variance!r}")
        self.variance = variance
        name = self.default_name if variance == self.default_variance else f"{self.default_name}-var{variance:g}"
        super().__init__(shifted_circle_means(8), math.sqrt(variance), name=name)


class EightPeaky(EightModes):
    """As ``8modes`` (:class:`EightModes`) with covariance ``0.005 I`` (std ~0.0707); normalized.

    Provenance: "shifted 8 peaky" of the importance-corrected neural JKO paper (Vidal et al.).
    Reference hint: ``loc = (-1, 0)``, ``scale = hypot(sqrt(1/2), std) ~ 0.711``.
    """

    default_variance = 0.005
    default_name = "8peaky"


#: Dimensions of the registered ``gmm10-{d}`` targets.
GMM10_DIMS = (10, 20, 50, 100, 200)


def gmm10_means(dim: int, seed: int = 0, n_modes: int = 10) -> np.ndarray:
    """The ``gmm10-{dim}`` means: uniform on ``[-1, 1]^dim``, reproducibly.

    Exactly ``2 * torch.rand(n_modes, dim, generator=torch.Generator("cpu").manual_seed(seed),
    dtype=torch.float64) - 1`` (a fresh generator per call, so it does not touch torch's global RNG).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (2 * torch.rand(n_modes, dim, generator=gen, device="cpu", dtype=torch.float64) - 1).numpy()


class GMM10(GaussianMixture):
    """10 equal-weight Gaussians in ``dim`` dimensions, covariance ``0.01 I``, normalized.

    Means uniform on ``[-1, 1]^dim`` from :func:`gmm10_means` (CPU ``torch.Generator`` seeded with
    ``seed``, default 0; float64 ``2 * rand(10, dim) - 1``); std 0.1 per coordinate; ``log_Z = 0``.
    ``modes`` gives the means. Registered as ``gmm10-10``, ``gmm10-20``, ``gmm10-50``,
    ``gmm10-100`` and ``gmm10-200``.

    Provenance: "GMM-d" of the importance-corrected neural JKO paper (Vidal et al.). Their
    repository ships its own means (``data/mixture_means``), which are not available here: the
    figures of docs/benchmarks.md were measured on different (equally distributed) means.

    Reference hint (the :class:`GaussianMixture` rule): ``loc`` = the average of the means,
    ``scale = hypot(max_j std_j(means), 0.1)`` (~0.6-0.8), the largest per-coordinate standard
    deviation of the mixture, so the isotropic reference is at least as wide as the target in
    every coordinate.
    """

    def __init__(self, dim: int = 10, seed: int = 0) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigurationError(f"dim must be a positive integer, got {dim!r}")
        self.seed = seed
        name = f"gmm10-{dim}" if seed == 0 else f"gmm10-{dim}-seed{seed}"
        super().__init__(gmm10_means(dim, seed), 0.1, name=name)
