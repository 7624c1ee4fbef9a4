"""Results to and from ArviZ InferenceData and NetCDF files; trained models saved alongside.

Layout of an exported result (``Result.to_arviz()``, and the file ``Result.save`` writes):

- ``posterior.x`` ``(chain, draw, x_dim_0)``: the equally weighted samples (R replicas x N
  particles, or R chains x N draws); ``x_dim_0`` carries the target's ``dim_names`` if it has
  them. Every ArviZ function (``az.summary``, ``az.ess``, ``az.rhat``, ``az.plot_trace``,
  ``az.plot_pair``) applies to it.
- For a :func:`sampler.model` (a result with a ``layout``), ``posterior`` instead holds one
  variable per parameter, constrained, ``(chain, draw, *dims)`` with the model's dims and
  coords, and ``x`` moves to the group ``unconstrained_posterior``; the attribute
  ``parameters`` (JSON) records the layout (names, shapes, supports, dims, coords).
- ``sample_stats``: ``log_weight`` ``(chain, draw)`` with ``weighted_x`` (SMC-type methods): the
  weighted particle set before the final resampling, paired by index -- these weights belong
  to ``weighted_x``, not to ``posterior.x``; use them for importance-weighted expectations
  (``sum softmax(log_weight) * f(weighted_x)`` per chain), not with ArviZ's unweighted
  diagnostics. ``log_Z`` ``(chain,)``. Per-stage statistics on a ``step`` axis: ``t``, ``ess``,
  ``log_Z_increment`` ``(chain, step)``, ``target_evals``, ``grad_evals``, ``nonfinite``
  ``(step,)``, and every statistic the steps reported (``acceptance``, ``step_size``, ...).
  ``diverging`` ``(chain, draw)`` bool (``hmc`` chains, :meth:`~sampler.Result.divergent_draws`),
  as ArviZ names it.
- ``attrs`` (of the InferenceData and of both groups): method, target, kind, options (JSON), seed, log Z ± standard
  error, exact log Z, evaluation counts, wall time, device, and the versions of
  sampler-engine, torch and arviz that wrote it.

Models (trained flows, JKO stacks, TT fields) in ``Result.models`` are saved next to the
NetCDF file, in ``<stem>.models/``: per model a JSON config and a tensor file. Loading never
executes code from a file: NetCDF holds arrays and attributes, configs are JSON, tensors are
read with ``torch.load(..., weights_only=True)``, and a model is rebuilt by a factory that an
installed plugin registered (``registry.add_model``), named in its config.
"""

from __future__ import annotations

import datetime
import gc
import json
import math
import os
import platform
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol, cast, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from sampler._version import __version__
from sampler.core.records import STEP_COUNTS, STEP_FIELDS
from sampler.core.result import Result, StepStats, provide
from sampler.errors import PersistenceError, UnknownNameError
from sampler.host.loading import host
from sampler.io._arviz import arviz
from sampler.io.checkpoint import load_plain, sibling_temp_path
from sampler.targets.model import ParameterLayout

__all__ = [
    "FORMAT_VERSION",
    "SavableModel",
    "to_inference_data",
    "from_inference_data",
    "save_result",
    "load_result",
    "save_models",
    "load_models",
    "models_dir",
]

#: Version of the layout above; a reader refuses files of a newer layout, naming their writer.
#: 2: results of models (named parameters; ``x`` in ``unconstrained_posterior``).
FORMAT_VERSION = 2


@runtime_checkable
class SavableModel(Protocol):
    """A trained model that ``Result.save`` can store and ``sampler.load`` rebuild.

    ``model_name`` is the name its plugin registered with ``registry.add_model``;
    ``model_config()`` returns the JSON-serializable keyword arguments of that factory;
    ``state_dict``/``load_state_dict`` carry the weights (an ``nn.Module`` has both).
    """

    model_name: str

    def model_config(self) -> dict[str, Any]: ...

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> Any: ...


