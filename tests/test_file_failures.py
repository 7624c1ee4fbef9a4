"""Damaged, foreign and hand-edited files: every failure is a PersistenceError naming the file and what is wrong.

Checkpoints (truncated, random bytes, edited contents), saved results (edited, truncated NetCDF),
the CLI's report of them, a result saved over an older one, and concurrent checkpoint writers.
"""

from __future__ import annotations

import copy
import math
import random
import re
import shutil
import struct
import subprocess
import sys
import threading
import warnings
import zipfile

import pytest
import torch

import sampler
from sampler.cli import main
from sampler.core.settings import RunSettings
from sampler.errors import ConfigurationError, PersistenceError
from sampler.io._arviz import arviz
from sampler.io.checkpoint import (
    Checkpoint,
    CheckpointData,
    check_options,
    check_resumable,
    read_checkpoint,
    run_record,
    write_checkpoint,
)
from sampler.io.persistence import load_models, models_dir

# -- fixtures ------------------------------------------------------------------------------------
#: Stages completed at the fixtures' last checkpoint: their seeded gmm40 runs take CHECKPOINT_K + 1
#: stages (the edits' expected messages quote it; a change of the engine's arithmetic can move it).
CHECKPOINT_K = 9


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    """A real checkpoint of an SMC run (after its last completed stage but one)."""
    path = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    sampler.sample("gmm40", n_particles=64, n_replicas=2, seed=0, checkpoint=path, checkpoint_every=1, progress=False)
    return path


@pytest.fixture(scope="module")
def payload(checkpoint_file):
    return torch.load(checkpoint_file, weights_only=True)


@pytest.fixture(scope="module")
def result_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("result") / "res.nc"
    sampler.sample("gmm40", n_particles=64, n_replicas=2, seed=0, progress=False).save(path)
    return path


def _names(path) -> str:
    """A pattern matching the file's name as messages quote it."""
    return re.escape(repr(str(path)))


def _resume_fails(path, *fragments: str) -> str:
    with pytest.raises(PersistenceError) as info:
        sampler.resume(path, progress=False)
    message = str(info.value)
    assert re.search(_names(path), message), message
    said = message.replace(repr(str(path)), "<file>")  # the fragments must not match the file's own name
    for fragment in fragments:
        assert fragment in said, message
    return message


# -- checkpoints that are not checkpoints --------------------------------------------------------
@pytest.mark.parametrize("keep", [0, 1, 3, 64, 0.1, 0.5, 0.9, -23, -1])
def test_a_truncated_checkpoint_says_it_is_truncated(tmp_path, checkpoint_file, keep):
    data = checkpoint_file.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data) if keep < 0 else keep
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(data[:n])
    _resume_fails(bad, "empty" if n == 0 else "truncated")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_are_not_a_checkpoint(tmp_path, seed):
    rng = random.Random(seed)
    bad = tmp_path / "noise.ckpt"
    bad.write_bytes(bytes(rng.getrandbits(8) for _ in range(rng.randint(10, 5000))).replace(b"\x80", b"\x00"))
    _resume_fails(bad, "not a file written by torch.save")
    zipped = tmp_path / "noise-zip.ckpt"  # random bytes behind a zip archive's first bytes
    zipped.write_bytes(b"PK\x03\x04" + bytes(rng.getrandbits(8) for _ in range(3000)))
    _resume_fails(zipped, "truncated")


def _payload_offsets(path) -> list[tuple[int, int]]:
    """(start, size) of every stored entry's data in a torch.save zip archive (after its local header)."""
    raw = path.read_bytes()
    spans = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            h = info.header_offset
            name_len, extra_len = struct.unpack("<HH", raw[h + 26 : h + 30])
            spans.append((h + 30 + name_len + extra_len, info.compress_size))
    return [span for span in spans if span[1] >= 16]


