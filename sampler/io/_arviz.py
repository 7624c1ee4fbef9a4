"""Import ArviZ lazily and quietly (0.2x warns about its coming refactor on import)."""

from __future__ import annotations

import functools
import warnings
from types import ModuleType


@functools.cache
def arviz() -> ModuleType:
    """The ``arviz`` module, imported on first use with its refactor notice silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
        import arviz as az
    return az
