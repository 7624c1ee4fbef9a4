"""The stochastic normalizing flow model: stages of layers along the geometric path.

A :class:`SNF` is a list of :class:`Stage`\\ s at times ``0 < t_1 < ... < t_K = 1``. Stage k
holds (each optional) a :class:`~sampler_plugins.snf.layers.CouplingBlock`, a
:class:`~sampler_plugins.snf.layers.LangevinLayer` and a
:class:`~sampler_plugins.snf.layers.MetropolisLayer` at the intermediate density ``pi_{t_k}``.
Run by the engine (:meth:`SNF.pipeline`), stage k is one annealing stage: the transports (coupling
block, then Langevin layer) move the particles, the engine reweights by
``log pi_{t_k}(x') - log pi_{t_{k-1}}(x) + ΔS``, and the Metropolis layer acts as a corrector.
The accumulated log weight is the SNF path weight
``log w = log pi_1(x_T) - log ref(z) + Σ_k ΔS_k`` (``log ref`` normalized), so
``mean(w)`` is an unbiased estimate of Z.

:meth:`SNF.forward_path` runs the same stages outside the engine, differentiably, for training
(:mod:`sampler_plugins.snf.training`); :meth:`SNF.backward_path` runs them backward from given
samples (maximum likelihood).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

import sampler
from sampler.ext import (
    ConfigurationError,
    Corrector,
    EvaluationCounter,
    Fixed,
    GaussianReference,
    GeometricPath,
    Particles,
    PersistenceError,
    StepContext,
    StepOutput,
    Target,
    Transport,
    as_target,
    check_positive_int,
    seeded_init,
)
from sampler_plugins.snf.layers import CouplingBlock, LangevinLayer, MetropolisLayer
from sampler_plugins.snf.paths import DifferentiablePath

__all__ = ["Stage", "SNF", "SNFTransport", "SNFCorrector", "PathSample", "snf_from_config"]


class Stage(nn.Module):
    """The layers of one annealing stage at time ``t`` (each may be ``None``).

    Transports run first (``block``, then ``langevin``), the Metropolis layer last.
    """

    def __init__(
        self,
        t: float,
        block: CouplingBlock | None = None,
        langevin: LangevinLayer | None = None,
        metropolis: MetropolisLayer | None = None,
    ):
        super().__init__()
        self.t = float(t)
        self.block = block
        self.langevin = langevin
        self.metropolis = metropolis

    @property
    def transports(self) -> list[CouplingBlock | LangevinLayer]:
        """The stage's transports in order."""
        return [s for s in (self.block, self.langevin) if s is not None]

    @property
    def correctors(self) -> list[MetropolisLayer]:
        """The stage's correctors."""
        return [self.metropolis] if self.metropolis is not None else []

    def extra_repr(self) -> str:
        return f"t={self.t:.4g}"


@attrs.frozen
class PathSample:
    """Particles at the end of a (forward or backward) SNF path and their log path weights.

    Attributes:
        x: positions ``(R, N, d)`` (the SNF output ``x_T`` forward; the latent ``z`` backward).
        log_weights: ``(R, N)`` float64 ``log w = log pi_1(x_T) - log ref(z) + Σ ΔS`` (may carry
            a graph in training; ``-inf``/NaN where the target density was not finite).
        info: per layer ``"stage{k}.{layer}"``, its acceptance statistic ``(R,)`` (forward only).
    """

    x: Tensor
    log_weights: Tensor
    info: Mapping[str, Tensor] = attrs.field(factory=dict)


def _as_tensor(value: Any, dim: int) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).flatten()
    return t.expand(dim).clone() if t.numel() == 1 else t


