"""Pictures of a :class:`~sampler.core.result.Result`: samples, pair and marginal plots, MCMC traces,
the annealing schedule, log Z per replica and the importance-weight distribution.

Every function builds a :class:`matplotlib.figure.Figure` through matplotlib's object API (no
pyplot state), so it works headless, in scripts and in notebooks alike; matplotlib and ArviZ are
imported on first use. ::

    import sampler
    from sampler.analysis.plotting import plot, plot_all

    res = sampler.sample("double-well", method="smc", n_particles=2000, seed=0)
    fig = plot(res)                                  # "auto": samples over contours in 2D
    plot(res, "schedule", out="schedule.svg")        # written as SVG (by suffix)
    plot_all(res, "figures/")                        # every plot that applies, as PNG

The plot kinds (:data:`KINDS`):

``"samples"``
    Equally weighted samples (colored by replica/chain) over the target's density contours
    (2D targets; for d > 2 the two coordinates in ``coords`` are shown without contours).
``"pair"``
    ArviZ pair plot (scatter, marginal densities on the diagonal) of the selected coordinates.
``"marginals"``
    Marginal densities of the selected coordinates: pooled, per replica, and exact when the
    target can draw exact samples.
``"trace"``
    ArviZ trace plot (density and draws per chain); MCMC results only.
``"schedule"``
    SMC-type results: annealing time t, normalized ESS and acceptance (and step size) per step
    and replica. MCMC results: acceptance and step size per iteration, warm-up shaded.
``"log_Z"``
    log Z estimate per replica, the pooled estimate ± its standard error, the exact value when
    known, and each replica's running estimate log Z_t / Z_0 against t.
``"weights"``
    Histogram of the normalized log importance weights per replica, with Kish ESS and the PSIS
    Pareto k (:func:`sampler.analysis.diagnostics.pareto_k`) in the legend; SMC-type results only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import attrs
import numpy as np
import torch

from sampler.analysis.stats import pareto_k
from sampler.core.particles import ess as kish_ess
from sampler.core.result import Result, pooled_log_Z, provide
from sampler.errors import ConfigurationError, SamplerError
from sampler.host.building import get_target, list_targets
from sampler.io._arviz import arviz
from sampler.targets.base import Target, as_target

if TYPE_CHECKING:  # matplotlib is imported lazily
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["KINDS", "FORMATS", "available_kinds", "plot", "plot_all", "resolve_target"]

_log = logging.getLogger(__name__)

#: Plot kinds :func:`plot` draws (besides ``"auto"``).
KINDS: tuple[str, ...] = ("samples", "pair", "marginals", "trace", "schedule", "log_Z", "weights")

#: File formats :func:`plot` writes, chosen by the suffix of ``out``.
FORMATS: tuple[str, ...] = ("png", "svg", "pdf")

#: Coordinates shown by default in pair, marginal and trace plots (the first ones).
DEFAULT_COORDS = 4

#: The weight histogram spans this many nats below the largest log weight (the rest is clipped).
WEIGHT_RANGE = 30.0

#: Replicas (or chains) drawn in their own color; beyond this many they share one.
MAX_COLORED_REPLICAS = 10

_SINGLE_AXES = ("samples",)  # kinds that can draw into a caller's Axes


# --------------------------------------------------------------------------------------------
# public API


def available_kinds(result: Result) -> tuple[str, ...]:
    """The plot kinds that apply to ``result`` (in :data:`KINDS` order).

    ``"samples"`` applies to 2D results, ``"pair"`` to d >= 2, ``"trace"`` to MCMC results,
    ``"schedule"`` when per-step statistics were recorded, ``"log_Z"`` when the method estimates
    log Z, and ``"weights"`` to SMC-type results.
    """
    kinds = []
    dim = _parameter_view(result).dim if result.layout is not None and result.draws else result.dim
    if dim == 2:
        kinds.append("samples")
    if dim >= 2:
        kinds.append("pair")
    kinds.append("marginals")
    if result.kind == "mcmc":
        kinds.append("trace")
    if result.steps:
        kinds.append("schedule")
    if result.log_Z_per_replica is not None:
        kinds.append("log_Z")
    if result.kind == "smc":
        kinds.append("weights")
    return tuple(kinds)


def plot(
    result: Result,
    kind: str = "auto",
    *,
    target: Target | str | None = None,
    coords: Sequence[int | str] | None = None,
    out: str | Path | None = None,
    fig: Figure | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    max_points: int = 5000,
    dpi: int = 120,
) -> Figure:
    """Draw one picture of ``result`` and return its :class:`~matplotlib.figure.Figure`.

    Args:
        result: a :class:`~sampler.core.result.Result` (from a run or loaded from a file).
        kind: one of :data:`KINDS`, or ``"auto"``: ``"samples"`` for 2D results, ``"pair"`` for
            higher d, ``"marginals"`` in 1D.
        target: the target, for density contours and exact marginals; a
            :class:`~sampler.targets.Target`, a registered name, or ``None`` to look
            ``result.target`` up among the registered targets (:func:`resolve_target`).
        coords: coordinates to show (0-based indices, or names when the target names its
            coordinates); default the first :data:`DEFAULT_COORDS`, or ``(0, 1)`` for
            ``"samples"``.
        out: write the figure to this file; the format comes from the suffix (:data:`FORMATS`).
        fig: an empty figure to draw into (default: a new one).
        ax: an Axes to draw into, for single-panel kinds (``"samples"``).
        figsize: size of a new figure in inches (default: chosen per kind).
        max_points: at most this many points in scatter plots (a fixed subsample).
        dpi: resolution of PNG files.

    Raises:
        ConfigurationError: unknown ``kind``, a kind that does not apply to this result (e.g.
            ``"trace"`` for an SMC result), bad ``coords``, an unknown file suffix, or ``ax``
            for a multi-panel kind.
    """
    if not isinstance(result, Result):
        raise ConfigurationError(f"plot() needs a sampler.Result, got {type(result).__name__}")
    if result.layout is not None and result.draws:
        view = _parameter_view(result)
        if _resolve_kind(view, kind) in _PARAMETER_KINDS:
            result, target = view, None  # a model's samples are shown as its named parameters
    kind = _resolve_kind(result, kind)
    fmt = _format_of(out) if out is not None else None
    if ax is not None and kind not in _SINGLE_AXES:
        raise ConfigurationError(
            f"ax= is only for single-panel kinds {_SINGLE_AXES}; the {kind!r} plot has several panels: "
            "pass fig= instead"
        )
    if max_points < 1:
        raise ConfigurationError(f"max_points must be >= 1, got {max_points!r}")
    if fig is not None and ax is not None and ax.figure is not fig:
        raise ConfigurationError("ax belongs to another figure than fig")
    if ax is not None:
        fig = cast("Figure", ax.figure)
    elif fig is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize or _FIGSIZE[kind](result, coords), layout="constrained")
    elif fig.axes:
        raise ConfigurationError("fig must be empty (draw into a given Axes with ax= instead)")
    ctx = _Context(result=result, fig=fig, ax=ax, coords=coords, target_arg=target, max_points=max_points)
    with _quiet_arviz():
        _DRAW[kind](ctx)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format=fmt, dpi=dpi)
    return fig


def plot_all(
    result: Result,
    out_dir: str | Path,
    target: Target | str | None = None,
    *,
    formats: Sequence[str] = ("png",),
    coords: Sequence[int | str] | None = None,
    prefix: str = "",
    dpi: int = 120,
) -> list[Path]:
    """Write every plot that applies to ``result`` (:func:`available_kinds`) under ``out_dir``.

    Files are named ``{prefix}{kind}.{format}`` (e.g. ``samples.png``, ``log_Z.svg``); the
    directory is created if needed. Returns the paths written, in :data:`KINDS` order.
    """
    formats = tuple(f.lower().lstrip(".") for f in ([formats] if isinstance(formats, str) else formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigurationError(f"formats must be among {FORMATS}, got {tuple(formats)!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = resolve_target(result, target)  # once, for every plot
    written = []
    for kind in available_kinds(result):
        try:
            fig = plot(result, kind, target=target, coords=coords, dpi=dpi)
        except ConfigurationError as err:  # e.g. coords that fit one kind but not another
            _log.warning("skipped the %r plot: %s", kind, err)
            continue
        for fmt in formats:
            path = out / f"{prefix}{kind}.{fmt}"
            fig.savefig(path, format=fmt, dpi=dpi)
            written.append(path)
        fig.clear()
    return written


def resolve_target(result: Result, target: Target | str | None = None) -> Target | None:
    """The target to draw ``result`` against, or ``None`` when it cannot be found.

    ``target`` may be a :class:`~sampler.targets.Target` (returned as is) or a registered name.
    With ``None``, ``result.target`` is looked up among the registered targets
    (``sampler.list_targets()``), also as ``NAME-D`` for a target built with ``dim=D``
    (``"gaussian-5"``); the target must have the result's dimension. A registered target is
    built with its default options: pass ``target=`` for a run whose target had other options.
    """
    if target is not None and not isinstance(target, str):
        if not (hasattr(target, "log_prob") and hasattr(target, "dim")):
            raise ConfigurationError(f"target must be a Target, a registered name or None, got {type(target).__name__}")
        tgt = as_target(target)
        if tgt.dim != result.dim:
            raise ConfigurationError(f"target {tgt.name!r} has dimension {tgt.dim}, the result {result.dim}")
        return tgt
    name = target if isinstance(target, str) else result.target
    known = set(list_targets())
    candidates: list[tuple[str, dict[str, Any]]] = []
    if name in known:
        candidates.append((name, {}))
    m = re.fullmatch(r"(.+)-(\d+)", name)
    if m and m.group(1) in known:
        candidates.append((m.group(1), {"dim": int(m.group(2))}))
    for base, options in candidates:
        try:
            tgt = get_target(base, **options)
        except (SamplerError, TypeError, ValueError):
            continue
        if getattr(tgt, "dim", None) == result.dim:
            return tgt
    if isinstance(target, str):
        raise ConfigurationError(f"target {target!r} is not a registered target of dimension {result.dim}")
    return None


# --------------------------------------------------------------------------------------------
# dispatch and shared helpers


def _resolve_kind(result: Result, kind: str) -> str:
    if not isinstance(kind, str) or (kind != "auto" and kind not in KINDS):
        raise ConfigurationError(f"unknown plot kind {kind!r}; choose one of {('auto', *KINDS)}")
    if kind == "auto":
        return "samples" if result.dim == 2 else ("pair" if result.dim > 2 else "marginals")
    if kind == "samples" and result.dim < 2:
        raise ConfigurationError("the 'samples' plot needs d >= 2; use kind='marginals' for a 1D result")
    if kind == "pair" and result.dim < 2:
        raise ConfigurationError("a pair plot needs d >= 2; use kind='marginals' for a 1D result")
    if kind == "trace" and result.kind != "mcmc":
        raise ConfigurationError(
            f"trace plots are for MCMC chains; {result.method!r} gives weighted particles (kind "
            f"{result.kind!r}), whose order means nothing: use 'pair', 'marginals' or 'weights'"
        )
    if kind == "schedule" and not result.steps:
        raise ConfigurationError("this result has no per-step statistics to draw a schedule from")
    if kind == "log_Z" and result.log_Z_per_replica is None:
        raise ConfigurationError(f"{result.method!r} gives no log Z estimate (plain MCMC): no 'log_Z' plot")
    if kind == "weights" and result.kind != "smc":
        raise ConfigurationError(f"{result.method!r} draws equally weighted MCMC chains: no 'weights' plot")
    return kind


def _format_of(out: str | Path) -> str:
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ConfigurationError(f"cannot tell the file format of {str(out)!r}: use a suffix among {FORMATS}")
    return suffix


class _Context:
    """What every drawing function needs; the target is resolved on first use."""

    def __init__(self, result: Result, fig: Figure, ax: Axes | None, coords, target_arg, max_points: int):
        self.result = result
        self.fig = fig
        self.ax = ax
        self.coords_arg = coords
        self._target_arg = target_arg
        self._resolved = False
        self._target: Target | None = None
        self.max_points = max_points

    @property
    def target(self) -> Target | None:
        if not self._resolved:
            self._target = resolve_target(self.result, self._target_arg)
            self._resolved = True
        return self._target

    def title(self, what: str) -> str:
        r = self.result
        size = (
            f"{r.n_replicas} chains × {r.n_particles} draws"
            if r.kind == "mcmc"
            else f"R={r.n_replicas} replicas × N={r.n_particles}"
        )
        return f"{what}\n{r.method} on {r.target} (d={r.dim}, {size}, seed {r.seed})"


#: Kinds that show the samples; for a model they show its constrained parameters by name.
_PARAMETER_KINDS = ("samples", "pair", "marginals", "trace")


def _parameter_view(result: Result) -> Result:
    """A model's result seen through its parameters: one coordinate per varying constrained element,
    named ``mu``, ``theta[Choate]``, ... (fixed elements, like a Cholesky factor's zeros, are left out)."""
    assert result.layout is not None
    flat = result.layout.flatten(result.draws)
    keep = (flat.flatten(0, 1).std(0) > 0).nonzero().flatten().tolist()
    names = result.layout.element_names()
    flat = flat[..., keep]
    return attrs.evolve(
        result, samples=flat, weighted_samples=flat, dim_names=[names[j] for j in keep], layout=None, draws={}
    )


def _replica_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= MAX_COLORED_REPLICAS:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["tab10"](0)] * n


