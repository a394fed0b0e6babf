"""Every MLflow call of the project, by concern.

store: where runs go, the client bound to that URI, locking and retries; runs: a
pipeline run's life and what it logs; sweeps: a sweep's parent and its reserved
points; registry: the champion model and the sweep report.
"""
