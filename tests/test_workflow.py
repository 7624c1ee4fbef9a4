"""A user's day: export to ArviZ, save and load, checkpoint and resume, diagnose from the CLI."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import attrs
import numpy as np
import pytest
import torch

import sampler
from sampler.cli import build_parser, main
from sampler.errors import ConfigurationError, Interrupted, PersistenceError
from sampler.io.checkpoint import read_checkpoint
from sampler.io.persistence import FORMAT_VERSION, load_weights, models_dir

from conftest import Interrupting


def _smc(**kw):
    opts = dict(n_particles=300, n_replicas=3, seed=1, n_steps=3, progress=False)
    opts.update(kw)
    return sampler.sample("double-well", method="smc", **opts)


def _mcmc():
    return sampler.sample(
        "double-well", method="mala", n_particles=200, n_replicas=3, seed=2, n_warmup=50, progress=False
    )


def _same_tensor(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def assert_same_result(a: sampler.Result, b: sampler.Result, wall_time: bool = True) -> None:
    """Every field equal; tensors bit for bit with their dtypes."""
    for f in attrs.fields(sampler.Result):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "wall_time" and not wall_time:
            continue
        if f.name == "models":
            assert x.keys() == y.keys()
        elif isinstance(x, torch.Tensor):
            assert _same_tensor(x, y), f.name
        elif f.name == "steps":
            assert len(x) == len(y)
            for s, u in zip(x, y):
                assert (s.step, s.target_evals, s.grad_evals, s.nonfinite) == (
                    u.step,
                    u.target_evals,
                    u.grad_evals,
                    u.nonfinite,
                )
                for name in ("t", "ess", "log_Z_increment"):
                    assert _same_tensor(getattr(s, name), getattr(u, name)), name
                assert s.info.keys() == u.info.keys()
                for key in s.info:
                    assert _same_tensor(s.info[key], u.info[key]), key
        else:
            assert x == y, f.name


# -- ArviZ ---------------------------------------------------------------------------------------
def test_to_arviz_smc_layout_and_arviz_functions():
    az = pytest.importorskip("arviz")
    res = _smc()
    idata = res.to_arviz()
    post, stats = idata.posterior, idata.sample_stats
    assert dict(post["x"].sizes) == {"chain": 3, "draw": 300, "x_dim_0": 2}
    assert np.array_equal(post["x"].values, res.samples.numpy())
    assert np.array_equal(stats["weighted_x"].values, res.weighted_samples.numpy())
    assert np.array_equal(stats["log_weight"].values, res.log_weights.numpy())
    assert np.array_equal(stats["log_Z"].values, res.log_Z_per_replica.numpy())
    k = len(res.steps)
    for name in ("t", "ess", "log_Z_increment", "acceptance", "step_size"):
        assert stats[name].dims == ("chain", "step") and stats[name].shape == (3, k), name
    assert stats["t"].values[:, -1].tolist() == [1.0, 1.0, 1.0]
    fit = res.options["reference_evals"][0]  # the reference's fit (reference="auto")
    assert stats["target_evals"].dims == ("step",)
    assert int(stats["target_evals"].sum()) + 3 * 300 + fit == res.n_target_evals
    for key in (
        "method",
        "options",
        "seed",
        "log_Z",
        "log_Z_stderr",
        "n_target_evals",
        "n_grad_evals",
        "inference_library_version",
        "torch_version",
        "arviz_version",
    ):
        assert key in post.attrs, key
    assert post.attrs["log_Z"] == pytest.approx(res.log_Z) and post.attrs["seed"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summ = az.summary(idata)
        assert summ.shape[0] == 2 and np.isfinite(summ["r_hat"]).all()
        assert np.isfinite(az.ess(idata)["x"].values).all()
        assert np.isfinite(az.rhat(idata)["x"].values).all()
        import matplotlib

        matplotlib.use("Agg")
        axes = az.plot_trace(idata)
        assert axes.size > 0
        import matplotlib.pyplot as plt

        plt.close("all")


def test_to_arviz_mcmc_is_chains_by_draws():
    res = _mcmc()
    idata = res.to_arviz()
    assert dict(idata.posterior["x"].sizes) == {"chain": 3, "draw": 200, "x_dim_0": 2}
    assert "weighted_x" not in idata.sample_stats and "log_Z" not in idata.sample_stats
    assert idata.sample_stats["acceptance"].shape == (3, 250)  # warm-up + kept iterations
    assert idata.posterior.attrs["kind"] == "mcmc"


def test_target_dimension_names_become_coordinates():
    class Named(sampler.BoltzmannTarget):
        dim = 2
        dim_names = ("position", "velocity")

        def energy(self, x):
            return 0.5 * (x**2).sum(-1)

    res = sampler.sample(Named(), n_particles=100, n_replicas=2, seed=0, n_steps=1, progress=False)
    idata = res.to_arviz()
    assert list(idata.posterior["x_dim_0"].values) == ["position", "velocity"]


# -- save / load ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["smc", "mcmc"])
def test_save_load_is_lossless(tmp_path, kind):
    res = _smc(dtype="float32") if kind == "smc" else _mcmc()
    path = res.save(tmp_path / "run.nc")
    back = sampler.load(path)
    assert_same_result(res, back)
    assert str(sampler.summary(back)).splitlines()[:5] == str(sampler.summary(res)).splitlines()[:5]


def test_load_refuses_newer_format_naming_the_version(tmp_path):
    res = _smc()
    idata = res.to_arviz()
    for group in (idata.posterior, idata.sample_stats):
        group.attrs["sampler_format_version"] = FORMAT_VERSION + 1
        group.attrs["inference_library_version"] = "9.9.9"
    idata.to_netcdf(str(tmp_path / "new.nc"))
    with pytest.raises(PersistenceError, match=r"sampler-engine 9\.9\.9.*upgrade"):
        sampler.load(tmp_path / "new.nc")


def test_load_rejects_foreign_and_missing_files(tmp_path):
    with pytest.raises(PersistenceError, match="no result file"):
        sampler.load(tmp_path / "nope.nc")
    (tmp_path / "junk.nc").write_bytes(b"not netcdf")
    with pytest.raises(PersistenceError, match="not a readable NetCDF"):
        sampler.load(tmp_path / "junk.nc")


class Affine(torch.nn.Module):
    """A toy trainable model: x -> a * x + b."""

    model_name = "test-affine"

    def __init__(self, dim: int = 2):
        super().__init__()
        self.dim = dim
        self.a = torch.nn.Parameter(torch.ones(dim))
        self.b = torch.nn.Parameter(torch.zeros(dim))

    def model_config(self):
        return {"dim": self.dim}

    def forward(self, x):
        return self.a * x + self.b


class AffinePlugin:
    @sampler.hookimpl
    def sampler_register(self, registry):
        registry.add_model("test-affine", Affine)


def test_models_are_saved_beside_the_result_and_rebuilt(tmp_path, fresh_plugins):
    sampler.register_plugin(AffinePlugin(), name="affine-plugin")
    model = Affine(3)
    with torch.no_grad():
        model.a.copy_(torch.tensor([1.0, 2.0, 3.0]))
        model.b.copy_(torch.tensor([-1.0, 0.5, 4.0]))
    res = _smc().with_models({"flow": model})
    res.save(tmp_path / "run.nc")
    assert (models_dir(tmp_path / "run.nc") / "flow.json").is_file()
    back = sampler.load(tmp_path / "run.nc")
    rebuilt = back.models["flow"]
    assert isinstance(rebuilt, Affine) and rebuilt.dim == 3
    x = torch.randn(5, 3)
    assert torch.equal(rebuilt(x), model(x))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_crafted_pickle_is_refused(tmp_path, fresh_plugins):
    sampler.register_plugin(AffinePlugin(), name="affine-plugin")
    _smc().with_models({"flow": Affine(2)}).save(tmp_path / "run.nc")
    weights = models_dir(tmp_path / "run.nc") / "flow.pt"
    with open(weights, "wb") as f:
        pickle.dump({"a": _Payload()}, f)
    with pytest.raises(PersistenceError, match="refused to load .*never runs code"):
        sampler.load(tmp_path / "run.nc")
    with pytest.raises(PersistenceError, match="refused"):
        load_weights(weights)
    torch.save({"x": 1}, tmp_path / "fake.ckpt")  # plain data, but not a checkpoint
    with pytest.raises(PersistenceError, match="not a sampler checkpoint"):
        sampler.resume(tmp_path / "fake.ckpt")
    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump(_Payload(), f)
    with pytest.raises(PersistenceError, match="refused to load .*not a readable sampler checkpoint"):
        sampler.resume(tmp_path / "evil.ckpt")


# -- checkpoint and resume -----------------------------------------------------------------------
def test_resume_from_a_periodic_checkpoint_equals_the_uninterrupted_run(tmp_path):
    full = _smc()
    ck = tmp_path / "run.ckpt"
    _smc(checkpoint=ck, checkpoint_every=2)
    data = read_checkpoint(ck)
    assert 0 < data.step < len(full.steps)
    resumed = sampler.resume(ck, progress=False)
    assert_same_result(full, resumed, wall_time=False)


def test_mode_jumps_resume_with_their_lineages(tmp_path):
    """The imh corrector's lineage labels (particle extras) travel through the checkpoint."""
    full = _smc(mode_jumps=1)
    ck = tmp_path / "jumps.ckpt"
    _smc(mode_jumps=1, checkpoint=ck, checkpoint_every=2)
    data = read_checkpoint(ck)
    assert 0 < data.step < len(full.steps)
    assert_same_result(full, sampler.resume(ck, progress=False), wall_time=False)