class SNF(nn.Module):
    """A stochastic normalizing flow from the Gaussian reference ``N(loc, diag(scale^2))`` to a target.

    Args:
        dim: d.
        reference_loc, reference_scale: the latent Gaussian (scalars or ``(d,)``); it is the
            engine path's reference, so intermediate energies are
            ``E_t = (1 - t) E_latent + t U``.
        n_stages: K; stage times ``t_k = k / K`` unless ``times`` is given.
        times: explicit increasing stage times ending at 1 (overrides ``n_stages``).
        n_couplings: affine couplings per stage (0: no coupling; every stage still has an
            element-wise affine layer unless ``deterministic=False``).
        hidden: widths of the couplings' MLPs.
        langevin_steps: unadjusted Langevin steps per stage (0: none).
        langevin_step_size: initial Langevin time step (in units of the reference scale squared).
        mh_steps: Metropolis steps per stage (0: none).
        mh_kernel: ``"mala"`` or ``"rw"``.
        mh_step_size: initial Metropolis step size (default per kernel).
        context_dim: observation size of a conditional SNF (0: unconditional).
        clamp: bound of the couplings' log-scales.
        deterministic: include the coupling blocks (False: a purely stochastic flow, i.e. AIS
            with Langevin and Metropolis layers).
        seed: seed of the couplings' initial weights (:func:`sampler.ext.seeded_init`:
            they depend on it alone, and torch's global random state is left as it was);
            ``None`` draws them from torch's global generator, like any ``nn.Module``. Not part
            of :attr:`config` (a saved flow is rebuilt, then its weights are loaded).
    """

    def __init__(
        self,
        dim: int,
        reference_loc: float | Sequence[float] | Tensor = 0.0,
        reference_scale: float | Sequence[float] | Tensor = 1.0,
        n_stages: int = 4,
        times: Sequence[float] | None = None,
        n_couplings: int = 2,
        hidden: Sequence[int] = (64, 64),
        langevin_steps: int = 1,
        langevin_step_size: float = 0.05,
        mh_steps: int = 2,
        mh_kernel: str = "mala",
        mh_step_size: float | None = None,
        context_dim: int = 0,
        clamp: float = 2.0,
        deterministic: bool = True,
        seed: int | None = None,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        if times is None:
            k = check_positive_int("n_stages", n_stages)
            times = [(i + 1) / k for i in range(k)]
        times = [float(t) for t in times]
        if not times or times[-1] != 1.0 or any(b <= a for a, b in zip([0.0, *times], times)):
            raise ConfigurationError(f"stage times must increase strictly from above 0 to 1, got {times}")
        for name, v in (("n_couplings", n_couplings), ("langevin_steps", langevin_steps), ("mh_steps", mh_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigurationError(f"{name} must be a non-negative integer, got {v!r}")
        ref = GaussianReference(dim, loc=_as_tensor(reference_loc, dim), scale=_as_tensor(reference_scale, dim))
        self.config = dict(
            dim=dim,
            reference_loc=ref.loc.tolist(),
            reference_scale=ref.scale.tolist(),
            times=times,
            n_couplings=n_couplings,
            hidden=list(hidden),
            langevin_steps=langevin_steps,
            langevin_step_size=langevin_step_size,
            mh_steps=mh_steps,
            mh_kernel=mh_kernel,
            mh_step_size=mh_step_size,
            context_dim=context_dim,
            clamp=clamp,
            deterministic=deterministic,
        )
        self.dim = dim
        self.reference = ref
        loc = torch.as_tensor(ref.loc, dtype=torch.get_default_dtype())
        scale = torch.as_tensor(ref.scale, dtype=torch.get_default_dtype())
        stages = []
        with seeded_init(seed) if seed is not None else contextlib.nullcontext():
            for t in times:
                block = (
                    CouplingBlock(dim, loc, scale, n_couplings, hidden, context_dim, clamp) if deterministic else None
                )
                lang = LangevinLayer(langevin_steps, langevin_step_size) if langevin_steps else None
                mh = MetropolisLayer(mh_steps, mh_kernel, mh_step_size) if mh_steps else None
                stages.append(Stage(t, block, lang, mh))
        self.stages = nn.ModuleList(stages)
        # a zero-size buffer that follows .to(device, dtype): where and in what precision the flow lives
        self.register_buffer("_anchor", torch.zeros(0))

    _anchor: Tensor  # the buffer above (declared for the type checker)

    # -- properties -------------------------------------------------------------------------
    def stage_list(self) -> list[Stage]:
        """The stages in order (a typed view of the ``stages`` ModuleList)."""
        return [s for s in self.stages if isinstance(s, Stage)]

    @property
    def times(self) -> list[float]:
        """Stage times ``[t_1, ..., t_K]`` (``t_K = 1``)."""
        return [s.t for s in self.stage_list()]

    @property
    def needs_grad(self) -> bool:
        """Whether some layer needs gradients of the path."""
        return any(step.needs_grad for s in self.stage_list() for step in (*s.transports, *s.correctors))

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        return self._anchor.dtype

    def stochastic_layers(self) -> list[tuple[str, LangevinLayer | MetropolisLayer]]:
        """``(name, layer)`` of every Langevin and Metropolis layer, in order."""
        out = []
        for k, s in enumerate(self.stage_list(), 1):
            if s.langevin is not None:
                out.append((f"stage{k}.langevin", s.langevin))
            if s.metropolis is not None:
                out.append((f"stage{k}.metropolis", s.metropolis))
        return out

    # -- paths outside the engine (training) ---------------------------------------------------
    def make_path(
        self, target: Target, counter: EvaluationCounter | None = None, differentiable: bool = False
    ) -> GeometricPath:
        """The geometric path from this flow's reference to ``target`` (differentiable for training)."""
        cls = DifferentiablePath if differentiable else GeometricPath
        return cls(self.reference, as_target(target), counter if counter is not None else EvaluationCounter())

    def _start(self, path: GeometricPath, x: Tensor) -> Particles:
        r, n = x.shape[:2]
        return Particles(
            x=x,
            log_weights=torch.full((r, n), -math.log(n), dtype=torch.float64, device=x.device),
            log_Z=torch.zeros(r, dtype=torch.float64, device=x.device),
            evaluation=path.evaluate(x, grad=self.needs_grad),
        )

    def forward_path(self, path: GeometricPath, n: int, generator: torch.Generator, n_replicas: int = 1) -> PathSample:
        """Sample ``z ~ ref`` and run every stage; return ``x_T`` ``(R, n, d)`` and ``log w``.

        The same arithmetic as the engine (:meth:`pipeline`): with a :class:`DifferentiablePath`
        the log weights carry gradients with respect to the flow's parameters.
        """
        x0 = path.reference.sample((n_replicas, n), generator, self.dtype)
        particles = self._start(path, x0)
        t_prev = torch.zeros(n_replicas, dtype=torch.float64, device=x0.device)
        log_w = torch.zeros(n_replicas, n, dtype=torch.float64, device=x0.device)
        info: dict[str, Tensor] = {}
        for k, stage in enumerate(self.stage_list(), 1):
            t = torch.full_like(t_prev, stage.t)
            ctx = StepContext(path=path, t=t, t_from=t_prev, step=k, generator=generator, needs_grad=self.needs_grad)
            moved, extra = particles, torch.zeros_like(log_w)
            for step in stage.transports:
                out = step.apply(moved, None, ctx)
                moved = out.particles
                if out.log_weight_increment is not None:
                    extra = extra + out.log_weight_increment
                _record(info, k, step, out.info)
            log_w = log_w + path.log_prob(moved.evaluation, t) - path.log_prob(particles.evaluation, t_prev) + extra
            particles = moved
            for corrector in stage.correctors:
                out = corrector.apply(particles, None, ctx)
                particles = out.particles
                _record(info, k, corrector, out.info)
            t_prev = t
        return PathSample(particles.x, log_w, info)

    def backward_path(self, path: GeometricPath, x: Tensor, generator: torch.Generator) -> PathSample:
        """Run the stages backward from ``x`` ``(R, N, d)`` (e.g. target samples): return ``z`` and ``log w``.

        ``log w = log pi_1(x) - log ref(z) + Σ ΔS`` along the backward path (backward kernels:
        inverse couplings, the same Langevin and Metropolis kernels). ``mean(log w)`` over
        target samples is the maximum-likelihood (forward KL) loss up to a constant.
        """
        particles = self._start(path, x)
        one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        log_w = path.log_prob(particles.evaluation, one)
        stages = self.stage_list()
        for k in range(len(stages), 0, -1):
            stage = stages[k - 1]
            t = torch.full_like(one, stage.t)
            t_prev = torch.full_like(one, stages[k - 2].t if k > 1 else 0.0)
            ctx = StepContext(path=path, t=t, t_from=t_prev, step=k, generator=generator, needs_grad=self.needs_grad)
            for step in reversed([*stage.transports, *stage.correctors]):
                particles, delta = step.reverse(particles, ctx)
                log_w = log_w + delta
        zero = torch.zeros_like(one)
        log_w = log_w - path.log_prob(particles.evaluation, zero)
        return PathSample(particles.x, log_w)

    # -- the engine --------------------------------------------------------------------------
    def pipeline(
        self,
        resample_threshold: float | None = None,
        scheme: str = "systematic",
        name: str = "snf",
        options: dict | None = None,
    ) -> sampler.Pipeline:
        """This flow as a :class:`sampler.Pipeline`: a fixed schedule at the stage times, the
        stages' transports and correctors, and (if ``resample_threshold`` is given) ESS-triggered
        resampling after each reweighting (SMC with SNF layers; Z stays unbiased)."""
        steps: list[Any] = [SNFTransport(self)]
        if resample_threshold is not None:
            steps.append(sampler.corrector("resample", scheme=scheme, threshold=resample_threshold, final=False))
        steps.append(SNFCorrector(self))
        return sampler.Pipeline(
            schedule=Fixed([0.0, *self.times]),
            steps=steps,
            reference=self.reference,
            final_resampling=scheme,
            name=name,
            options=options,
        )

    @torch.no_grad()
    def run(
        self,
        target: Target,
        n_particles: int,
        n_replicas: int = 1,
        seed: int | None = None,
        progress: bool | None = False,
        **kwargs: Any,
    ) -> sampler.Result:
        """Sample with the engine on the flow's device and dtype: a :class:`sampler.Result`
        whose ``weighted_samples`` / ``log_weights`` are the SNF outputs and path weights
        (``kwargs`` go to :meth:`pipeline`)."""
        self._check_target(target)
        return self.pipeline(**kwargs).run(
            target,
            n_particles=n_particles,
            n_replicas=n_replicas,
            seed=seed,
            device=self.device,
            dtype=self.dtype,
            progress=progress,
        )

    def sample(self, target: Target, n: int, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """``n`` SNF samples ``(n, d)`` and their log path weights ``(n,)`` float64 (``mean(exp)`` estimates Z)."""
        res = self.run(target, n_particles=n, n_replicas=1, seed=seed)
        return res.weighted_samples[0], res.log_weights[0]

    def _check_target(self, target: Any) -> None:
        dim = getattr(target, "dim", None)
        if dim != self.dim:
            raise ConfigurationError(f"this SNF has dim {self.dim}, the target has dim {dim}")

    # -- persistence -------------------------------------------------------------------------
    #: Name of the registered model factory (``Result.save`` / ``sampler.load``).
    model_name = "snf"

    def model_config(self) -> dict[str, Any]:
        """JSON config that rebuilds this flow (with its dtype) through :func:`snf_from_config`."""
        return {**self.config, "dtype": str(self.dtype).removeprefix("torch.")}

    def save(self, file: str | Path) -> None:
        """Write the configuration and parameters (``torch.save``) to ``file``."""
        torch.save({"format": "sampler-snf-1", "config": self.config, "state": self.state_dict()}, file)

    @classmethod
    def load(cls, file: str | Path, map_location: str | torch.device | None = None) -> SNF:
        """Rebuild a flow written by :meth:`save` (on ``map_location``; parameters keep their dtype)."""
        try:
            blob = torch.load(file, map_location=map_location, weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- unreadable, truncated or foreign files alike
            raise PersistenceError(f"cannot read an SNF from {file}: {exc}") from None
        if not isinstance(blob, dict) or blob.get("format") != "sampler-snf-1":
            raise PersistenceError(f"{file} is not an SNF written by SNF.save")
        model = cls(**blob["config"], seed=0)  # any seed: the saved weights replace the initial ones
        state = blob["state"]
        anchor = state.get("_anchor")
        if anchor is not None:
            model.to(device=anchor.device, dtype=anchor.dtype)
        model.load_state_dict(state)
        return model


def _record(info: dict[str, Tensor], k: int, step: object, new: Mapping[str, Tensor | float]) -> None:
    """Keep a layer's acceptance statistic (the last of its info values; the SNF layers report one, a tensor)."""
    kind = (
        "langevin"
        if isinstance(step, LangevinLayer)
        else "metropolis"
        if isinstance(step, MetropolisLayer)
        else "block"
    )
    for value in new.values():
        info[f"stage{k}.{kind}"] = torch.as_tensor(value)


class SNFTransport(Transport):
    """The transports of an :class:`SNF` as one engine step: at stage k (``ctx.step``) it applies
    that stage's coupling block and Langevin layer and reports the sum of their ``ΔS``."""

    def __init__(self, model: SNF):
        self.model = model
        self.needs_grad = model.needs_grad

    def apply(self, particles: Particles, state: object, ctx: StepContext) -> StepOutput:
        stage = _stage(self.model, ctx)
        total = torch.zeros_like(particles.log_weights)
        info: dict[str, Tensor | float] = {}
        for step in stage.transports:
            out = step.apply(particles, None, ctx)
            particles = out.particles
            if out.log_weight_increment is not None:
                total = total + out.log_weight_increment
            info.update(out.info)
        return StepOutput(particles, state, info, total)

    def __repr__(self) -> str:
        return f"SNFTransport(stages={len(self.model.stages)})"


class SNFCorrector(Corrector):
    """The Metropolis layers of an :class:`SNF` as one engine corrector (stage k's at ``ctx.step`` k)."""

    def __init__(self, model: SNF):
        self.model = model
        self.needs_grad = model.needs_grad

    def apply(self, particles: Particles, state: object, ctx: StepContext) -> StepOutput:
        info: dict[str, Tensor | float] = {}
        for step in _stage(self.model, ctx).correctors:
            out = step.apply(particles, None, ctx)
            particles = out.particles
            info.update(out.info)
        return StepOutput(particles, state, info)

    def __repr__(self) -> str:
        return f"SNFCorrector(stages={len(self.model.stages)})"


def _stage(model: SNF, ctx: StepContext) -> Stage:
    k = ctx.step
    if not 1 <= k <= len(model.stages):
        raise sampler.errors.RunError(f"the SNF has {len(model.stages)} stages; the schedule asked for stage {k}")
    stage = model.stage_list()[k - 1]
    if bool((ctx.t != stage.t).any()):
        raise sampler.errors.RunError(f"SNF stage {k} is at t = {stage.t}, the schedule is at {ctx.t.tolist()}")
    return stage


def snf_from_config(dtype: str = "float32", **config: Any) -> SNF:
    """An untrained :class:`SNF` of the structure and dtype in ``config`` (see ``SNF.model_config``).

    ``sampler.load`` uses it to rebuild the flow saved with a result, then loads the weights.
    """
    if dtype not in ("float32", "float64", "float16", "bfloat16"):
        raise PersistenceError(f"unknown SNF dtype {dtype!r} in a saved config")
    return SNF(**config, seed=0).to(dtype=getattr(torch, dtype))  # seeded: the global random state is left alone