def _replica_word(result: Result) -> str:
    return "chain" if result.kind == "mcmc" else "replica"


def _samples_np(result: Result) -> np.ndarray:
    """``(R, N, d)`` float64 numpy copy of the equally weighted samples."""
    return result.samples.detach().to("cpu", torch.float64).numpy()


@contextlib.contextmanager
def _quiet_arviz() -> Iterator[None]:
    """Silence the deprecation notices ArviZ 0.2x's matplotlib backend raises on newer matplotlib."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*single value or no finite values.*", category=UserWarning)
        yield


def _posterior(result: Result) -> tuple[Any, str, str, list[Any]]:
    """``(dataset, var, coordinate dim, labels)`` of the samples as ArviZ sees them.

    Uses :meth:`Result.to_arviz` (which may name the target's coordinates) and falls back to a
    plain conversion when its posterior is not a single ``(chain, draw, dim)`` variable.
    """
    az = arviz()
    try:
        post = result.to_arviz().posterior
        var = "x" if "x" in post.data_vars else next(iter(post.data_vars))
        da = post[var]
        if da.ndim != 3 or da.shape[-1] != result.dim:
            raise ValueError
        dim = da.dims[-1]
    except Exception:  # noqa: BLE001 - any surprise in the export: plot the raw samples
        post = az.convert_to_dataset({"x": _samples_np(result)})
        var, dim = "x", "x_dim_0"
    labels = list(post[dim].values) if dim in post.coords else list(range(result.dim))
    return post, var, dim, labels


def _coord_indices(ctx: _Context, labels: Sequence[Any] | None, default: int) -> list[int]:
    """Validate ``coords`` into 0-based indices (names are looked up in ``labels``)."""
    d = ctx.result.dim
    if ctx.coords_arg is None:
        return list(range(min(d, default)))
    coords = [ctx.coords_arg] if isinstance(ctx.coords_arg, (int, str)) else list(ctx.coords_arg)
    if not coords:
        raise ConfigurationError("coords must name at least one coordinate")
    out = []
    names = [str(x) for x in labels] if labels is not None else []
    for c in coords:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not -d <= int(c) < d:
                raise ConfigurationError(f"coordinate {c} is out of range for d={d}")
            out.append(int(c) % d)
        elif isinstance(c, str) and c in names:
            out.append(names.index(c))
        else:
            raise ConfigurationError(f"coords must be indices in [0, {d}) or coordinate names, got {c!r}")
    if len(set(out)) != len(out):
        raise ConfigurationError(f"coords repeat a coordinate: {coords!r}")
    return out


def _label(labels: Sequence[Any], j: int) -> str:
    return _coord_name(labels[j])


def _subsample(n: int, k: int) -> np.ndarray:
    """A fixed (seeded) subset of ``k`` of ``n`` indices, in order."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=k, replace=False))


def _moving_average(v: np.ndarray, w: int) -> np.ndarray:
    """Trailing mean over ``w`` rows of ``(K, R)`` (fewer at the start), NaNs ignored."""
    ok = np.isfinite(v)
    c = np.cumsum(np.where(ok, v, 0.0), axis=0)
    n = np.cumsum(ok, axis=0)
    c = np.concatenate([np.zeros_like(c[:1]), c])
    n = np.concatenate([np.zeros_like(n[:1]), n])
    hi = np.arange(1, len(v) + 1)
    lo = np.maximum(hi - w, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (c[hi] - c[lo]) / (n[hi] - n[lo])


def _finished_mask(t: np.ndarray) -> np.ndarray:
    """``(K, R)``: True up to and including the step where each replica first reached t = 1."""
    reached = np.cumsum(t >= 1.0, axis=0)
    return (reached == 0) | ((reached == 1) & (t >= 1.0))


# --------------------------------------------------------------------------------------------
# the plots


def _draw_samples(ctx: _Context) -> None:
    r = ctx.result
    ax = ctx.ax if ctx.ax is not None else ctx.fig.add_subplot()
    labels = list(range(r.dim))
    if r.dim > 2 and ctx.coords_arg is None:
        idx = [0, 1]
    else:
        idx = _coord_indices(ctx, labels, 2)
    if len(idx) != 2:
        raise ConfigurationError(f"the 'samples' plot shows two coordinates; got coords={ctx.coords_arg!r}")
    x = _samples_np(r)[:, :, idx]  # (R, N, 2)
    R, N = x.shape[:2]
    per = max(1, ctx.max_points // R)
    keep = _subsample(N, per)
    pts = x[:, keep]
    tgt = ctx.target if r.dim == 2 else None
    flat = pts.reshape(-1, 2)
    flat = flat[np.isfinite(flat).all(-1)]
    if flat.shape[0] == 0:
        raise ConfigurationError("no finite samples to plot")
    lo = np.quantile(flat, 0.002, axis=0)
    hi = np.quantile(flat, 0.998, axis=0)
    if tgt is not None:
        try:  # include the whole target, so that a missed mode shows as an empty contour
            exact = tgt.sample(2000, torch.Generator().manual_seed(0), dtype=torch.float64)
            ex = exact.detach().to("cpu", torch.float64).numpy()
            lo = np.minimum(lo, np.quantile(ex, 0.001, axis=0))
            hi = np.maximum(hi, np.quantile(ex, 0.999, axis=0))
        except (NotImplementedError, TypeError):
            pass
    pad = 0.12 * (hi - lo) + 0.05
    lo, hi = lo - pad, hi + pad
    if tgt is not None:
        g0 = np.linspace(lo[0], hi[0], 220)
        g1 = np.linspace(lo[1], hi[1], 220)
        grid = torch.as_tensor(np.stack(np.meshgrid(g0, g1, indexing="xy"), axis=-1))
        with torch.no_grad():
            logp = tgt.log_prob(grid).detach().to("cpu", torch.float64).numpy()
        logp = np.where(np.isfinite(logp), logp, -np.inf)
        rel = logp - np.max(logp)
        # contours at the density levels of a Gaussian's 0.5..3 sigma (log density drop s^2 / 2)
        levels = sorted(-0.5 * s**2 for s in (3.0, 2.5, 2.0, 1.5, 1.0, 0.5))
        ax.contourf(g0, g1, rel, levels=[*levels, 0.0], cmap="Blues", alpha=0.5)
        ax.contour(g0, g1, rel, levels=levels, colors="steelblue", linewidths=0.6, alpha=0.9)
        from matplotlib.patches import Patch

        contour_handle = Patch(
            facecolor="lightsteelblue",
            edgecolor="steelblue",
            label="target density\n(levels: log p − max = −s²/2,\ns = 0.5, 1, …, 3)",
        )
    else:
        contour_handle = None
    colors = _replica_colors(R)
    word = _replica_word(r)
    for i in range(R):
        label = f"{word} {i}" if R <= MAX_COLORED_REPLICAS else (f"{R} {word}s" if i == 0 else None)
        ax.scatter(
            pts[i, :, 0], pts[i, :, 1], s=3, alpha=0.5, color=colors[i], label=label, linewidths=0, rasterized=True
        )
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel(_label(labels, idx[0]))
    ax.set_ylabel(_label(labels, idx[1]))
    shown = pts.shape[0] * pts.shape[1]
    what = "Samples over the target density" if tgt is not None else "Samples (target density unknown)"
    if r.dim > 2:
        what = f"Samples, coordinates {idx[0]} and {idx[1]} of {r.dim}"
    if shown < R * N:
        what += f" ({shown} of {R * N} points)"
    ax.set_title(ctx.title(what), fontsize=9)
    handles, names = ax.get_legend_handles_labels()
    if contour_handle is not None:
        handles.append(contour_handle)
        names.append(contour_handle.get_label())
    leg = ax.legend(handles, names, loc="best", fontsize=7, markerscale=3, framealpha=0.85)
    for h in leg.legend_handles[: R if R <= MAX_COLORED_REPLICAS else 1]:
        if h is not None:
            h.set_alpha(1.0)


def _draw_pair(ctx: _Context) -> None:
    az = arviz()
    r = ctx.result
    post, var, dim, labels = _posterior(r)
    idx = _coord_indices(ctx, labels, DEFAULT_COORDS)
    if len(idx) < 2:
        raise ConfigurationError("a pair plot needs at least two coordinates; use kind='marginals' for one")
    ds = post[[var]].isel({dim: idx})
    n = r.n_replicas * r.n_particles
    if n > ctx.max_points:  # thin the draws evenly (chains are kept)
        step = math.ceil(n / ctx.max_points)
        ds = ds.isel(draw=slice(None, None, step))
    k = len(idx)
    axes = ctx.fig.subplots(k, k, squeeze=False)
    az.plot_pair(
        ds,
        var_names=[var],
        marginals=True,
        kind="scatter",
        ax=axes,
        scatter_kwargs={"s": 3, "alpha": 0.35, "rasterized": True},
        marginal_kwargs={"plot_kwargs": {"linewidth": 1.2}},
        labeller=_labeller(),
        textsize=8,
        show=False,
    )
    for a in axes.flat:
        a.tick_params(labelsize=7)
    more = f" (coordinates {', '.join(map(str, idx))} of {r.dim}; pass coords= for others)" if r.dim > k else ""
    ctx.fig.suptitle(ctx.title("Pair plot of the equally weighted samples" + more), fontsize=9)


def _labeller() -> Any:
    """An ArviZ labeller naming coordinates ``x[j]`` (or by the target's coordinate names)."""
    from arviz.labels import BaseLabeller

    class Labeller(BaseLabeller):
        def make_label_vert(self, var_name, sel, isel):
            return ", ".join(_coord_name(v) for v in sel.values()) or var_name

        def make_label_flat(self, var_name, sel, isel):
            return self.make_label_vert(var_name, sel, isel)

    return Labeller()


def _coord_name(label: Any) -> str:
    return f"x[{label}]" if isinstance(label, (int, np.integer)) else str(label)


def _draw_marginals(ctx: _Context) -> None:
    az = arviz()
    r = ctx.result
    labels = _posterior(r)[3]
    idx = _coord_indices(ctx, labels, DEFAULT_COORDS)
    x = _samples_np(r)[:, :, idx]  # (R, N, k)
    R = x.shape[0]
    exact = None
    tgt = ctx.target
    if tgt is not None:
        try:
            n_exact = min(20000, max(2000, R * r.n_particles))
            ex = tgt.sample(n_exact, torch.Generator().manual_seed(0), dtype=torch.float64)
            exact = ex.detach().to("cpu", torch.float64).numpy()[:, idx]
        except (NotImplementedError, TypeError):
            exact = None
    k = len(idx)
    ncols = min(k, 4)
    nrows = math.ceil(k / ncols)
    axes = ctx.fig.subplots(nrows, ncols, squeeze=False)
    colors = _replica_colors(R)
    word = _replica_word(r)
    for a in axes.flat[k:]:
        a.set_visible(False)
    for col, (j, a) in enumerate(zip(idx, axes.flat)):
        pooled = x[:, :, col].reshape(-1)
        pooled = pooled[np.isfinite(pooled)]
        if pooled.size == 0:
            raise ConfigurationError(f"no finite samples of coordinate {j} to plot")
        data = [pooled] if exact is None else [pooled, exact[:, col]]
        lo = min(np.quantile(v, 0.005) for v in data)
        hi = max(np.quantile(v, 0.995) for v in data)
        if R <= MAX_COLORED_REPLICAS and R > 1:
            for i in range(R):
                v = x[i, :, col]
                v = v[np.isfinite(v)]
                if v.size > 1:
                    az.plot_kde(
                        v,
                        ax=a,
                        plot_kwargs={"color": colors[i], "linewidth": 0.8, "alpha": 0.6},
                        label=f"{word} {i}" if col == 0 else None,
                    )
        az.plot_dist(
            pooled,
            ax=a,
            color="black" if exact is None else "tab:red",
            label="pooled" if col == 0 else None,
            kind="kde",
            plot_kwargs={"linewidth": 1.6},
            fill_kwargs={"alpha": 0.12},
        )
        if exact is not None:
            az.plot_kde(
                exact[:, col],
                ax=a,
                plot_kwargs={"color": "black", "linestyle": "--", "linewidth": 1.4},
                label="exact" if col == 0 else None,
            )
        if a.get_legend() is not None:  # ArviZ adds one per panel; the figure gets a single one
            a.get_legend().remove()
        if hi > lo:
            a.set_xlim(lo, hi)
        a.set_xlabel(_label(labels, j), fontsize=9)
        a.set_yticks([])
        if col % ncols == 0:
            a.set_ylabel("density")
        a.tick_params(labelsize=7)
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        ctx.fig.legend(
            handles, names, loc="outside lower center", ncols=min(len(handles), 6), fontsize=7, frameon=False
        )
    more = f" (coordinates {', '.join(map(str, idx))} of {r.dim})" if r.dim > k else ""
    vs = " vs exact" if exact is not None else ""
    ctx.fig.suptitle(ctx.title(f"Marginal densities{vs}" + more), fontsize=9)


def _draw_trace(ctx: _Context) -> None:
    az = arviz()
    r = ctx.result
    post, var, dim, labels = _posterior(r)
    idx = _coord_indices(ctx, labels, DEFAULT_COORDS)
    ds = post[[var]].isel({dim: idx})
    k = len(idx)
    axes = ctx.fig.subplots(k, 2, squeeze=False, gridspec_kw={"width_ratios": [1, 2]})
    az.plot_trace(
        ds,
        var_names=[var],
        compact=False,
        axes=axes,
        legend=True,
        labeller=_labeller(),
        plot_kwargs={"linewidth": 1.0},
        trace_kwargs={"linewidth": 0.5, "alpha": 0.7},
        show=False,
    )
    for row in axes:
        row[0].set_ylabel("density", fontsize=8)
        row[1].set_ylabel("value", fontsize=8)
        for a in row:
            a.tick_params(labelsize=7)
            a.title.set_fontsize(8)
    axes[-1][1].set_xlabel("draw (after warm-up)", fontsize=8)
    for a in axes.flat:
        leg = a.get_legend()
        if leg is not None:
            for text in (*leg.get_texts(), leg.get_title()):
                text.set_fontsize(7)
    more = f" (coordinates {', '.join(map(str, idx))} of {r.dim})" if r.dim > k else ""
    ctx.fig.suptitle(ctx.title("Trace plot: marginal density and draws per chain" + more), fontsize=9)


def _draw_schedule(ctx: _Context) -> None:
    r = ctx.result
    st = {k: v.numpy() for k, v in r.stats.items()}
    steps = st["step"]
    R = st["t"].shape[1]
    colors = _replica_colors(R)
    word = _replica_word(r)
    mcmc = r.kind == "mcmc"
    panels: list[tuple[str, str, np.ndarray]] = []
    if not mcmc:
        panels.append(("t", "annealing time t", st["t"]))
        panels.append(("ess", "ESS / N after reweighting", st["ess"]))
    window = max(1, len(steps) // 100) if mcmc else 1
    for key, label in (("acceptance", "acceptance rate"), ("step_size", "step size")):
        if key in st and np.isfinite(st[key]).any() and st[key].ndim == 2:
            vals = st[key]
            if key == "acceptance" and window > 1:  # per-iteration acceptance of one chain is noisy
                vals = _moving_average(vals, window)
                label = f"acceptance rate\n(moving average, {window} iterations)"
            panels.append((key, label, vals))
    if not panels:
        panels.append(("ess", "ESS / N", st["ess"]))
    mask = np.ones_like(st["t"], dtype=bool) if mcmc else _finished_mask(st["t"])
    axes = ctx.fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    warm = st.get("warmup")
    marker = "o" if len(steps) <= 60 else None
    for a, (key, label, vals) in zip(axes, panels):
        for i in range(R):
            m = mask[:, i]
            a.plot(
                steps[m],
                vals[m, i],
                color=colors[i],
                marker=marker,
                markersize=3,
                linewidth=1.0,
                label=f"{word} {i}" if R <= MAX_COLORED_REPLICAS else None,
                alpha=0.85 if mcmc else 1.0,
            )
        if key == "ess" and "resampled" in st:
            res = (st["resampled"] > 0) & mask
            ks, rs = np.nonzero(res)
            if len(ks):
                a.scatter(steps[ks], vals[ks, rs], marker="x", color="black", s=18, zorder=3, label="resampled")
        if key == "step_size" and np.nanmin(vals) > 0 and np.nanmax(vals) / np.nanmin(vals) > 20:
            a.set_yscale("log")
        if key in ("ess", "acceptance"):
            a.set_ylim(-0.03, 1.05)
        if key == "t":
            a.set_ylim(-0.03, 1.05)
        if warm is not None and warm.ndim == 2 and warm[:, 0].any():
            end = steps[warm[:, 0] > 0].max()
            a.axvspan(
                steps[0] - 0.5, end + 0.5, color="0.85", alpha=0.6, label="warm-up" if a is axes[0] else None, lw=0
            )
        a.set_ylabel(label, fontsize=8)
        a.tick_params(labelsize=7)
        a.grid(alpha=0.3)
    axes[-1].set_xlabel("MCMC iteration" if mcmc else "annealing step")
    from matplotlib.ticker import MaxNLocator

    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, names = [], []
    for a in axes:
        for h, n in zip(*a.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    if handles:
        axes[0].legend(handles, names, fontsize=7, loc="best", ncols=2 if len(names) > 4 else 1)
    if mcmc:
        what = "MCMC adaptation: acceptance and step size per iteration"
    else:
        per = mask.sum(0)
        n_steps = f"{per.min()}" if per.min() == per.max() else f"{per.min()}–{per.max()}"
        what = f"Annealing schedule: {n_steps} step{'s' if per.max() > 1 else ''} to t = 1; ESS and acceptance per step"
    ctx.fig.suptitle(ctx.title(what), fontsize=9)


def _draw_log_Z(ctx: _Context) -> None:
    r = ctx.result
    assert r.log_Z_per_replica is not None  # the "log_Z" kind applies to results with log Z only
    lz = r.log_Z_per_replica.detach().to("cpu", torch.float64).numpy()
    R = lz.shape[0]
    pooled, se = pooled_log_Z(r.log_Z_per_replica)
    exact = r.exact_log_Z
    has_path = bool(r.steps) and "log_Z_increment" in r.stats
    widths = {"width_ratios": [1, 1.3]} if has_path else None
    axes = ctx.fig.subplots(1, 2 if has_path else 1, squeeze=False, gridspec_kw=widths)[0]
    a = axes[0]
    colors = _replica_colors(R)
    word = _replica_word(r)
    xs = np.arange(R)
    ok = np.isfinite(lz)
    values = [v for v in (*lz[ok], pooled, exact) if v is not None and np.isfinite(v)]
    spread = (max(values) - min(values)) if values else 0.0
    # agreement to ~1e-6 (e.g. a Gaussian the reference matches): show deviations, not an offset axis
    ref = pooled if np.isfinite(pooled) and spread < 1e-6 * max(1.0, abs(pooled)) else 0.0
    a.scatter(xs[ok], lz[ok] - ref, color=[c for c, k in zip(colors, ok) if k], s=30, zorder=3)
    a.scatter([], [], color="0.4", s=30, label=f"estimate of one {word}")
    if not ok.all():
        a.scatter([], [], color="white", s=0, label=f"{int((~ok).sum())} {word}(s) with non-finite log Z not shown")
    pos = R + 0.8
    if np.isfinite(se):
        a.axhspan(pooled - se - ref, pooled + se - ref, color="0.6", alpha=0.25, lw=0)
        a.errorbar(
            [pos],
            [pooled - ref],
            yerr=[[se]],
            fmt="D",
            color="black",
            capsize=5,
            markersize=6,
            label=f"pooled: {pooled:.4f} ± {se:.2g} (1 se)",
        )
    else:
        why = "one replica" if R == 1 else "no finite spread"
        a.scatter(
            [pos], [pooled - ref], marker="D", color="black", s=40, label=f"pooled: {pooled:.4f} ({why}: no error bar)"
        )
    if exact is not None:
        a.axhline(
            exact - ref,
            color="tab:red",
            linestyle="--",
            linewidth=1.2,
            label=f"exact: {exact:.4f} (error {pooled - exact:+.2g})",
        )
    a.set_xticks(
        [*xs, pos], [*(str(i) for i in xs), "pooled"], fontsize=7 if R <= 20 else 5, rotation=0 if R <= 20 else 90
    )
    a.set_xlabel(word)
    a.set_ylabel("log Z" if ref == 0.0 else f"log Z − {ref:.6f}")
    a.grid(alpha=0.3, axis="y")
    a.legend(fontsize=7, loc="best")
    a.set_title(f"estimate per {word}; pooled = log mean exp, band = ± 1 standard error", fontsize=8)
    if has_path:
        b = axes[1]
        st = r.stats
        t = st["t"].numpy()
        cum = np.cumsum(st["log_Z_increment"].numpy(), axis=0)
        mask = _finished_mask(t)
        for i in range(R):
            m = mask[:, i]
            b.plot(
                np.r_[0.0, t[m, i]],
                np.r_[0.0, cum[m, i]],
                color=colors[i],
                marker="o" if len(t) <= 60 else None,
                markersize=2.5,
                linewidth=1.0,
                label=f"{word} {i}" if R <= MAX_COLORED_REPLICAS else None,
            )
        if exact is not None:
            b.axhline(exact, color="tab:red", linestyle="--", linewidth=1.0, label="exact log Z")
        b.set_xlabel("annealing time t")
        b.set_ylabel("running estimate of log Z_t − log Z_0")
        b.set_title("running estimate along the path (equals log Z at t = 1)", fontsize=8)
        b.grid(alpha=0.3)
        b.legend(fontsize=7, loc="best", ncols=2 if R > 4 else 1)
    ctx.fig.suptitle(ctx.title("log normalizing constant"), fontsize=9)


def _draw_weights(ctx: _Context) -> None:
    r = ctx.result
    lw = r.log_weights.detach().to("cpu", torch.float64)
    R, N = lw.shape
    norm = (lw - torch.logsumexp(lw, -1, keepdim=True) + math.log(N)).numpy()  # log(N w_i): 0 = equal weight
    ess = kish_ess(lw).numpy()
    k = pareto_k(lw)
    ax = ctx.fig.add_subplot()
    colors = _replica_colors(R)
    finite = norm[np.isfinite(norm)]
    n_zero = int((~np.isfinite(norm)).sum())
    if finite.size == 0:
        raise ConfigurationError("every importance weight is zero: nothing to plot")
    hi = float(finite.max())
    lo = max(float(np.quantile(finite, 0.001)), hi - WEIGHT_RANGE)
    n_below = int((finite < lo).sum())
    flat = hi - lo < 1e-3
    if flat:  # equal weights up to rounding: one spike at 0 on a readable axis
        lo, hi, n_below = -0.5, 0.5, 0
    bins = np.linspace(lo, hi, 50)
    for i in range(R):
        v = norm[i][np.isfinite(norm[i])]
        kstr = "n/a (equal weights)" if flat or not np.isfinite(k[i]) else f"{k[i]:.2f} {_k_word(k[i])}"
        label = f"replica {i}: ESS/N = {ess[i]:.3f}, Pareto k = {kstr}"
        shown = np.zeros_like(v) if flat else np.clip(v, lo, hi)
        ax.hist(
            shown,
            bins=bins.tolist(),
            histtype="step",
            linewidth=1.3,
            color=colors[i],
            label=label if R <= MAX_COLORED_REPLICAS else None,
        )
    ax.axvline(0.0, color="black", linestyle=":", linewidth=1.0, label="equal weights (w = 1/N)")
    ax.set_xlabel("log(N · normalized weight)   (0 = equal weight; right tail = dominant particles)")
    ax.set_ylabel("particles")
    ax.grid(alpha=0.3)
    extra = [] if n_zero == 0 else [f"{n_zero} zero weights not shown"]
    if flat:
        extra.append("all weights equal to within 0.1%")
    if n_below:
        extra.append(f"{n_below} particles with log(N·w) < {lo:.3g} counted in the leftmost bin")
    if R > MAX_COLORED_REPLICAS:
        extra.append(f"{R} replicas: ESS/N {ess.min():.3f}–{ess.max():.3f}, max Pareto k {np.nanmax(k):.2f}")
    leg = ax.legend(fontsize=7, loc="upper left", title="\n".join(extra) or None, title_fontsize=7)
    leg.get_frame().set_alpha(0.9)
    ax.set_title(
        ctx.title(
            "Importance weights at t = 1 (before the final resampling)"
            "\nPareto k: < 0.5 good, 0.5–0.7 ok, ≥ 0.7 unreliable"
        ),
        fontsize=9,
    )


def _k_word(k: float) -> str:
    return "(good)" if k < 0.5 else ("(ok)" if k < 0.7 else "(bad)")


_DRAW = {
    "samples": _draw_samples,
    "pair": _draw_pair,
    "marginals": _draw_marginals,
    "trace": _draw_trace,
    "schedule": _draw_schedule,
    "log_Z": _draw_log_Z,
    "weights": _draw_weights,
}


def _n_coords(result: Result, coords, default: int) -> int:
    if coords is None:
        return min(result.dim, default)
    return 1 if isinstance(coords, (int, str)) else max(1, len(coords))


_FIGSIZE = {
    "samples": lambda r, c: (6.4, 5.2),
    "pair": lambda r, c: (2.3 * _n_coords(r, c, DEFAULT_COORDS) + 1.2,) * 2,
    "marginals": lambda r, c: (
        3.0 * min(_n_coords(r, c, DEFAULT_COORDS), 4) + 0.6,
        2.6 * math.ceil(_n_coords(r, c, DEFAULT_COORDS) / 4) + 1.2,
    ),
    "trace": lambda r, c: (9.0, 1.9 * _n_coords(r, c, DEFAULT_COORDS) + 1.0),
    "schedule": lambda r, c: (7.5, 7.5 if r.kind == "smc" else 5.0),
    "log_Z": lambda r, c: (10.0, 4.4),
    "weights": lambda r, c: (7.5, 4.8),
}


provide("plot", plot)