@pytest.mark.parametrize("which", [0, 1, -1])
def test_damaged_bytes_inside_a_checkpoint_are_found(tmp_path, checkpoint_file, which):
    """Bytes flipped inside a stored entry (the pickle, a tensor) fail the entry's checksum."""
    data = bytearray(checkpoint_file.read_bytes())
    start, size = _payload_offsets(checkpoint_file)[which]
    at = start + size // 2 - 8
    data[at : at + 16] = bytes(b ^ 0xFF for b in data[at : at + 16])
    bad = tmp_path / "damaged.ckpt"
    bad.write_bytes(bytes(data))
    _resume_fails(bad, "damaged")


@pytest.mark.parametrize(
    "content, held",
    [({"weights": torch.zeros(3)}, "a dict without 'format'"), (torch.zeros(3), "Tensor"), ([1, 2], "list")],
)
def test_a_torch_file_that_is_not_a_checkpoint(tmp_path, content, held):
    bad = tmp_path / "other.ckpt"
    torch.save(content, bad)
    _resume_fails(bad, "is not a sampler checkpoint", held)


# -- checkpoints with wrong contents -------------------------------------------------------------
def _nan_positions(p):
    p["state"]["particles"]["x"][0, 3, 1] = math.nan


def _inf_positions(p):
    p["state"]["weighted"]["x"][1, 0, 0] = math.inf


def _nan_log_weight(p):
    p["state"]["particles"]["log_weights"][0, 5] = math.nan


def _inf_log_z(p):
    p["state"]["particles"]["log_Z"][1] = math.inf


def _nan_time(p):
    p["state"]["t"][0] = math.nan


def _negative_count(p):
    p["state"]["counter"]["target_evals"] = -5


def _negative_stage_count(p):
    p["state"]["stats"][1]["grad_evals"] = -1


def _float_count(p):
    p["state"]["counter"]["nonfinite"] = 1.5


def _negative_k(p):
    p["state"]["k"] = -1


def _k_off_by_one(p):
    p["state"]["k"] += 1


def _fewer_particles(p):
    p["state"]["particles"]["x"] = p["state"]["particles"]["x"][:, :10]


def _log_weights_shape(p):
    p["state"]["particles"]["log_weights"] = p["state"]["particles"]["log_weights"][:, :10]


def _replicas_in_the_record(p):
    p["run"]["n_replicas"] = 3


def _dimension_in_the_record(p):
    p["run"]["dim"] = 5


def _missing_generator(p):
    del p["state"]["generator"]


def _missing_run_entry(p):
    del p["run"]["n_particles"]


def _missing_evaluation(p):
    del p["state"]["particles"]["evaluation"]["log_target"]


def _missing_stats_entry(p):
    del p["state"]["stats"][0]["ess"]


def _unknown_stats_entry(p):
    p["state"]["stats"][0]["surprise"] = 1


def _missing_state(p):
    del p["state"]


def _generator_size(p):
    p["state"]["generator"] = p["state"]["generator"][:100]


def _step_states(p):
    p["state"]["step_states"] = p["state"]["step_states"][:1]


def _wrong_type(p):
    p["state"]["particles"] = [1, 2, 3]


