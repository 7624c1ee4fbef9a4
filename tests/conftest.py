"""Shared fixtures: every test starts from the default plugin set and leaves it that way."""

from __future__ import annotations

import pytest
from scipy import stats

import sampler


def t_bound(n_replicas: int, false_failure: float = 1e-3) -> float:
    """How many standard errors a correct estimate may be off, when the standard error comes from
    ``n_replicas`` replicas: the two-sided Student-t quantile with ``n_replicas - 1`` degrees of
    freedom, so a correct run fails the check with probability ``false_failure``.

    (With 4 replicas a bound of 4 standard errors fails ~3% of correct runs; this gives 12.9.)
    """
    return float(stats.t.ppf(1 - false_failure / 2, df=n_replicas - 1))


@pytest.fixture
def fresh_plugins():
    """Reload plugins from scratch before and after a test that registers or blocks plugins."""
    sampler.reset_plugins()
    yield sampler.plugins.host()
    sampler.reset_plugins()


class Interrupting(sampler.BoltzmannTarget):
    """A double well that raises KeyboardInterrupt (as Ctrl-C would) at its ``at``-th gradient call."""

    dim = 2

    def __init__(self, at: int | None):
        self.at, self.calls = at, 0

    @property
    def name(self) -> str:
        return "interrupting"

    def energy(self, x):
        return x[..., 0] ** 4 - 6 * x[..., 0] ** 2 - 0.5 * x[..., 0] + 0.5 * x[..., 1] ** 2

    def log_prob_and_grad(self, x):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt
        return super().log_prob_and_grad(x)


def run_and_resume(tmp_path, at: int, method: str, options: dict, **common):
    """``(full, resumed)``: a seeded run of ``method`` on :class:`Interrupting` straight through,
    and the same run interrupted at the ``at``-th gradient call and resumed from its checkpoint.

    ``options`` are the method's (they rebuild it for the resume); ``common`` the run's
    (``n_particles``, ``n_replicas``, ``seed``, ...).
    """
    full = sampler.sample(Interrupting(None), method=method, **common, **options)
    ck = tmp_path / "run.ckpt"
    with pytest.raises(sampler.errors.Interrupted) as info:
        sampler.sample(Interrupting(at), method=method, checkpoint=ck, **common, **options)
    assert 0 < info.value.step
    resumed = sampler.method(method, **options).resume(ck, Interrupting(None), progress=False)
    return full, resumed


@pytest.fixture
def no_compiler(monkeypatch):
    """``torch.compile`` fails (as without a C++ compiler) and no compiled copy is cached: the fallbacks run."""
    from sampler_plugins.mcmc import compiled

    def unavailable(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nmore detail")

    monkeypatch.setattr(compiled.torch, "compile", unavailable)
    monkeypatch.setattr(compiled, "_COPIES", {})
