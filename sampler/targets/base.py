"""Targets: unnormalized log densities over R^d, evaluated in batches.

A target has ``dim`` and ``log_prob(x)`` for ``x`` of shape ``(..., dim)`` returning ``(...)``.
Energy-defined (Boltzmann) targets subclass :class:`BoltzmannTarget` and implement ``energy``;
plain functions are wrapped by :func:`target`.

Optional members the engine and the benchmarks use when present:

* ``grad_log_prob(x)`` -- gradient, ``(..., dim)``; the default uses autograd.
* ``sample(n, generator=None, device=None, dtype=None)`` -- exact samples ``(n, dim)``.
* ``log_Z`` -- the exact log normalizer of ``exp(log_prob)`` (``None`` when unknown).
* ``reference_loc`` / ``reference_scale`` -- where the default Gaussian reference of an
  annealing path is centred and how wide it is (scalars or ``(dim,)``).
* ``prior_sample(n, generator=None, dtype=None)`` and ``prior_log_prob(x)`` -- for a Bayesian
  posterior, draws from its prior and the prior's normalized log density, both on the same
  unconstrained space as ``log_prob`` (Jacobian included). A target that has both
  (:attr:`Target.has_prior`) starts its annealing path at the prior instead of the Gaussian
  reference, so that the path tempers the likelihood alone
  (:class:`~sampler.core.prior_reference.PriorReference`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from sampler.errors import ConfigurationError, TargetError

__all__ = ["Target", "BoltzmannTarget", "FunctionTarget", "target", "as_target"]


#: A reference location or scale: a scalar, or one value per coordinate (a ``(dim,)`` tensor or array).
ReferenceHint = float | Tensor | np.ndarray


class Target(abc.ABC):
    """An unnormalized density ``exp(log_prob(x))`` on ``R^dim``.

    Subclasses set ``dim`` and implement :meth:`log_prob`. Everything is batched: ``x`` has
    shape ``(..., dim)`` -- the engine passes ``(replicas, particles, dim)`` -- and the result
    has shape ``(...)``. Tensors a target owns (means, matrices) must follow ``x``'s device and
    dtype; keep them as arrays and fetch them with :meth:`constant` rather than creating
    tensors on a fixed device.
    """

    #: Dimension of the space.
    dim: int
    #: Exact log normalizer of ``exp(log_prob)``, or ``None`` when unknown.
    log_Z: float | None = None
    #: Centre of the default Gaussian reference (scalar or ``(dim,)``).
    reference_loc: ReferenceHint = 0.0
    #: Standard deviation of the default Gaussian reference (scalar or ``(dim,)``).
    reference_scale: ReferenceHint = 1.0
    #: Names of the ``dim`` coordinates (ArviZ coordinates and plot labels); ``None``: numbered.
    dim_names: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        """A short human-readable name (the class name unless overridden)."""
        return type(self).__name__

    @abc.abstractmethod
    def log_prob(self, x: Tensor) -> Tensor:
        """Unnormalized log density at ``x`` ``(..., dim)``, shape ``(...)``."""

    def grad_log_prob(self, x: Tensor) -> Tensor:
        """Gradient of :meth:`log_prob` with respect to ``x``, shape ``(..., dim)`` (autograd)."""
        return self.log_prob_and_grad(x)[1]

    @property
    def uses_autograd(self) -> bool:
        """Whether :meth:`log_prob_and_grad` differentiates :meth:`log_prob` with autograd.

        True unless a subclass gives its own gradient (overrides :meth:`grad_log_prob` or
        :meth:`log_prob_and_grad`). ``compile=True`` differentiates such targets with
        ``torch.func`` inside its compiled graphs, which TorchDynamo traces (it cannot trace
        ``torch.autograd.grad``). A subclass whose :meth:`log_prob_and_grad` may still fall back
        on autograd says so here (:class:`FunctionTarget` without ``grad``).
        """
        cls = type(self)
        return cls.grad_log_prob is Target.grad_log_prob and cls.log_prob_and_grad is Target.log_prob_and_grad

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(log_prob(x), grad_log_prob(x))`` in one pass.

        The default differentiates :meth:`log_prob` with autograd. A subclass that overrides
        :meth:`grad_log_prob` with an analytic gradient is used as is.
        """
        if type(self).grad_log_prob is not Target.grad_log_prob:
            return self.log_prob(x), self.grad_log_prob(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lp = self.log_prob(xg)
            if not isinstance(lp, Tensor) or not lp.requires_grad:
                _check_constant(self, lp, x)
                return lp, torch.zeros_like(x)
            (grad,) = torch.autograd.grad(lp.sum(), xg)
        return lp.detach(), grad

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Exact samples ``(n, dim)``; only targets with a known exact sampler implement it."""
        raise NotImplementedError(f"{self.name} has no exact sampler")

    def prior_sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """``n`` draws ``(n, dim)`` from the prior of a posterior target, on the generator's device.

        Only a target that is ``prior x likelihood`` implements it (with :meth:`prior_log_prob`).
        """
        raise NotImplementedError(f"{self.name} declares no prior")

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """The prior's normalized log density at ``x`` ``(..., dim)``, shape ``(...)`` (see :meth:`prior_sample`).

        It must integrate to one over ``R^dim`` (on the unconstrained space, so with the log
        Jacobian of the constraining map), and ``log_prob - prior_log_prob`` must be the log
        likelihood: the annealing path from the prior multiplies it by ``t``.
        """
        raise NotImplementedError(f"{self.name} declares no prior")

    @property
    def has_prior(self) -> bool:
        """Whether this target declares its prior (overrides :meth:`prior_sample` and :meth:`prior_log_prob`)."""
        cls = type(self)
        return cls.prior_sample is not Target.prior_sample and cls.prior_log_prob is not Target.prior_log_prob

    @staticmethod
    def sample_device(
        generator: torch.Generator | None, device: torch.device | str | None
    ) -> torch.device | str | None:
        """Where :meth:`sample` draws: ``device`` if given, else the generator's, else torch's default."""
        if device is not None:
            return device
        return generator.device if generator is not None else None

    def constant(self, name: str, like: Tensor) -> Tensor:
        """The attribute ``name`` (array or tensor) as a tensor on ``like``'s device and dtype.

        Copies are cached per device and dtype, so a target can keep its constants (means,
        matrices) as NumPy arrays and use them on whatever device the particles live.
        """
        cache = self.__dict__.setdefault("_constants", {})
        key = (name, like.device, like.dtype)
        if key not in cache:
            value = getattr(self, name)
            if isinstance(value, Tensor):
                cache[key] = value.detach().to(device=like.device, dtype=like.dtype)
            else:
                cache[key] = torch.as_tensor(value, device=like.device, dtype=like.dtype)
        return cache[key]

    def __repr__(self) -> str:
        return f"{self.name}(dim={self.dim})"


class BoltzmannTarget(Target):
    """A Boltzmann density ``exp(-beta * energy(x))``; subclass and implement :meth:`energy`.

    ``beta`` (inverse temperature, default 1) scales the energy.
    """

    beta: float = 1.0

    @abc.abstractmethod
    def energy(self, x: Tensor) -> Tensor:
        """Energy ``U(x)`` for ``x`` of shape ``(..., dim)``, shape ``(...)``."""

    def log_prob(self, x: Tensor) -> Tensor:
        """``-beta * energy(x)``, shape ``(...)``."""
        energy = self.energy(x)
        return -self.beta * energy if self.beta != 1.0 else -energy


class FunctionTarget(Target):
    """A target built from a plain log-density or energy function (see :func:`target`)."""

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        dim: int,
        *,
        is_energy: bool,
        grad: Callable[[Tensor], Tensor] | None = None,
        name: str | None = None,
        log_Z: float | None = None,
        reference_loc: ReferenceHint = 0.0,
        reference_scale: ReferenceHint = 1.0,
    ):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ConfigurationError(f"dim must be a positive integer, got {dim!r}")
        self.fn = fn
        self.dim = dim
        self.is_energy = is_energy
        self._grad = grad
        self._name: str = name or str(getattr(fn, "__name__", "function"))
        self.log_Z = log_Z
        self.reference_loc = reference_loc
        self.reference_scale = reference_scale

    @property
    def name(self) -> str:
        return self._name

    def log_prob(self, x: Tensor) -> Tensor:
        value = self.fn(x)
        return -value if self.is_energy and isinstance(value, Tensor) else value

    @property
    def uses_autograd(self) -> bool:
        """True without ``grad``: the gradient is then autograd's (:attr:`Target.uses_autograd`)."""
        return self._grad is None

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._grad is None:
            return super().log_prob_and_grad(x)
        grad = self._grad(x)
        return self.log_prob(x), -grad if self.is_energy else grad


def _check_constant(target: Target, log_prob: object, x: Tensor) -> None:
    """A log density autograd cannot differentiate must be constant (zero gradient); else raise.

    A value that varies with ``x`` but carries no autograd graph was computed outside torch
    (NumPy, ``.item()``, ``.detach()``): its true gradient is not zero, and treating it as zero
    would sample the wrong density without a word.
    """
    if not isinstance(log_prob, Tensor) or not log_prob.is_floating_point() or log_prob.device != x.device:
        return  # not a floating tensor on x's device: the engine's own checks say what is wrong
    if log_prob.shape != x.shape[:-1] or log_prob.numel() < 2:
        return
    finite = log_prob[torch.isfinite(log_prob)]
    if finite.numel() > 1 and bool((finite != finite.flatten()[0]).any()):
        raise TargetError(
            f"target {target.name!r}: autograd cannot differentiate log_prob (its value depends on x, but not "
            "through torch operations: NumPy, .item() or .detach() inside?). Write it with torch operations, or "
            "give the target a grad_log_prob (sampler.target(..., grad=...))"
        )


def as_target(obj: object) -> Target:
    """``obj`` itself if it is a :class:`Target`; else a :class:`FunctionTarget` around any object with
    ``dim`` and ``log_prob`` (and optionally ``grad_log_prob``, ``name``, ``log_Z``, ``sample``
    and the reference hints)."""
    if isinstance(obj, Target):
        return obj
    wrapped = FunctionTarget(
        obj.log_prob,  # type: ignore[attr-defined]
        obj.dim,  # type: ignore[attr-defined]
        is_energy=False,
        grad=getattr(obj, "grad_log_prob", None),
        name=getattr(obj, "name", None) or type(obj).__name__,
        log_Z=getattr(obj, "log_Z", None),
        reference_loc=getattr(obj, "reference_loc", 0.0),
        reference_scale=getattr(obj, "reference_scale", 1.0),
    )
    if callable(getattr(obj, "sample", None)):
        wrapped.sample = obj.sample  # type: ignore[method-assign,attr-defined]
    return wrapped


def target(
    *,
    dim: int,
    energy: Callable[[Tensor], Tensor] | None = None,
    log_prob: Callable[[Tensor], Tensor] | None = None,
    grad: Callable[[Tensor], Tensor] | None = None,
    name: str | None = None,
    log_Z: float | None = None,
    reference_loc: ReferenceHint = 0.0,
    reference_scale: ReferenceHint = 1.0,
) -> FunctionTarget:
    """Wrap a plain function as a :class:`Target`.

    Give exactly one of ``energy`` (``U(x)``, density ``exp(-U)``) or ``log_prob``; both take
    ``x`` of shape ``(..., dim)`` and return ``(...)``. ``grad`` optionally gives the gradient of
    the function passed (of ``U`` or of ``log_prob``); otherwise autograd is used.

    >>> t = target(energy=lambda x: 0.5 * (x ** 2).sum(-1), dim=3)
    """
    if (energy is None) == (log_prob is None):
        raise ConfigurationError("give exactly one of energy=... or log_prob=...")
    fn = energy if energy is not None else log_prob
    if not callable(fn):
        raise ConfigurationError(f"expected a callable, got {type(fn).__name__}")
    return FunctionTarget(
        fn,
        dim,
        is_energy=energy is not None,
        grad=grad,
        name=name,
        log_Z=log_Z,
        reference_loc=reference_loc,
        reference_scale=reference_scale,
    )
