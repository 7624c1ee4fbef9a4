"""The trained model as engine :class:`~sampler.Transport` steps.

The engine's reweighting after a stage's transports is
``log pi_1(x_out) - log pi_0(x_in) + sum(increments)`` with ``pi_0`` the path's reference. With
the model's latent as the reference and each layer reporting ``e_new(x_out) - e_old(x_in)``
(``e = -log p`` of the model so far, carried per particle in ``extras["neural_jko_e"]``), the sum
is ``log q(x_out) - log p_model(x_out)``: the importance log weight, and the stage's log Z
increment is the importance-sampling estimate ``log mean_i w_i``.

* :class:`ModelTransport` applies the whole model in one step (one target evaluation per
  particle beyond those the rejection layers need).
* :class:`LayerTransport` applies one layer, so the layers can be listed as steps of a
  :class:`sampler.Pipeline` next to other transports, resampling or MCMC correctors.

Both move particles from the latent (t = 0) to the target (t = 1) and so belong in a one-stage
schedule (``sampler.core.schedules.Linear(1)``); correctors run after them at t = 1. A rejection
layer's density formula holds for inputs that are draws of the model below it, so no step may
alter the particles between layers (the engine runs all transports of a stage back to back).
"""

from __future__ import annotations

import attrs
import numpy as np
import torch

from sampler.ext import ConfigurationError, Particles, PathEvaluation, RunError, StepContext, StepOutput, Transport
from sampler_plugins.neural_jko.model import Batch, NeuralJKOModel, _Draw

__all__ = ["ModelTransport", "LayerTransport", "layer_transports", "E_KEY", "E_STDERR_KEY"]

#: Particle extra holding ``e = -log p_model`` (float64 ``(R, N)``).
E_KEY = "neural_jko_e"
#: Particle extra holding the standard error of ``e`` from Hutchinson estimates.
E_STDERR_KEY = "neural_jko_e_stderr"


def _check_reference(model: NeuralJKOModel, ctx: StepContext) -> None:
    ref = ctx.path.reference
    loc = model.latent_loc.detach().cpu().double().numpy()
    scale = model.latent_scale.detach().cpu().double().numpy()
    if not (np.allclose(np.asarray(ref.loc), loc) and np.allclose(np.asarray(ref.scale), scale)):
        raise ConfigurationError(
            "the pipeline's reference must be the model's latent: "
            "pass reference=model.latent_reference() to sampler.Pipeline"
        )


def _check_stage(step: Transport, ctx: StepContext) -> None:
    if not bool(((ctx.t_from == 0.0) & (ctx.t == 1.0)).all()):
        raise RunError(
            f"{type(step).__name__} maps the latent (t = 0) to the target (t = 1): "
            "use a one-stage schedule, sampler.core.schedules.Linear(1)"
        )


def _evaluation(model: NeuralJKOModel, b: Batch, ctx: StepContext, shape: tuple[int, ...]) -> PathEvaluation:
    """The path evaluation at the new positions, reusing target values the layers computed."""
    x = b.x.reshape(shape)
    if ctx.needs_grad or bool(torch.isnan(b.log_target).any()):
        return ctx.path.evaluate(x, grad=ctx.needs_grad)
    return PathEvaluation(log_ref=ctx.path.reference.log_prob(x), log_target=b.log_target.reshape(shape[:-1]))


