"""Plots of a Result (sampler.plotting): every kind renders on Agg for SMC and MCMC, 2D and higher d."""

from __future__ import annotations

import attrs
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.contour import ContourSet  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import sampler  # noqa: E402
from sampler.errors import ConfigurationError  # noqa: E402
from sampler.plotting import KINDS, available_kinds, plot, plot_all, resolve_target  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results() -> dict[str, sampler.Result]:
    """Small runs: SMC and MCMC on a 2D target and on higher-dimensional ones."""
    common = {"n_replicas": 2, "seed": 0, "progress": False}
    return {
        "smc-2d": sampler.sample("double-well", method="smc", n_particles=200, **common),
        "mcmc-2d": sampler.sample("double-well", method="mala", n_particles=100, n_warmup=100, **common),
        "smc-4d": sampler.sample(sampler.get_target("gaussian", dim=4), method="smc", n_particles=200, **common),
        "mcmc-10d": sampler.sample("funnel", method="mala", n_particles=100, n_warmup=100, **common),
    }


EXPECTED_KINDS = {
    "smc-2d": ("samples", "pair", "marginals", "schedule", "log_Z", "weights"),
    "mcmc-2d": ("samples", "pair", "marginals", "trace", "schedule"),
    "smc-4d": ("pair", "marginals", "schedule", "log_Z", "weights"),
    "mcmc-10d": ("pair", "marginals", "trace", "schedule"),
}


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def _assert_svg(path) -> None:
    text = path.read_text()
    assert "<svg" in text[:2000] and text.rstrip().endswith("</svg>") and len(text) > 5000


def _titles(fig: Figure) -> str:
    return "\n".join([fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)])


def test_available_kinds(results):
    for name, kinds in EXPECTED_KINDS.items():
        assert available_kinds(results[name]) == kinds, name
    assert set(KINDS) == {k for ks in EXPECTED_KINDS.values() for k in ks}


# smc-2d's kinds are rendered (PNG and SVG) by test_plot_all_writes_png_and_svg
@pytest.mark.parametrize("name,kind", [(n, k) for n, ks in EXPECTED_KINDS.items() if n != "smc-2d" for k in ks])
def test_every_kind_renders_png(results, tmp_path, name, kind):
    path = tmp_path / f"{name}_{kind}.png"
    fig = plot(results[name], kind, out=path, dpi=72)
    assert isinstance(fig, Figure) and fig.axes
    res = results[name]
    assert f"{res.method} on {res.target}" in _titles(fig)  # every picture says what was run
    _assert_png(path)
    assert plt.get_fignums() == []  # object API only: no pyplot figure left open


def test_plot_all_writes_png_and_svg(results, tmp_path):
    paths = plot_all(results["smc-2d"], tmp_path / "figs", formats=("png", "svg"))
    kinds = EXPECTED_KINDS["smc-2d"]
    assert [p.name for p in paths] == [f"{k}.{f}" for k in kinds for f in ("png", "svg")]
    for p in paths:
        (_assert_png if p.suffix == ".png" else _assert_svg)(p)
    paths = plot_all(results["mcmc-10d"], tmp_path / "mcmc", prefix="run1_", dpi=50)
    assert sorted(p.name for p in paths) == sorted(f"run1_{k}.png" for k in EXPECTED_KINDS["mcmc-10d"])
    assert plt.get_fignums() == []


def test_svg_by_suffix(results, tmp_path):
    plot(results["mcmc-2d"], "trace", out=tmp_path / "trace.svg")
    _assert_svg(tmp_path / "trace.svg")


def test_auto_kind(results):
    assert "Samples over the target density" in _titles(plot(results["smc-2d"]))
    assert "Pair plot" in _titles(plot(results["smc-4d"]))


def test_samples_over_contours_and_without_a_known_target(results):
    res = results["smc-2d"]
    fig = plot(res, "samples")
    assert any(isinstance(c, ContourSet) for c in fig.axes[0].get_children())
    assert fig.axes[0].get_xlabel() == "x[0]" and fig.axes[0].get_ylabel() == "x[1]"
    # a loaded result whose target is not registered: samples only, no contours
    custom = attrs.evolve(res, target="my-own-double-well")
    assert resolve_target(custom) is None
    fig = plot(custom, "samples")
    assert not any(isinstance(c, ContourSet) for c in fig.axes[0].get_children())
    assert "target density unknown" in fig.axes[0].get_title()
    # an explicit target wins
    fig = plot(custom, "samples", target=sampler.get_target("double-well"))
    assert any(isinstance(c, ContourSet) for c in fig.axes[0].get_children())