# -- InferenceData -----------------------------------------------------------------------------
def _np(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _metadata(result: Result) -> dict[str, Any]:
    """NetCDF-safe attributes (str, int, float, arrays; no None or bool)."""

    try:
        options, options_json = json.dumps(dict(result.options)), 1
    except TypeError:
        options, options_json = repr(dict(result.options)), 0
    meta: dict[str, Any] = {
        "inference_library": "sampler-engine",
        "inference_library_version": __version__,
        "sampler_format_version": FORMAT_VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),
        "arviz_version": str(arviz().__version__),
        "python_version": platform.python_version(),
        "method": result.method,
        "target": result.target,
        "kind": result.kind,
        "options": options,
        "options_json": options_json,
        "n_target_evals": int(result.n_target_evals),
        "n_grad_evals": int(result.n_grad_evals),
        "n_nonfinite": int(result.n_nonfinite),
        "wall_time_s": float(result.wall_time),
        "device": result.device,
    }
    if result.seed is not None:
        meta["seed"] = int(result.seed)
    if result.log_Z is not None:
        meta["log_Z"] = float(result.log_Z)
        stderr = result.log_Z_stderr
        meta["log_Z_stderr"] = math.nan if stderr is None else float(stderr)
    if result.exact_log_Z is not None:
        meta["exact_log_Z"] = float(result.exact_log_Z)
    if result.models:
        meta["models"] = json.dumps(sorted(result.models))
    if result.layout is not None:
        meta["parameters"] = result.layout.to_json()
    return meta


def _step_variable(
    name: str, chunks: list[tuple[Tensor | None, int]], n_chains: int
) -> tuple[tuple[str, ...], np.ndarray, dict[str, Any]]:
    """Stack one per-step statistic over steps from its ``StepRecords.chunks``.

    ``(chain, step, ...)`` when it is per replica, else ``(step, ...)``.
    """
    first = next(v for v, _ in chunks if v is not None)
    shape = tuple(first.shape[1:])
    fill = math.nan if first.is_floating_point() or first.dtype == torch.bool else 0
    store = torch.float64 if first.dtype == torch.bool else first.dtype
    np_dtype = _np(first[:0].to(store)).dtype
    stacked = np.concatenate(
        [np.full((k, *shape), fill, dtype=np_dtype) if v is None else _np(v.to(store)) for v, k in chunks]
    )  # (K, *shape)
    attrs: dict[str, Any] = {"torch_dtype": _dtype_name(first)}
    present = np.concatenate([np.full(k, v is not None) for v, k in chunks])
    if not present.all():
        attrs["present_steps"] = np.flatnonzero(present).astype(np.int64)
    rest = tuple(f"{name}_dim_{i}" for i in range(len(shape) - 1))
    if len(shape) >= 1 and shape[0] == n_chains:
        return ("chain", "step", *rest), np.moveaxis(stacked, 0, 1), attrs
    return ("step", *(f"{name}_dim_{i}" for i in range(len(shape)))), stacked, attrs


