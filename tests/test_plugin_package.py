"""The example plugin package installs with pip and works through its entry point, like any third-party plugin."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import t_bound

PACKAGE = Path(__file__).parents[1] / "examples" / "plugin_package"


@pytest.mark.slow
def test_plugin_package_is_found_through_its_entry_point(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(site),
        str(src),
    ]
    proc = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def sampler_cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "sampler", *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    listing = sampler_cli("plugins")
    assert "ring  [ok]  entry point, sampler-ring 0.1.0" in listing
    assert "methods: rw-smc" in listing and "targets: ring" in listing
    summary = sampler_cli(
        "run", "ring", "--method", "rw-smc", "--particles", "1000", "--replicas", "4", "--seed", "0", "--quiet"
    )
    log_z, stderr = map(float, re.search(r"log Z\s+(-?[\d.]+) ± ([\d.e-]+)", summary).groups())
    exact = float(re.search(r"exact log Z\s+(-?[\d.]+)", summary).group(1))
    # The standard error comes from 4 replicas (3 degrees of freedom): the t bound, plus rounding.
    assert abs(log_z - exact) < t_bound(4) * stderr + 1e-3, summary
