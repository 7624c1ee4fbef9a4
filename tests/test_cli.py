"""The command line: run (built-in and file targets), plugins, targets, methods, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from sampler.cli import main

SMALL = ["--particles", "200", "--replicas", "2", "--seed", "0", "-o", "n_steps=2", "--quiet"]


def test_run_builtin_prints_summary(capsys):
    assert main(["run", "gmm40", *SMALL]) == 0
    out = capsys.readouterr().out
    for row in ("log Z", "weight ESS", "R-hat", "bulk ESS", "target / gradient evals", "wall time", "--seed 0"):
        assert row in out


def test_run_console_script_defaults_exit_zero():
    """`sampler run` as a user types it (subprocess, console script), small budget."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sampler", "run", "--particles", "300", "--replicas", "2", "--seed", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "smc" in proc.stdout and "gmm40" in proc.stdout and "log Z" in proc.stdout
    assert proc.stderr == ""  # no progress bar when not on a terminal, no warnings


def test_run_file_target_class_and_energy_function(tmp_path, capsys):
    f = tmp_path / "model.py"
    f.write_text(
        textwrap.dedent(
            """
        import sampler

        class Bowl(sampler.BoltzmannTarget):
            dim = 3
            def energy(self, x):
                return 0.5 * (x ** 2).sum(-1)

        def energy(x):
            return 0.5 * ((x - 1.0) ** 2).sum(-1)
        """
        )
    )
    assert main(["run", f"{f}:Bowl", *SMALL]) == 0
    assert "Bowl (d=3)" in capsys.readouterr().out
    assert main(["run", f"{f}:energy", "--dim", "2", *SMALL]) == 0
    assert "energy (d=2)" in capsys.readouterr().out


def test_run_writes_netcdf(tmp_path, capsys):
    out = tmp_path / "res.nc"
    assert main(["run", "double-well", *SMALL, "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    from sampler.io._arviz import arviz

    idata = arviz().from_netcdf(str(out))
    assert idata.posterior["x"].shape == (2, 200, 2)


def test_run_target_option_and_method_option(capsys):
    assert main(["run", "gaussian", "--target-option", "dim=4", "--method", "ais", *SMALL, "-o", "n_temps=5"]) == 0
    assert "gaussian-4 (d=4)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "gmm41"], "unknown target 'gmm41'"),
        (["run", "--method", "smcc"], "Did you mean 'smc'"),
        (["run", "--particles", "0"], "n_particles must be a positive integer"),
        (["run", "-o", "nokey"], "expects key=value"),
        (["run", "missing_file.py:T"], "does not exist"),
    ],
)
def test_bad_input_exits_with_clear_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_plugins_targets_methods(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "mcmc  [ok]  entry point, sampler-engine" in out
    assert "methods: smc, ais, mala, hmc" in out
    assert main(["targets"]) == 0
    assert "gmm40" in capsys.readouterr().out
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "smc" in out and "resample" in out


@pytest.mark.parametrize(
    "text, value",
    [
        ("false", False),
        ("FALSE", False),
        ("True", True),
        ("true", True),
        ("none", None),
        ("None", None),
        ("20", 20),
        ("0.5", 0.5),
        ("[1, 2]", [1, 2]),
        ("mala", "mala"),
        ("falsey", "falsey"),
    ],
)
def test_option_values_parse_booleans_in_any_case(text, value):
    """``-o adapt=false`` is False, not the (truthy) string "false"."""
    from sampler.cli import _parse_options

    assert _parse_options([f"key={text}"], "-o") == {"key": value}
