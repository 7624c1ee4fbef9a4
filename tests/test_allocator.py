"""The CPU allocator setting (sampler.core.allocator): applied by the command line, harmless, results unchanged.

Its speed is measured in docs/benchmarks.md ("Throughput"), never asserted here.
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import sampler
from sampler.cli import main
from sampler.core import allocator


def test_it_applies_under_glibc_and_does_nothing_elsewhere(monkeypatch):
    assert sampler.tune_cpu_allocator is allocator.tune_cpu_allocator
    expected = platform.libc_ver()[0] == "glibc"
    assert allocator.tune_cpu_allocator.__wrapped__() is expected  # type: ignore[attr-defined]

    def no_libc(name):
        raise OSError(f"cannot load {name}")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert allocator.tune_cpu_allocator.__wrapped__() is False  # type: ignore[attr-defined]


def test_sampled_values_do_not_depend_on_it():
    code = (
        "import hashlib, sys, sampler\n"
        "if sys.argv[1] == 'tuned':\n"
        "    sampler.tune_cpu_allocator()\n"
        "r = sampler.sample('gmm40', n_particles=3000, n_replicas=2, seed=4)\n"
        "print(hashlib.sha1(r.samples.numpy().tobytes()).hexdigest(), repr(float(r.log_Z)))\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code, mode], check=True, capture_output=True, text=True).stdout
        for mode in ("plain", "tuned")
    ]
    assert runs[0] == runs[1] and runs[0].strip()


def test_the_command_line_applies_it(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(allocator, "tune_cpu_allocator", lambda: calls.append(1) or True)
    assert main(["run", "gaussian", "--particles", "50", "--replicas", "1", "--seed", "0", "--quiet"]) == 0
    assert calls == [1]
    assert "log Z" in capsys.readouterr().out
