"""The CPU thread policy of a run (sampler.core.threads): choices, errors, and torch's setting restored."""

from __future__ import annotations

import pytest
import torch

import sampler
from sampler.cli import main
from sampler.core.threads import SMALL_RUN, choose_threads, cpu_threads
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
