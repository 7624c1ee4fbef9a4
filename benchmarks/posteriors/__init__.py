"""Real Bayesian posteriors from posteriordb as sampler targets, with reference draws.

``sampler bench --suite posteriors`` runs the suite.

Each posterior is a :class:`Posterior` (a :class:`sampler.Target` on Stan's unconstrained space,
log-Jacobians included) with ``constrain``/``unconstrain``, posteriordb's reference means and sds
and a thinned set of reference draws; the Gaussian linear regressions and the eight schools also
carry their exact ``log_Z``. :func:`run_posterior_suite` scores methods against the references.

    from sampler_benchmarks.posteriors import get_posterior, run_posterior_suite
    target = get_posterior("arK-arK")
    report = run_posterior_suite(["smc", "hmc"], seeds=3)
    print(report.markdown())
"""

from sampler_benchmarks.posteriors.base import Posterior
from sampler_benchmarks.posteriors.catalog import POSTERIORS, get_posterior, list_posteriors
from sampler_benchmarks.posteriors.suite import PosteriorReport, PosteriorRun, run_posterior_suite

__all__ = [
    "POSTERIORS",
    "Posterior",
    "PosteriorReport",
    "PosteriorRun",
    "get_posterior",
    "list_posteriors",
    "run_posterior_suite",
]