EDITS = [
    (_nan_positions, "state.particles.x (positions) holds NaN"),
    (_inf_positions, "state.weighted.x (positions) holds NaN or infinite"),
    (_nan_log_weight, "state.particles.log_weights holds NaN"),
    (_inf_log_z, "state.particles.log_Z holds NaN or infinite"),
    (_nan_time, "state.t (annealing times) holds NaN"),
    (_negative_count, "state.counter.target_evals must be a non-negative integer, got -5"),
    (_negative_stage_count, "state.stats[1].grad_evals must be a non-negative integer, got -1"),
    (_float_count, "state.counter.nonfinite must be a non-negative integer, got 1.5"),
    (_negative_k, "state.k must be a non-negative integer, got -1"),
    (_k_off_by_one, f"but state.stats holds {CHECKPOINT_K} records"),
    (_fewer_particles, "state.particles.x has shape (2, 10, 2) but 2×64×2"),
    (_log_weights_shape, "state.particles.log_weights has shape (2, 10) but 2×64 (R×N) expected"),
    (_replicas_in_the_record, "state.t has shape (2,) but 3"),
    (_dimension_in_the_record, "state.particles.x has shape (2, 64, 2) but 2×64×5"),
    (_missing_generator, "missing entry state.generator"),
    (_missing_run_entry, "missing entry run.n_particles"),
    (_missing_evaluation, "missing entry state.particles.evaluation.log_target"),
    (_missing_stats_entry, "missing entry state.stats[0].ess"),
    (_unknown_stats_entry, "state.stats[0] has unknown entries ['surprise']"),
    (_missing_state, "missing entry checkpoint.state"),
    (_generator_size, "state.generator is not a random generator's state"),
    (_step_states, "state.step_states holds 1 step states but the run has 2 steps"),
    (_wrong_type, "state.particles is a list, not a dict"),
]


@pytest.mark.parametrize("edit, says", EDITS, ids=[e.__name__.strip("_") for e, _ in EDITS])
def test_a_checkpoint_with_wrong_contents_is_refused(tmp_path, payload, edit, says):
    p = copy.deepcopy(payload)
    assert p["state"]["k"] == CHECKPOINT_K  # what the messages above expect
    edit(p)
    bad = tmp_path / "edited.ckpt"
    torch.save(p, bad)
    message = _resume_fails(bad, "is invalid", says)
    with pytest.raises(PersistenceError, match=re.escape(message)):
        read_checkpoint(bad)


def test_dead_particles_and_an_unedited_copy_are_accepted(tmp_path, payload):
    p = copy.deepcopy(payload)
    p["state"]["particles"]["log_weights"][0, :3] = -math.inf  # zero weight: allowed
    torch.save(p, tmp_path / "ok.ckpt")
    data = read_checkpoint(tmp_path / "ok.ckpt")
    assert data.step == CHECKPOINT_K and data.source == str(tmp_path / "ok.ckpt")


# -- a resume with other steps or options --------------------------------------------------------
def test_a_resume_with_other_steps_names_both(checkpoint_file):
    data = read_checkpoint(checkpoint_file)
    with pytest.raises(ConfigurationError) as info:
        check_resumable(data, sampler.get_target("gmm40"), ["Resample", "HMC"])
    message = str(info.value)
    assert "['Resample', 'MALA']" in message and "['Resample', 'HMC']" in message
    assert repr(str(checkpoint_file)) in message


def test_a_resume_with_other_options_is_refused(tmp_path):
    ck = tmp_path / "opts.ckpt"
    sampler.sample(
        "gmm40", n_particles=32, n_replicas=2, seed=0, n_steps=2, checkpoint=ck, checkpoint_every=1, progress=False
    )
    data = read_checkpoint(ck)
    assert data.run["metadata"]["build"]["options"] == {"n_steps": 2}
    check_options(data, sampler.method("smc", n_steps=2).options)  # the same: accepted
    check_options(data, None)  # unknown: nothing to compare
    with pytest.raises(ConfigurationError, match=r"n_steps: 2 in the checkpoint, 3 here") as info:
        check_options(data, sampler.method("smc", n_steps=3).options)
    assert repr(str(ck)) in str(info.value)
    target = sampler.get_target("gmm40")
    with pytest.raises(ConfigurationError, match="n_steps"):
        check_resumable(data, target, list(data.run["steps"]), options=sampler.method("smc", n_steps=3).options)


