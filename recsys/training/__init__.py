"""Training: the trainer and its loop, checkpoints, optimizers, the ranking network's data."""
