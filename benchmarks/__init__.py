"""Benchmarks of sampler-engine (installed as ``sampler_benchmarks``; ``sampler bench`` is its CLI).

:func:`run_suite` runs methods x targets x seeds at a budget and returns a :class:`Report`
(JSON, markdown table, plots). ``core_figures`` measures the core issue's figures.
"""

from sampler_benchmarks.harness import BUDGETS, DEFAULT_TARGETS, Budget, Report, RunRecord, run_one, run_suite

__all__ = ["BUDGETS", "DEFAULT_TARGETS", "Budget", "Report", "RunRecord", "run_one", "run_suite"]