def test_recorded_effective_options_are_compared_key_by_key(tmp_path):
    target = sampler.get_target("gmm40")
    cfg = RunSettings.create(target, 8, 2, 0, None, None, False)
    ckpt = Checkpoint(tmp_path / "x.ckpt", 1, {"build": {"method": "smc", "options": {}}})
    record = run_record("smc", target, cfg, ckpt, ["MALA"], options={"kernel": "mala", "n_steps": (1, 2)})
    assert record["options"] == {"kernel": "mala", "n_steps": [1, 2]}
    data = CheckpointData(run=record, state={}, package_version="x")
    check_options(data, {"kernel": "mala", "n_steps": (1, 2)})
    with pytest.raises(ConfigurationError, match=r"kernel: \"mala\" in the checkpoint, \"hmc\" here"):
        check_options(data, {"kernel": "hmc", "n_steps": [1, 2]})
    with pytest.raises(ConfigurationError, match=r"thin: \(not set\) in the checkpoint, 2 here"):
        check_options(data, {"kernel": "mala", "n_steps": [1, 2], "thin": 2})
    assert "options" not in run_record("smc", target, cfg, ckpt, ["MALA"], options={"f": object()})


# -- saved results edited by hand ----------------------------------------------------------------
def _edited(result_file, tmp_path, edit):
    az = arviz()
    idata = az.from_netcdf(str(result_file))
    for group in idata.groups():
        getattr(idata, group).load()
    edit(idata)
    out = tmp_path / "edited.nc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata.to_netcdf(str(out))
    return out


def _drop(group, name):
    def edit(idata):
        if name is None:
            delattr(idata, group)
        else:
            del getattr(idata, group)[name]

    return edit


def _reshape(group, name, dims, shape):
    def edit(idata):
        import numpy as np

        getattr(idata, group)[name] = (dims, np.zeros(shape))

    return edit


def _set_attr(key, value):
    def edit(idata):
        idata.posterior.attrs[key] = value

    return edit


def _pop_attr(key):
    def edit(idata):
        idata.posterior.attrs.pop(key)

    return edit


NC_EDITS = [
    ("no-log-weight", _drop("sample_stats", "log_weight"), "missing variable sample_stats.log_weight"),
    ("no-weighted-x", _drop("sample_stats", "weighted_x"), "missing variable sample_stats.weighted_x"),
    ("no-log-z", _drop("sample_stats", "log_Z"), "missing variable sample_stats.log_Z"),
    ("no-t", _drop("sample_stats", "t"), "missing variable sample_stats.t"),
    ("no-counts", _drop("sample_stats", "target_evals"), "missing variable sample_stats.target_evals"),
    ("no-sample-stats", _drop("sample_stats", None), "missing group sample_stats"),
    (
        "log-weight-shape",
        _reshape("sample_stats", "log_weight", ("chain", "draw2"), (2, 5)),
        "variable sample_stats.log_weight has dimensions ('chain', 'draw2') but ('chain', 'draw') expected",
    ),
    (
        "t-shape",
        _reshape("sample_stats", "t", ("step",), (CHECKPOINT_K + 1,)),
        "variable sample_stats.t has dimensions ('step',) but ('chain', 'step') expected",
    ),
    (
        "counts-shape",
        _reshape("sample_stats", "grad_evals", ("chain",), (2,)),
        "variable sample_stats.grad_evals has dimensions ('chain',)",
    ),
    (
        "x-shape",
        _reshape("posterior", "x", ("chain", "draw"), (2, 64)),
        "variable posterior.x has dimensions ('chain', 'draw') but ('chain', 'draw', 'x_dim_0') expected",
    ),
    ("bad-json-options", _set_attr("options", "{not json"), "JSON attribute options is unreadable"),
    ("options-not-object", _set_attr("options", "[1, 2]"), "JSON attribute options holds a list, not a dict"),
    ("bad-json-models", _set_attr("models", '["flow"'), "JSON attribute models is unreadable"),
    ("bad-seed", _set_attr("seed", "seven"), "attribute seed is 'seven', not an integer"),
    ("bad-count", _set_attr("n_target_evals", "many"), "attribute n_target_evals is 'many', not a non-negative"),
    ("bad-version", _set_attr("sampler_format_version", "one"), "attribute sampler_format_version is 'one'"),
    ("no-options", _pop_attr("options"), "missing attribute options"),
    ("no-count", _pop_attr("n_grad_evals"), "missing attribute n_grad_evals"),
]