def to_inference_data(result: Result) -> Any:
    """``result`` as :class:`arviz.InferenceData` (layout in this module's docstring)."""
    import xarray as xr

    az = arviz()
    r, n, d = result.samples.shape
    coords: dict[str, Any] = {
        "chain": np.arange(r),
        "draw": np.arange(n),
        "x_dim_0": list(result.dim_names) if result.dim_names else np.arange(d),
    }
    x = xr.Dataset({"x": (("chain", "draw", "x_dim_0"), _np(result.samples))}, coords=coords)
    groups: dict[str, Any] = {"posterior": x}
    if result.layout is not None:
        groups = {"posterior": _parameters_dataset(result), "unconstrained_posterior": x}
    stats: dict[str, Any] = {"log_weight": (("chain", "draw"), _np(result.log_weights))}
    if result.kind == "smc":
        stats["weighted_x"] = (("chain", "draw", "x_dim_0"), _np(result.weighted_samples))
    if result.log_Z_per_replica is not None:
        stats["log_Z"] = (("chain",), _np(result.log_Z_per_replica))
    diverging = result.divergent_draws()
    if diverging is not None:  # hmc chains: ArviZ's name, which its plots mark (plot_pair(divergences=True))
        stats["diverging"] = (("chain", "draw"), _np(diverging))
    step_coords: dict[str, Any] = {}
    if result.steps:  # stacked record by record: a fused run's blocks are never expanded into rows
        steps = result.steps

        def column(name: str) -> np.ndarray:
            return np.concatenate([_np(v) for v, _ in steps.chunks(name) if v is not None]).astype(np.int64)

        step_coords["step"] = column("step")
        for name in STEP_FIELDS:
            dims, values, attrs = _step_variable(name, steps.chunks(name), r)
            stats[name] = xr.Variable(dims, values, attrs)
        for name in STEP_COUNTS:
            stats[name] = (("step",), column(name))
        for key in sorted({k for rec in steps.records for k in rec.info}):
            var = key if key not in stats and key not in coords else f"info_{key}"
            dims, values, attrs = _step_variable(var, steps.chunks(key, info=True), r)
            stats[var] = xr.Variable(dims, values, {**attrs, "info_key": key})
    sample_stats = xr.Dataset(stats, coords={**coords, **step_coords})
    meta = _metadata(result)
    for group in (*groups.values(), sample_stats):
        group.attrs.update(meta)
    return az.InferenceData(attrs=dict(meta), **groups, sample_stats=sample_stats)


def _parameters_dataset(result: Result) -> Any:
    """The constrained draws of a model's parameters: one variable per parameter, ``(chain, draw, *dims)``."""
    import xarray as xr

    assert result.layout is not None
    r, n = result.samples.shape[:2]
    coords: dict[str, Any] = {"chain": np.arange(r), "draw": np.arange(n)}
    variables = {}
    for p in result.layout.parameters:
        variables[p.name] = (("chain", "draw", *p.dims), _np(result.draws[p.name]))
        for dim, size in zip(p.dims, p.shape, strict=True):
            coords.setdefault(dim, list(result.layout.coords.get(dim, range(size))))
    return xr.Dataset(variables, coords=coords)


def _attr(meta: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    return value.item() if isinstance(value, np.generic) else value


def _tensor(values: Any, dtype_name: str | None = None) -> Tensor:
    t = torch.from_numpy(np.array(values))
    return t if dtype_name is None else t.to(getattr(torch, dtype_name))


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(n) for n in shape)


#: Attributes every result file has (``_metadata`` writes them), and what each must be.
_REQUIRED_ATTRS = {
    "method": "text",
    "target": "text",
    "kind": "text",
    "options": "text",
    "options_json": "count",
    "n_target_evals": "count",
    "n_grad_evals": "count",
    "n_nonfinite": "count",
    "wall_time_s": "number",
    "device": "text",
}
_OPTIONAL_ATTRS = {"seed": "integer", "exact_log_Z": "number", "log_Z": "number", "log_Z_stderr": "number"}