def test_ctrl_c_saves_and_resume_equals_the_uninterrupted_run(tmp_path):
    # reference="prior": Interrupting counts its calls, and the Laplace fit of "auto" would make some
    settings = dict(method="smc", n_particles=300, n_replicas=2, seed=4, n_steps=3, progress=False, reference="prior")
    full = sampler.sample(Interrupting(None), **settings)
    ck = tmp_path / "run.ckpt"
    with pytest.raises(Interrupted) as info:
        sampler.sample(Interrupting(14), checkpoint=ck, **settings)
    assert info.value.checkpoint == str(ck) and 0 < info.value.step < len(full.steps)
    assert isinstance(info.value, KeyboardInterrupt) and "sampler.resume" in str(info.value)
    with pytest.raises(ConfigurationError, match="not a registered target; pass it"):
        sampler.resume(ck)
    resumed = sampler.resume(ck, Interrupting(None), progress=False)
    assert_same_result(full, resumed, wall_time=False)


def test_mcmc_chains_resume_to_the_uninterrupted_result(tmp_path):
    settings = dict(method="mala", n_particles=200, n_replicas=3, seed=5, n_warmup=60, progress=False)
    full = sampler.sample("double-well", **settings)
    ck = tmp_path / "chains.ckpt"
    sampler.sample("double-well", checkpoint=ck, checkpoint_every=40, **settings)
    assert read_checkpoint(ck).step == 240  # the last multiple of 40 before the end (260 iterations)
    assert_same_result(full, sampler.resume(ck, progress=False), wall_time=False)
    with pytest.raises(Interrupted) as info:  # Ctrl-C during warm-up: saved where it stopped
        sampler.sample(Interrupting(30), checkpoint=tmp_path / "c2.ckpt", **settings)
    assert info.value.step == 28  # 1 initial + 1 per iteration: the 30th call is iteration 29
    full = sampler.sample(Interrupting(None), **settings)
    assert_same_result(full, sampler.resume(tmp_path / "c2.ckpt", Interrupting(None), progress=False), wall_time=False)


