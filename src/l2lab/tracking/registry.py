"""The model registry: the champion of a sweep, and the report attached to the sweep's parent run."""

from __future__ import annotations

from pathlib import Path

from l2lab.tracking.runs import MODEL_URI_TAG
from l2lab.tracking.store import Store, bind_fluent

REGISTERED_MODEL = "cifar10-cnn"
CHAMPION_ALIAS = "champion"


def register_champion(store: Store, run_id: str) -> str:
    """Register the run's model as a version of cifar10-cnn (once) and point the champion alias at it."""
    import mlflow

    client = store.client
    existing = client.search_model_versions(f"name = '{REGISTERED_MODEL}' and tags.source_run_id = '{run_id}'")
    if existing:  # reporting the same sweep twice moves no alias and adds no version
        version = existing[0].version
    else:  # mlflow.register_model resolves MLflow 3's models:/<id> URIs
        bind_fluent(store)
        source = client.get_run(run_id).data.tags.get(MODEL_URI_TAG, f"runs:/{run_id}/model")
        tags = {"source_run_id": run_id}
        registered = store.write(lambda: mlflow.register_model(source, REGISTERED_MODEL, tags=tags))
        version = registered.version
    store.write(lambda: client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version))
    store.write(lambda: client.set_model_version_tag(REGISTERED_MODEL, version, "selected_by", "max val_accuracy"))
    return str(version)


def log_report(store: Store, parent_id: str, folder: Path) -> None:
    """Attach the report's files to the sweep's parent run, under report/ (not its points' logs/: each point's
    run holds its own)."""
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        store.write(lambda: store.client.log_artifact(parent_id, str(path), artifact_path="report"))
