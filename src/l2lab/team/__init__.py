"""Team mode: a shared tracking server, a DVC remote, and sweeps spread over machines through Optuna."""
