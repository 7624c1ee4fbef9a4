"""The importance-corrected neural JKO model: a Gaussian latent and a stack of layers.

Every particle carries its position ``x`` and ``e(x) = -log p_model(x)``, so the model draws iid
samples together with its own normalized density. Layers are :class:`CNFLayer` (deterministic,
``e += l``) and :class:`RejectionLayer` (stochastic and non-local: a rejected point is replaced
by a fresh draw from the model truncated *before* that layer, ``e -= log(alpha + r_bar)``).

Sampling cost grows like ``(1 + r_bar)`` per rejection layer. Draws are made level by level in
batches: a rejection layer asks the level below for its proposals plus a surplus that covers the
expected replacements, and any leftover stays on that level's stack for the next request within
the same call (so one call makes a handful of large batched passes, never one pass per point).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from sampler.ext import (
    ConfigurationError,
    EvaluationCounter,
    GaussianReference,
    GeometricPath,
    PersistenceError,
    Target,
    seeded_init,
)
from sampler_plugins.neural_jko.cnf import CNFLayer
from sampler_plugins.neural_jko.rejection import RejectionLayer

__all__ = ["NeuralJKOModel", "ModelSample", "Batch", "neural_jko_from_config"]

_FORMAT = "sampler-neural-jko/1"


@attrs.define
class Batch:
    """Draws at one level of the model.

    Attributes:
        x: positions ``(n, d)``.
        e: ``(n,)`` float64, ``-log p_level(x)``.
        log_target: ``(n,)`` float64 target log density, NaN where not evaluated yet.
        e_var: ``(n,)`` float64 variance of ``e`` from Hutchinson divergence estimates (0 if exact).
    """

    x: Tensor
    e: Tensor
    log_target: Tensor
    e_var: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def split(self, n: int) -> tuple[Batch, Batch]:
        """The first ``n`` draws and the rest."""
        return (
            Batch(self.x[:n], self.e[:n], self.log_target[:n], self.e_var[:n]),
            Batch(self.x[n:], self.e[n:], self.log_target[n:], self.e_var[n:]),
        )

    @staticmethod
    def cat(parts: list[Batch]) -> Batch:
        """Concatenate batches."""
        return Batch(*(torch.cat([getattr(p, f) for p in parts]) for f in ("x", "e", "log_target", "e_var")))


@attrs.frozen
class ModelSample:
    """What :meth:`NeuralJKOModel.sample` returns.

    Attributes:
        x: iid samples ``(n, d)``.
        log_prob: ``(n,)`` float64, the model's normalized log density at ``x``.
        log_target: ``(n,)`` float64, the target's unnormalized log density at ``x``.
        log_prob_stderr: ``(n,)`` float64 standard error of ``log_prob`` from Hutchinson
            divergence estimates (zeros when every CNF uses the exact trace).
        target_evals: target evaluations the call used (one per point).
    """

    x: Tensor
    log_prob: Tensor
    log_target: Tensor
    log_prob_stderr: Tensor
    target_evals: int

    @property
    def log_weights(self) -> Tensor:
        """``(n,)`` importance log weights ``log q(x) - log p_model(x)``."""
        return self.log_target - self.log_prob


class _Draw:
    """State of one sampling call: generator, evaluator and per-level surplus stacks."""

    def __init__(self, generator: torch.Generator, path: GeometricPath):
        self.generator = generator
        self.path = path
        self.stacks: dict[int, Batch] = {}


class NeuralJKOModel(nn.Module):
    """A latent ``N(loc, diag(scale^2))`` followed by CNF and rejection layers.

    Args:
        dim: d.
        latent_loc, latent_scale: the latent Gaussian (scalars or ``(d,)``).
        exact_max_dim: use the exact divergence (``d`` Jacobian tangents) when ``d <= exact_max_dim``;
            above it, Hutchinson's estimate with ``n_probes`` Rademacher probes (its noise is
            reported as ``log_prob_stderr``).
        n_probes: probes per solve when the divergence is estimated.

    Use :meth:`sample` for iid draws with their log density and :meth:`log_prob` at arbitrary
    points; both need the target (for the rejection layers), given as ``target=`` or attached
    with :meth:`attach`. :meth:`save` / :meth:`load` keep the trained state.
    """

    def __init__(
        self,
        dim: int,
        latent_loc: float | Tensor = 0.0,
        latent_scale: float | Tensor = 1.0,
        exact_max_dim: int = 32,
        n_probes: int = 16,
    ):
        super().__init__()
        self.dim = int(dim)
        loc = torch.as_tensor(latent_loc, dtype=torch.float64).detach().cpu().expand(self.dim).clone()
        scale = torch.as_tensor(latent_scale, dtype=torch.float64).detach().cpu().expand(self.dim).clone()
        if not (torch.isfinite(scale).all() and (scale > 0).all() and torch.isfinite(loc).all()):
            raise ConfigurationError(
                f"latent scale must be positive and loc finite, got loc={latent_loc!r}, scale={latent_scale!r}"
            )
        self.register_buffer("latent_loc", loc)
        self.register_buffer("latent_scale", scale)
        self.exact_max_dim = int(exact_max_dim)
        self.n_probes = int(n_probes)
        self.layers = nn.ModuleList()  # CNFLayer and RejectionLayer instances (see layer_list)
        self.target: Target | None = None
        self.history: list[dict[str, Any]] = []  # per-layer training records

    latent_loc: Tensor  # float64 buffers (declared for the type checker)
    latent_scale: Tensor

    # -- structure -----------------------------------------------------------------------------
    def layer_list(self) -> list[CNFLayer | RejectionLayer]:
        """The layers in order (a typed view of the ``layers`` ModuleList)."""
        return [layer for layer in self.layers if isinstance(layer, (CNFLayer, RejectionLayer))]

    @property
    def exact(self) -> bool:
        """Whether CNF layers use the exact divergence at sampling/evaluation time."""
        return self.dim <= self.exact_max_dim

    @property
    def n_cnf(self) -> int:
        """Number of CNF layers."""
        return sum(1 for layer in self.layer_list() if isinstance(layer, CNFLayer))

    @property
    def n_rejection(self) -> int:
        """Number of rejection layers."""
        return sum(1 for layer in self.layer_list() if isinstance(layer, RejectionLayer))

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of positions (the CNF weights'; float32 for a model without CNF layers)."""
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        """Device of the model's tensors."""
        return self.latent_loc.device

    def sampling_cost(self) -> float:
        """Expected draws from the latent per sample: ``prod (1 + r_bar)`` over rejection layers."""
        cost = 1.0
        for layer in self.layer_list():
            if isinstance(layer, RejectionLayer):
                cost *= 1.0 + float(layer.r_bar)
        return cost

    def latent_reference(self) -> GaussianReference:
        """The latent as a :class:`sampler.GaussianReference` (the engine's reference for this model)."""
        return GaussianReference(self.dim, loc=self.latent_loc.double(), scale=self.latent_scale.double())

    def latent_energy(self, x: Tensor) -> Tensor:
        """``-log N(x; loc, scale^2)`` ``(n,)`` float64 for ``x`` ``(n, d)`` (the latent mean subtracted)."""
        x64 = x.to(torch.float64)
        loc = self.latent_loc.to(device=x.device, dtype=torch.float64)
        scale = self.latent_scale.to(device=x.device, dtype=torch.float64)
        z = (x64 - loc) / scale
        return 0.5 * (z * z).sum(-1) + 0.5 * self.dim * math.log(2 * math.pi) + torch.log(scale).sum()

    def attach(self, target: Target) -> NeuralJKOModel:
        """Remember the target the rejection layers use (not saved by :meth:`save`)."""
        if getattr(target, "dim", None) != self.dim:
            raise ConfigurationError(
                f"target has dim {getattr(target, 'dim', None)!r} but the model has dim {self.dim}"
            )
        self.target = target
        return self

    def _path(self, target: Target | None, path: GeometricPath | None) -> GeometricPath:
        if path is not None:
            return path
        target = target if target is not None else self.target
        if target is None:
            if self.n_rejection == 0:
                return GeometricPath(self.latent_reference(), _NoTarget(self.dim), EvaluationCounter())
            raise ConfigurationError(
                "the model has rejection layers and needs the target: pass target= or call model.attach(target)"
            )
        if getattr(target, "dim", None) != self.dim:
            raise ConfigurationError(
                f"target has dim {getattr(target, 'dim', None)!r} but the model has dim {self.dim}"
            )
        return GeometricPath(self.latent_reference(), target, EvaluationCounter())

    # -- drawing -----------------------------------------------------------------------------
    def _latent(self, n: int, st: _Draw) -> Batch:
        dev = self.device
        z = torch.randn(n, self.dim, generator=st.generator, device=dev, dtype=self.dtype)
        x = self.latent_loc.to(self.dtype) + self.latent_scale.to(self.dtype) * z
        nan = torch.full((n,), math.nan, dtype=torch.float64, device=dev)
        return Batch(x, self.latent_energy(x), nan, torch.zeros(n, dtype=torch.float64, device=dev))

    def _evaluate(self, b: Batch, st: _Draw) -> Batch:
        todo = torch.isnan(b.log_target)
        if bool(todo.any()):
            lt = b.log_target.clone()
            lt[todo] = st.path.evaluate(b.x[todo]).log_target
            b = Batch(b.x, b.e, lt, b.e_var)
        return b

    def apply_layer(self, i: int, b: Batch, st: _Draw) -> Batch:
        """Apply layer ``i`` to draws ``b`` from level ``i`` (the model truncated before layer ``i``)."""
        layer = self.layer_list()[i]
        if isinstance(layer, CNFLayer):
            z, ell, se = layer.transform(b.x, exact=self.exact, n_probes=self.n_probes, generator=st.generator)
            nan = torch.full_like(b.e, math.nan)
            return Batch(z, b.e + ell, nan, b.e_var + se * se)
        b = self._evaluate(b, st)
        log_u = torch.log(torch.rand(len(b), generator=st.generator, device=b.e.device, dtype=torch.float64))
        keep = log_u < layer.log_alpha(b.e + b.log_target)
        m = int((~keep).sum())
        if m:
            repl = self._evaluate(self._draw(i, m, st), st)
            idx = (~keep).nonzero().flatten()
            b = Batch(b.x.clone(), b.e.clone(), b.log_target.clone(), b.e_var.clone())
            b.x[idx], b.e[idx], b.log_target[idx], b.e_var[idx] = repl.x, repl.e, repl.log_target, repl.e_var
        return Batch(b.x, b.e - layer.log_density_factor(b.e + b.log_target), b.log_target, b.e_var)

    def _draw(self, level: int, n: int, st: _Draw, surplus: int = 0) -> Batch:
        """``n`` iid draws from level ``level``, keeping at least ``surplus`` more on its stack."""
        have = st.stacks.get(level)
        n_have = 0 if have is None else len(have)
        if have is None or n_have < n + surplus:
            new = self._produce(level, n + surplus - n_have, st)
            have = new if have is None else Batch.cat([have, new])
        out, rest = have.split(n)
        st.stacks[level] = rest
        return out

    def _produce(self, level: int, n: int, st: _Draw) -> Batch:
        if level == 0:
            return self._latent(n, st)
        layer = self.layer_list()[level - 1]
        surplus = 0
        if isinstance(layer, RejectionLayer):  # the expected replacements, with a margin of ~3 sd
            mean = n * float(layer.r_bar)
            surplus = int(math.ceil(1.05 * mean + 3 * math.sqrt(mean + 1) + 2))
        return self.apply_layer(level - 1, self._draw(level - 1, n, st, surplus), st)

    def push(self, x0: Tensor, generator: torch.Generator, path: GeometricPath, upto: int | None = None) -> Batch:
        """Carry given latent points ``x0`` ``(n, d)`` through the first ``upto`` layers (all by default)."""
        st = _Draw(generator, path)
        nan = torch.full((x0.shape[0],), math.nan, dtype=torch.float64, device=x0.device)
        b = Batch(x0, self.latent_energy(x0), nan, torch.zeros_like(nan))
        for i in range(len(self.layers) if upto is None else upto):
            b = self.apply_layer(i, b, st)
        return b

    def draw(self, n: int, generator: torch.Generator, path: GeometricPath, level: int | None = None) -> Batch:
        """``n`` iid draws from the model truncated after ``level`` layers (all by default)."""
        return self._draw(len(self.layers) if level is None else level, n, _Draw(generator, path))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        target: Target | None = None,
        path: GeometricPath | None = None,
    ) -> ModelSample:
        """``n`` iid samples with the model's log density and the target's log density.

        Args:
            n: number of samples.
            generator: random generator on the model's device (if None: a fresh one seeded from
                torch's global generator, so ``torch.manual_seed`` repeats the draws).
            target: the target (default: the attached one); ``path``: evaluate and count
                through this :class:`~sampler.GeometricPath` instead.
        """
        path = self._path(target, path)
        before = path.counter.target_evals
        gen = (
            generator
            if generator is not None
            else torch.Generator(device=self.device).manual_seed(int(torch.randint(2**62, ())))
        )
        st = _Draw(gen, path)
        b = self._draw(len(self.layers), n, st)
        if not isinstance(path.target, _NoTarget):
            b = self._evaluate(b, st)
        return ModelSample(b.x, -b.e, b.log_target, b.e_var.sqrt(), path.counter.target_evals - before)

    @torch.no_grad()
    def log_prob(
        self,
        x: Tensor,
        target: Target | None = None,
        path: GeometricPath | None = None,
        generator: torch.Generator | None = None,
        return_stderr: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The model's normalized log density at ``x`` ``(..., d)``, float64 ``(...)``.

        Integrates every CNF backwards to get the chain of pre-images, then goes forward from
        the latent energy, adding each CNF's divergence integral and applying each rejection
        layer's factor at the point where that layer acts (target evaluated there).
        ``generator`` draws Hutchinson probes (only when the divergence is estimated).
        """
        if x.shape[-1] != self.dim:
            raise ConfigurationError(f"x must have shape (..., {self.dim}), got {tuple(x.shape)}")
        shape = x.shape[:-1]
        y = x.reshape(-1, self.dim).to(self.dtype)
        path = self._path(target, path)
        gen = generator if generator is not None else torch.Generator(device=self.device).manual_seed(0)
        layers = self.layer_list()
        points: list[Tensor] = []
        ells: list[Tensor | None] = []  # the CNF layers' divergence integrals (None for a rejection layer)
        var = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
        for layer in reversed(layers):
            points.append(y)
            if isinstance(layer, CNFLayer):
                y, ell, se = layer.transform(y, reverse=True, exact=self.exact, n_probes=self.n_probes, generator=gen)
                ells.append(ell)
                var = var + se * se
            else:
                ells.append(None)
        e = self.latent_energy(y)
        cache: tuple[Tensor, Tensor] | None = None
        for layer, at, ell in zip(layers, reversed(points), reversed(ells)):
            if isinstance(layer, RejectionLayer):
                if cache is None or cache[0] is not at:
                    cache = (at, path.evaluate(at).log_target)
                e = e - layer.log_density_factor(e + cache[1])
            elif ell is not None:
                e = e + ell
        out = (-e).reshape(shape)
        return (out, var.sqrt().reshape(shape)) if return_stderr else out

    # -- persistence ---------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """The structure needed to rebuild the model (see :meth:`from_spec`)."""
        layers = []
        for layer in self.layer_list():
            if isinstance(layer, CNFLayer):
                layers.append({"kind": "cnf", "width": layer.width, "n_steps": layer.n_steps})
            else:
                layers.append({"kind": "rejection", "rate": layer.rate})
        return {
            "format": _FORMAT,
            "dim": self.dim,
            "exact_max_dim": self.exact_max_dim,
            "n_probes": self.n_probes,
            "layers": layers,
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> NeuralJKOModel:
        """An untrained model with the structure ``spec`` (load a state dict into it)."""
        if spec.get("format") != _FORMAT:
            raise ConfigurationError(
                f"not a saved neural JKO model (format {spec.get('format')!r}, expected {_FORMAT!r})"
            )
        model = cls(spec["dim"], exact_max_dim=spec["exact_max_dim"], n_probes=spec["n_probes"])
        dtype = getattr(torch, spec.get("dtype", "float32"))
        with seeded_init(0):  # any seed (the loaded weights replace these); the global random state is left alone
            for layer in spec["layers"]:
                if layer["kind"] == "cnf":  # only the CNF weights take the model dtype; buffers stay float64
                    cnf = CNFLayer(spec["dim"], width=layer["width"], n_steps=layer["n_steps"])
                    model.layers.append(cnf.to(dtype))
                else:
                    model.layers.append(RejectionLayer(rate=layer["rate"]))
        return model

    #: Name of the registered model factory (``Result.save`` / ``sampler.load``).
    model_name = "neural-jko"

    def model_config(self) -> dict[str, Any]:
        """JSON config that rebuilds the model's structure (:meth:`spec`)."""
        return self.spec()

    def save(self, file: str | Path) -> None:
        """Save structure, weights and buffers (and the training history) to ``file``."""
        torch.save({"spec": self.spec(), "state_dict": self.state_dict(), "history": self.history}, file)

    @classmethod
    def load(
        cls, file: str | Path, target: Target | None = None, map_location: str | torch.device | None = None
    ) -> NeuralJKOModel:
        """Load a model saved with :meth:`save` (attach ``target`` for sampling).

        The file is read with ``torch.load(..., weights_only=True)``: tensors and plain
        containers only, so a file never runs code; anything else raises ``PersistenceError``.
        """
        try:
            blob = torch.load(file, map_location=map_location, weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- unreadable, truncated or foreign files alike
            raise PersistenceError(f"cannot read a neural JKO model from {file}: {exc}") from None
        if not isinstance(blob, dict) or not isinstance(blob.get("spec"), dict) or "state_dict" not in blob:
            raise PersistenceError(f"{file} is not a neural JKO model written by NeuralJKOModel.save")
        model = cls.from_spec(blob["spec"])
        model.load_state_dict(blob["state_dict"])
        model.history = list(blob.get("history", []))
        if map_location is not None:
            model.to(map_location)
        if target is not None:
            model.attach(target)
        return model

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.layers)


def neural_jko_from_config(**spec: Any) -> NeuralJKOModel:
    """An untrained :class:`NeuralJKOModel` of the structure ``spec`` (``model_config()``).

    ``sampler.load`` uses it to rebuild the model saved with a result, then loads the weights;
    call ``model.attach(target)`` before sampling (rejection layers evaluate the target).
    """
    try:
        return NeuralJKOModel.from_spec(spec)
    except (ConfigurationError, KeyError, TypeError) as exc:
        raise PersistenceError(f"not a valid neural JKO model config: {exc}") from None


class _NoTarget(Target):
    """Placeholder target for a model without rejection layers (never evaluated for sampling)."""

    def __init__(self, dim: int):
        self.dim = dim

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.full(x.shape[:-1], math.nan, dtype=x.dtype, device=x.device)
