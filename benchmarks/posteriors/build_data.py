"""Regenerate the shipped posteriordb files (``data/*.npz``) from a posteriordb copy.

Usage::

    python -m sampler_benchmarks.posteriors.build_data /path/to/posteriordb   # a checkout or a bare git dir

For every dataset a posterior of the suite uses, ``data/data-<data name>.npz`` holds its fields
as posteriordb stores them (``posterior_database/data/data/<name>.json.zip``). For every
reference posterior, ``data/ref-<reference name>.npz`` holds:

- ``names`` ``(P,)``: posteriordb's parameter names (``"theta[1]"``, 1-based);
- ``mean``, ``sd`` ``(P,)``: mean and standard deviation (ddof 1) of all reference draws
  (posteriordb's 10 chains x 1,000 draws, themselves thinned by 10 from Stan's NUTS);
- ``draws`` ``(n_thin, P)``: every ``THIN``-th draw of each chain, chains concatenated in order;
- ``n_draws``: how many draws ``mean`` and ``sd`` are from; ``source``: the posteriordb commit.

Only NumPy and the standard library are used; nothing is copied but numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

#: Keep every THIN-th reference draw per chain (10 chains x 1000 draws -> 1000 draws).
THIN = 10

#: (data name, reference posterior name) of each dataset and reference the suite ships.
DATASETS = ("sblrc", "sblri", "kidiq", "earnings", "mesquite", "eight_schools", "gp_pois_regr", "garch", "arK")
REFERENCES = (
    "sblrc-blr",
    "sblri-blr",
    "kidiq-kidscore_momiq",
    "earnings-earn_height",
    "mesquite-logmesquite",
    "eight_schools-eight_schools_noncentered",
    "gp_pois_regr-gp_pois_regr",
    "garch-garch11",
    "arK-arK",
)

OUT = Path(__file__).parent / "data"


class _Source:
    """Reads files of a posteriordb checkout, or of a bare git directory (at HEAD)."""

    def __init__(self, root: Path):
        self.root = root
        self.bare = not (root / "posterior_database").is_dir()

    def read(self, path: str) -> bytes:
        if not self.bare:
            return (self.root / path).read_bytes()
        return subprocess.run(
            ["git", f"--git-dir={self.root}", "show", f"HEAD:{path}"], check=True, capture_output=True
        ).stdout

    def commit(self) -> str:
        if not self.bare:
            return "checkout"
        out = subprocess.run(["git", f"--git-dir={self.root}", "rev-parse", "HEAD"], check=True, capture_output=True)
        return out.stdout.decode().strip()

    def json_zip(self, path: str):
        with zipfile.ZipFile(io.BytesIO(self.read(path))) as z:
            return json.loads(z.read(z.namelist()[0]))


def build(root: Path, out: Path = OUT, datasets: Iterable[str] = DATASETS, references: Iterable[str] = REFERENCES):
    """Write ``data-*.npz`` and ``ref-*.npz`` into ``out`` from the posteriordb at ``root``."""
    src = _Source(root)
    commit = src.commit()
    out.mkdir(parents=True, exist_ok=True)
    for name in datasets:
        data = src.json_zip(f"posterior_database/data/data/{name}.json.zip")
        arrays: dict[str, Any] = {k: np.asarray(v) for k, v in data.items()}
        arrays["source"] = np.asarray(f"posteriordb@{commit}")
        np.savez_compressed(out / f"data-{name}.npz", **arrays)
    for name in references:
        chains = src.json_zip(f"posterior_database/reference_posteriors/draws/draws/{name}.json.zip")
        names = list(chains[0])
        full = np.stack([np.stack([np.asarray(c[p], dtype=np.float64) for p in names], -1) for c in chains])
        flat = full.reshape(-1, len(names))
        np.savez_compressed(
            out / f"ref-{name}.npz",
            names=np.asarray(names),
            mean=flat.mean(0),
            sd=flat.std(0, ddof=1),
            draws=full[:, ::THIN].reshape(-1, len(names)),
            n_draws=np.asarray(flat.shape[0]),
            source=np.asarray(f"posteriordb@{commit}"),
        )


def main() -> None:
    """Command line: ``build_data POSTERIORDB [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("posteriordb", type=Path, help="a posteriordb checkout or bare git directory")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    build(args.posteriordb, args.out)


if __name__ == "__main__":
    main()
