"""The ``mmd-flow`` method: a generative MMD flow from the reference to target samples.

An MMD flow needs samples of the target, not its density. The runner gets them either from the
user (``data``, optionally ``weights``: a data set or a weighted particle set) or, by default,
from a sampling ``source`` method run on the target first (``smc``: its weighted particles
right after the last reweighting). It then flows N particles drawn from the path's reference
(``N(reference_loc, reference_scale^2 I)``) to that sample by descending the sliced energy
distance (:func:`~sampler_plugins.mmd_flow.flow.mmd_flow`).

What the result means (honestly):

* ``samples``: the flowed particles: N distinct, equally weighted points approximating the
  target sample; they have no density, so they carry no importance weights.
* ``log_Z``: with a ``source``, the source's estimate (its weighted particles are kept as
  ``weighted_samples``/``log_weights``; ``options['log_Z_from']`` names it). The flow adds
  nothing to it. With ``data`` there is no estimate: ``log_Z`` is ``None`` and ``kind`` is
  ``"flow"`` (no weights to report).
* evaluation counts: the source's; the flow evaluates no target density.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TypedDict

import attrs
import torch
from torch import Tensor

import sampler
from sampler.ext import ConfigurationError, Result, RunSettings, Target, as_target, make_reference, progress_bar
from sampler_plugins.mmd_flow.flow import FlowSettings, mmd_flow

__all__ = ["MMDFlowMethod", "build_mmd_flow", "METHOD_DEFAULTS"]


class _MethodDefaults(TypedDict):
    n_iter: int
    step_size: float
    momentum: float
    n_directions: int
    scheme: str
    decay_start: float
    final_step_size: float


#: Flow options of the method (from the reference: a longer flow than deweighting's).
METHOD_DEFAULTS: _MethodDefaults = {
    "n_iter": 200,
    "step_size": 1.0,
    "momentum": 0.8,
    "n_directions": 64,
    "scheme": "qmc",
    "decay_start": 0.5,
    "final_step_size": 0.05,
}


class MMDFlowMethod:
    """Runner of ``mmd-flow`` (see the module docstring); build it with :func:`build_mmd_flow`."""

    def __init__(
        self,
        data: Tensor | None = None,
        weights: Tensor | None = None,
        source: str = "smc",
        source_options: Mapping[str, Any] | None = None,
        reference_loc: float | Tensor | None = None,
        reference_scale: float | Tensor | None = None,
        **flow_options: Any,
    ):
        self.flow = FlowSettings(**{**METHOD_DEFAULTS, **flow_options})
        if data is not None:
            data = torch.as_tensor(data)
            if data.ndim not in (2, 3) or not data.is_floating_point():
                raise ConfigurationError(
                    f"data must be a floating tensor of shape (M, d) or (R, M, d), got {tuple(data.shape)}"
                )
        elif weights is not None:
            raise ConfigurationError("weights were given without data")
        self.data = data
        self.weights = None if weights is None else torch.as_tensor(weights)
        self.source = source
        self.source_options = dict(source_options or {})
        self.reference_loc = reference_loc
        self.reference_scale = reference_scale
        self.options: dict[str, Any] = {**attrs.asdict(self.flow), "source": None if data is not None else source}
        if data is None:
            self.options["source_options"] = dict(self.source_options)
            sampler.method(source, **self.source_options)  # fail early on a bad source

    def run(
        self,
        target: Target,
        *,
        n_particles: int,
        n_replicas: int = 1,
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        progress: bool | None = None,
    ) -> Result:
        """Flow R x N reference particles to the target sample; return a :class:`~sampler.Result`."""
        cfg = RunSettings.create(target, n_particles, n_replicas, seed, device, dtype, progress)
        target = as_target(target)
        start = time.perf_counter()
        src = None
        if self.data is not None:
            y = self.data.to(device=cfg.device, dtype=cfg.dtype)
            if y.shape[-1] != target.dim:
                raise ConfigurationError(f"data has dimension {y.shape[-1]} but the target has dim {target.dim}")
            if y.ndim == 3 and y.shape[0] not in (1, cfg.n_replicas):
                raise ConfigurationError(f"data has {y.shape[0]} replicas but the run has {cfg.n_replicas}")
            w = None if self.weights is None else self.weights.to(device=cfg.device, dtype=torch.float64)
        else:
            src = sampler.method(self.source, **self.source_options).run(
                target,
                n_particles=cfg.n_particles,
                n_replicas=cfg.n_replicas,
                seed=cfg.seed,
                device=cfg.device,
                dtype=cfg.dtype,
                progress=progress,
            )
            if src.kind == "smc":
                y, w = src.weighted_samples, torch.softmax(src.log_weights.to(torch.float64), -1)
            else:
                y, w = src.samples, None
        reference = make_reference(target, self.reference_loc, self.reference_scale)
        gen = torch.Generator(device=cfg.device).manual_seed((cfg.seed * 0x9E3779B1 + 1) % (1 << 63))
        x0 = reference.sample((cfg.n_replicas, cfg.n_particles), gen, cfg.dtype)
        with progress_bar(total=self.flow.n_iter, enabled=cfg.progress, desc=f"mmd-flow on {target.name}") as bar:
            flow = mmd_flow(x0, y, w, self.flow, gen, callback=lambda k, x: bar.advance(1, step=k + 1))
        x = flow.x
        options = dict(self.options)
        if src is not None:
            options["log_Z_from"] = f"source {self.source!r}" if src.log_Z_per_replica is not None else None
            return Result.from_run(
                target,
                cfg,
                "mmd-flow",
                samples=x,
                evals=(src.n_target_evals, src.n_grad_evals, src.n_nonfinite),
                kind="smc" if src.kind == "smc" else "flow",
                log_weights=src.log_weights,
                weighted_samples=src.weighted_samples,
                log_Z_per_replica=src.log_Z_per_replica,
                steps=src.steps,
                wall_time=time.perf_counter() - start,
                options=options,
            )
        options["log_Z_from"] = None
        return Result.from_run(
            target,
            cfg,
            "mmd-flow",
            samples=x,
            evals=(0, 0, 0),
            kind="flow",
            wall_time=time.perf_counter() - start,
            options=options,
        )


def build_mmd_flow(
    data: Tensor | None = None,
    weights: Tensor | None = None,
    source: str = "smc",
    source_options: Mapping[str, Any] | None = None,
    reference_loc: float | Tensor | None = None,
    reference_scale: float | Tensor | None = None,
    n_iter: int = METHOD_DEFAULTS["n_iter"],
    step_size: float = METHOD_DEFAULTS["step_size"],
    momentum: float = METHOD_DEFAULTS["momentum"],
    n_directions: int = METHOD_DEFAULTS["n_directions"],
    scheme: str = METHOD_DEFAULTS["scheme"],
    epsilon: float = 0.0,
    decay_start: float = METHOD_DEFAULTS["decay_start"],
    final_step_size: float = METHOD_DEFAULTS["final_step_size"],
    scale: float | None = None,
) -> MMDFlowMethod:
    """Sliced MMD flow (Riesz kernel r = 1) from the reference to target samples (``data`` or a ``source`` run).

    Args:
        data: target samples ``(M, d)`` or ``(R, M, d)`` (a data set or a particle set); if
            None, the samples come from running ``source`` on the target.
        weights: nonnegative weights of ``data`` ``(M,)`` or ``(R, M)`` (a weighted particle set).
        source: sampling method run first when there is no ``data`` (default ``smc``; its
            weighted particles are the flow's target, its log Z is reported as the result's).
        source_options: options of the source method.
        reference_loc, reference_scale: the Gaussian the particles start from (target hints
            by default, as for the annealing methods).
        n_iter, step_size, momentum, n_directions, scheme, epsilon, decay_start,
        final_step_size, scale: the flow (:class:`~sampler_plugins.mmd_flow.flow.FlowSettings`).
    """
    return MMDFlowMethod(
        data=data,
        weights=weights,
        source=source,
        source_options=source_options,
        reference_loc=reference_loc,
        reference_scale=reference_scale,
        n_iter=n_iter,
        step_size=step_size,
        momentum=momentum,
        n_directions=n_directions,
        scheme=scheme,
        epsilon=epsilon,
        decay_start=decay_start,
        final_step_size=final_step_size,
        scale=scale,
    )
