"""The posteriors of the suite by posteriordb name: :data:`POSTERIORS`, :func:`get_posterior`."""

from __future__ import annotations

from sampler.errors import ConfigurationError
from sampler_benchmarks.posteriors.base import Posterior
from sampler_benchmarks.posteriors.eight_schools import EightSchoolsCentered, EightSchoolsNoncentered
from sampler_benchmarks.posteriors.garch import Garch11
from sampler_benchmarks.posteriors.gp_pois_regr import GPPoissonRegression
from sampler_benchmarks.posteriors.regression import ArK, EarnHeight, KidiqMomiq, LogMesquite, SblrcBlr, SblriBlr

__all__ = ["POSTERIORS", "get_posterior", "list_posteriors"]

#: posteriordb name -> class, in the suite's table order.
POSTERIORS: dict[str, type[Posterior]] = {
    cls.posterior_name: cls
    for cls in (
        SblrcBlr,
        SblriBlr,
        KidiqMomiq,
        EarnHeight,
        LogMesquite,
        ArK,
        EightSchoolsCentered,
        EightSchoolsNoncentered,
        GPPoissonRegression,
        Garch11,
    )
}

_CACHE: dict[str, Posterior] = {}


def list_posteriors() -> list[str]:
    """The posteriordb names of the suite's posteriors, in table order."""
    return list(POSTERIORS)


def get_posterior(name: str) -> Posterior:
    """The posterior called ``name`` (posteriordb's name, e.g. ``"arK-arK"``); built once and cached.

    Raises:
        ConfigurationError: for an unknown name (the message lists the known ones).
    """
    if name not in POSTERIORS:
        raise ConfigurationError(f"unknown posterior {name!r}; known: {', '.join(POSTERIORS)}")
    if name not in _CACHE:
        _CACHE[name] = POSTERIORS[name]()
    return _CACHE[name]