@pytest.mark.parametrize("edit, says", [e[1:] for e in NC_EDITS], ids=[e[0] for e in NC_EDITS])
def test_a_hand_edited_result_is_refused_naming_the_file(tmp_path, result_file, edit, says):
    bad = _edited(result_file, tmp_path, edit)
    with pytest.raises(PersistenceError) as info:
        sampler.load(bad)
    message = str(info.value)
    assert re.search(_names(bad), message) and says in message.replace(repr(str(bad)), "<file>"), message


def test_a_json_attribute_corrupted_in_place_is_refused(tmp_path, result_file):
    h5py = pytest.importorskip("h5py")
    bad = tmp_path / "inplace.nc"
    shutil.copy(result_file, bad)
    with h5py.File(bad, "a") as f:
        f["posterior"].attrs["options"] = "{'n_steps': 3"
    with pytest.raises(PersistenceError, match=_names(bad) + ".*JSON attribute options is unreadable"):
        sampler.load(bad)


@pytest.mark.parametrize("keep", [1, 100, 0.5, 0.99])
def test_a_truncated_result_says_it_is_truncated(tmp_path, result_file, keep):
    data = result_file.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    bad = tmp_path / "cut.nc"
    bad.write_bytes(data[:n])
    with pytest.raises(PersistenceError, match=_names(bad) + r".*is truncated \(\d+ (of \d+ )?bytes"):
        sampler.load(bad)


def test_random_bytes_are_not_a_result(tmp_path):
    rng = random.Random(0)
    bad = tmp_path / "noise.nc"
    bad.write_bytes(bytes(rng.getrandbits(8) for _ in range(4000)))
    with pytest.raises(PersistenceError, match=_names(bad) + ".*not a NetCDF-4"):
        sampler.load(bad)
    (tmp_path / "empty.nc").write_bytes(b"")
    with pytest.raises(PersistenceError, match=_names(tmp_path / "empty.nc") + ".*it is empty"):
        sampler.load(tmp_path / "empty.nc")


