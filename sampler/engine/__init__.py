"""The engine: run settings, the annealing pipeline, the loop every runner shares, sharding, progress."""
