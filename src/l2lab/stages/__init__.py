"""The DVC stages, one module each: its work, and the `main()` that dvc.yaml runs."""
