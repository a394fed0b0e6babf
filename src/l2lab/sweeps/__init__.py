"""Sweeps: a grid of points, each a DVC experiment and an MLflow run; run by DVC's queue here
(team/ runs them across machines), followed to the end, and reported."""