# -- the command line ----------------------------------------------------------------------------
@pytest.mark.parametrize("edit", ["no-log-weight", "bad-json-options", "bad-seed", "t-shape"])
def test_cli_diagnose_reports_a_bad_file_in_one_line(tmp_path, result_file, capsys, edit):
    bad = _edited(result_file, tmp_path, dict((e[0], e[1]) for e in NC_EDITS)[edit])
    assert main(["diagnose", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sampler: error: ") and str(bad) in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_diagnose_of_a_damaged_file_exits_without_traceback(tmp_path, result_file):
    h5py = pytest.importorskip("h5py")
    bad = tmp_path / "damaged.nc"
    shutil.copy(result_file, bad)
    with h5py.File(bad, "a") as f:
        f["posterior"].attrs["options"] = "{'n_steps': 3"
    proc = subprocess.run(
        [sys.executable, "-m", "sampler", "diagnose", str(bad)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("sampler: error: ") and str(bad) in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and "JSON attribute options is unreadable" in lines[-1]


# -- a result saved over an older one ------------------------------------------------------------
class Affine(torch.nn.Module):
    model_name = "test-affine"

    def __init__(self, dim: int = 2):
        super().__init__()
        self.dim = dim
        self.a = torch.nn.Parameter(torch.ones(dim))

    def model_config(self):
        return {"dim": self.dim}


class AffinePlugin:
    @sampler.hookimpl
    def sampler_register(self, registry):
        registry.add_model("test-affine", Affine)


class NotSavable:
    pass


@pytest.fixture
def small_result():
    return sampler.sample("gmm40", n_particles=32, n_replicas=2, seed=1, n_steps=1, progress=False)


def test_saving_over_a_result_with_models_leaves_no_stale_model(tmp_path, fresh_plugins, small_result):
    sampler.register_plugin(AffinePlugin(), name="affine-plugin")
    path = tmp_path / "run.nc"
    small_result.with_models({"flow": Affine(2), "extra": Affine(3)}).save(path)
    assert set(sampler.load(path).models) == {"flow", "extra"}
    small_result.save(path)  # no models
    assert sampler.load(path).models == {}
    assert not models_dir(path).exists()
    small_result.with_models({"other": Affine(4)}).save(path)
    back = sampler.load(path)
    assert set(back.models) == {"other"} and back.models["other"].dim == 4
    assert {f.name for f in models_dir(path).iterdir()} == {"other.json", "other.pt"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_a_failed_save_leaves_the_older_result_whole(tmp_path, fresh_plugins, small_result):
    sampler.register_plugin(AffinePlugin(), name="affine-plugin")
    path = tmp_path / "run.nc"
    small_result.with_models({"flow": Affine(2)}).save(path)
    before = path.read_bytes()
    with pytest.raises(PersistenceError, match="cannot be saved"):
        small_result.with_models({"flow": Affine(3), "bad": NotSavable()}).save(path)
    assert path.read_bytes() == before
    assert sampler.load(path).models["flow"].dim == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.models", "run.nc"]


def test_broken_model_files_name_the_file(tmp_path, fresh_plugins, small_result):
    sampler.register_plugin(AffinePlugin(), name="affine-plugin")
    path = tmp_path / "run.nc"
    small_result.with_models({"flow": Affine(2)}).save(path)
    config, weights = models_dir(path) / "flow.json", models_dir(path) / "flow.pt"
    good_weights = weights.read_bytes()
    weights.write_bytes(good_weights[:100])
    with pytest.raises(PersistenceError, match=_names(weights) + ".*truncated"):
        sampler.load(path)
    torch.save({"a": torch.ones(7)}, weights)
    with pytest.raises(PersistenceError, match=_names(weights) + " does not fit model 'flow'"):
        sampler.load(path)
    weights.write_bytes(good_weights)
    config.write_text('["not", "a", "config"]')
    with pytest.raises(PersistenceError, match=_names(config) + " is not a model config"):
        load_models(models_dir(path))
    config.write_text('{"format_version": 1, "model": "no-such-model", "config": {}}')
    with pytest.raises(PersistenceError, match=_names(config) + " needs a model no installed plugin provides"):
        sampler.load(path)
    config.write_text('{"format_version": 1, "model": "test-affine", "config": {"size": 2}}')
    with pytest.raises(PersistenceError, match=_names(config) + ": model 'test-affine' cannot be rebuilt"):
        sampler.load(path)


# -- concurrent writers --------------------------------------------------------------------------
def test_concurrent_checkpoint_writers_both_succeed(tmp_path, payload):
    path = tmp_path / "shared.ckpt"
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        state = copy.deepcopy(payload["state"])
        state["elapsed"] = float(seed)
        try:
            start.wait()
            for _ in range(40):
                write_checkpoint(path, payload["run"], state)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    data = read_checkpoint(path)
    assert data.step == CHECKPOINT_K and data.state["elapsed"] in (0.0, 1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["shared.ckpt"]  # no temporary file left


def test_concurrent_result_writers_both_succeed(tmp_path, small_result):
    path = tmp_path / "shared.nc"
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            start.wait()
            for _ in range(5):
                small_result.save(path)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert torch.equal(sampler.load(path).samples, small_result.samples)
    assert [p.name for p in tmp_path.iterdir()] == ["shared.nc"]


def test_a_failed_checkpoint_write_leaves_the_older_one_and_no_temporary(tmp_path, payload):
    path = tmp_path / "run.ckpt"
    write_checkpoint(path, payload["run"], payload["state"])
    before = path.read_bytes()
    with pytest.raises(Exception):
        write_checkpoint(path, payload["run"], {**payload["state"], "bad": lambda: None})  # cannot be pickled
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]
