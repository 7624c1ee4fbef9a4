"""Results to and from ArviZ InferenceData and NetCDF files; trained models saved alongside.

Layout of an exported result (``Result.to_arviz()``, and the file ``Result.save`` writes):

- ``posterior.x`` ``(chain, draw, x_dim_0)``: the equally weighted samples (R replicas x N
  particles, or R chains x N draws); ``x_dim_0`` carries the target's ``dim_names`` if it has
  them. Every ArviZ function (``az.summary``, ``az.ess``, ``az.rhat``, ``az.plot_trace``,
  ``az.plot_pair``) applies to it.
- ``sample_stats``: ``log_weight`` ``(chain, draw)`` with ``weighted_x`` (SMC-type methods): the
  weighted particle set before the final resampling, paired by index -- these weights belong
  to ``weighted_x``, not to ``posterior.x``; use them for importance-weighted expectations
  (``sum softmax(log_weight) * f(weighted_x)`` per chain), not with ArviZ's unweighted
  diagnostics. ``log_Z`` ``(chain,)``. Per-stage statistics on a ``step`` axis: ``t``, ``ess``,
  ``log_Z_increment`` ``(chain, step)``, ``target_evals``, ``grad_evals``, ``nonfinite``
  ``(step,)``, and every statistic the steps reported (``acceptance``, ``step_size``, ...).
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
import json
import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from sampler._version import __version__
from sampler.core.result import Result, StepStats, provide
from sampler.errors import PersistenceError
from sampler.host.loading import host
from sampler.io._arviz import arviz
from sampler.io.checkpoint import load_plain

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
FORMAT_VERSION = 1

_STEP_FIELDS = ("t", "ess", "log_Z_increment")
_STEP_COUNTS = ("target_evals", "grad_evals", "nonfinite")


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
        meta["log_Z_stderr"] = float(result.log_Z_stderr)
    if result.exact_log_Z is not None:
        meta["exact_log_Z"] = float(result.exact_log_Z)
    if result.models:
        meta["models"] = json.dumps(sorted(result.models))
    return meta


def _step_variable(
    name: str, rows: list[Tensor | None], n_chains: int
) -> tuple[tuple[str, ...], np.ndarray, dict[str, Any]]:
    """Stack one per-step statistic over steps; ``(chain, step, ...)`` when it is per replica."""
    first = next(r for r in rows if r is not None)
    shape = tuple(first.shape)
    fill = math.nan if first.is_floating_point() or first.dtype == torch.bool else 0
    store = torch.float64 if first.dtype == torch.bool else first.dtype
    stacked = np.stack(
        [np.full(shape, fill, dtype=_np(first.to(store)).dtype) if r is None else _np(r.to(store)) for r in rows]
    )  # (K, *shape)
    attrs: dict[str, Any] = {"torch_dtype": _dtype_name(first)}
    missing = [i for i, r in enumerate(rows) if r is None]
    if missing:
        attrs["present_steps"] = np.array([i for i, r in enumerate(rows) if r is not None], dtype=np.int64)
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
    posterior = xr.Dataset({"x": (("chain", "draw", "x_dim_0"), _np(result.samples))}, coords=coords)
    stats: dict[str, Any] = {"log_weight": (("chain", "draw"), _np(result.log_weights))}
    if result.kind == "smc":
        stats["weighted_x"] = (("chain", "draw", "x_dim_0"), _np(result.weighted_samples))
    if result.log_Z_per_replica is not None:
        stats["log_Z"] = (("chain",), _np(result.log_Z_per_replica))
    step_coords: dict[str, Any] = {}
    if result.steps:
        step_coords["step"] = np.array([s.step for s in result.steps], dtype=np.int64)
        for name in _STEP_FIELDS:
            dims, values, attrs = _step_variable(name, [getattr(s, name) for s in result.steps], r)
            stats[name] = xr.Variable(dims, values, attrs)
        for name in _STEP_COUNTS:
            stats[name] = (("step",), np.array([getattr(s, name) for s in result.steps], dtype=np.int64))
        for key in sorted({k for s in result.steps for k in s.info}):
            var = key if key not in stats and key not in coords else f"info_{key}"
            dims, values, attrs = _step_variable(var, [s.info.get(key) for s in result.steps], r)
            stats[var] = xr.Variable(dims, values, {**attrs, "info_key": key})
    sample_stats = xr.Dataset(stats, coords={**coords, **step_coords})
    meta = _metadata(result)
    posterior.attrs.update(meta)
    sample_stats.attrs.update(meta)
    return az.InferenceData(attrs=dict(meta), posterior=posterior, sample_stats=sample_stats)


def _attr(meta: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    return value.item() if isinstance(value, np.generic) else value


def _tensor(values: Any, dtype_name: str | None = None) -> Tensor:
    t = torch.from_numpy(np.array(values))
    return t if dtype_name is None else t.to(getattr(torch, dtype_name))


def from_inference_data(idata: Any, source: str = "the data") -> Result:
    """Rebuild a :class:`Result` from :func:`to_inference_data`'s output (tensors on the CPU)."""

    if not hasattr(idata, "posterior") or "x" not in idata.posterior:
        raise PersistenceError(f"{source} has no posterior.x: it was not written by sampler-engine")
    post = idata.posterior
    meta = dict(post.attrs)
    version = _attr(meta, "sampler_format_version")
    writer = _attr(meta, "inference_library_version", "unknown")
    if version is None:
        raise PersistenceError(f"{source} was not written by sampler-engine (no sampler_format_version attribute)")
    if int(version) > FORMAT_VERSION:
        raise PersistenceError(
            f"{source} was written by sampler-engine {writer} (result format {version}); this is sampler-engine "
            f"{__version__}, which reads formats up to {FORMAT_VERSION}: upgrade sampler-engine to load it"
        )
    stats = idata.sample_stats if hasattr(idata, "sample_stats") else None
    samples = _tensor(post["x"].values)
    kind = str(_attr(meta, "kind", "smc"))
    log_weights = (
        _tensor(stats["log_weight"].values)
        if stats is not None and "log_weight" in stats
        else torch.zeros(samples.shape[:2], dtype=torch.float64)
    )
    weighted = _tensor(stats["weighted_x"].values) if stats is not None and "weighted_x" in stats else samples
    log_z = _tensor(stats["log_Z"].values) if stats is not None and "log_Z" in stats else None
    steps = _steps_from(stats) if stats is not None and "step" in stats.coords else ()
    options_text = str(_attr(meta, "options", "{}"))
    options = json.loads(options_text) if int(_attr(meta, "options_json", 1)) else {"repr": options_text}
    x_names = post["x"].coords["x_dim_0"].values
    dim_names = tuple(str(v) for v in x_names) if x_names.dtype.kind in "US" else None
    seed = _attr(meta, "seed")
    exact = _attr(meta, "exact_log_Z")
    return Result(
        samples=samples,
        log_weights=log_weights,
        weighted_samples=weighted,
        log_Z_per_replica=log_z,
        n_target_evals=int(_attr(meta, "n_target_evals", 0)),
        n_grad_evals=int(_attr(meta, "n_grad_evals", 0)),
        n_nonfinite=int(_attr(meta, "n_nonfinite", 0)),
        steps=steps,
        method=str(_attr(meta, "method", "")),
        target=str(_attr(meta, "target", "")),
        kind=kind,
        seed=None if seed is None else int(seed),
        wall_time=float(_attr(meta, "wall_time_s", math.nan)),
        device=str(_attr(meta, "device", "")),
        options=options,
        exact_log_Z=None if exact is None else float(exact),
        dim_names=dim_names,
    )


