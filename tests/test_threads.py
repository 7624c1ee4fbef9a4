"""The CPU thread policy of a run (sampler.core.threads): choices, errors, and torch's setting restored."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import sampler
from sampler.cli import main
from sampler.core import threads
from sampler.core.threads import SMALL_RUN, busy_elsewhere, choose_threads, cpu_threads
from sampler.errors import ConfigurationError

CPU = torch.device("cpu")


class ThreadRecorder(sampler.Target):
    """A standard normal in 2D that records torch's thread count at every evaluation."""

    dim = 2

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def log_prob(self, x):
        self.seen.add(torch.get_num_threads())
        return -0.5 * (x**2).sum(-1)


def test_auto_uses_one_thread_for_small_runs_and_at_most_torchs_setting_for_large():
    assert choose_threads("auto", SMALL_RUN, CPU) == 1
    large = choose_threads("auto", SMALL_RUN + 1, CPU)
    assert large is not None and 1 <= large <= torch.get_num_threads()


def test_auto_uses_the_cores_other_processes_leave_idle(monkeypatch):
    monkeypatch.setattr(threads, "_available_cores", lambda: 1)
    assert choose_threads("auto", SMALL_RUN + 1, CPU) == 1
    monkeypatch.setattr(threads, "_available_cores", lambda: 64)
    assert choose_threads("auto", SMALL_RUN + 1, CPU) == torch.get_num_threads()


def test_busy_elsewhere_leaves_this_process_out(monkeypatch):
    # The machine's runnable threads less this process's own (which the load average counts).
    monkeypatch.setattr(threads, "_machine_runnable_threads", lambda: 5)
    monkeypatch.setattr(threads, "_own_runnable_threads", lambda: 3)
    assert busy_elsewhere() == 2.0
    monkeypatch.setattr(threads, "_own_runnable_threads", lambda: 7)  # read a moment apart
    assert busy_elsewhere() == 0.0
    # A process runnable in one reading only (a shell command, say) is not a competitor.
    readings = iter([4, 2, 4])
    monkeypatch.setattr(threads, "_machine_runnable_threads", lambda: next(readings))
    monkeypatch.setattr(threads, "_own_runnable_threads", lambda: 2)
    assert busy_elsewhere() == 0.0

    def missing() -> int:
        raise OSError("no /proc")

    monkeypatch.setattr(threads, "_machine_runnable_threads", missing)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 0.5))
    assert busy_elsewhere() == 1.5  # the load average where /proc is missing


linux_proc = pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux's /proc")


@linux_proc
def test_own_runnable_threads_sees_this_process_working():
    # A thread multiplying matrices (the GIL released) is runnable, besides the one reading.
    stop = threading.Event()

    def work() -> None:
        a = torch.randn(256, 256)
        while not stop.is_set():
            a @ a

    worker = threading.Thread(target=work)
    worker.start()
    try:
        seen = max(threads._own_runnable_threads() for _ in range(200))
    finally:
        stop.set()
        worker.join()
    assert seen >= 2


@linux_proc
def test_busy_elsewhere_counts_a_busy_process():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        assert busy_elsewhere() >= 1.0
    finally:
        busy.kill()
        busy.wait()


def test_auto_leaves_other_devices_alone_and_numbers_are_taken_as_given():
    assert choose_threads("auto", 10, torch.device("meta")) is None
    assert choose_threads(None, 10, CPU) is None
    assert choose_threads(3, 10, CPU) == 3


@pytest.mark.parametrize("bad", ["many", "", 0, -2, 1.5, True])
def test_bad_thread_settings_are_configuration_errors(bad):
    with pytest.raises(ConfigurationError, match="threads must be 'auto', None or a positive integer"):
        choose_threads(bad, 10, CPU)


def test_cpu_threads_restores_torchs_setting_even_after_an_error():
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    with pytest.raises(RuntimeError, match="inside"):
        with cpu_threads(other, 10, CPU) as used:
            assert used == other == torch.get_num_threads()
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


