"""Compiled kernel steps: ``compile=True`` of :class:`~sampler_plugins.mcmc.kernels.HMC` and ``MALA``.

Eager PyTorch dispatches every tensor operation of a leapfrog or Langevin step on its own: about
forty per step, target included, each a few microseconds of dispatch and a full pass over the
particles' memory. ``torch.compile`` (TorchInductor) fuses one step -- the move, the target's
log density and gradient, the reference's, the non-finite guard, and the momentum update or the
acceptance ratio and Metropolis choice -- into a few loops. The kernels write these steps without
side effects (the caller counts the evaluations and builds the
:class:`~sampler.ext.PathEvaluation`): :func:`~sampler_plugins.mcmc.kernels.hmc_transition`
for HMC with a fixed trajectory length, :func:`~sampler_plugins.mcmc.kernels.leapfrog_step` and
:func:`~sampler_plugins.mcmc.kernels.hmc_choice` for varying lengths,
:func:`~sampler_plugins.mcmc.kernels.mala_transition` for MALA; one graph each for the built-in
targets. A target whose code cannot be traced (Python control flow on tensor values) splits the
graph and still runs.

:class:`CompiledStep` compiles lazily at the first call (:func:`compiled_copy`: once per process,
target class, dtype and kind of metric; several seconds on a CPU, which is why ``compile`` is
off by default: it pays off on long runs and large N). Where compilation is unavailable (no C++
compiler, an unsupported platform), or a compiled call fails, it warns once and the kernel runs
eagerly from then on, with the same results in distribution: the compiled and eager steps
compute the same quantities, up to floating-point rounding (``tests/test_compiled.py``).
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from sampler.ext import GeometricPath


class CompilationWarning(UserWarning):
    """``compile=True`` could not compile a kernel step; the kernel runs eagerly instead."""


#: Compiler failures whose cause is known, by a piece of their message: what the warning adds.
KNOWN_FAILURES = {
    # torch 2.13: an operator with a built-in error check (linalg.cholesky, linalg.inv) inside a
    # scan's body loses an input in TorchInductor's lowering (tests/test_fused.py)
    "Expected positional argument for parameter": (
        "if the target calls torch.linalg.cholesky or torch.linalg.inv, TorchInductor cannot compile "
        "them inside a fused loop: torch.linalg.cholesky_ex and torch.linalg.solve_triangular compile"
    ),
    # torch 2.13: torch.func's gradient inside a scan's body fails on the .T or .mT property of a
    # tensor the log density holds (a closure's or an attribute's), in TorchDynamo's tracing
    # (tests/test_fused.py); .t() and .transpose() trace
    "Expected FakeTensor, got": (
        "if the target's log_prob takes .T or .mT of a tensor it holds, TorchDynamo cannot differentiate "
        "it inside a fused loop: write .transpose(-2, -1) (or keep the transposed tensor), or give the "
        "target its own gradient"
    ),
}


def failure_hint(exc: BaseException) -> str:
    """What :data:`KNOWN_FAILURES` says about the compiler's error ``exc`` (``""`` if nothing)."""
    return next((f"; {hint}" for piece, hint in KNOWN_FAILURES.items() if piece in str(exc)), "")


#: ``torch.compile``d copies of the step functions, one per (function, target class).
_COPIES: dict[tuple[Callable[..., Any], type], Callable[..., Any]] = {}


def compiled_copy(
    function: Callable[..., Any], target_type: type, options: dict[str, Any] | None = None
) -> Callable[..., Any]:
    """``torch.compile`` of a copy of ``function`` with its own code object, one per target class.

    Dynamo keeps its compiled variants and their guards per code object. Sharing one between
    target classes breaks: guards written for one class's attributes fail to evaluate on
    another's (a ``KeyError`` from the guard, not a recompilation, in torch 2.13), and the
    variants of every class would count against one ``recompile_limit``. Instances of one class
    share their copy, so a process compiles once per class, dtype and kind of metric (and once
    more, with dynamic shapes, when N changes). ``options`` are TorchInductor's (``torch.compile``'s
    ``options``), fixed per function.
    """
    key = (function, target_type)
    if key not in _COPIES:
        copy = types.FunctionType(
            function.__code__.replace(), function.__globals__, function.__name__, function.__defaults__
        )
        copy.__qualname__ = f"{function.__qualname__}[{target_type.__qualname__}]"
        _COPIES[key] = torch.compile(copy, options=options)
    return _COPIES[key]


class CompiledStep:
    """A side-effect-free step function ``function(path, ...)``, compiled at its first call.

    Calling it returns the function's result, or ``None`` when compilation is unavailable or
    the compiled call failed (after one :class:`CompilationWarning`): the caller then runs its
    eager code, which raises the target's own error if the target was at fault.

    Args:
        function: the step.
        options: TorchInductor's options for it (``torch.compile``'s ``options``).
        scalar_outputs: trace it with Dynamo's ``capture_scalar_outputs`` (a loop's index read
            as a number inside the graph, as TorchInductor's lowering of ``scan`` does).
        fallback: what runs instead after a failure, for the warning.
    """

    def __init__(
        self,
        function: Callable[..., tuple[Tensor, ...]],
        options: dict[str, Any] | None = None,
        scalar_outputs: bool = False,
        fallback: str = "running eagerly",
    ):
        self.function = function
        self.options = options
        self.scalar_outputs = scalar_outputs
        self.fallback = fallback
        self.failed = False

    def __call__(self, path: GeometricPath, *args: Any) -> tuple[Tensor, ...] | None:
        if self.failed:
            return None
        # Dynamo turns torch.distributions' argument validation off for the whole process when it
        # first compiles (torch/_dynamo/eval_frame.py); keep it off only while a step runs, as
        # sampler.model does, and give the caller's setting back
        validate = Distribution._validate_args
        Distribution.set_default_validate_args(False)
        try:
            with torch._dynamo.config.patch(capture_scalar_outputs=self.scalar_outputs):
                return compiled_copy(self.function, type(path.target), self.options)(path, *args)
        except Exception as exc:  # noqa: BLE001 - any failure of the compiler falls back to eager
            self.failed = True
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            warnings.warn(
                f"compile=True: torch.compile of {self.function.__name__} failed "
                f"({type(exc).__name__}: {first_line}); {self.fallback}{failure_hint(exc)}",
                CompilationWarning,
                stacklevel=3,
            )
            return None
        finally:
            Distribution.set_default_validate_args(validate)
