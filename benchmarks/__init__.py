"""Benchmark scripts of sampler-engine (run as ``python -m benchmarks.<name>``)."""