class _Reader:
    """Reads a saved result's parts, checking each; every failure names the file and what is wrong."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, what: str) -> NoReturn:
        raise PersistenceError(f"{self.source} is not a valid sampler-engine result: {what}")

    def attribute(self, meta: Mapping[str, Any], key: str, kind: str, required: bool = True) -> Any:
        """``kind``: ``text``, ``count`` (non-negative integer), ``integer`` or ``number``."""
        if key not in meta:
            if required:
                self.fail(f"missing attribute {key}")
            return None
        value = _attr(meta, key)
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(()).item()
        if kind == "text":
            if not isinstance(value, str):
                self.fail(f"attribute {key} is {value!r}, not text")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            need = {"count": "a non-negative integer", "integer": "an integer"}.get(kind, "a number")
            self.fail(f"attribute {key} is {value!r}, not {need}")
        if kind == "number":
            return float(value)
        if not float(value).is_integer() or (kind == "count" and value < 0):
            need = "a non-negative integer" if kind == "count" else "an integer"
            self.fail(f"attribute {key} is {value!r}, not {need}")
        return int(value)

    def json_attribute(self, meta: Mapping[str, Any], key: str, kind: type) -> Any:
        text = self.attribute(meta, key, "text")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            self.fail(f"JSON attribute {key} is unreadable ({exc.msg} at line {exc.lineno} column {exc.colno})")
        if not isinstance(value, kind):
            self.fail(f"JSON attribute {key} holds a {type(value).__name__}, not a {kind.__name__}")
        return value

    def group(self, idata: Any, name: str) -> Any:
        groups = idata.groups() if callable(getattr(idata, "groups", None)) else []
        if name not in groups:
            self.fail(f"missing group {name}")
        return getattr(idata, name)

    def variable(
        self,
        group: Any,
        gname: str,
        name: str,
        dims: tuple[str, ...] | None = None,
        shape: tuple[int, ...] | None = None,
        meaning: str = "",
        kinds: str = "f",
    ) -> Any:
        """The variable ``gname.name``, checked: its dimensions, shape and kind of numbers (numpy ``kind``)."""
        note = f" ({meaning})" if meaning else ""
        if name not in group.data_vars:
            self.fail(f"missing variable {gname}.{name}{note}")
        var = group[name]
        if dims is not None and tuple(var.dims) != dims:
            self.fail(f"variable {gname}.{name} has dimensions {tuple(var.dims)} but {dims} expected")
        if shape is not None and tuple(var.shape) != shape:
            self.fail(f"variable {gname}.{name} has shape {tuple(var.shape)} but {_shape(shape)}{note} expected")
        if var.dtype.kind not in kinds:
            want = {"f": "floating-point", "iu": "integer"}.get(kinds, "numeric")
            self.fail(f"variable {gname}.{name} holds {var.dtype} values, not {want} numbers")
        return var

    # -- the per-step statistics -------------------------------------------------------------
    def step_variable(self, stats: Any, name: str, r: int, k: int, required: bool) -> list[Tensor | None]:
        """Per-step tensors of one statistic, undoing :func:`_step_variable`; checked."""
        var = self.variable(stats, "sample_stats", name, kinds="fiub")
        dims, shape = tuple(var.dims), tuple(var.shape)
        if required:  # t, ess, log_Z_increment: one value per replica and step
            self.variable(stats, "sample_stats", name, ("chain", "step"), (r, k), "R×steps", "fiub")
        if dims[:2] == ("chain", "step") and shape[:2] == (r, k):
            chain_first = True
        elif dims[:1] == ("step",) and shape[:1] == (k,):
            chain_first = False
        else:
            self.fail(
                f"variable sample_stats.{name} has shape {shape} (dimensions {dims}) but {_shape((r, k))}×... "
                f"(chain × step) or {k}×... (step) expected"
            )
        dtype = var.attrs.get("torch_dtype")
        if dtype is not None and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
            self.fail(f"variable sample_stats.{name} has attribute torch_dtype {dtype!r}, which is not a torch dtype")
        values = np.asarray(var.values)
        if chain_first:
            values = np.moveaxis(values, 1, 0)
        rows: list[Tensor | None] = [_tensor(v, None if dtype is None else str(dtype)) for v in values]
        present = var.attrs.get("present_steps")
        if present is not None:
            kept = np.atleast_1d(np.asarray(present))
            if kept.dtype.kind not in "iu" or kept.ndim != 1 or ((kept < 0) | (kept >= k)).any():
                shown = kept.tolist()
                self.fail(f"variable sample_stats.{name} has attribute present_steps {shown}, not steps 0..{k - 1}")
            if required and len(set(kept.tolist())) != k:
                self.fail(f"variable sample_stats.{name} lacks steps (attribute present_steps): every step has one")
            keep = {int(i) for i in kept}
            rows = [row if i in keep else None for i, row in enumerate(rows)]
        return rows

    def steps(self, stats: Any, r: int) -> tuple[StepStats, ...]:
        names = (*STEP_FIELDS, *STEP_COUNTS)
        if "step" not in stats.dims and not any(name in stats.data_vars for name in names):
            return ()
        if "step" not in stats.coords:
            self.fail("missing coordinate sample_stats.step (the step numbers)")
        step = stats.coords["step"]
        if step.ndim != 1 or step.dtype.kind not in "iu":
            self.fail(f"coordinate sample_stats.step holds {step.dtype} values of shape {step.shape}, not step numbers")
        numbers = [int(s) for s in step.values]
        k = len(numbers)
        fields: dict[str, list[Tensor]] = {}
        for name in STEP_FIELDS:
            fields[name] = [row for row in self.step_variable(stats, name, r, k, True) if row is not None]
        counts: dict[str, list[int]] = {}
        for name in STEP_COUNTS:
            var = self.variable(stats, "sample_stats", name, ("step",), (k,), "one count per step", "iu")
            counts[name] = [int(v) for v in var.values]
            if any(c < 0 for c in counts[name]):
                self.fail(f"variable sample_stats.{name} holds negative counts")
        info: dict[str, list[Tensor | None]] = {}
        for var_name, var in stats.data_vars.items():
            if "info_key" in var.attrs:
                info[str(var.attrs["info_key"])] = self.step_variable(stats, str(var_name), r, k, False)
        return tuple(
            StepStats(
                step=numbers[i],
                t=fields["t"][i],
                ess=fields["ess"][i],
                log_Z_increment=fields["log_Z_increment"][i],
                target_evals=counts["target_evals"][i],
                grad_evals=counts["grad_evals"][i],
                nonfinite=counts["nonfinite"][i],
                info={key: row for key, rows in info.items() if (row := rows[i]) is not None},
            )
            for i in range(k)
        )

    # -- the whole result --------------------------------------------------------------------
    def result(self, idata: Any) -> Result:
        post = self.group(idata, "posterior")
        meta = dict(post.attrs)
        version = _attr(meta, "sampler_format_version")
        writer = _attr(meta, "inference_library_version", "unknown")
        if version is None:
            raise PersistenceError(
                f"{self.source} was not written by sampler-engine (no sampler_format_version attribute)"
            )
        version = self.attribute(meta, "sampler_format_version", "count")
        if version > FORMAT_VERSION:
            raise PersistenceError(
                f"{self.source} was written by sampler-engine {writer} (result format {version}); this is "
                f"sampler-engine {__version__}, which reads formats up to {FORMAT_VERSION}: upgrade sampler-engine "
                "to load it"
            )
        attrs = {key: self.attribute(meta, key, kind) for key, kind in _REQUIRED_ATTRS.items()}
        attrs.update({key: self.attribute(meta, key, kind, required=False) for key, kind in _OPTIONAL_ATTRS.items()})
        layout = self.layout(meta)
        if layout is not None:
            post = self.group(idata, "unconstrained_posterior")
            gname = "unconstrained_posterior"
        else:
            gname = "posterior"
        x = self.variable(post, gname, "x", ("chain", "draw", "x_dim_0"), meaning="the samples")
        r, n, d = x.shape
        draws = {} if layout is None else self.draws(self.group(idata, "posterior"), layout, r, n)
        stats = self.group(idata, "sample_stats")
        samples = _tensor(x.values)
        log_weights = _tensor(
            self.variable(stats, "sample_stats", "log_weight", ("chain", "draw"), (r, n), "R×N").values
        )
        kind = attrs["kind"]
        if kind == "smc" or "weighted_x" in stats.data_vars:
            dims = ("chain", "draw", "x_dim_0")
            weighted = _tensor(self.variable(stats, "sample_stats", "weighted_x", dims, (r, n, d), "R×N×d").values)
        else:
            weighted = samples
        log_z = None
        if "log_Z" in stats.data_vars or attrs["log_Z"] is not None:
            log_z = _tensor(self.variable(stats, "sample_stats", "log_Z", ("chain",), (r,), "one per replica").values)
        steps = self.steps(stats, r)
        if attrs["options_json"]:
            options = self.json_attribute(meta, "options", dict)
        else:
            options = {"repr": attrs["options"]}
        x_names = post["x"].coords["x_dim_0"].values if "x_dim_0" in post["x"].coords else np.arange(d)
        dim_names = tuple(str(v) for v in x_names) if x_names.dtype.kind in "US" else None
        return Result(
            samples=samples,
            log_weights=log_weights,
            weighted_samples=weighted,
            log_Z_per_replica=log_z,
            n_target_evals=attrs["n_target_evals"],
            n_grad_evals=attrs["n_grad_evals"],
            n_nonfinite=attrs["n_nonfinite"],
            steps=steps,
            method=attrs["method"],
            target=attrs["target"],
            kind=kind,
            seed=attrs["seed"],
            wall_time=attrs["wall_time_s"],
            device=attrs["device"],
            options=options,
            exact_log_Z=attrs["exact_log_Z"],
            dim_names=cast(Any, dim_names),  # the converter's type (Iterable[_T_co]) defeats mypy
            layout=layout,
            draws=draws,
        )

    def layout(self, meta: Mapping[str, Any]) -> ParameterLayout | None:
        """The model's parameter layout recorded in the attribute ``parameters``, or ``None``."""
        if "parameters" not in meta:
            return None
        text = self.attribute(meta, "parameters", "text")
        try:
            layout = ParameterLayout.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            self.fail(f"JSON attribute parameters is not a parameter layout ({type(exc).__name__}: {exc})")
        if not layout.parameters or len(set(layout.names)) != len(layout.names):
            self.fail(f"JSON attribute parameters names no parameters, or repeats one: {list(layout.names)}")
        return layout

    def draws(self, post: Any, layout: ParameterLayout, r: int, n: int) -> dict[str, Tensor]:
        """Each parameter's constrained draws ``(R, N, *shape)`` from the posterior group, checked."""
        out = {}
        for p in layout.parameters:
            dims = ("chain", "draw", *p.dims)
            var = self.variable(post, "posterior", p.name, dims, (r, n, *p.shape), f"parameter {p.name}")
            out[p.name] = _tensor(var.values)
        return out