def test_resolve_target_by_name_and_dimension(results):
    assert resolve_target(results["smc-2d"]).name == "double-well"
    tgt = resolve_target(results["smc-4d"])  # "gaussian-4" -> get_target("gaussian", dim=4)
    assert tgt.name == "gaussian-4" and tgt.dim == 4
    assert resolve_target(results["mcmc-10d"]).name == "funnel"
    with pytest.raises(ConfigurationError, match="dimension 4"):
        resolve_target(results["smc-4d"], "double-well")  # registered, but 2D


def test_log_Z_and_weights_show_their_numbers(results):
    res = results["smc-2d"]
    fig = plot(res, "log_Z")
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert f"{res.log_Z:.4f}" in legend and f"{res.exact_log_Z:.4f}" in legend
    fig = plot(res, "weights")
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert legend.count("ESS/N") == res.n_replicas and legend.count("Pareto k") == res.n_replicas


def test_coords_selection(results):
    fig = plot(results["smc-4d"], "pair", coords=[1, 3])
    assert len(fig.axes) == 3  # two marginals and one scatter
    labels = {ax.get_xlabel() for ax in fig.axes} | {ax.get_ylabel() for ax in fig.axes}
    assert {"x[1]", "x[3]"} <= labels and "x[0]" not in labels
    fig = plot(results["mcmc-10d"], "marginals", coords=range(6))
    assert sum(ax.get_visible() for ax in fig.axes) == 6
    fig = plot(results["mcmc-10d"], "trace", coords=[0])
    assert len(fig.axes) == 2
    fig = plot(results["mcmc-10d"], "samples", coords=[0, 5])
    assert fig.axes[0].get_ylabel() == "x[5]"


def test_draw_into_callers_figure_and_axes(results):
    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    assert plot(results["smc-2d"], "samples", ax=ax) is fig
    fig2 = Figure(figsize=(8, 8))
    assert plot(results["smc-2d"], "schedule", fig=fig2) is fig2 and len(fig2.axes) >= 3


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("smc-2d", {"kind": "histogram"}, "unknown plot kind 'histogram'"),
        ("smc-2d", {"kind": "trace"}, "trace plots are for MCMC"),
        ("mcmc-2d", {"kind": "weights"}, "no 'weights' plot"),
        ("mcmc-2d", {"kind": "log_Z"}, "no log Z estimate"),
        ("smc-2d", {"kind": "samples", "out": "pic.jpg"}, "suffix among"),
        ("smc-4d", {"kind": "pair", "coords": [0, 4]}, "out of range"),
        ("smc-4d", {"kind": "pair", "coords": [1, 1]}, "repeat"),
        ("smc-4d", {"kind": "pair", "coords": [2]}, "at least two"),
        ("smc-4d", {"kind": "marginals", "coords": ["q"]}, "indices in"),
        ("smc-2d", {"kind": "samples", "target": "no-such-target"}, "not a registered target"),
    ],
)
def test_bad_input_is_a_configuration_error(results, name, kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        plot(results[name], **kwargs)


def test_ax_only_for_single_panel_kinds(results):
    ax = Figure().add_subplot()
    with pytest.raises(ConfigurationError, match="single-panel"):
        plot(results["smc-2d"], "schedule", ax=ax)
    with pytest.raises(ConfigurationError, match="sampler.Result"):
        plot("not a result")
    with pytest.raises(ConfigurationError, match="formats"):
        plot_all(results["smc-2d"], "unused", formats=("gif",))


def test_non_finite_samples_and_single_replica(results, tmp_path):
    res = results["smc-2d"]
    x = res.samples.clone()
    x[0, :5] = float("nan")
    broken = attrs.evolve(res, samples=x, log_Z_per_replica=res.log_Z_per_replica[:1])
    for kind in ("samples", "marginals", "log_Z"):  # NaN rows are left out; one replica: no error bar
        plot(broken, kind, out=tmp_path / f"{kind}.png", dpi=50)
    legend = " ".join(t.get_text() for t in plot(broken, "log_Z").axes[0].get_legend().get_texts())
    assert "no error bar" in legend
