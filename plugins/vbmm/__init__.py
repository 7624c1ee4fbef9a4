"""Plugin ``vbmm``: Dirichlet maximum-likelihood estimation by Variable Bregman Majorization-Minimization.

Registers the estimator ``dirichlet-vbmm`` (:class:`DirichletMLE`)::

    fit = sampler.estimate("dirichlet-vbmm", p)          # p: (N, K) or (B, N, K) on the simplex
    fit.alpha, fit.concentration, fit.stderr

Modules:

* :mod:`~sampler_plugins.vbmm.solver` -- the generic VBMM / BPG solver for separable Bregman
  functions (with an optional box constraint) and the safeguarded 1-D Newton solver;
* :mod:`~sampler_plugins.vbmm.dirichlet` -- the Dirichlet likelihood, its Bregman functions
  (Minka's ``lgamma``, the entropy + Burg kernel of BPG, VBMM's variable split majorants),
  Newton's method and the fitting front end;
* :mod:`~sampler_plugins.vbmm.modes` -- mode-weight uncertainty of a sampler on a mixture target.
"""

from __future__ import annotations

import sampler
from sampler_plugins.vbmm.dirichlet import (
    SOLVERS,
    DirichletFit,
    DirichletMLE,
    DirichletStats,
    EntropyBurgBregman,
    LogGammaBregman,
    SplitBregman,
    VariableSplitFamily,
    dirichlet_grad,
    dirichlet_nll,
    fit_dirichlet,
    separable_speedup_possible,
)
from sampler_plugins.vbmm.modes import mode_fractions_per_replica, mode_weight_dirichlet
from sampler_plugins.vbmm.solver import FixedFamily, VBMMResult, majorization_gap, solve_increasing, vbmm

__all__ = [
    "SOLVERS",
    "DirichletFit",
    "DirichletMLE",
    "DirichletStats",
    "EntropyBurgBregman",
    "FixedFamily",
    "LogGammaBregman",
    "SplitBregman",
    "VBMMResult",
    "VariableSplitFamily",
    "dirichlet_grad",
    "dirichlet_nll",
    "fit_dirichlet",
    "majorization_gap",
    "mode_fractions_per_replica",
    "mode_weight_dirichlet",
    "separable_speedup_possible",
    "solve_increasing",
    "vbmm",
]


@sampler.hookimpl
def sampler_register(registry) -> None:
    """Register the ``dirichlet-vbmm`` estimator."""
    registry.add_estimator(
        "dirichlet-vbmm", DirichletMLE, "Dirichlet MLE by variable Bregman majorization-minimization"
    )
