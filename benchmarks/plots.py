"""Pictures of a benchmark run: samples over density contours (2D), marginals vs exact (higher d)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import sampler  # noqa: E402

#: Coordinates shown for targets of more than two dimensions.
MAX_MARGINALS = 4


def plot_result(result: sampler.Result, target: sampler.Target, path: str | Path, max_points: int = 5000) -> Path:
    """Write a PNG of ``result`` against ``target`` and return its path."""
    x = result.samples.reshape(-1, result.dim).detach().to("cpu", torch.float64)[:max_points]
    title = f"{result.method} on {target.name} (N={result.n_particles}, seed {result.seed})"
    if result.dim == 2:
        fig = _plot_2d(x, target, title)
    else:
        fig = _plot_marginals(x, target, title)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_2d(x: torch.Tensor, target: sampler.Target, title: str):
    lo = torch.quantile(x, 0.001, dim=0)
    hi = torch.quantile(x, 0.999, dim=0)
    pad = 0.15 * (hi - lo) + 0.1
    g0 = torch.linspace(float(lo[0] - pad[0]), float(hi[0] + pad[0]), 200, dtype=torch.float64)
    g1 = torch.linspace(float(lo[1] - pad[1]), float(hi[1] + pad[1]), 200, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g0, g1, indexing="xy"), dim=-1)
    with torch.no_grad():
        logp = target.log_prob(grid)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.contour(g0, g1, torch.exp(logp - logp.max()), levels=8, cmap="viridis", linewidths=0.8)
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.35, color="tab:red", label="samples")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8, markerscale=4)
    return fig


def _plot_marginals(x: torch.Tensor, target: sampler.Target, title: str):
    k = min(MAX_MARGINALS, x.shape[1])
    try:
        exact = target.sample(x.shape[0], torch.Generator().manual_seed(0), dtype=torch.float64)
    except NotImplementedError:
        exact = None
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3), squeeze=False)
    for j, ax in enumerate(axes[0]):
        data = [x[:, j]] if exact is None else [x[:, j], exact[:, j]]
        lo = min(float(torch.quantile(d, 0.005)) for d in data)
        hi = max(float(torch.quantile(d, 0.995)) for d in data)
        bins = torch.linspace(lo, hi, 60).numpy()
        ax.hist(x[:, j].numpy(), bins=bins, density=True, alpha=0.6, color="tab:red", label="samples")
        if exact is not None:
            ax.hist(exact[:, j].numpy(), bins=bins, density=True, histtype="step", color="black", label="exact")
        ax.set_xlabel(f"$x_{{{j + 1}}}$")
        ax.set_yticks([])
        if j == 0:
            ax.legend(fontsize=8)
    fig.suptitle(title + " — marginal densities", fontsize=10)
    fig.tight_layout()
    return fig
