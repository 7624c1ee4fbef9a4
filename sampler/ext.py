"""The plugin-author surface: everything a method, step, target or estimator plugin may import.

Built-in plugins (``sampler_plugins.*``) import only this module, :mod:`sampler.errors` and the
top-level ``sampler`` names, and CI checks it (an import-linter contract in ``pyproject.toml``),
so the core can be reorganised without breaking a plugin. A third-party plugin should do the
same. docs/tutorials/plugin.md walks through writing one; docs/concepts.md shows where each
name lives.

What is here, by what a plugin does with it:

* **Targets**: :class:`Target`, :class:`BoltzmannTarget`, :func:`as_target`.
* **Particles and paths**: :class:`Particles` (``(R, N, d)`` positions, ``(R, N)`` float64 log
  weights), :func:`ess`, :class:`GeometricPath`, :class:`GaussianReference`,
  :class:`PathEvaluation`, :class:`EvaluationCounter`; :func:`sanitized` (a target's values made
  harmless, side-effect free, for kernels that evaluate the target in a compiled step).
* **Steps**: :class:`Transport`, :class:`Corrector` (subclass one), :class:`StepContext`,
  :class:`StepOutput`; :func:`corrector`, :func:`transport` build registered ones by name.
* **Schedules and resampling**: :class:`Schedule` and the built-in schedules,
  :func:`conditional_ess`, :func:`get_scheme`, :func:`systematic`.
* **Runners** (what a method builder returns): :class:`Runner`, :class:`Capabilities`,
  :class:`RunSettings`, :class:`Result` (build it with :meth:`Result.from_run`),
  :class:`StepStats` (:class:`StepBlock` for many iterations at once); :class:`Pipeline` to
  compose steps on a schedule; :class:`Loop`, :class:`LoopState`, :class:`Session`,
  :func:`apply_steps`, :func:`record`, :func:`reopen`, :class:`Checkpoint` and
  :class:`CheckpointData` to run an iteration loop with the engine's checkpoints, Ctrl-C
  handling and progress; :func:`make_reference`, :func:`initial_particles`; :func:`method`
  builds another registered method (a source run).
* **Training across processes**: :func:`world_size`, :func:`is_main_process`, :func:`agree`,
  :func:`rank_seed`, :func:`local_batch`, :func:`all_reduce_sum`, :func:`sum_gradients`,
  :func:`broadcast_parameters`, :func:`replicated_sampling`.
* **Metrics** a plugin may reuse: :func:`slicing_constant`, :func:`random_directions`,
  :func:`projected_energy_distances`, :func:`nearest_mode`.
* **Reproducibility**: :func:`seeded_init` (build networks whose initial weights depend on a
  seed only, leaving torch's global generator as it was), :func:`derived_seed` (independent
  seeds from the run's seed).
* **Progress**: :func:`progress_bar`.
* **Errors and checks**: the :mod:`sampler.errors` types most plugins raise, and
  :func:`check_positive_int`.
"""

from __future__ import annotations

from sampler.analysis.metrics import nearest_mode, projected_energy_distances, random_directions, slicing_constant
from sampler.core.particles import Particles, ess, random_halves
from sampler.core.paths import EvaluationCounter, GaussianReference, GeometricPath, PathEvaluation, sanitized
from sampler.core.records import StepBlock
from sampler.core.resampling import get_scheme, systematic
from sampler.core.result import Result, StepStats
from sampler.core.runner import Capabilities, Runner
from sampler.core.schedules import Adaptive, Fixed, Geometric, Linear, Power, Schedule, conditional_ess
from sampler.core.seeding import derived_seed, seeded_init
from sampler.core.settings import RunSettings
from sampler.core.steps import Corrector, Step, StepContext, StepOutput, Transport
from sampler.engine.distributed import (
    agree,
    all_reduce_sum,
    broadcast_parameters,
    is_main_process,
    local_batch,
    rank_seed,
    replicated_sampling,
    sum_gradients,
    world_size,
)
from sampler.engine.loop import Loop, LoopState, Session, apply_steps, record, reopen
from sampler.engine.pipeline import Pipeline, initial_particles, make_reference
from sampler.engine.progress import progress_bar
from sampler.errors import (
    ConfigurationError,
    Interrupted,
    PersistenceError,
    RunError,
    SamplerError,
    TargetError,
    check_positive_int,
)
from sampler.host.building import corrector, method, transport
from sampler.host.hookspecs import hookimpl
from sampler.io.checkpoint import Checkpoint, CheckpointData
from sampler.targets.base import BoltzmannTarget, Target, as_target

__all__ = [
    "derived_seed",
    "seeded_init",
    "reopen",
    "record",
    "apply_steps",
    "CheckpointData",
    "Checkpoint",
    "Adaptive",
    "BoltzmannTarget",
    "Capabilities",
    "ConfigurationError",
    "Corrector",
    "EvaluationCounter",
    "Fixed",
    "GaussianReference",
    "Geometric",
    "GeometricPath",
    "sanitized",
    "Interrupted",
    "Linear",
    "Loop",
    "LoopState",
    "Particles",
    "PathEvaluation",
    "PersistenceError",
    "Pipeline",
    "Power",
    "Result",
    "RunError",
    "RunSettings",
    "Runner",
    "SamplerError",
    "Schedule",
    "Session",
    "Step",
    "StepBlock",
    "StepContext",
    "StepOutput",
    "StepStats",
    "Target",
    "TargetError",
    "Transport",
    "agree",
    "all_reduce_sum",
    "as_target",
    "broadcast_parameters",
    "check_positive_int",
    "conditional_ess",
    "corrector",
    "ess",
    "random_halves",
    "get_scheme",
    "hookimpl",
    "initial_particles",
    "is_main_process",
    "local_batch",
    "make_reference",
    "method",
    "nearest_mode",
    "progress_bar",
    "projected_energy_distances",
    "random_directions",
    "rank_seed",
    "replicated_sampling",
    "slicing_constant",
    "sum_gradients",
    "systematic",
    "transport",
    "world_size",
]
