"""Bayesian models with named, constrained parameters: :func:`model`, :class:`Model`, :class:`Param`.

A user declares each parameter by name, shape and support (a ``torch.distributions``
constraint) and writes the log density of the constrained values; the engine samples the
unconstrained vector ``x`` in ``R^dim``, and this module maps it to the parameters with
``torch.distributions.biject_to`` and adds the log-Jacobian, so the user never writes either::

    from torch import distributions as dist
    from torch.distributions import constraints

    def log_prob(p, data):                       # p["theta"]: (..., 8); p["tau"]: (...)
        lp = dist.Normal(0, 5).log_prob(p["mu"]) + dist.HalfCauchy(5).log_prob(p["tau"])
        lp = lp + dist.Normal(p["mu"][..., None], p["tau"][..., None]).log_prob(p["theta"]).sum(-1)
        return lp + dist.Normal(p["theta"], data["sigma"]).log_prob(data["y"]).sum(-1)

    schools = sampler.model(log_prob, params={"mu": (), "tau": constraints.positive, "theta": 8},
                            data={"y": y, "sigma": sigma})

The density sampled on ``x`` is ``log_prob(constrain(x)) + log|det d constrain / dx|``: the
model's posterior expressed in unconstrained coordinates (as Stan, PyMC and NumPyro do). A
parameter the log density gives no prior term has a flat (improper) prior on its constrained
support; the posterior is then proper only if the likelihood makes it so.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, biject_to, constraints
from torch.distributions.constraints import Constraint
from torch.distributions.transforms import Transform

from sampler.errors import ConfigurationError, TargetError
from sampler.targets.base import ReferenceHint, Target

__all__ = ["Param", "ParameterInfo", "ParameterLayout", "Model", "model", "SUPPORT_NAMES"]

#: Supports that may be named by a string (``"positive"``); any constraint object for which
#: ``torch.distributions.biject_to`` knows a transform works too (``constraints.interval(0, 10)``).
SUPPORT_NAMES = (
    "real",
    "real_vector",
    "positive",
    "nonnegative",
    "unit_interval",
    "simplex",
    "corr_cholesky",
)

_Shape = tuple[int, ...]


def _as_shape(value: object) -> _Shape:
    """``()``, an int or a sequence of ints as a shape tuple; anything else is a ConfigurationError."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in value
    ):
        raise ConfigurationError(f"a shape is a tuple of positive integers (or () for a scalar), got {value!r}")
    return tuple(int(n) for n in value)


@attrs.frozen
class Param:
    """Declares one parameter of a :func:`model`.

    Attributes:
        shape: the shape of one value of the parameter in its constrained space: ``()`` for a
            scalar, ``(8,)`` for a vector of 8, ``(3,)`` for a simplex of 3 weights, ``(4, 4)``
            for the Cholesky factor of a 4 x 4 correlation matrix.
        constraint: its support: a ``torch.distributions.constraints`` object (``positive``,
            ``interval(0, 10)``, ``greater_than(2.0)``, ``simplex``, ``corr_cholesky``, ...) or
            one of the names in :data:`SUPPORT_NAMES`; default the real line.
        dims: names of the axes of ``shape`` for ArviZ (``("school",)``); with the model's
            ``coords`` they label the values. Default ``<name>_dim_0``, ...
    """

    shape: _Shape = attrs.field(default=(), converter=_as_shape)
    constraint: Constraint | str = constraints.real
    dims: tuple[str, ...] | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))


@attrs.frozen
class ParameterInfo:
    """What a result records of one parameter (JSON-serializable; no transform objects).

    Attributes:
        name: the parameter's name.
        shape: the shape of one constrained value.
        support: the constraint, as ``repr`` writes it (``GreaterThan(lower_bound=0.0)``).
        dims: ArviZ dimension names, one per axis of ``shape``.
        unconstrained_size: how many coordinates of ``x`` it takes.
    """

    name: str
    shape: _Shape
    support: str
    dims: tuple[str, ...]
    unconstrained_size: int


