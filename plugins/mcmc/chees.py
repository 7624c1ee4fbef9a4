"""ChEES trajectory-length adaptation for HMC chains (Hoffman, Radul & Sountsov 2021).

The ChEES criterion (Change in the Estimator of the Expected Square) of a trajectory length T
is ``E[(|z' - E z|^2 - |z - E z|^2)^2] / 4`` for a transition ``z -> z'`` in whitened
coordinates: it grows while longer trajectories still move the chains farther from the
posterior mean and stops growing where they start to turn back, without the per-trajectory
U-turn checks of NUTS. Each warm-up iteration uses trajectory ``h_k T`` with ``h_k`` the k-th
point of the base-2 Halton sequence in (0, 1), and the chains' proposals give an unbiased
estimate of the criterion's derivative with respect to ``log T``:

    g_i = h_k T (|z'_i - mean z'|^2 - |z_i - mean z|^2) ((z'_i - mean z') . p'_i),

averaged over the chains with their acceptance probabilities as weights (``z'``, ``p'`` the
proposal's position and whitened momentum; the caller chooses the centre). ``log T`` ascends
it with Adam without momentum (beta_2 = 0.95, as the paper), each update clipped to ±0.35 and
scaled by ``m^{-1/2}`` at the m-th update, so the length settles as warm-up ends. After warm-up
T is frozen and the Halton jitter continues: the number of leapfrog steps of an iteration
depends on its index only, never on the state, so every transition leaves the target invariant.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

#: Adam's learning rate on ``log T`` (scaled by ``m^{-1/2}`` at the m-th update).
LEARNING_RATE = 0.05
#: Adam's second-moment decay (no first moment), as Hoffman, Radul & Sountsov (2021).
BETA_2 = 0.95
#: Largest change of ``log T`` in one update.
MAX_LOG_UPDATE = 0.35


def halton(k: int, base: int = 2) -> float:
    """The k-th point (k >= 1) of the van der Corput / Halton sequence in ``base``, in (0, 1)."""
    if k < 1:
        raise ValueError(f"the Halton sequence starts at k = 1, got {k}")
    out, f = 0.0, 1.0 / base
    while k > 0:
        k, digit = divmod(k, base)
        out += f * digit
        f /= base
    return out


def chees_gradient(z0: Tensor, z1: Tensor, p1: Tensor, log_alpha: Tensor, scale: float, center: Tensor) -> Tensor:
    """The acceptance-weighted ChEES gradient estimate, a float64 scalar.

    Args:
        z0: ``(C, d)`` the chains' positions before the transition, whitened.
        z1: ``(C, d)`` the proposals, whitened.
        p1: ``(C, d)`` the proposals' whitened momenta.
        log_alpha: ``(C,)`` log acceptance probabilities (``-inf`` for a divergence).
        scale: ``h_k T``, the derivative of this iteration's trajectory length in ``log T``.
        center: ``(d,)`` whitened estimate of the posterior mean both positions are centred at
            (the paper centres at the chains' own means; :class:`~sampler_plugins.mcmc.chains.MCMCChains`
            passes a running mean, docs/methods.md says why).

    Chains whose proposal is not finite get weight 0; with no weight at all the estimate is 0.
    """
    z0, z1, p1 = z0.to(torch.float64), z1.to(torch.float64), p1.to(torch.float64)
    finite = torch.isfinite(z1).all(-1) & torch.isfinite(p1).all(-1) & torch.isfinite(log_alpha)
    w = torch.where(finite, log_alpha.exp(), torch.zeros_like(log_alpha))
    total = w.sum()
    z1 = torch.where(finite[:, None], z1, torch.zeros_like(z1))
    p1 = torch.where(finite[:, None], p1, torch.zeros_like(p1))
    center = center.to(torch.float64)
    c1, c0 = z1 - center, z0 - center
    g = scale * ((c1 * c1).sum(-1) - (c0 * c0).sum(-1)) * (c1 * p1).sum(-1)
    # no branch on the total (a fused loop traces this): 0 where no chain has weight
    some = total > 0
    return torch.where(some, (w * g).sum() / torch.where(some, total, 1.0), 0.0)


@attrs.frozen
class ChEES:
    """The trajectory-length adaptation's state (module docstring), frozen; ``update`` returns the next.

    Attributes:
        log_length: ``log T``, T in whitened units (step size times leapfrog steps).
        second_moment: Adam's running mean of the squared gradient.
        m: updates so far.
    """

    log_length: float
    second_moment: float = 0.0
    m: int = 0

    @classmethod
    def start(cls, length: float) -> ChEES:
        """The state before the first update, at trajectory length ``length`` (> 0)."""
        if not (length > 0 and math.isfinite(length)):
            raise ValueError(f"the initial trajectory length must be positive and finite, got {length!r}")
        return cls(math.log(length))

    @property
    def length(self) -> float:
        """The trajectory length T."""
        return math.exp(self.log_length)

    def n_leapfrog(self, k: int, step_size: float, max_leapfrog: int) -> tuple[int, float]:
        """Leapfrog steps of iteration ``k`` (from 0) and its jitter ``h``: ``ceil(h T / eps)`` in [1, max]."""
        h = halton(k + 1)
        n = math.ceil(h * self.length / step_size) if step_size > 0 else max_leapfrog
        return max(1, min(max_leapfrog, n)), h

    def update(self, gradient: float) -> ChEES:
        """The state after one Adam ascent step on ``log T`` with the ChEES ``gradient`` estimate."""
        if not math.isfinite(gradient):
            return self
        m = self.m + 1
        v = BETA_2 * self.second_moment + (1 - BETA_2) * gradient**2
        v_hat = v / (1 - BETA_2**m)
        step = LEARNING_RATE * gradient / (math.sqrt(v_hat) + 1e-12)
        step = max(-MAX_LOG_UPDATE, min(MAX_LOG_UPDATE, step)) / math.sqrt(m)
        return ChEES(self.log_length + step, v, m)


def chees_update(state: Tensor, gradient: Tensor) -> Tensor:
    """:meth:`ChEES.update` in tensors, for a fused loop: ``state`` is ``(log_length, second_moment, m)``
    float64 ``(3,)``; unchanged where ``gradient`` is not finite."""
    log_length, second_moment, m = state.unbind()
    m = m + 1
    v = BETA_2 * second_moment + (1 - BETA_2) * gradient.square()
    v_hat = v / (1 - BETA_2**m)
    step = LEARNING_RATE * gradient / (v_hat.sqrt() + 1e-12)
    step = step.clamp(-MAX_LOG_UPDATE, MAX_LOG_UPDATE) / m.sqrt()
    return torch.where(gradient.isfinite(), torch.stack([log_length + step, v, m]), state)