def test_a_pipeline_run_directly_resumes_through_the_pipeline(tmp_path):
    pipe = sampler.Pipeline(
        schedule=sampler.schedules.Linear(6),
        steps=[sampler.corrector("mala", n_steps=2), sampler.corrector("resample")],
    )
    target = sampler.get_target("double-well")
    full = pipe.run(target, n_particles=200, n_replicas=2, seed=3)
    ck = tmp_path / "pipe.ckpt"
    pipe.run(target, n_particles=200, n_replicas=2, seed=3, checkpoint=ck, checkpoint_every=2)
    with pytest.raises(ConfigurationError, match="runner called directly"):
        sampler.resume(ck)
    other = sampler.Pipeline(schedule=sampler.schedules.Linear(6), steps=[sampler.corrector("rwmh")])
    with pytest.raises(ConfigurationError, match="steps"):
        other.resume(ck, target)
    assert_same_result(full, pipe.resume(ck, target), wall_time=False)


def test_without_a_checkpoint_ctrl_c_is_a_plain_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt) as info:
        sampler.sample(Interrupting(3), n_particles=50, n_replicas=1, seed=0, n_steps=3, progress=False)
    assert not isinstance(info.value, Interrupted)


def test_checkpoint_arguments_are_checked(tmp_path):
    with pytest.raises(ConfigurationError, match="checkpoint_every needs a checkpoint path"):
        _smc(checkpoint_every=2)
    with pytest.raises(ConfigurationError, match="positive integer"):
        _smc(checkpoint=tmp_path / "c.ckpt", checkpoint_every=0)
    ck = tmp_path / "c.ckpt"
    _smc(checkpoint=ck, checkpoint_every=1)
    with pytest.raises(ConfigurationError, match="target 'double-well' .* not 'gmm40'"):
        sampler.resume(ck, sampler.get_target("gmm40"))


