"""Annealing paths: a family of densities pi_t, t in [0, 1], from a reference to the target.

The default :class:`GeometricPath` interpolates log densities linearly (``linear in energy``)::

    log pi_t(x) = (1 - t) * log ref(x) + t * log target(x)

Evaluations are cached per particle in a :class:`PathEvaluation` (log densities in float64,
gradients in the particles' dtype), so moving ``t`` costs no target evaluation. The path counts
every target and gradient evaluation and every non-finite value the target returned, and checks
the shape and dtype of what the target returns.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from sampler.core._indexing import gather_particles
from sampler.errors import ConfigurationError, SamplerError, TargetError
from sampler.targets.base import ReferenceHint, Target

__all__ = ["GaussianReference", "PathEvaluation", "EvaluationCounter", "GeometricPath"]


def _as_vector(value: ReferenceHint, dim: int, label: str) -> np.ndarray:
    """A float64 ``(dim,)`` copy of a scalar or ``(dim,)`` parameter."""
    if isinstance(value, Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != dim):
        raise ConfigurationError(f"reference {label} must be a scalar or have shape ({dim},), got shape {arr.shape}")
    return np.broadcast_to(arr, (dim,)).copy()


class GaussianReference:
    """A normalized Gaussian on ``R^dim`` (the path's start): ``N(loc, diag(scale**2))`` or ``N(loc, L L^T)``.

    ``loc`` and ``scale`` are scalars or ``(dim,)``; tensors follow the sampling device/dtype.
    With ``scale_tril`` (a ``(dim, dim)`` lower-triangular Cholesky factor ``L`` with a positive
    diagonal) the covariance is dense, ``L L^T``, and ``scale`` becomes the marginal standard
    deviations ``sqrt(diag(L L^T))`` (what kernels read as the reference's width); ``scale`` must
    then be left at its default. Without it the diagonal computations are exactly those of the
    diagonal reference (bit for bit).
    """

    def __init__(
        self,
        dim: int,
        loc: float | Tensor = 0.0,
        scale: float | Tensor = 1.0,
        scale_tril: Tensor | np.ndarray | None = None,
    ):
        self.dim = dim
        self.loc = _as_vector(loc, dim, "loc")
        if not np.isfinite(self.loc).all():
            raise ConfigurationError(f"reference loc must be finite, got {loc!r}")
        self.scale_tril: np.ndarray | None = None
        if scale_tril is not None:
            self.scale_tril = _as_tril(scale_tril, dim)
            if not (isinstance(scale, (int, float)) and scale == 1.0):
                raise ConfigurationError("give the reference either scale or scale_tril, not both")
            self.scale = np.sqrt((self.scale_tril**2).sum(-1))
            log_det = np.log(np.diag(self.scale_tril)).sum()
        else:
            self.scale = _as_vector(scale, dim, "scale")
            if not (np.isfinite(self.scale).all() and (self.scale > 0).all()):
                raise ConfigurationError(f"reference scale must be positive and finite, got {scale!r}")
            log_det = np.log(self.scale).sum()
        self._log_norm = float(-0.5 * dim * math.log(2 * math.pi) - log_det)
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}
        self._inverse: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def dense(self) -> bool:
        """Whether the covariance is dense (given by ``scale_tril``)."""
        return self.scale_tril is not None

    def widened(self, factor: float) -> GaussianReference:
        """The same Gaussian with every standard deviation multiplied by ``factor`` (same centre,
        diagonal or dense as this one)."""
        if self.scale_tril is not None:
            return GaussianReference(self.dim, torch.from_numpy(self.loc), scale_tril=factor * self.scale_tril)
        return GaussianReference(self.dim, torch.from_numpy(self.loc), scale=torch.from_numpy(factor * self.scale))

    @property
    def covariance(self) -> np.ndarray:
        """The covariance, a float64 ``(dim, dim)`` array."""
        if self.scale_tril is not None:
            return self.scale_tril @ self.scale_tril.T
        return np.diag(self.scale**2)

    def _params(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``loc`` ``(dim,)`` and ``scale`` ``(dim,)`` (or ``scale_tril`` ``(dim, dim)`` if dense) like ``like``."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            spread = self.scale if self.scale_tril is None else self.scale_tril
            self._cache[key] = (
                torch.as_tensor(self.loc, device=like.device, dtype=like.dtype),
                torch.as_tensor(spread, device=like.device, dtype=like.dtype),
            )
        return self._cache[key]

    def sample(self, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """Draw ``shape + (dim,)`` samples on the generator's device."""
        device = generator.device
        return self.from_standard(torch.randn(*shape, self.dim, generator=generator, device=device, dtype=dtype))

    def from_standard(self, z: Tensor) -> Tensor:
        """``loc + scale * z`` (``loc + L z`` if dense): reference draws from standard normal ``z`` ``(..., dim)``."""
        loc, scale = self._params(z)
        if self.scale_tril is not None:
            return loc + z @ scale.T
        return loc + scale * z

    def _whiten(self, diff: Tensor, tril: Tensor) -> Tensor:
        """``L^{-1} diff`` for ``diff`` ``(..., dim)`` (dense reference)."""
        flat = diff.reshape(-1, self.dim).T
        z = torch.linalg.solve_triangular(tril, flat, upper=False)
        return z.T.reshape(diff.shape)

    @property
    def log_norm(self) -> float:
        """The log normalizing constant: :meth:`log_prob` is ``log_kernel + log_norm``."""
        return self._log_norm

    def log_prob(self, x: Tensor) -> Tensor:
        """Normalized log density, ``(...)`` in float64 for ``x`` ``(..., dim)``.

        A diagonal reference computes in ``x``'s dtype (as precise as the target's own log
        density at float32 positions, and no float64 copy of the particles), then converts the
        ``(...)`` result; a dense one whitens in float64.
        """
        return self.log_kernel(x) + self._log_norm

    def log_kernel(self, x: Tensor) -> Tensor:
        """``-|L^{-1}(x - loc)|^2 / 2``, float64 ``(...)``: :meth:`log_prob` without the constant.

        Compiled kernel steps add :attr:`log_norm` as a tensor, so that one compiled step serves
        every reference of a kind (a Python float in the step would be compiled in as a constant).
        """
        if self.scale_tril is not None:
            x64 = x.to(torch.float64)
            loc, tril = self._params(x64)
            z = self._whiten(x64 - loc, tril)
            return -0.5 * (z**2).sum(-1)
        loc, _ = self._params(x)
        z = (x - loc) * self._inverse_scale(x)
        return -0.5 * (z * z).sum(-1).to(torch.float64)

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(log_prob(x), grad_log_prob(x))``: what a path evaluation with gradients needs (a reference
        whose density is costly, :class:`~sampler.core.prior_reference.PriorReference`, computes both at once)."""
        return self.log_prob(x), self.grad_log_prob(x)

    def grad_log_prob(self, x: Tensor) -> Tensor:
        """Gradient ``-(x - loc) / scale**2`` (dense: ``-(L L^T)^{-1} (x - loc)``), ``(..., dim)`` in ``x``'s dtype."""
        loc, scale = self._params(x)
        if self.scale_tril is not None:
            z = self._whiten(x - loc, scale).reshape(-1, self.dim)
            # L^{-T} z, each row the solution of y L = z: no transposed view of L, which a
            # compiled loop (torch's scan) would take as a second input sharing L's memory
            return -torch.linalg.solve_triangular(scale, z, upper=False, left=False).reshape(x.shape)
        inverse = self._inverse_scale(x)
        return (loc - x) * (inverse * inverse)  # (d,) then one (..., d) product: this runs at every gradient

    def _inverse_scale(self, like: Tensor) -> Tensor:
        """``1 / scale`` ``(dim,)`` like ``like`` (diagonal reference): products are cheaper than divisions."""
        key = (like.device, like.dtype)
        if key not in self._inverse:
            self._inverse[key] = torch.as_tensor(1.0 / self.scale, device=like.device, dtype=like.dtype)
        return self._inverse[key]


def _as_tril(value: Tensor | np.ndarray, dim: int) -> np.ndarray:
    """A float64 ``(dim, dim)`` lower-triangular copy of a Cholesky factor with a positive, finite diagonal."""
    if isinstance(value, Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (dim, dim):
        raise ConfigurationError(f"reference scale_tril must have shape ({dim}, {dim}), got shape {arr.shape}")
    arr = np.tril(arr)
    diag = np.diag(arr)
    if not (np.isfinite(arr).all() and (diag > 0).all()):
        raise ConfigurationError("reference scale_tril must be finite with a positive diagonal")
    return arr


@attrs.define
class EvaluationCounter:
    """Running counts for one run: target evaluations, gradient evaluations, non-finite values.

    One evaluation is the target's log density (or gradient) at one point. Non-finite values
    are accumulated as a device tensor and read (one host sync) through :attr:`nonfinite`.
    """

    target_evals: int = 0
    grad_evals: int = 0
    _nonfinite: Tensor | int = 0

    def add_nonfinite(self, count: Tensor | int) -> None:
        """Add a count of NaN/+inf values (a tensor or an int)."""
        self._nonfinite = self._nonfinite + count

    @property
    def nonfinite(self) -> int:
        """NaN/+inf values the target returned so far."""
        return int(self._nonfinite)


@attrs.frozen
class PathEvaluation:
    """Cached evaluations at particle positions ``x`` ``(..., d)``.

    Attributes:
        log_ref: ``(...)`` float64 -- normalized log density of the reference.
        log_target: ``(...)`` float64 -- unnormalized target log density; NaN/+inf (or a
            non-finite gradient) replaced by ``-inf`` (zero density).
        grad_ref: ``(..., d)`` or ``None`` -- gradient of ``log_ref``.
        grad_target: ``(..., d)`` or ``None`` -- gradient of ``log_target`` (zero where the
            density is not finite).
    """

    log_ref: Tensor
    log_target: Tensor
    grad_ref: Tensor | None = None
    grad_target: Tensor | None = None

    @property
    def has_grad(self) -> bool:
        """Whether gradients are cached."""
        return self.grad_ref is not None and self.grad_target is not None

    def where(self, mask: Tensor, other: PathEvaluation) -> PathEvaluation:
        """Take ``self`` where ``mask`` ``(...)`` is true and ``other`` elsewhere."""
        m = mask[..., None]
        grad_ref = grad_target = None
        if self.grad_ref is not None and other.grad_ref is not None and self.grad_target is not None:
            if other.grad_target is not None:
                grad_ref = torch.where(m, self.grad_ref, other.grad_ref)
                grad_target = torch.where(m, self.grad_target, other.grad_target)
        return PathEvaluation(
            log_ref=torch.where(mask, self.log_ref, other.log_ref),
            log_target=torch.where(mask, self.log_target, other.log_target),
            grad_ref=grad_ref,
            grad_target=grad_target,
        )

    def gather(self, indices: Tensor) -> PathEvaluation:
        """Reorder particles: ``indices`` ``(R, N)`` index the particle axis of ``(R, N, ...)``."""

        def take(v: Tensor | None) -> Tensor | None:
            return None if v is None else gather_particles(v, indices)

        return PathEvaluation(
            gather_particles(self.log_ref, indices),
            gather_particles(self.log_target, indices),
            take(self.grad_ref),
            take(self.grad_target),
        )


def sanitized(lp: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
    """A target's log density ``(...)`` and gradient ``(..., d)`` made harmless, and how many were not.

    A NaN or +inf log density, or a non-finite gradient at a finite one, becomes ``-inf``
    (weight 0) with a zero gradient. Returns the float64 log density, the gradient (``None`` if
    ``g`` is) and the count ``()`` of such values. Free of side effects, so a compiled kernel
    step can trace it.
    """
    lp = lp.to(torch.float64)
    keep = torch.isfinite(lp)
    if g is not None:
        # (g * 0).sum(-1) is 0 exactly when every component is finite (NaN otherwise): the
        # same test as isfinite(g).all(-1), which torch's CPU reduces 10x slower.
        keep = keep & ((g * 0).sum(-1) == 0)
        g = torch.where(keep[..., None], g, 0.0)
    nonfinite = (~keep & (lp != -math.inf)).sum()
    return torch.where(keep, lp, -math.inf), g, nonfinite


class GeometricPath:
    """``log pi_t = (1 - t) log ref + t log target``, evaluated through cached components.

    Args:
        reference: the normalized start density (``t = 0``).
        target: the density to reach (``t = 1``).
        counter: where evaluation counts go (a fresh one if omitted).
    """

    def __init__(self, reference: GaussianReference, target: Target, counter: EvaluationCounter | None = None):
        self.reference = reference
        self.target = target
        self.counter = counter if counter is not None else EvaluationCounter()

    # -- evaluation ---------------------------------------------------------------------------
    def _check(self, value: object, x: Tensor, what: str) -> Tensor:
        expected = tuple(x.shape[:-1]) if what == "log_prob" else tuple(x.shape)
        if not isinstance(value, Tensor):
            raise TargetError(
                f"target {self.target.name!r}: {what} must return a torch.Tensor of shape {expected}, "
                f"got {type(value).__name__}"
            )
        if tuple(value.shape) != expected:
            raise TargetError(
                f"target {self.target.name!r}: {what} returned shape {tuple(value.shape)} for input of shape "
                f"{tuple(x.shape)}; expected {expected} (one value per point, batched over the leading axes)"
            )
        if not value.is_floating_point():
            raise TargetError(
                f"target {self.target.name!r}: {what} returned dtype {value.dtype}; expected a floating dtype"
            )
        if torch.finfo(value.dtype).bits < torch.finfo(x.dtype).bits:
            raise TargetError(
                f"target {self.target.name!r}: {what} returned {value.dtype} for {x.dtype} input, losing precision; "
                "compute in the input's dtype (see Target.constant)"
            )
        if value.device != x.device:
            raise TargetError(
                f"target {self.target.name!r}: {what} returned a tensor on {value.device} for input on {x.device}; "
                "create the target's tensors on the input's device (see Target.constant)"
            )
        return value

    def _call(self, method: Any, x: Tensor, what: str) -> Any:
        """``method(x)``; an exception from the user's code becomes a :class:`TargetError` naming the target.

        The original exception is chained (``raise ... from``), so its traceback still shows where
        in the target it happened.
        """
        try:
            return method(x)
        except SamplerError:
            raise
        except Exception as exc:
            raise TargetError(f"target {self.target.name!r}: {what} raised {type(exc).__name__}: {exc}") from exc

    def evaluate(self, x: Tensor, grad: bool = False) -> PathEvaluation:
        """Evaluate reference and target at ``x`` ``(..., d)`` (with gradients if ``grad``)."""
        n_points = x.numel() // max(x.shape[-1], 1)
        if grad:
            lp, g = self._call(self.target.log_prob_and_grad, x, "log_prob_and_grad")
            self._check(lp, x, "log_prob")
            g = self._check(g, x, "grad_log_prob").to(x.dtype)
            self.counter.grad_evals += n_points
        else:
            with torch.no_grad():
                lp = self._check(self._call(self.target.log_prob, x, "log_prob"), x, "log_prob")
            g = None
        self.counter.target_evals += n_points
        return self._evaluation(x, lp.detach(), None if g is None else g.detach())

    def _evaluation(self, x: Tensor, lp: Tensor, g: Tensor | None) -> PathEvaluation:
        """The evaluation at ``x`` from the target's checked ``lp`` ``(...)`` and gradient ``g``.

        Non-finite values are counted and made harmless (:func:`sanitized`). Autograd graphs of
        ``lp`` and ``g`` are kept (subclasses that differentiate rely on it).
        """
        lp, g, nonfinite = sanitized(lp, g)
        self.counter.add_nonfinite(nonfinite)  # a tensor: no host sync per evaluation
        if g is None:
            return PathEvaluation(log_ref=self.reference.log_prob(x), log_target=lp)
        log_ref, grad_ref = self.reference.log_prob_and_grad(x)
        return PathEvaluation(log_ref=log_ref, log_target=lp, grad_ref=grad_ref, grad_target=g)

    def count(self, x: Tensor, grad: bool, nonfinite: Tensor, times: int = 1) -> None:
        """Count ``times`` evaluations (with gradients if ``grad``) at each point of ``x`` ``(..., d)``.

        For kernels that evaluate the target themselves (compiled steps) and pass the count of
        non-finite values :func:`sanitized` returned (summed over the ``times`` evaluations).
        """
        n_points = times * (x.numel() // max(x.shape[-1], 1))
        self.counter.target_evals += n_points
        if grad:
            self.counter.grad_evals += n_points
        self.counter.add_nonfinite(nonfinite)

    # -- the path at time t ---------------------------------------------------------------------
    @staticmethod
    def mix(ref: Tensor, tgt: Tensor, t: float | Tensor) -> Tensor:
        """``(1 - t) ref + t tgt``, exactly ``ref`` at t = 0 and ``tgt`` at t = 1 (even where one is -inf).

        ``t`` is a float or a per-replica tensor ``(R,)`` matching the first axis of ``ref``.
        """
        if not isinstance(t, Tensor):
            if t == 0.0:
                return ref
            if t == 1.0:
                return tgt
            return (1.0 - t) * ref + t * tgt
        tt = t.to(device=ref.device, dtype=ref.dtype).reshape(t.shape + (1,) * (ref.ndim - t.ndim))
        mixed = (1.0 - tt) * ref + tt * tgt
        return torch.where(tt == 0.0, ref, torch.where(tt == 1.0, tgt, mixed))

    @classmethod
    def log_prob(cls, ev: PathEvaluation, t: float | Tensor) -> Tensor:
        """``log pi_t`` from cached components, float64 ``(R, N)``; ``t`` a float or ``(R,)``."""
        return cls.mix(ev.log_ref, ev.log_target, t)

    @classmethod
    def grad_log_prob(cls, ev: PathEvaluation, t: float | Tensor) -> Tensor:
        """``grad log pi_t`` from cached gradients, ``(R, N, d)``; ``t`` a float or ``(R,)``.

        Cached gradients are finite (zero where the density is), so one ``lerp`` mixes them,
        exactly ``grad_ref`` at t = 0 and ``grad_target`` at t = 1.
        """
        if ev.grad_ref is None or ev.grad_target is None:
            raise ValueError("gradients were not evaluated (evaluate(x, grad=True))")
        return cls.mix_grad(ev.grad_ref, ev.grad_target, t)

    @staticmethod
    def mix_grad(grad_ref: Tensor, grad_target: Tensor, t: float | Tensor) -> Tensor:
        """``(1 - t) grad_ref + t grad_target`` by one ``lerp``, ``(R, N, d)``; ``t`` a float or ``(R,)``.

        The gradient counterpart of :meth:`mix`, on the components themselves (compiled kernel
        steps hold them as plain tensors).
        """
        if isinstance(t, Tensor):
            t = t.to(device=grad_ref.device, dtype=grad_ref.dtype).reshape(t.shape + (1, 1))
        return torch.lerp(grad_ref, grad_target, t)

    def log_weight_increment(
        self, ev_from: PathEvaluation, t_from: float | Tensor, ev_to: PathEvaluation, t_to: float | Tensor
    ) -> Tensor:
        """``log pi_{t_to}(x_to) - log pi_{t_from}(x_from)``, float64 ``(R, N)``.

        A point with zero density at its start (``-inf``) cannot gain weight: its increment is
        ``-inf``, as is any undefined (``-inf - -inf``) difference.
        """
        start = self.log_prob(ev_from, t_from)
        inc = self.log_prob(ev_to, t_to) - start
        return inc.masked_fill(torch.isnan(inc) | (start == -math.inf), -math.inf)
