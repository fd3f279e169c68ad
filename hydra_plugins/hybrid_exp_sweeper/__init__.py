"""``hydra/sweeper=optuna``: Optuna (>= 4) studies as Hydra sweeps."""
