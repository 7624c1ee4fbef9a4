"""Checkpoints of annealing runs: write every K stages and on Ctrl-C, resume bit for bit.

A checkpoint holds the state at the end of a stage: particles (positions, weights, log Z,
cached evaluations, extras), the per-replica times, the particles of replicas that already
reached t = 1, every step's adapted state, the random generator's state, the evaluation counts
and the per-stage statistics so far. Resuming with the same pipeline continues from there and
gives exactly the result of an uninterrupted run (same seed, same device).

The file is a ``torch.save`` archive of tensors, numbers, strings, lists and dicts only, read
with ``torch.load(..., weights_only=True)``: loading it never runs code. Step states are
stored as trees of tensors (attrs classes and ``nn.Module`` become dicts of their fields or
``state_dict``); on resume each tree is poured back into a fresh state of the right type made
by the step's own ``init``, so no class name from the file is ever imported.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import attrs
import torch
from torch import Tensor

from sampler._version import __version__
from sampler.core.result import StepStats
from sampler.errors import ConfigurationError, PersistenceError

__all__ = [
    "Checkpoint",
    "CheckpointData",
    "state_to_tree",
    "tree_to_state",
    "run_record",
    "build_metadata",
    "check_resumable",
    "check_options",
    "counter_tree",
    "restore_counter",
    "stats_from_tree",
    "write_checkpoint",
    "read_checkpoint",
    "load_plain",
]

#: Identifies checkpoint files; bumped when the layout changes incompatibly.
FORMAT = "sampler-checkpoint"
FORMAT_VERSION = 2


@attrs.frozen
class Checkpoint:
    """Where and how often a run saves its state.

    Attributes:
        path: the checkpoint file (written atomically: a partial file never replaces a good one).
        every: write after every ``every`` stages; ``None`` writes only when the run is
            interrupted (Ctrl-C).
        metadata: JSON-serializable facts about the run that its caller needs to resume it
            (the command line records the target spec and options here).
    """

    path: Path = attrs.field(converter=Path)
    every: int | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.every is not None and (
            isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1
        ):
            raise ConfigurationError(f"checkpoint_every must be a positive integer, got {self.every!r}")
        try:
            json.dumps(dict(self.metadata))
        except TypeError as exc:
            raise ConfigurationError(f"checkpoint metadata must be JSON-serializable: {exc}") from None

    @classmethod
    def create(cls, checkpoint: Checkpoint | str | os.PathLike | None, every: int | None = None) -> Checkpoint | None:
        """Normalize the ``checkpoint=``/``checkpoint_every=`` arguments of the run functions."""
        if checkpoint is None:
            if every is not None:
                raise ConfigurationError("checkpoint_every needs a checkpoint path (checkpoint='run.ckpt')")
            return None
        if isinstance(checkpoint, Checkpoint):
            return checkpoint if every is None else attrs.evolve(checkpoint, every=every)
        return cls(checkpoint, every)


@attrs.frozen
class CheckpointData:
    """The content of a checkpoint file.

    Attributes:
        run: how the run was started (:func:`run_record`): ``method``, ``target`` (name) and
            ``dim``, ``n_particles``, ``n_replicas``, ``seed``, ``device``, ``dtype``,
            ``steps`` (the step classes, to check the resumed runner is the same), the file
            ``path``, ``every``, and the caller's ``metadata``.
        state: the loop state at the end of stage ``state["k"]`` (tensors on the CPU).
        package_version: the sampler-engine version that wrote it.
        source: the file it was read from (``None`` when made in memory), for messages.
    """

    run: Mapping[str, Any]
    state: Mapping[str, Any]
    package_version: str
    source: str | None = None

    @property
    def step(self) -> int:
        """The number of completed stages."""
        return int(self.state["k"])


def state_to_tree(obj: Any, where: str = "state") -> Any:
    """A step's state as a tree of tensors, numbers, strings, lists and dicts (for the file).

    attrs instances become dicts of their fields and ``nn.Module`` s their ``state_dict``;
    anything else that is not plain data raises :class:`PersistenceError` naming ``where``.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, torch.nn.Module):
        return {k: v.detach().to("cpu") for k, v in obj.state_dict().items()}
    if attrs.has(type(obj)):
        return {f.name: state_to_tree(getattr(obj, f.name), f"{where}.{f.name}") for f in attrs.fields(type(obj))}
    if isinstance(obj, Mapping):
        if not all(isinstance(k, str) for k in obj):
            raise PersistenceError(f"{where}: dict keys must be strings to be checkpointed, got {list(obj)!r}")
        return {k: state_to_tree(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [state_to_tree(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise PersistenceError(
        f"{where} is a {type(obj).__name__}, which cannot be checkpointed; a step's state must be made of tensors, "
        "numbers, strings, lists, dicts, attrs classes and nn.Modules"
    )


def tree_to_state(tree: Any, template: Any, device: torch.device) -> Any:
    """Pour ``tree`` (from :func:`state_to_tree`) back into the shape of ``template``.

    ``template`` is a fresh state of the right type (from the step's ``init``); tensors go to
    ``device`` (or the template tensor's device) keeping the saved dtype and values.
    """
    if isinstance(tree, Tensor):
        return tree.to(template.device if isinstance(template, Tensor) else device)
    if isinstance(template, torch.nn.Module):
        template.load_state_dict({k: v.to(device) for k, v in tree.items()})
        return template
    if template is not None and attrs.has(type(template)):
        fields = {
            f.name: tree_to_state(tree[f.name], getattr(template, f.name), device)
            for f in attrs.fields(type(template))
            if f.init
        }
        return attrs.evolve(template, **fields)
    if isinstance(tree, dict):
        sub = template if isinstance(template, Mapping) else {}
        return {k: tree_to_state(v, sub.get(k), device) for k, v in tree.items()}
    if isinstance(tree, list):
        items = list(template) if isinstance(template, (list, tuple)) else []
        out = [
            tree_to_state(v, items[i] if i < len(items) else (items[0] if items else None), device)
            for i, v in enumerate(tree)
        ]
        return tuple(out) if isinstance(template, tuple) else out
    return tree


def run_record(
    name: str,
    target: Any,
    cfg: Any,
    ckpt: Checkpoint,
    steps: list[str],
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a checkpoint records about a run: its name, target, settings and step classes.

    ``cfg`` is the run's :class:`~sampler.engine.RunSettings`; ``steps`` names the classes of
    its steps, checked on resume. How to rebuild the runner is the caller's business and goes
    in ``ckpt.metadata`` (:func:`sampler.sample` records the method name and its options there
    as ``"build"``). ``options``, the runner's effective options (defaults filled in), are
    recorded as ``"options"`` when given and JSON-serializable; :func:`check_options` compares
    them with the resuming runner's.
    """
    record = {
        "method": name,
        "target": target.name,
        "dim": int(target.dim),
        "n_particles": cfg.n_particles,
        "n_replicas": cfg.n_replicas,
        "seed": cfg.seed,
        "device": str(cfg.device),
        "dtype": str(cfg.dtype).removeprefix("torch."),
        "steps": list(steps),
        "path": str(ckpt.path),
        "every": ckpt.every,
        "metadata": dict(ckpt.metadata),
    }
    plain = _plain_json(options)
    if plain is not None:
        record["options"] = plain
    return record


def _plain_json(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``options`` as JSON would give them back (tuples become lists), or ``None`` if they are not JSON."""
    if options is None:
        return None
    try:
        plain = json.loads(json.dumps(dict(options)))
    except (TypeError, ValueError):
        return None
    return plain if isinstance(plain, dict) else None


def build_metadata(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``{"build": {"method", "options"}}``: how :func:`sampler.resume` rebuilds the runner.

    Empty when the options are not JSON-serializable (objects such as schedules): such a run
    resumes through its runner's own ``resume`` method.
    """
    try:
        json.dumps(dict(options))
    except TypeError:
        return {}
    return {"build": {"method": method, "options": dict(options)}}


def _which(data: CheckpointData) -> str:
    return "the checkpoint" if data.source is None else f"the checkpoint {data.source!r}"


def check_resumable(
    data: CheckpointData, target: Any, steps: list[str], options: Mapping[str, Any] | None = None
) -> None:
    """Raise :class:`ConfigurationError` unless ``target``, ``steps`` (and ``options``) are the run's.

    ``steps`` are the class names of the resuming runner's steps; ``options``, when given, its
    effective options (see :func:`check_options`).
    """
    run = data.run
    if (target.name, target.dim) != (run["target"], run["dim"]):
        raise ConfigurationError(
            f"{_which(data)} is of a run on target {run['target']!r} (d={run['dim']}), "
            f"not {target.name!r} (d={target.dim})"
        )
    if list(steps) != list(run["steps"]):
        raise ConfigurationError(
            f"{_which(data)} was written by a run with steps {list(run['steps'])}, but this runner has steps "
            f"{list(steps)}"
        )
    check_options(data, options)


_ABSENT = object()


def check_options(data: CheckpointData, options: Mapping[str, Any] | None) -> None:
    """Raise :class:`ConfigurationError` if the run was made with options other than ``options``.

    ``options`` are the resuming runner's effective options (``runner.options``). They are
    compared with the effective options the run recorded (``run["options"]``, see
    :func:`run_record`), every key; failing those, with the options the run was built with
    (``metadata["build"]["options"]``, only the keys given there), on the keys both have.
    Nothing is checked when either side is unknown: ``options`` is ``None`` or not
    JSON-serializable, or the checkpoint records neither.
    """
    mine = _plain_json(options)
    if mine is None:
        return
    run = data.run
    recorded = run.get("options")
    metadata = run.get("metadata")
    build = metadata.get("build") if isinstance(metadata, Mapping) else None
    if isinstance(recorded, Mapping):
        theirs, keys = dict(recorded), set(recorded) | set(mine)
    elif isinstance(build, Mapping) and isinstance(build.get("options"), Mapping):
        theirs = dict(build["options"])
        keys = set(theirs) & set(mine)
    else:
        return

    def shown(value: Any) -> str:
        return "(not set)" if value is _ABSENT else json.dumps(value, sort_keys=True)

    differ = [
        f"{key}: {shown(theirs.get(key, _ABSENT))} in the checkpoint, {shown(mine.get(key, _ABSENT))} here"
        for key in sorted(keys)
        if shown(theirs.get(key, _ABSENT)) != shown(mine.get(key, _ABSENT))
    ]
    if differ:
        raise ConfigurationError(
            f"{_which(data)} was written by a run with other options than this runner's ({'; '.join(differ)}); "
            "resume it with a runner built with the checkpoint's options (sampler.resume rebuilds it)"
        )


def counter_tree(counter: Any) -> dict[str, int]:
    """An :class:`~sampler.core.paths.EvaluationCounter` as plain numbers."""
    return {"target_evals": counter.target_evals, "grad_evals": counter.grad_evals, "nonfinite": counter.nonfinite}


def restore_counter(counter: Any, tree: Mapping[str, int]) -> None:
    """Set a fresh evaluation counter to the saved counts."""
    counter.target_evals, counter.grad_evals = int(tree["target_evals"]), int(tree["grad_evals"])
    counter.add_nonfinite(int(tree["nonfinite"]))


def stats_from_tree(trees: list[Mapping[str, Any]], device: torch.device) -> list[Any]:
    """Per-stage statistics (:class:`~sampler.core.result.StepStats`) from their saved trees."""

    def moved(s: Mapping[str, Any]) -> dict[str, Any]:
        tensors = {k: s[k].to(device) for k in ("t", "ess", "log_Z_increment")}
        return {**s, **tensors, "info": {k: v.to(device) for k, v in s["info"].items()}}

    return [StepStats(**moved(s)) for s in trees]


# -- files -------------------------------------------------------------------------------------
def sibling_temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (same directory, so ``os.replace`` is atomic).

    Unique per writer (process id and a random suffix): writers of the same file never share
    a temporary file, so concurrent writers each replace ``path`` with a complete file.
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")


def write_checkpoint(path: Path, run: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Write a checkpoint atomically: a temporary file of this writer's own, flushed, renamed over ``path``.

    A reader never sees a partial file, and if the write fails the temporary file is removed
    and the previous checkpoint (if any) is left as it was.
    """

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "run": dict(run),
        "state": dict(state),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_temp_path(path)
    try:
        with open(tmp, "xb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_ZIP = b"PK\x03\x04"  # torch.save writes a zip archive
_PICKLE = b"\x80"  # a pickle (protocol 2 or later): torch's legacy format, or arbitrary objects


def _damage(path: Path, what: str) -> str | None:
    """Why the file at ``path`` cannot be ``what`` before even parsing it (empty, truncated, failed
    checksums), or ``None``. Files that are not zip archives are left to ``torch.load``."""
    name = str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(max(0, size - 65_557))  # the end-of-archive record: 22 bytes and a comment of up to 64 KiB
            tail = f.read()
    except OSError as err:
        return f"{name!r} cannot be read: {err.strerror or err}"
    if size == 0:
        return f"{name!r} is empty (0 bytes): it is not {what}; nothing was written to it"
    if len(head) < len(_ZIP) and _ZIP.startswith(head):
        return f"{name!r} is truncated ({size} bytes): it is not {what}; the file was not completely written or copied"
    if head != _ZIP:
        return None
    end = tail.rfind(b"PK\x05\x06")
    comment = int.from_bytes(tail[end + 20 : end + 22], "little") if end >= 0 and end + 22 <= len(tail) else -1
    if comment < 0 or end + 22 + comment > len(tail):
        return (
            f"{name!r} is truncated ({size} bytes, the end of the archive is missing): it is not {what}; "
            "the file was not completely written or copied"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
        return f"{name!r} is damaged ({type(exc).__name__}: {exc}): it is not {what}"
    if bad is not None:
        return f"{name!r} is damaged (its part {bad!r} fails its checksum): it is not {what}"
    return None


def _unreadable(path: Path, what: str, exc: BaseException) -> str:
    """Why ``torch.load`` could not read ``path`` (after :func:`_damage` found nothing wrong)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # torch's own explanation follows advice we do not want repeated
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0][:300] if lines else type(exc).__name__
    name = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"{name!r} cannot be read: {err.strerror or err}"
    if head.startswith(_PICKLE):
        return (
            f"refused to load {name!r}: it is not {what} (loading accepts tensors and plain data only and never "
            f"runs code from a file): {first}"
        )
    if head == _ZIP:
        return f"{name!r} is not {what}: {first}"
    return f"{name!r} is not {what}: it is not a file written by torch.save"


def load_plain(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain data, never code.

    Anything else (a pickled object, an empty, truncated, damaged or foreign file) raises
    :class:`PersistenceError` naming the file and saying what is wrong with it. The archive's
    checksums are verified first, so damaged bytes are found even where ``torch.load`` would
    read them without complaint.
    """
    path = Path(path)
    problem = _damage(path, what)
    if problem is not None:
        raise PersistenceError(problem)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises anything from RuntimeError to IndexError on a damaged file
        raise PersistenceError(_unreadable(path, what, exc)) from None


def read_checkpoint(path: str | os.PathLike) -> CheckpointData:
    """Read a checkpoint written by :func:`write_checkpoint`, never executing code from it.

    The content is checked before anything uses it (:class:`PersistenceError` naming the file
    and what is wrong): the keys of the run record and of the state, their types, the shapes
    of the particles against the recorded R, N and d, finite positions, log Z and times, log
    weights without NaN, non-negative counts, one record per completed iteration.
    """
    path = Path(path)
    if not path.is_file():
        raise PersistenceError(f"checkpoint {str(path)!r} does not exist")
    payload = load_plain(path, "a readable sampler checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        held = "a dict without 'format': 'sampler-checkpoint'" if isinstance(payload, dict) else type(payload).__name__
        raise PersistenceError(f"{str(path)!r} is not a sampler checkpoint (the file holds {held})")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise PersistenceError(
            f"{str(path)!r} was written by sampler-engine {payload.get('package_version', '?')} in checkpoint format "
            f"{version}; this version reads format {FORMAT_VERSION}. Resume it with that version."
        )
    _Validator(path).payload(payload)
    return CheckpointData(
        run=payload["run"],
        state=payload["state"],
        package_version=str(payload.get("package_version", "?")),
        source=str(path),
    )


_RUN_KEYS: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "target": (str,),
    "dim": (int,),
    "n_particles": (int,),
    "n_replicas": (int,),
    "device": (str,),
    "dtype": (str,),
    "steps": (list,),
    "path": (str,),
    "metadata": (dict,),
}
_STATE_KEYS = ("k", "t", "particles", "weighted", "step_states", "aux", "stats", "counter", "generator", "elapsed")
_STATS_KEYS = frozenset(("step", "t", "ess", "log_Z_increment", "target_evals", "grad_evals", "nonfinite", "info"))
_COUNTS = ("target_evals", "grad_evals", "nonfinite")


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(n) for n in shape) if shape else "a scalar"


class _Validator:
    """Checks a checkpoint's payload; every failure names the file, the entry and what is wrong."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, what: str) -> NoReturn:
        raise PersistenceError(f"checkpoint {str(self.path)!r} is invalid: {what}")

    def entry(self, tree: Mapping[str, Any], key: str, where: str, types: tuple[type, ...] = ()) -> Any:
        if key not in tree:
            self.fail(f"missing entry {where}.{key}")
        value = tree[key]
        if types and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            kinds = " or ".join(t.__name__ for t in types)
            self.fail(f"{where}.{key} is a {type(value).__name__}, not a {kinds}")
        return value

    def count(self, value: Any, where: str, minimum: int = 0) -> int:
        """A non-negative (or ``>= minimum``) integer: a Python int or a 0-d integer tensor."""
        if isinstance(value, Tensor) and value.ndim == 0 and not value.is_floating_point() and not value.is_complex():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            need = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
            self.fail(f"{where} must be {need}, got {value!r}")
        return value

    def tensor(
        self,
        value: Any,
        where: str,
        shape: tuple[int, ...] | None = None,
        meaning: str = "",
        dtype: torch.dtype | None = None,
        floating: bool = True,
    ) -> Tensor:
        if not isinstance(value, Tensor):
            self.fail(f"{where} is a {type(value).__name__}, not a tensor")
        if shape is not None and tuple(value.shape) != shape:
            self.fail(f"{where} has shape {tuple(value.shape)} but {_shape(shape)}{meaning} expected")
        if dtype is not None and value.dtype != dtype:
            self.fail(f"{where} is {str(value.dtype).removeprefix('torch.')}, not {str(dtype).removeprefix('torch.')}")
        if floating and not value.is_floating_point():
            self.fail(f"{where} is {str(value.dtype).removeprefix('torch.')}, not a floating-point tensor")
        return value

    def values(self, t: Tensor, where: str, allow: str) -> None:
        """``allow``: ``"finite"``, or ``"-inf"`` (finite or -inf: no NaN, no +inf)."""
        if allow == "finite":
            if not bool(torch.isfinite(t).all()):
                self.fail(f"{where} holds NaN or infinite values")
        elif bool(torch.isnan(t).any()) or bool((t == math.inf).any()):
            self.fail(f"{where} holds NaN or +inf values (only -inf, a zero weight or density, is allowed)")

    # -- the parts ---------------------------------------------------------------------------
    def payload(self, payload: Mapping[str, Any]) -> None:
        run = self.entry(payload, "run", "checkpoint", (dict,))
        state = self.entry(payload, "state", "checkpoint", (dict,))
        dims = self.run(run)
        self.state(state, run, *dims)

    def run(self, run: Mapping[str, Any]) -> tuple[int, int, int]:
        for key, types in _RUN_KEYS.items():
            self.entry(run, key, "run", types)
        r = self.count(run["n_replicas"], "run.n_replicas", 1)
        n = self.count(run["n_particles"], "run.n_particles", 1)
        d = self.count(run["dim"], "run.dim", 1)
        if not all(isinstance(s, str) for s in run["steps"]):
            self.fail(f"run.steps must be a list of step class names, got {run['steps']!r}")
        if not isinstance(getattr(torch, run["dtype"], None), torch.dtype):
            self.fail(f"run.dtype {run['dtype']!r} is not a torch dtype")
        seed = run.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            self.fail(f"run.seed must be an integer, got {seed!r}")
        if run.get("every") is not None:
            self.count(run["every"], "run.every", 1)
        if not isinstance(run.get("options", {}), dict):
            self.fail(f"run.options is a {type(run['options']).__name__}, not a dict")
        build = run["metadata"].get("build")
        if build is not None:
            if not isinstance(build, dict):
                self.fail(f"run.metadata.build is a {type(build).__name__}, not a dict")
            self.entry(build, "method", "run.metadata.build", (str,))
            self.entry(build, "options", "run.metadata.build", (dict,))
        return r, n, d

    def state(self, state: Mapping[str, Any], run: Mapping[str, Any], r: int, n: int, d: int) -> None:
        for key in _STATE_KEYS:
            self.entry(state, key, "state")
        k = self.count(state["k"], "state.k")
        t = self.tensor(state["t"], "state.t", (r,), " (R, one time per replica)", torch.float64)
        self.values(t, "state.t (annealing times)", "finite")
        if bool((t < 0).any()) or bool((t > 1).any()):
            self.fail(f"state.t (annealing times) must lie in [0, 1], got {t.tolist()}")
        m = self.particles(state["particles"], "state.particles", r, n, d)
        self.particles(state["weighted"], "state.weighted", r, m, d)
        steps = self.entry(state, "step_states", "state", (list,))
        if len(steps) != len(run["steps"]):
            self.fail(f"state.step_states holds {len(steps)} step states but the run has {len(run['steps'])} steps")
        self.entry(state, "aux", "state", (dict,))
        stats = self.entry(state, "stats", "state", (list,))
        if len(stats) != k:
            self.fail(f"state.k is {k} but state.stats holds {len(stats)} records (one per completed iteration)")
        for i, record in enumerate(stats):
            self.stats(record, f"state.stats[{i}]", r)
        counter = self.entry(state, "counter", "state", (dict,))
        for key in _COUNTS:
            self.count(self.entry(counter, key, "state.counter"), f"state.counter.{key}")
        gen = self.tensor(state["generator"], "state.generator", dtype=torch.uint8, floating=False)
        if gen.ndim != 1 or gen.numel() == 0:
            self.fail(f"state.generator has shape {tuple(gen.shape)}, not that of a random generator's state")
        if str(run["device"]) == "cpu":
            try:
                torch.Generator().set_state(gen.clone())
            except (RuntimeError, ValueError) as exc:
                self.fail(f"state.generator is not a random generator's state ({exc})")
        elapsed = self.entry(state, "elapsed", "state", (float, int))
        if not math.isfinite(elapsed) or elapsed < 0:
            self.fail(f"state.elapsed must be a non-negative number of seconds, got {elapsed!r}")
        if "streams" in state:
            self.count(state["streams"], "state.streams")

    def particles(self, tree: Any, where: str, r: int, n: int, d: int) -> int:
        """Checks one particle set; returns its number of particles per replica.

        ``n`` particles per replica, or one (MCMC chains keep one current point per chain).
        """
        if not isinstance(tree, dict):
            self.fail(f"{where} is a {type(tree).__name__}, not a dict")
        for key in ("x", "log_weights", "log_Z", "evaluation", "extras"):
            self.entry(tree, key, where)
        x = self.tensor(tree["x"], f"{where}.x")
        if x.ndim != 3 or x.shape[0] != r or x.shape[2] != d or x.shape[1] not in (n, 1):
            self.fail(
                f"{where}.x has shape {tuple(x.shape)} but {_shape((r, n, d))} (R×N×d, from the run record) expected"
            )
        m = int(x.shape[1])
        self.values(x, f"{where}.x (positions)", "finite")
        lw = self.tensor(tree["log_weights"], f"{where}.log_weights", (r, m), " (R×N)", torch.float64)
        self.values(lw, f"{where}.log_weights", "-inf")
        log_z = self.tensor(tree["log_Z"], f"{where}.log_Z", (r,), " (R)", torch.float64)
        self.values(log_z, f"{where}.log_Z", "finite")
        ev = self.entry(tree, "evaluation", where, (dict,))
        for key in ("log_ref", "log_target"):
            value = self.tensor(
                self.entry(ev, key, f"{where}.evaluation"), f"{where}.evaluation.{key}", (r, m), " (R×N)"
            )
            self.values(value, f"{where}.evaluation.{key}", "-inf")
        for key in ("grad_ref", "grad_target"):
            if ev.get(key) is not None:
                grad = self.tensor(ev[key], f"{where}.evaluation.{key}", (r, m, d), " (R×N×d)")
                self.values(grad, f"{where}.evaluation.{key}", "finite")
        extras = self.entry(tree, "extras", where, (dict,))
        for key, value in extras.items():
            extra = self.tensor(value, f"{where}.extras[{key!r}]", floating=False)
            if tuple(extra.shape[:2]) != (r, m):
                self.fail(f"{where}.extras[{key!r}] has shape {tuple(extra.shape)} but {_shape((r, m))}×... expected")
        return m

    def stats(self, record: Any, where: str, r: int) -> None:
        if not isinstance(record, dict):
            self.fail(f"{where} is a {type(record).__name__}, not a dict")
        missing, extra = sorted(_STATS_KEYS - set(record)), sorted(set(record) - _STATS_KEYS)
        if missing:
            self.fail(f"missing entry {where}.{missing[0]}")
        if extra:
            self.fail(f"{where} has unknown entries {extra}")
        self.count(record["step"], f"{where}.step")
        for key in ("t", "ess", "log_Z_increment"):
            self.tensor(record[key], f"{where}.{key}", (r,), " (R)")
        for key in _COUNTS:
            self.count(record[key], f"{where}.{key}")
        info = self.entry(record, "info", where, (dict,))
        for key, value in info.items():
            self.tensor(value, f"{where}.info[{key!r}]", floating=False)
