"""What users read off a result: statistics, diagnostics and the summary, metrics, estimators, plots."""