@attrs.frozen
class ParameterLayout:
    """The parameters of a model, in the order their coordinates appear in ``x``, and the coordinate values.

    Attributes:
        parameters: one :class:`ParameterInfo` per parameter.
        coords: values labelling named dims (``{"school": ("Choate", ...)}``).
    """

    parameters: tuple[ParameterInfo, ...]
    coords: Mapping[str, tuple[Any, ...]] = attrs.field(factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The parameter names, in order."""
        return tuple(p.name for p in self.parameters)

    def __getitem__(self, name: str) -> ParameterInfo:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    def element_names(self) -> list[str]:
        """One label per element of every constrained parameter, in :meth:`flatten`'s order:
        ``mu``, ``theta[0]`` (or ``theta[Choate]`` where the dim has coords), ``L[1,0]``."""
        out = []
        for p in self.parameters:
            if not p.shape:
                out.append(p.name)
                continue
            labels = [self.coords.get(dim, range(size)) for dim, size in zip(p.dims, p.shape, strict=True)]
            for index in np.ndindex(*p.shape):
                out.append(f"{p.name}[{','.join(str(labels[a][i]) for a, i in enumerate(index))}]")
        return out

    def flatten(self, draws: Mapping[str, Tensor]) -> Tensor:
        """The parameters' draws (name -> ``(R, N, *shape)``) side by side, ``(R, N, k)`` with
        ``k`` the total number of elements, labelled by :meth:`element_names`."""
        parts = [draws[p.name] for p in self.parameters]
        return torch.cat([v.reshape(*v.shape[:2], -1) for v in parts], dim=-1)

    def to_json(self) -> str:
        """The layout as JSON text (stored with saved results)."""
        return json.dumps(
            {
                "parameters": [attrs.asdict(p) for p in self.parameters],
                "coords": {k: list(v) for k, v in self.coords.items()},
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ParameterLayout:
        """The layout :meth:`to_json` wrote; ``ValueError``/``KeyError``/``TypeError`` if it is not one."""
        raw = json.loads(text)
        params = tuple(
            ParameterInfo(
                name=str(p["name"]),
                shape=tuple(int(n) for n in p["shape"]),
                support=str(p["support"]),
                dims=tuple(str(d) for d in p["dims"]),
                unconstrained_size=int(p["unconstrained_size"]),
            )
            for p in raw["parameters"]
        )
        return cls(params, {str(k): tuple(v) for k, v in raw["coords"].items()})


@attrs.frozen
class _Block:
    """A parameter's place in ``x`` and its bijection from the unconstrained space."""

    name: str
    shape: _Shape
    constraint: Constraint
    transform: Transform
    unconstrained_shape: _Shape
    start: int
    size: int
    dims: tuple[str, ...]

    @property
    def identity(self) -> bool:
        return isinstance(self.constraint, type(constraints.real)) or self.constraint is constraints.real_vector


def _constraint(name: str, value: Constraint | str) -> Constraint:
    if isinstance(value, str):
        if value not in SUPPORT_NAMES:
            raise ConfigurationError(
                f"parameter {name!r}: unknown support {value!r}; name one of {', '.join(SUPPORT_NAMES)} or pass a "
                "torch.distributions.constraints object (e.g. constraints.interval(0, 10))"
            )
        return getattr(constraints, value)
    if not isinstance(value, Constraint):
        raise ConfigurationError(
            f"parameter {name!r}: the support must be a torch.distributions constraint or one of "
            f"{', '.join(SUPPORT_NAMES)}, got {type(value).__name__} {value!r}"
        )
    return value


def _param(name: str, spec: object) -> Param:
    """The :class:`Param` a ``params`` entry declares: a shape, a support, ``(shape, support)`` or a Param."""
    if isinstance(spec, Param):
        return spec
    if isinstance(spec, (Constraint, str)):
        return Param((), spec)
    if (
        isinstance(spec, tuple)
        and len(spec) == 2
        and isinstance(spec[1], (Constraint, str))
        and not isinstance(spec[0], (Constraint, str))
    ):
        shape, support = spec
        try:
            return Param(shape, support)
        except ConfigurationError as exc:
            raise ConfigurationError(f"parameter {name!r}: {exc}") from None
    try:
        return Param(spec)
    except ConfigurationError:
        raise ConfigurationError(
            f"parameter {name!r}: declare it by a shape (() or 8 or (2, 3)), a support (constraints.positive or "
            f"'simplex'), a (shape, support) pair or sampler.Param(shape, support, dims); got {spec!r}"
        ) from None


def _block(name: str, param: Param, start: int) -> _Block:
    """Check one declaration against its bijection and place it at ``start`` in ``x``."""
    constraint = _constraint(name, param.constraint)
    try:
        transform = biject_to(constraint)
    except NotImplementedError:
        raise ConfigurationError(
            f"parameter {name!r}: torch.distributions has no bijection onto {constraint!r} (biject_to); supported: "
            f"{', '.join(SUPPORT_NAMES)}, interval/greater_than/less_than bounds, and constraints registered with "
            "torch.distributions.biject_to.register. For a covariance matrix, use a corr_cholesky factor and "
            "positive scales"
        ) from None
    if len(param.shape) < constraint.event_dim:
        raise ConfigurationError(
            f"parameter {name!r}: a {constraint!r} value has {constraint.event_dim} dimension(s), but its shape is "
            f"{param.shape}; e.g. Param((3,), 'simplex') or Param((4, 4), 'corr_cholesky')"
        )
    try:
        unconstrained = tuple(transform.inverse_shape(torch.Size(param.shape)))
        probe = transform(torch.zeros(unconstrained, dtype=torch.float64))
        ok = probe.shape == param.shape and bool(torch.all(constraint.check(probe)))
    except (ValueError, RuntimeError, IndexError):
        ok = False
    if not ok:
        raise ConfigurationError(
            f"parameter {name!r}: shape {param.shape} does not fit support {constraint!r} (e.g. a simplex needs "
            "(K,) with K >= 2, a corr_cholesky factor a square (K, K))"
        )
    size = math.prod(unconstrained)
    if size == 0:
        raise ConfigurationError(f"parameter {name!r}: shape {param.shape} leaves no free coordinate on {constraint!r}")
    dims = param.dims if param.dims is not None else tuple(f"{name}_dim_{i}" for i in range(len(param.shape)))
    if len(dims) != len(param.shape):
        raise ConfigurationError(f"parameter {name!r}: {len(dims)} dims {dims} for shape {param.shape}")
    return _Block(name, param.shape, constraint, transform, unconstrained, start, size, dims)


def _sum_to(value: Tensor, batch: tuple[int, ...]) -> Tensor:
    """``value`` ``(*batch, ...)`` (or broadcastable to it) summed over its trailing axes, shape ``batch``."""
    extra = value.dim() - len(batch)
    if extra > 0:
        value = value.sum(dim=tuple(range(-extra, 0)))
    return value.expand(batch)


@contextlib.contextmanager
def _unvalidated_distributions() -> Iterator[None]:
    """``torch.distributions`` argument checks off (as in NumPyro): a value that underflows to the edge of
    its support gets a log density of ``-inf`` or NaN (weight zero) instead of stopping the run."""
    before = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(before)


class _Values(dict):
    """The dict of constrained values handed to the user's log density; a wrong name says which exist."""

    def __missing__(self, key: object) -> Tensor:
        raise TargetError(f"the model has no parameter {key!r}; its parameters: {', '.join(self)}")


class Model(Target):
    """A target over named, constrained parameters; build it with :func:`model`.

    ``x`` ``(..., dim)`` is the concatenation of each parameter's unconstrained coordinates,
    in the order of ``params``. :meth:`constrain` maps it to the parameters,
    :meth:`unconstrain` back, and :meth:`log_prob` is the user's log density plus the
    log-Jacobian of the map.

    Attributes:
        layout: the :class:`ParameterLayout` results carry (names, shapes, supports, dims, coords).
        dim_names: names of the unconstrained coordinates (``mu``, ``tau (unconstrained)``, ...).
    """

    def __init__(
        self,
        log_prob: Callable[..., Tensor],
        params: Mapping[str, object],
        *,
        data: Mapping[str, Any] | None = None,
        coords: Mapping[str, Sequence[Any]] | None = None,
        name: str | None = None,
        log_Z: float | None = None,
        reference_loc: ReferenceHint = 0.0,
        reference_scale: ReferenceHint = 1.0,
        prior_log_prob: Callable[[Mapping[str, Tensor]], Tensor] | None = None,
        prior_sample: Callable[[int, torch.Generator], Mapping[str, Any]] | None = None,
    ):
        if not callable(log_prob):
            raise ConfigurationError(f"log_prob must be a function of the parameters, got {type(log_prob).__name__}")
        if not isinstance(params, Mapping) or not params:
            raise ConfigurationError("params must be a non-empty dict: name -> shape, support or sampler.Param")
        blocks: list[_Block] = []
        start = 0
        for key, spec in params.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise ConfigurationError(f"parameter names must be Python identifiers, got {key!r}")
            block = _block(key, _param(key, spec), start)
            blocks.append(block)
            start += block.size
        self._blocks = tuple(blocks)
        self.dim = start
        self.fn = log_prob
        self._name = name or str(getattr(log_prob, "__name__", "model"))
        self.log_Z = log_Z
        self.reference_loc = reference_loc
        self.reference_scale = reference_scale
        self.data = _checked_data(data)
        self.layout = ParameterLayout(
            tuple(ParameterInfo(b.name, b.shape, repr(b.constraint), b.dims, b.size) for b in self._blocks),
            _checked_coords(coords, self._blocks),
        )
        self.dim_names = tuple(_unconstrained_names(self._blocks))
        self._data_cache: dict[tuple[torch.device, torch.dtype], dict[str, Tensor]] = {}
        if (prior_log_prob is None) != (prior_sample is None):
            raise ConfigurationError("give the model's prior as both prior_log_prob and prior_sample, or neither")
        for label, fn in (("prior_log_prob", prior_log_prob), ("prior_sample", prior_sample)):
            if fn is not None and not callable(fn):
                raise ConfigurationError(f"{label} must be a function, got {type(fn).__name__}")
        self._prior_log_prob = prior_log_prob
        self._prior_sample = prior_sample

    @property
    def name(self) -> str:
        return self._name

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """The parameter names, in the order of ``x``."""
        return self.layout.names

    def __repr__(self) -> str:
        params = ", ".join(f"{b.name}: {b.shape} {b.constraint!r}" for b in self._blocks)
        return f"Model({self.name!r}, dim={self.dim}, {params})"

    # -- the map between x and the parameters ----------------------------------------------------
    def _check_x(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise TargetError(f"model {self.name!r}: x must have shape (..., {self.dim}), got {shape}")

    def _split(self, x: Tensor) -> Iterator[tuple[_Block, Tensor]]:
        batch = x.shape[:-1]
        for b in self._blocks:
            yield b, x[..., b.start : b.start + b.size].reshape(tuple(batch) + b.unconstrained_shape)

    def constrain(self, x: Tensor) -> dict[str, Tensor]:
        """The parameters at ``x`` ``(..., dim)``: name -> constrained values ``(..., *shape)``."""
        self._check_x(x)
        return {b.name: u if b.identity else b.transform(u) for b, u in self._split(x)}

    def constrain_with_log_jacobian(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """:meth:`constrain` and ``log|det d constrain / dx|`` ``(...)`` at ``x`` ``(..., dim)``."""
        self._check_x(x)
        batch = tuple(x.shape[:-1])
        values: dict[str, Tensor] = {}
        log_jac = x.new_zeros(batch)
        for b, u in self._split(x):
            if b.identity:
                values[b.name] = u
                continue
            y = b.transform(u)
            values[b.name] = y
            log_jac = log_jac + _sum_to(b.transform.log_abs_det_jacobian(u, y), batch)
        return values, log_jac

    def unconstrain(self, values: Mapping[str, Any]) -> Tensor:
        """``x`` ``(..., dim)`` of the parameter values ``values`` (name -> ``(..., *shape)`` arrays or tensors).

        Values must lie inside their supports (on the boundary the unconstrained value is infinite).
        """
        missing = [b.name for b in self._blocks if b.name not in values]
        if missing:
            raise ConfigurationError(f"model {self.name!r}: values for {', '.join(missing)} are missing")
        parts = []
        batch: tuple[int, ...] | None = None
        for b in self._blocks:
            y = torch.as_tensor(values[b.name])
            if not y.is_floating_point():
                y = y.to(torch.get_default_dtype())
            here = tuple(y.shape[: y.dim() - len(b.shape)])
            if tuple(y.shape[y.dim() - len(b.shape) :]) != b.shape or (batch is not None and here != batch):
                raise ConfigurationError(
                    f"model {self.name!r}: parameter {b.name!r} has shape {b.shape}, got values of shape "
                    f"{tuple(y.shape)}" + ("" if batch is None else f" (other parameters have batch shape {batch})")
                )
            batch = here
            u = y if b.identity else b.transform.inv(y)
            parts.append(u.reshape(*here, b.size))
        dtype = torch.promote_types(parts[0].dtype, parts[-1].dtype)
        return torch.cat([p.to(dtype) for p in parts], dim=-1)

    # -- the density -------------------------------------------------------------------------------
    def data_like(self, like: Tensor) -> dict[str, Tensor]:
        """The model's data on ``like``'s device; floating arrays in ``like``'s dtype (cached)."""
        key = (like.device, like.dtype)
        if self.data is None:
            return {}
        if key not in self._data_cache:
            self._data_cache[key] = {
                k: v.to(device=like.device, dtype=like.dtype if v.is_floating_point() else v.dtype)
                for k, v in self.data.items()
            }
        return self._data_cache[key]

    def log_prob(self, x: Tensor) -> Tensor:
        """The user's log density at ``constrain(x)`` plus the log-Jacobian, ``(...)`` for ``x`` ``(..., dim)``."""
        values, log_jac = self.constrain_with_log_jacobian(x)
        batch = tuple(x.shape[:-1])
        with _unvalidated_distributions():
            lp = self.fn(_Values(values)) if self.data is None else self.fn(_Values(values), self.data_like(x))
        return self._checked(lp, batch) + log_jac

    # -- the prior (optional) -------------------------------------------------------------------
    @property
    def has_prior(self) -> bool:
        """Whether the model was given its prior (``prior_log_prob`` and ``prior_sample``)."""
        return self._prior_log_prob is not None

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """The prior's log density at ``constrain(x)`` plus the log-Jacobian, ``(...)`` for ``x`` ``(..., dim)``."""
        if self._prior_log_prob is None:
            return super().prior_log_prob(x)
        values, log_jac = self.constrain_with_log_jacobian(x)
        with _unvalidated_distributions():
            lp = self._prior_log_prob(_Values(values))
        return self._checked(lp, tuple(x.shape[:-1]), "prior_log_prob") + log_jac

    def prior_sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """``n`` prior draws ``(n, dim)``: the user's constrained draws, unconstrained, on the generator's device."""
        if self._prior_sample is None:
            return super().prior_sample(n, generator, dtype)
        generator = generator if generator is not None else torch.default_generator
        x = self.unconstrain(self._prior_sample(n, generator))
        if tuple(x.shape) != (n, self.dim):
            raise TargetError(
                f"model {self.name!r}: prior_sample({n}, generator) must give each parameter {n} draws "
                f"(values of shape ({n}, *shape)), which unconstrain to ({n}, {self.dim}); got {tuple(x.shape)}"
            )
        return x.to(device=generator.device, dtype=dtype or torch.get_default_dtype())

    def _checked(self, lp: object, batch: tuple[int, ...], what: str = "log_prob") -> Tensor:
        """The user's value, or a TargetError that says what is wrong (naming the parameter if it can)."""
        if isinstance(lp, (int, float)) and not batch:
            return torch.as_tensor(float(lp))
        if not isinstance(lp, Tensor):
            raise TargetError(f"model {self.name!r}: {what} must return a torch.Tensor, got {type(lp).__name__}")
        if tuple(lp.shape) == batch:
            return lp
        hint = ""
        for b in self._blocks:
            if b.shape and tuple(lp.shape) == batch + b.shape:
                hint = (
                    f": it has the shape of parameter {b.name!r} {b.shape} over the batch -- sum the log density "
                    f"over the parameter's own axes, e.g. dist.Normal(0, 1).log_prob({b.name}).sum(-1)"
                )
                break
        else:
            if lp.dim() < len(batch):
                hint = (
                    ": every value arrives with leading batch axes (particles), and log_prob must keep them -- "
                    "sum only over a parameter's own trailing axes (.sum(-1)), never over all of them"
                )
        raise TargetError(
            f"model {self.name!r}: {what} returned shape {tuple(lp.shape)} for parameters with batch shape "
            f"{batch}; expected {batch}{hint}"
        )


def _checked_data(data: Mapping[str, Any] | None) -> dict[str, Tensor] | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"data must be a dict of arrays or tensors, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        try:
            tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value.detach())
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"data {key!r} is not numeric ({type(value).__name__}): {exc}") from None
        if tensor.dtype == torch.float16 or tensor.dtype.is_complex:
            raise ConfigurationError(f"data {key!r} has dtype {tensor.dtype}; give float32/64, int or bool data")
        out[str(key)] = tensor
    return out


def _checked_coords(coords: Mapping[str, Sequence[Any]] | None, blocks: Sequence[_Block]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for key, values in (coords or {}).items():
        out[str(key)] = tuple(_json_value(v) for v in values)
    for b in blocks:
        for axis, dim in enumerate(b.dims):
            if dim in out and len(out[dim]) != b.shape[axis]:
                raise ConfigurationError(
                    f"parameter {b.name!r}: dim {dim!r} has {len(out[dim])} coords but the parameter's axis "
                    f"{axis} has length {b.shape[axis]}"
                )
    return out


def _json_value(value: Any) -> str | int | float:
    """A coordinate value as results store it: numbers stay numbers, anything else becomes its ``str``."""
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else str(value)


def _unconstrained_names(blocks: Sequence[_Block]) -> Iterator[str]:
    for b in blocks:
        suffix = "" if b.identity else " (unconstrained)"
        if not b.unconstrained_shape:
            yield b.name + suffix
            continue
        for index in np.ndindex(*b.unconstrained_shape):
            yield f"{b.name}[{','.join(str(i) for i in index)}]{suffix}"


def model(
    log_prob: Callable[..., Tensor],
    params: Mapping[str, object],
    *,
    data: Mapping[str, Any] | None = None,
    coords: Mapping[str, Sequence[Any]] | None = None,
    name: str | None = None,
    log_Z: float | None = None,
    reference_loc: ReferenceHint = 0.0,
    reference_scale: ReferenceHint = 1.0,
    prior_log_prob: Callable[[Mapping[str, Tensor]], Tensor] | None = None,
    prior_sample: Callable[[int, torch.Generator], Mapping[str, Any]] | None = None,
) -> Model:
    """A target over named, constrained parameters (a Bayesian model); sample it like any target.

    Args:
        log_prob: ``log_prob(params)`` -- or ``log_prob(params, data)`` when ``data`` is given --
            the unnormalized log density of the parameters in their constrained space. ``params``
            maps each name to its values ``(..., *shape)``, with leading batch axes (the engine's
            replicas x particles): keep them, sum only over a parameter's own axes, and put
            ``[..., None]`` on a scalar that meets a vector (``Normal(mu[..., None], tau[..., None])``).
            ``torch.distributions`` objects work as priors and likelihoods
            (``dist.HalfCauchy(5).log_prob(tau)``); their argument validation is off while it runs.
            Do not add the log-Jacobian: the model does.
        params: name -> declaration, in the order of ``x``: a shape (``()``, ``8``, ``(2, 3)``;
            real values), a support (``constraints.positive``, ``constraints.interval(0, 1)``,
            ``"simplex"``; a scalar unless a shape is given), a ``(shape, support)`` pair, or a
            :class:`Param` (with ArviZ ``dims``). A simplex of K weights has shape ``(K,)``; a
            Cholesky factor of a K x K correlation matrix ``(K, K)`` with support ``corr_cholesky``.
        data: arrays or tensors handed to ``log_prob`` as its second argument, on the particles'
            device, floating ones in their dtype.
        coords: values labelling named dims (``{"school": names}``), as in ArviZ.
        name: the model's name (default: the function's name).
        log_Z: the exact log normalizer, if known (benchmarks and summaries use it).
        reference_loc, reference_scale: where the default Gaussian reference sits in the
            unconstrained space (scalars or ``(dim,)``).
        prior_log_prob, prior_sample: the model's prior, both or neither: ``prior_log_prob(params)``
            its normalized log density in the constrained space (batched like ``log_prob``, no
            Jacobian, no data), and ``prior_sample(n, generator)`` ``n`` draws of it, name ->
            ``(n, *shape)`` tensors drawn with ``generator`` (``torch.randn(n, generator=g)``,
            ...). ``log_prob`` minus ``prior_log_prob`` must be the likelihood. A model with its
            prior starts ``smc``'s path at the prior, tempering the likelihood alone
            (:class:`~sampler.core.prior_reference.PriorReference`): what makes a centered
            hierarchical model, whose prior is a funnel, come out right.

    Results of a model carry its parameters: ``result.draws["tau"]`` ``(R, N)`` are the
    constrained draws, ``result.to_arviz()`` has one variable per parameter, and
    ``sampler.summary`` lists them by name.

    Raises:
        ConfigurationError: a declaration the constraint machinery cannot use (unknown support,
            a shape that does not fit it, a bad name), naming the parameter; half a prior.
    """
    return Model(
        log_prob,
        params,
        data=data,
        coords=coords,
        name=name,
        log_Z=log_Z,
        reference_loc=reference_loc,
        reference_scale=reference_scale,
        prior_log_prob=prior_log_prob,
        prior_sample=prior_sample,
    )
