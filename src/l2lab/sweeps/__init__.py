"""Sweeps: a grid of points (or a tune's draws), each a DVC experiment and an MLflow run, run by workers that take
them from an Optuna study (on this machine, or a team's), followed to their end, and reported."""
