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
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    """

    run: Mapping[str, Any]
    state: Mapping[str, Any]
    package_version: str

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


def run_record(name: str, target: Any, cfg: Any, ckpt: Checkpoint, steps: list[str]) -> dict[str, Any]:
    """What a checkpoint records about a run: its name, target, settings and step classes.

    ``cfg`` is the run's :class:`~sampler.engine.RunSettings`; ``steps`` names the classes of
    its steps, checked on resume. How to rebuild the runner is the caller's business and goes
    in ``ckpt.metadata`` (:func:`sampler.sample` records the method name and its options there
    as ``"build"``).
    """
    return {
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


def check_resumable(data: CheckpointData, target: Any, steps: list[str]) -> None:
    """Raise :class:`ConfigurationError` unless ``target`` and ``steps`` are those the run started with."""
    run = data.run
    if (target.name, target.dim) != (run["target"], run["dim"]):
        raise ConfigurationError(
            f"the checkpoint is of a run on target {run['target']!r} (d={run['dim']}), not {target.name!r} (d={target.dim})"
        )
    if list(steps) != list(run["steps"]):
        raise ConfigurationError(f"the checkpoint was written by a run with steps {run['steps']}, not {list(steps)}")


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


def write_checkpoint(path: Path, run: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Write a checkpoint atomically (a temporary file renamed over ``path``)."""

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "run": dict(run),
        "state": dict(state),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_plain(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain data, never code.

    Anything else (a pickled object, a corrupt file) raises :class:`PersistenceError` saying
    the file is not ``what``.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PersistenceError(
            f"refused to load {str(path)!r}: it is not {what} (loading accepts tensors and plain data only and never runs "
            f"code from a file): {first}"
        ) from None


def read_checkpoint(path: str | os.PathLike) -> CheckpointData:
    """Read a checkpoint written by :func:`write_checkpoint`, never executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise PersistenceError(f"checkpoint {str(path)!r} does not exist")
    payload = load_plain(path, "a readable sampler checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PersistenceError(f"{str(path)!r} is not a sampler checkpoint")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise PersistenceError(
            f"{str(path)!r} was written by sampler-engine {payload.get('package_version', '?')} in checkpoint format "
            f"{version}; this version reads format {FORMAT_VERSION}. Resume it with that version."
        )
    return CheckpointData(
        run=payload["run"], state=payload["state"], package_version=str(payload.get("package_version", "?"))
    )