def from_inference_data(idata: Any, source: str = "the data") -> Result:
    """Rebuild a :class:`Result` from :func:`to_inference_data`'s output (tensors on the CPU).

    Everything is checked as it is read: the groups, the variables with their dimensions and
    shapes (R×N×d from ``posterior.x``), the attributes and the JSON ones. Anything missing or
    inconsistent raises :class:`PersistenceError` naming ``source`` and what is wrong.
    """
    if not hasattr(idata, "posterior") or ("x" not in idata.posterior and "parameters" not in idata.posterior.attrs):
        raise PersistenceError(f"{source} has no posterior.x: it was not written by sampler-engine")
    try:
        return _Reader(source).result(idata)
    except PersistenceError:
        raise
    except Exception as exc:  # a safety net: whatever else a damaged file makes numpy, xarray or h5py raise
        raise PersistenceError(
            f"{source} is not a valid sampler-engine result: {type(exc).__name__}: {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


# -- files -------------------------------------------------------------------------------------
def models_dir(path: str | os.PathLike) -> Path:
    """Where the models of the result saved at ``path`` live: ``<stem>.models/`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + ".models")


def save_result(result: Result, path: str | os.PathLike) -> Path:
    """Write ``result`` to ``path`` (NetCDF) and its models beside it (``<stem>.models/``); returns the path.

    Whatever was saved at ``path`` before is replaced as a whole: its models directory goes
    too, so loading gives exactly this result's models (none if it has none). Both parts are
    written to temporary names of this writer's own first; a failed save removes them and
    leaves the previous result as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    idata = to_inference_data(result)
    tmp = sibling_temp_path(path)
    new_models: Path | None = None
    try:
        try:
            if result.models:
                new_models = sibling_temp_path(models_dir(path))
                save_models(result.models, new_models)
            idata.to_netcdf(str(tmp))
        except PersistenceError:
            raise
        except Exception as exc:
            raise PersistenceError(f"could not write {str(path)!r}: {type(exc).__name__}: {exc}") from exc
        _put_in_place(path, tmp, new_models)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if new_models is not None:
            shutil.rmtree(new_models, ignore_errors=True)
        raise
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _put_in_place(path: Path, tmp: Path, new_models: Path | None) -> None:
    """Rename the written parts over the old result: the old models aside first, then the file, then the models.

    A reader (or a crash) in between finds the new file with its models missing, or the old
    file with its models missing -- an error on loading, never one result with another's models.
    """
    target = models_dir(path)
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = sibling_temp_path(target)
        try:
            os.replace(target, old)
        except FileNotFoundError:  # another writer of the same path moved it first
            old = None
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not (target.exists() or target.is_symlink()):
            os.replace(old, target)
        raise
    for _ in range(3):  # another writer of the same path may put its models there in between: set them aside
        if new_models is None:
            break
        try:
            os.replace(new_models, target)
            break
        except OSError:
            if not (target.exists() or target.is_symlink()):
                raise
            aside = sibling_temp_path(target)
            os.replace(target, aside)
            _remove(aside)
    else:
        raise PersistenceError(f"could not put the models of {str(path)!r} in {str(target)!r}: it keeps being replaced")
    if old is not None:
        _remove(old)


_HDF5 = b"\x89HDF\r\n\x1a\n"  # the signature NetCDF-4 files start with


def _unreadable_netcdf(path: Path, exc: BaseException) -> str:
    """Why ``path`` could not be opened as NetCDF: empty, truncated, not NetCDF at all, or else."""
    name = f"{str(path)!r} is not a readable NetCDF result"
    text = str(exc)
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"{name}: it cannot be read ({err.strerror or err})"
    if size == 0:
        return f"{name}: it is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(len(_HDF5))
    if len(head) < len(_HDF5) and _HDF5.startswith(head):
        return f"{name}: it is truncated ({size} bytes); the file was not completely written or copied"
    truncated = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if truncated:
        return (
            f"{name}: it is truncated ({truncated.group(1)} of {truncated.group(2)} bytes); the file was not "
            "completely written or copied"
        )
    if "file signature not found" in text:
        return f"{name}: it is not a NetCDF-4 (HDF5) file, the format Result.save writes"
    if "checksum" in text or "bad superblock" in text or "bad object header" in text:
        return f"{name}: it is damaged ({type(exc).__name__}: {_first_line(exc)})"
    return f"{name}: {type(exc).__name__}: {_first_line(exc)}"


def _quiet_h5netcdf(previous: Any) -> Any:
    """An unraisable-exception hook that drops h5netcdf's complaint when a file it failed to open is collected."""

    def hook(unraisable: Any) -> None:
        closing = getattr(unraisable.object, "__qualname__", "") == "File.close"
        if not (closing and getattr(unraisable.object, "__module__", "").startswith("h5netcdf")):
            previous(unraisable)

    return hook


def _read_netcdf(path: Path) -> Any:
    """The InferenceData in ``path``, read into memory and the file closed; :class:`PersistenceError` if it cannot be.

    A file h5py opens but h5netcdf then rejects leaves a half-made ``h5netcdf.File`` whose
    finalizer raises; that noise (a traceback on stderr) is silenced while it is collected.
    """
    previous = sys.unraisablehook
    sys.unraisablehook = _quiet_h5netcdf(previous)
    try:
        try:
            idata = arviz().from_netcdf(str(path))
            for group in idata.groups():
                data = getattr(idata, group)
                data.load()
                data.close()
            return idata
        except Exception as exc:
            problem = _unreadable_netcdf(path, exc)
        gc.collect()  # the half-made file goes now, under the quiet hook
        raise PersistenceError(problem)
    finally:
        sys.unraisablehook = previous


def load_result(path: str | os.PathLike) -> Result:
    """Read a result written by :func:`save_result` (with its models, if any).

    A missing, truncated, foreign or hand-edited file raises :class:`PersistenceError` naming
    the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise PersistenceError(f"no result file at {str(path)!r}")
    idata = _read_netcdf(path)
    source = repr(str(path))
    result = from_inference_data(idata, source=source)
    meta = dict(idata.posterior.attrs)
    if "models" in meta:
        names = _Reader(source).json_attribute(meta, "models", list)
        if not all(isinstance(name, str) for name in names):
            raise PersistenceError(f"{source}: JSON attribute models must list model names, got {names!r}")
        if names:
            directory = models_dir(path)
            models = load_models(directory, names=names)
            missing = sorted(set(names) - set(models))
            if missing:
                raise PersistenceError(f"{source} lists models {missing} that are missing from {str(directory)!r}")
            result = result.with_models(models)
    return result


def save_models(models: Mapping[str, Any], directory: str | os.PathLike) -> None:
    """Write each model's JSON config and weights into ``directory``."""

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        if not isinstance(model, SavableModel):
            raise PersistenceError(
                f"model {name!r} ({type(model).__name__}) cannot be saved: it needs model_name, model_config(), "
                "state_dict() and load_state_dict() (see sampler.io.persistence.SavableModel)"
            )
        config = {
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "model": model.model_name,
            "config": model.model_config(),
        }
        try:
            text = json.dumps(config, indent=1)
        except TypeError as exc:
            raise PersistenceError(f"model {name!r}: model_config() must be JSON-serializable: {exc}") from None
        (directory / f"{name}.json").write_text(text)
        torch.save(
            {k: v.detach().to("cpu") if isinstance(v, Tensor) else v for k, v in model.state_dict().items()},
            directory / f"{name}.pt",
        )


def load_models(directory: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Rebuild the models saved in ``directory`` through their registered factories.

    ``names``: only those models (each that has a config there); default: every one. A config
    or weights file that cannot be read, or that does not fit its model, raises
    :class:`PersistenceError` naming the file.
    """

    directory = Path(directory)
    if names is None:
        files = sorted(directory.glob("*.json"))
    else:
        files = [f for f in (directory / f"{name}.json" for name in names) if f.is_file()]
    return {cfg_file.stem: _load_model(cfg_file) for cfg_file in files}


def _load_model(cfg_file: Path) -> Any:
    """The model whose config is ``cfg_file`` (weights beside it, ``<name>.pt``), rebuilt."""
    name, where = cfg_file.stem, repr(str(cfg_file))
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise PersistenceError(f"{where} is not valid JSON: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PersistenceError(f"{where} cannot be read: {exc}") from None
    if not isinstance(config, dict):
        raise PersistenceError(
            f"{where} is not a model config: a JSON object with format_version, model and config expected, "
            f"got a {type(config).__name__}"
        )
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise PersistenceError(
            f"model {name!r} ({where}) was saved by sampler-engine {config.get('package_version', 'unknown')} "
            f"(format {version}); this is {__version__}, which reads formats up to {FORMAT_VERSION}"
        )
    model_name, kwargs = config.get("model"), config.get("config", {})
    if not isinstance(model_name, str):
        raise PersistenceError(f"{where} has no model name (its entry 'model' is {model_name!r})")
    if not isinstance(kwargs, dict):
        raise PersistenceError(f"{where}: its entry 'config' is a {type(kwargs).__name__}, not a JSON object")
    weights = cfg_file.with_suffix(".pt")
    state = load_weights(weights)
    try:
        entry = host().registry.get("model", model_name)
    except UnknownNameError as exc:
        raise PersistenceError(f"{where} needs a model no installed plugin provides: {exc}") from None
    try:
        model = entry.factory(**kwargs)
    except Exception as exc:
        raise PersistenceError(
            f"{where}: model {model_name!r} cannot be rebuilt from its config: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    try:
        model.load_state_dict(state)
    except Exception as exc:
        raise PersistenceError(
            f"{str(weights)!r} does not fit model {name!r} ({model_name}): {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    return model


def load_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Tensors saved with ``torch.save``, read with ``weights_only=True`` (pickled code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise PersistenceError(f"weights file {str(path)!r} is missing")
    state = load_plain(path, "a plain tensor file")
    if not isinstance(state, dict):
        raise PersistenceError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a dict of tensors")
    return state


provide("to_arviz", to_inference_data)
provide("save", save_result)