def test_sample_runs_the_target_with_the_chosen_threads_and_restores_them():
    before = torch.get_num_threads()
    target = ThreadRecorder()
    sampler.sample(target, method="smc", n_particles=64, n_replicas=2, seed=0, n_steps=1, threads=1)
    assert target.seen == {1}
    assert torch.get_num_threads() == before
    untouched = ThreadRecorder()
    sampler.sample(untouched, method="smc", n_particles=64, n_replicas=2, seed=0, n_steps=1, threads=None)
    assert untouched.seen == {before}


def test_chains_count_only_their_current_points(monkeypatch):
    """Chains make their draws one after another: the thread rule sees R x d, not R x N x d (measured:
    fused chains on a 25-dimensional logistic regression ran 1.3-1.4x faster on one thread than on two)."""
    monkeypatch.setattr(threads, "_available_cores", lambda: 2)
    can = sampler.method("hmc").capabilities
    assert can.sequential_draws and can.thread_size(10_000, 4, 10) == 40
    assert not sampler.method("smc").capabilities.sequential_draws
    assert sampler.method("smc").capabilities.thread_size(10_000, 4, 10) == 400_000
    target = ThreadRecorder()
    sampler.sample(target, method="hmc", n_particles=SMALL_RUN, n_replicas=4, seed=0, n_warmup=5)
    assert target.seen == {1}  # R x N x d = 16,384 coordinates would have had min(2, torch's setting)


def test_the_thread_count_does_not_change_a_seeded_run():
    # "auto" picks the count from the machine's load, so a seed must give the same draws on any.
    runs = [
        sampler.sample("gmm40", n_particles=2000, n_replicas=2, seed=4, n_steps=3, reference="prior", threads=k)
        for k in (1, 2)
    ]
    assert torch.equal(runs[0].samples, runs[1].samples)
    assert torch.equal(runs[0].log_Z_per_replica, runs[1].log_Z_per_replica)


def test_follow_load_rechooses_within_an_auto_run_only(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(threads, "_available_cores", lambda: 64)
    threads.follow_load()  # outside any "auto" run: nothing
    assert torch.get_num_threads() == before
    with cpu_threads("auto", SMALL_RUN + 1, CPU):
        monkeypatch.setattr(threads, "_available_cores", lambda: 1)  # another process started
        threads.follow_load()
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "_available_cores", lambda: 64)  # and stopped
        threads.follow_load()
        assert torch.get_num_threads() == before  # never above torch's own setting
        monkeypatch.setattr(threads, "RECHECK_SECONDS", 3600.0)
        monkeypatch.setattr(threads, "_available_cores", lambda: 1)
        threads.follow_load()  # checked a moment ago: no new reading
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before
    with cpu_threads(1, SMALL_RUN + 1, CPU):  # a number is kept as given
        monkeypatch.setattr(threads, "RECHECK_SECONDS", 0.0)
        threads.follow_load()
        assert torch.get_num_threads() == 1


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs torch to allow two threads")
def test_a_run_follows_a_competitor_that_starts_midway(monkeypatch):
    # Idle cores at the start, then every core busy: the stages after the first run on one thread.
    readings = iter([64])
    monkeypatch.setattr(threads, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(threads, "_available_cores", lambda: next(readings, 1))
    target = ThreadRecorder()
    sampler.sample(target, method="smc", n_particles=2000, n_replicas=2, seed=0, n_steps=1, reference="prior")
    assert target.seen == {torch.get_num_threads(), 1}


def test_sample_rejects_a_bad_threads_value():
    with pytest.raises(ConfigurationError, match="threads"):
        sampler.sample(ThreadRecorder(), method="smc", n_particles=64, seed=0, threads="fast")


@pytest.mark.parametrize("value", ["auto", "torch", "1"])
def test_cli_threads_flag(value, capsys):
    argv = ["run", "gaussian", "--particles", "100", "--replicas", "2", "--seed", "0", "-o", "n_steps=1"]
    assert main([*argv, "--quiet", "--threads", value]) == 0


def test_cli_bad_threads_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["run", "gaussian", "--threads", "0"])
    assert "expected auto, torch or a positive integer" in capsys.readouterr().err