class ModelTransport(Transport):
    """All layers of a trained :class:`NeuralJKOModel` as one transport from its latent.

    Increment: ``log N_latent(x_in) - log p_model(x_out)``. Sets ``extras["neural_jko_e"]`` and
    reports ``log_prob_stderr`` (mean over particles, Hutchinson noise; 0 with exact traces)
    and ``model_draws_per_sample`` (latent draws per output sample, the rejection overhead).
    """

    def __init__(self, model: NeuralJKOModel):
        self.model = model

    def init(self, particles: Particles, ctx: StepContext) -> None:
        _check_reference(self.model, ctx)
        return None

    def apply(self, particles: Particles, state: None, ctx: StepContext) -> StepOutput:
        _check_stage(self, ctx)
        r, n, d = particles.x.shape
        x0 = particles.x.reshape(-1, d).to(self.model.dtype)
        with torch.no_grad():
            b = self.model.push(x0, ctx.generator, ctx.path)
        increment = (b.e - self.model.latent_energy(x0)).reshape(r, n)
        x = b.x.reshape(r, n, d).to(particles.x.dtype)
        b = Batch(x.reshape(-1, d), b.e, b.log_target, b.e_var)
        se = b.e_var.sqrt().reshape(r, n)
        new = attrs.evolve(
            particles,
            x=x,
            evaluation=_evaluation(self.model, b, ctx, (r, n, d)),
            extras={**particles.extras, E_KEY: b.e.reshape(r, n), E_STDERR_KEY: se},
        )
        info = {
            "log_prob_stderr": se.mean(-1),
            "model_draws_per_sample": torch.full(
                (r,), self.model.sampling_cost(), dtype=torch.float64, device=x.device
            ),
        }
        return StepOutput(new, state, info, log_weight_increment=increment)


class LayerTransport(Transport):
    """Layer ``index`` of a trained model as a transport (list all of them, in order, in one stage).

    Reads ``e`` from ``extras["neural_jko_e"]`` (the latent energy at the first layer), writes
    the updated ``e``, and reports ``e_new(x_out) - e_old(x_in)`` as its increment. A rejection
    layer draws its replacements from the model truncated before it.
    """

    def __init__(self, model: NeuralJKOModel, index: int):
        if not 0 <= index < len(model.layers):
            raise ConfigurationError(f"layer index {index} out of range for a model with {len(model.layers)} layers")
        self.model = model
        self.index = index

    def init(self, particles: Particles, ctx: StepContext) -> None:
        _check_reference(self.model, ctx)
        return None

    def apply(self, particles: Particles, state: None, ctx: StepContext) -> StepOutput:
        _check_stage(self, ctx)
        r, n, d = particles.x.shape
        x = particles.x.reshape(-1, d).to(self.model.dtype)
        if E_KEY in particles.extras:
            e = particles.extras[E_KEY].reshape(-1)
            se = particles.extras.get(E_STDERR_KEY, torch.zeros_like(particles.extras[E_KEY])).reshape(-1)
        elif self.index == 0:
            e, se = self.model.latent_energy(x), torch.zeros(r * n, dtype=torch.float64, device=x.device)
        else:
            raise RunError(
                f"layer {self.index} needs the model energy of its input: run the model's layers in order from layer 0"
            )
        lt = particles.evaluation.log_target.reshape(-1).clone()
        b = Batch(x, e, lt, se * se)
        with torch.no_grad():
            out = self.model.apply_layer(self.index, b, _Draw(ctx.generator, ctx.path))
        pos = out.x.reshape(r, n, d).to(particles.x.dtype)
        new_se = out.e_var.sqrt().reshape(r, n)
        new = attrs.evolve(
            particles,
            x=pos,
            evaluation=_evaluation(
                self.model, Batch(pos.reshape(-1, d), out.e, out.log_target, out.e_var), ctx, (r, n, d)
            ),
            extras={**particles.extras, E_KEY: out.e.reshape(r, n), E_STDERR_KEY: new_se},
        )
        return StepOutput(new, state, {}, log_weight_increment=(out.e - e).reshape(r, n))

    def __repr__(self) -> str:
        return f"LayerTransport(index={self.index}, kind={self.model.layers[self.index].kind!r})"


def layer_transports(model: NeuralJKOModel) -> list[LayerTransport]:
    """One :class:`LayerTransport` per layer of ``model``, in order."""
    return [LayerTransport(model, i) for i in range(len(model.layers))]