#: Each evaluation sleeps SLOW_WELL_SLEEP seconds (0.05 by default, for the in-process reference
#: runs). The CLI runs below set 0.25 s, so a run lasts about 15 s and a signal sent once its first
#: checkpoint appears arrives mid-run even on a loaded machine.
SLOW_TARGET = """
import os
import time
import sampler

class SlowWell(sampler.BoltzmannTarget):
    dim = 2
    def energy(self, x):
        time.sleep(float(os.environ.get("SLOW_WELL_SLEEP", "0.05")))
        return x[..., 0] ** 4 - 6 * x[..., 0] ** 2 - 0.5 * x[..., 0] + 0.5 * x[..., 1] ** 2
"""

RUN = [
    "-m",
    "ais",
    "-o",
    "n_temps=60",
    "-o",
    "n_steps=1",
    "--particles",
    "200",
    "--replicas",
    "2",
    "--seed",
    "3",
    "--quiet",
]


def _start(tmp_path, *extra):
    (tmp_path / "slow.py").write_text(textwrap.dedent(SLOW_TARGET))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLOW_WELL_SLEEP": "0.25"}
    cmd = [sys.executable, "-m", "sampler", "run", f"{tmp_path / 'slow.py'}:SlowWell", *RUN, *extra]
    return _popen(cmd, tmp_path, env)


