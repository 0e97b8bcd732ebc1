"""Training stage: token files, packed batches, the optimisation loop and its trace."""
