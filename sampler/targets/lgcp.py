"""Log-Gaussian Cox process on a grid (the "Finnish pines" benchmark of annealed flow transport)."""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
from torch import Tensor

from sampler.errors import ConfigurationError
from sampler.targets.base import Target

#: Model constants of Moller, Syversveen & Waagepetersen (1998) as used by annealed_flow_transport.
SIGNAL_VARIANCE = 1.91
BETA = 1.0 / 33
#: Number of points in the Finnish pines data (the prior mean makes E[total count] = 126).
PINES_COUNT = 126


@functools.cache
def _gram_and_cholesky(grid_size: int, signal_variance: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """The Gram matrix ``K`` and its lower Cholesky factor (float64, shared: do not modify), cached per grid.

    ``K_ij = signal_variance * exp(-||g_i - g_j|| / (grid_size * beta))`` with ``g_i = (i // n, i % n)``
    the integer coordinates of the flattened (row-major) grid.
    """
    idx = np.arange(grid_size)
    g = np.stack(np.meshgrid(idx, idx, indexing="ij"), -1).reshape(-1, 2).astype(np.float64)
    dist = np.sqrt(((g[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    gram = signal_variance * np.exp(-dist / (grid_size * beta))
    chol = np.linalg.cholesky(gram)
    return gram, chol


def bin_counts(points, grid_size: int = 40) -> np.ndarray:
    """Counts of ``points`` ``(n, 2)`` in [0, 1]^2 on a ``grid_size x grid_size`` grid, flattened ``(grid_size^2,)``.

    Point ``(x, y)`` falls in bin ``(floor(grid_size x), floor(grid_size y))``: bins are
    ``[k / grid_size, (k + 1) / grid_size)`` per coordinate, except that a coordinate exactly 1
    goes to the last bin; bin ``(r, c)`` is entry
    ``r * grid_size + c``, whose grid coordinates ``(r, c)`` enter the Gram matrix. This is
    ``get_bin_counts`` of annealed_flow_transport.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ConfigurationError(f"points must have shape (n, 2), got {pts.shape}")
    if not np.isfinite(pts).all() or (pts < 0).any() or (pts > 1).any():
        raise ConfigurationError(
            "point coordinates must lie in [0, 1] (rescale the observation window to the unit square)"
        )
    cells = np.minimum(np.floor(pts * grid_size).astype(np.int64), grid_size - 1)
    return np.bincount(cells[:, 0] * grid_size + cells[:, 1], minlength=grid_size**2).astype(np.float64)


def read_points(path: str | os.PathLike) -> np.ndarray:
    """Points ``(n, 2)`` from a CSV file of ``x,y`` rows (comma-separated).

    A header line (any row that does not parse as numbers) is skipped. A file with three columns
    is read as ``index,x,y`` -- the layout of annealed_flow_transport's ``pines.csv`` -- and the
    first column dropped.
    """
    data = np.genfromtxt(os.fspath(path), delimiter=",", dtype=np.float64, ndmin=2)
    if data.shape[0] and np.isnan(data[0]).any():
        data = data[1:]  # the header
    if data.shape[0] == 0 or data.shape[1] not in (2, 3):
        raise ConfigurationError(
            f"{path}: expected rows of x,y (or index,x,y) comma-separated numbers, got shape {data.shape}"
        )
    if data.shape[1] == 3:
        data = data[:, 1:]  # the index column (R's write.csv quotes it, so it may read as NaN)
    if np.isnan(data).any():
        raise ConfigurationError(f"{path}: non-numeric x,y entries after the header")
    return data


class LGCP(Target):
    """Log-Gaussian Cox process posterior over a latent field on a 40 x 40 grid (d = 1600).

    Definition (unwhitened, as in annealed_flow_transport's ``LogGaussianCoxPines``): for the
    latent field ``f`` ``(1600,)`` with bins flattened row-major, bin counts ``n`` and bin area
    ``a = 1/1600``::

        log pi(f) = log N(f; mu0 1, K) + sum_i (f_i n_i - a exp(f_i)),
        K_ij = 1.91 exp(-||g_i - g_j|| / (40 beta)),  beta = 1/33,  mu0 = log(126) - 1.91 / 2,

    with ``g_i`` the integer grid coordinates (0..39) of bin ``i``. ``log_Z`` is unknown
    (``None``); the ICNJ paper reports an ELBO of ~508 on the real pines data. There is no exact
    sampler.

    Data. The Finnish pines data (Moller et al. 1998; 126 points in the unit square) cannot be
    downloaded here. ``points`` takes the user's data: an ``(n, 2)`` array or the path of a CSV
    file of ``x,y`` rows (see :func:`read_points`; DeepMind's ``pines.csv`` with its header and
    index column works as is), coordinates in [0, 1]^2, binned by :func:`bin_counts` (``x`` picks
    the grid row, ``y`` the column). ``counts`` gives bin counts directly (``(1600,)`` or
    ``(40, 40)``). With neither, the data is simulated from the model itself: ``rng =
    numpy.random.default_rng(seed)`` (default ``seed = 0``), ``f = mu0 + L rng.standard_normal(1600)``
    (``L`` the Cholesky factor of ``K``), ``n = rng.poisson(a exp(f))``; the field is kept as
    :attr:`true_field` for sanity checks (the posterior should concentrate around it where the
    counts are informative). With seed 0 the simulated pattern has 113 points.

    Provenance: Moller, Syversveen & Waagepetersen, *Log Gaussian Cox processes* (Scand. J.
    Statist. 1998); the benchmark of Arbel, Matthews & Doucet, *Annealed flow transport Monte
    Carlo* (ICML 2021), used by CRAFT, DDS and the importance-corrected neural JKO paper.

    Computation: ``K``'s Cholesky factor is computed once per process (cached at module level);
    ``log N`` uses one triangular solve ``w = L^-1 (f - mu0)`` and the gradient one more,
    ``-K^-1 (f - mu0) + n - a e^f = -L^-T w + n - a e^f``; both O(d^2) per point.

    Reference hint: ``loc = mu0``, ``scale = sqrt(1.91)``, the prior's marginals. With ~126
    points over 1600 bins most bins hold no point, so the posterior of most ``f_i`` is close to
    their prior, which this reference matches per coordinate (it ignores the correlations).
    """

    log_Z = None

    def __init__(self, points=None, counts=None, seed: int = 0, grid_size: int = 40) -> None:
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
            raise ConfigurationError(f"grid_size must be a positive integer, got {grid_size!r}")
        if points is not None and counts is not None:
            raise ConfigurationError("give at most one of points=... and counts=...")
        n_bins = grid_size**2
        self.grid_size = grid_size
        self.dim = n_bins
        self.signal_variance = SIGNAL_VARIANCE
        self.beta = BETA
        self.mu0 = math.log(PINES_COUNT) - 0.5 * SIGNAL_VARIANCE
        self.bin_area = 1.0 / n_bins
        self.reference_loc = self.mu0
        self.reference_scale = math.sqrt(SIGNAL_VARIANCE)
        _, self.chol = _gram_and_cholesky(grid_size, SIGNAL_VARIANCE, BETA)
        self._log_norm = float(-0.5 * n_bins * math.log(2 * math.pi) - np.log(np.diag(self.chol)).sum())
        self.true_field: np.ndarray | None = None
        self.seed: int | None = None
        if points is not None:
            pts = points if not isinstance(points, (str, os.PathLike)) else read_points(points)
            if isinstance(pts, Tensor):
                pts = pts.detach().cpu().numpy()
            self.counts = bin_counts(pts, grid_size)
        elif counts is not None:
            arr = np.asarray(counts.detach().cpu() if isinstance(counts, Tensor) else counts, dtype=np.float64)
            if arr.size != n_bins or not (np.isfinite(arr).all() and (arr >= 0).all()):
                raise ConfigurationError(f"counts must be {n_bins} non-negative numbers, got shape {arr.shape}")
            self.counts = arr.reshape(n_bins).copy()
        else:
            self.seed = seed
            self.true_field, self.counts = self.simulate(seed)

    @property
    def name(self) -> str:
        return "lgcp" if self.grid_size == 40 else f"lgcp-{self.grid_size}"

    @property
    def gram(self) -> np.ndarray:
        """The Gram matrix ``K`` ``(d, d)`` (float64; shared by all instances, do not modify)."""
        return _gram_and_cholesky(self.grid_size, self.signal_variance, self.beta)[0]

    def simulate(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A latent field from the prior and Poisson counts given it: ``(f, n)``, both ``(d,)`` float64.

        ``rng = numpy.random.default_rng(seed)``; ``f = mu0 + L rng.standard_normal(d)``;
        ``n = rng.poisson(bin_area * exp(f))``.
        """
        rng = np.random.default_rng(seed)
        field = self.mu0 + self.chol @ rng.standard_normal(self.dim)
        counts = rng.poisson(self.bin_area * np.exp(field)).astype(np.float64)
        return field, counts

    def _white(self, diff: Tensor) -> Tensor:
        """``w = L^-1 diff`` row-wise for ``diff`` ``(m, d)``: solves ``w L^T = diff``."""
        return torch.linalg.solve_triangular(self.constant("chol", diff).T, diff, upper=True, left=False)

    def log_prob(self, x: Tensor) -> Tensor:
        diff = (x - self.mu0).reshape(-1, self.dim)
        w = self._white(diff)
        lik = (x * self.constant("counts", x) - self.bin_area * torch.exp(x)).sum(-1)
        return (-0.5 * (w**2).sum(-1)).reshape(x.shape[:-1]) + self._log_norm + lik

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Log density and its analytic gradient ``-K^-1 (f - mu0) + n - a e^f``."""
        diff = (x - self.mu0).reshape(-1, self.dim)
        w = self._white(diff)
        # K^-1 diff = L^-T w, row-wise: v L = w
        v = torch.linalg.solve_triangular(self.constant("chol", w), w, upper=False, left=False)
        counts = self.constant("counts", x)
        rate = self.bin_area * torch.exp(x)
        lp = (-0.5 * (w**2).sum(-1)).reshape(x.shape[:-1]) + self._log_norm + (x * counts - rate).sum(-1)
        return lp, -v.reshape(x.shape) + counts - rate

    def grad_log_prob(self, x: Tensor) -> Tensor:
        return self.log_prob_and_grad(x)[1]

    def sample(self, n, generator=None, device=None, dtype=None) -> Tensor:
        raise NotImplementedError(
            f"{self.name}: no exact sampler (the LGCP posterior has no closed form and log_Z is unknown); "
            "use true_field (the simulated field behind the default data) for sanity checks"
        )