def _popen(cmd: list[str], cwd, env) -> subprocess.Popen:
    """Start the CLI with Ctrl-C at its default (a test run from a background job inherits SIGINT ignored,
    and Python then never raises KeyboardInterrupt in the child)."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_killed_process_resumes_to_the_uninterrupted_result(tmp_path, capsys):
    ck = tmp_path / "run.ckpt"
    proc = _start(tmp_path, "--checkpoint", str(ck), "--checkpoint-every", "5")
    _wait_for(ck, proc)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait(timeout=30)
    step = read_checkpoint(ck).step
    assert 5 <= step < 60
    target = f"{tmp_path / 'slow.py'}:SlowWell"
    with pytest.raises(SystemExit):  # a file target must be named again: the checkpoint holds no code
        sys.exit(main(["run", "--resume", str(ck), "--quiet"]))
    assert "name the target again" in capsys.readouterr().err
    out = tmp_path / "resumed.nc"
    assert main(["run", target, "--resume", str(ck), "--quiet", "--out", str(out)]) == 0
    resumed = sampler.load(out)

    from sampler.cli import load_target

    full = sampler.sample(
        load_target(target, {}),
        method="ais",
        n_temps=60,
        n_steps=1,
        n_particles=200,
        n_replicas=2,
        seed=3,
        progress=False,
    )
    assert _same_tensor(resumed.samples, full.samples.cpu())
    assert _same_tensor(resumed.log_Z_per_replica, full.log_Z_per_replica)
    assert resumed.n_target_evals == full.n_target_evals and len(resumed.steps) == len(full.steps)


def test_ctrl_c_in_the_cli_saves_and_says_how_to_resume(tmp_path):
    proc = _start(tmp_path, "--checkpoint-every", "3")
    ck = tmp_path / "SlowWell-ais-seed3.ckpt"
    _wait_for(ck, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted after stage" in err and f"--resume {ck.name}" in err and "slow.py:SlowWell --resume" in err
    assert read_checkpoint(ck).step >= 3


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_diagnose_and_plot_a_saved_result(tmp_path, capsys):
    path = _smc().save(tmp_path / "res.nc")
    assert main(["diagnose", str(path), "--steps"]) == 0
    out = capsys.readouterr().out
    assert "log Z" in out and "Pareto k" in out and "per step" in out
    assert main(["plot", str(path), "--out", str(tmp_path / "figs"), "--format", "png,svg"]) == 0
    written = capsys.readouterr().out.split()
    assert written and all(os.path.getsize(p) > 0 for p in written)
    assert any(p.endswith(".svg") for p in written)
    assert main(["plot", str(path), "--kind", "schedule", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["diagnose", str(tmp_path / "missing.nc")]) == 2


def test_every_subcommand_has_help_with_examples():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert "example" in (p.epilog or ""), name


def test_sigterm_saves_like_ctrl_c_and_resumes_to_the_uninterrupted_result(tmp_path):
    """A batch scheduler's SIGTERM (or kill) saves the checkpoint and says how to resume, as Ctrl-C does."""
    ck = tmp_path / "SlowWell-ais-seed3.ckpt"
    proc = _start(tmp_path, "--checkpoint-every", "3")
    _wait_for(ck, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted after stage" in err and f"--resume {ck.name}" in err
    step = read_checkpoint(ck).step
    assert step >= 3
    target = f"{tmp_path / 'slow.py'}:SlowWell"
    out = tmp_path / "resumed.nc"
    assert main(["run", target, "--resume", str(ck), "--quiet", "--out", str(out)]) == 0
    from sampler.cli import load_target

    full = sampler.sample(
        load_target(target, {}), method="ais", n_temps=60, n_steps=1, n_particles=200, n_replicas=2, seed=3
    )
    assert _same_tensor(sampler.load(out).samples, full.samples.cpu())


def test_interrupting_a_resumed_run_says_how_to_resume_again(tmp_path):
    ck = tmp_path / "SlowWell-ais-seed3.ckpt"
    proc = _start(tmp_path, "--checkpoint-every", "2")
    _wait_for(ck, proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    first = read_checkpoint(ck).step
    (tmp_path / "slow.py").write_text(textwrap.dedent(SLOW_TARGET))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLOW_WELL_SLEEP": "0.25"}
    cmd = [sys.executable, "-m", "sampler", "run", f"{tmp_path / 'slow.py'}:SlowWell", "--resume", str(ck), "--quiet"]
    again = _popen(cmd, tmp_path, env)
    deadline = time.monotonic() + 120
    while read_checkpoint(ck).step <= first:  # the resumed run has saved at least once more
        assert again.poll() is None, again.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    again.send_signal(signal.SIGINT)
    _, err = again.communicate(timeout=60)
    assert again.returncode == 130, err
    assert "interrupted after stage" in err and f"slow.py:SlowWell --resume {ck}" in err
