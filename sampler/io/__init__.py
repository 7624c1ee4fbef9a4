"""Reading and writing: checkpoints, results as ArviZ NetCDF, trained models beside them."""
