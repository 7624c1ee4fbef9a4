"""Pictures of a benchmark run: samples over density contours (2D), marginals vs exact (higher d).

A thin wrapper over the core's :mod:`sampler.plotting`, so the benchmark report and
``result.plot()`` draw the same pictures.
"""

from __future__ import annotations

from pathlib import Path

import sampler
from sampler.plotting import DEFAULT_COORDS, plot

#: Coordinates shown for targets of more than two dimensions.
MAX_MARGINALS = DEFAULT_COORDS


def plot_result(result: sampler.Result, target: sampler.Target, path: str | Path, max_points: int = 5000) -> Path:
    """Write a picture of ``result`` against ``target`` to ``path`` (format by suffix) and return the path.

    2D targets: the samples over the target's density contours; higher d: the marginal
    densities of the first :data:`MAX_MARGINALS` coordinates against exact samples when the
    target has an exact sampler.
    """
    kind = "samples" if result.dim == 2 else "marginals"
    coords = None if result.dim == 2 else list(range(min(MAX_MARGINALS, result.dim)))
    path = Path(path)
    plot(result, kind, target=target, coords=coords, out=path, max_points=max_points, dpi=110)
    return path