def _step_rows(var: Any) -> list[Tensor | None]:
    """Per-step tensors of one statistic, undoing :func:`_step_variable`."""
    values = np.asarray(var.values)
    if var.dims[0] == "chain":
        values = np.moveaxis(values, 1, 0)
    dtype = var.attrs.get("torch_dtype")
    rows: list[Tensor | None] = [_tensor(v, dtype) for v in values]
    present = var.attrs.get("present_steps")
    if present is not None:
        keep = {int(i) for i in np.atleast_1d(present)}
        rows = [row if i in keep else None for i, row in enumerate(rows)]
    return rows


def _steps_from(stats: Any) -> tuple[StepStats, ...]:
    numbers = [int(s) for s in stats.coords["step"].values]
    fields = {name: _step_rows(stats[name]) for name in _STEP_FIELDS}
    counts = {name: [int(v) for v in stats[name].values] for name in _STEP_COUNTS}
    info = {str(var.attrs["info_key"]): _step_rows(var) for var in stats.data_vars.values() if "info_key" in var.attrs}
    return tuple(
        StepStats(
            step=numbers[k],
            **{name: fields[name][k] for name in _STEP_FIELDS},
            **{name: counts[name][k] for name in _STEP_COUNTS},
            info={key: rows[k] for key, rows in info.items() if rows[k] is not None},
        )
        for k in range(len(numbers))
    )


# -- files -------------------------------------------------------------------------------------
def models_dir(path: str | os.PathLike) -> Path:
    """Where the models of the result saved at ``path`` live: ``<stem>.models/`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + ".models")


def save_result(result: Result, path: str | os.PathLike) -> Path:
    """Write ``result`` to ``path`` (NetCDF) and its models beside it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    idata = to_inference_data(result)
    tmp = path.with_name(path.name + ".tmp")
    try:
        idata.to_netcdf(str(tmp))
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise PersistenceError(f"could not write {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    os.replace(tmp, path)
    if result.models:
        save_models(result.models, models_dir(path))
    return path


def load_result(path: str | os.PathLike) -> Result:
    """Read a result written by :func:`save_result` (with its models, if any)."""
    path = Path(path)
    if not path.is_file():
        raise PersistenceError(f"no result file at {str(path)!r}")
    try:
        idata = arviz().from_netcdf(str(path))
    except Exception as exc:
        raise PersistenceError(f"{str(path)!r} is not a readable NetCDF result: {type(exc).__name__}: {exc}") from None
    result = from_inference_data(idata, source=repr(str(path)))
    names = _attr(dict(idata.posterior.attrs), "models")
    if names:
        models = load_models(models_dir(path))
        missing = sorted(set(json.loads(names)) - set(models))
        if missing:
            raise PersistenceError(
                f"{str(path)!r} lists models {missing} that are missing from {str(models_dir(path))!r}"
            )
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


def load_models(directory: str | os.PathLike) -> dict[str, Any]:
    """Rebuild every model saved in ``directory`` through its registered factory."""

    directory = Path(directory)
    models: dict[str, Any] = {}
    for cfg_file in sorted(directory.glob("*.json")):
        name = cfg_file.stem
        try:
            config = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as exc:
            raise PersistenceError(f"{str(cfg_file)!r} is not valid JSON: {exc}") from None
        version = config.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise PersistenceError(
                f"model {name!r} was saved by sampler-engine {config.get('package_version', 'unknown')} (format {version}); "
                f"this is {__version__}, which reads formats up to {FORMAT_VERSION}"
            )
        state = load_weights(directory / f"{name}.pt")
        entry = host().registry.get("model", str(config.get("model")))
        model = entry.factory(**config.get("config", {}))
        model.load_state_dict(state)
        models[name] = model
    return models


def load_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Tensors saved with ``torch.save``, read with ``weights_only=True`` (pickled code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise PersistenceError(f"weights file {str(path)!r} is missing")
    return load_plain(path, "a plain tensor file")


provide("to_arviz", to_inference_data)
provide("save", save_result)
