"""A sweep in MLflow: its parent run, the child runs it reserves up front, and what it recorded."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mlflow.entities import Param, RunStatus

from l2lab.errors import L2labError
from l2lab.tracking.owners import end_killed, owner_tags
from l2lab.tracking.runs import PARENT_TAG, RESERVED, ending, quote
from l2lab.tracking.store import Store, search_runs

log = logging.getLogger(__name__)

SWEEP_TAG = "l2lab.sweep_id"
ROLE_TAG = "l2lab.role"  # "sweep" on a sweep's parent run, "point" on a run it reserved
AXIS_PREFIX = "sweep."  # parent params: sweep.<params.yaml key> = comma-separated values
FIXED_PREFIX = "sweep.fixed."
SET_PREFIX = "l2lab.set."  # a point run's tags: l2lab.set.<params.yaml key> = its override, as typed
KIND_TAG = "l2lab.kind"  # "tune" on an l2lab tune's parent run (a sweep whose points an Optuna sampler chose)
TUNE_PREFIX = "tune."  # a tune's parent params: tune.space.<key> = its --space, tune.<setting> = trials, sampler, ...
VERSUS_TAG = "l2lab.versus"  # "adamw" on a sweep that pairs each train.l2 with AdamW at the matched decay


@dataclass
class SweepParent:
    run_id: str
    failed: bool = False  # set when a point failed: the parent then ends FAILED


@contextmanager
def sweep_parent(store: Store, sweep_id: str, axes: dict[str, list[str]], fixed: dict[str, str],
                 versus_adamw: bool = False, tune: dict[str, str] | None = None) -> Iterator[SweepParent]:
    """The parent run that groups a sweep's runs; ends FINISHED, FAILED or KILLED. tune: a tune's settings
    (its axes are then its --space texts)."""
    note = _note(axes, fixed, versus_adamw) if tune is None else _tune_note(axes, fixed, tune)
    tags = {SWEEP_TAG: sweep_id, ROLE_TAG: "sweep", "mlflow.note.content": note,
            **owner_tags(), **({VERSUS_TAG: "adamw"} if versus_adamw else {}), **({KIND_TAG: "tune"} if tune else {})}
    run = store.write(lambda: store.client.create_run(store.experiment_id, run_name=sweep_id, tags=tags))
    parent = SweepParent(run.info.run_id)
    if tune is None:
        params = {f"{AXIS_PREFIX}{k}": ",".join(v) for k, v in axes.items()}
    else:
        params = ({f"{TUNE_PREFIX}space.{k}": v[0] for k, v in axes.items()}
                  | {f"{TUNE_PREFIX}{k}": v for k, v in tune.items()})
    params |= {f"{FIXED_PREFIX}{k}": v for k, v in fixed.items()}
    with ending(store, parent.run_id, lambda: parent.failed):
        store.write(lambda: store.client.log_batch(parent.run_id, params=[Param(k, v) for k, v in params.items()]))
        try:
            yield parent
        finally:
            cancel_reservations(store, parent.run_id)


def _note(axes: dict[str, list[str]], fixed: dict[str, str], versus_adamw: bool) -> str:
    grid = "; ".join(f"{k} in {{{', '.join(v)}}}" for k, v in axes.items())
    extra = ", ".join(f"{k}={v}" for k, v in fixed.items())
    versus = ", each non-zero train.l2 also as AdamW at train.weight_decay = 2 x lambda" if versus_adamw else ""
    return f"Sweep over {grid}{versus}" + (f" with {extra}" if extra else "") + ". Child runs are the DVC experiments."


def _tune_note(space: dict[str, list[str]], fixed: dict[str, str], tune: dict[str, str]) -> str:
    searched = "; ".join(f"{k} in {v[0]}" for k, v in space.items())
    extra = ", ".join(f"{k}={v}" for k, v in fixed.items())
    return (f"Optuna search over {searched}: {tune['trials']} trials, sampler {tune['sampler']}, pruner "
            f"{tune['pruner']}, seed {tune['seed']}" + (f", with {extra}" if extra else "")
            + ". Child runs are the DVC experiments, one per trial.")


def reserve(store: Store, parent_id: str, sweep_id: str, exp_name: str, sets: dict[str, str] | None = None,
            tags: dict[str, str] | None = None) -> str:
    """Create a point's run before it is queued: named, nested under the parent, waiting (SCHEDULED), tagged
    with its overrides (l2lab.set.<key>), which a point that fails before training logs no params of, and
    with any further tags (a tune trial's study and number)."""
    tags = {PARENT_TAG: parent_id, SWEEP_TAG: sweep_id, ROLE_TAG: "point", "dvc.exp_name": exp_name,
            **{f"{SET_PREFIX}{key}": value for key, value in (sets or {}).items()}, **(tags or {})}
    run_id = store.write(lambda: store.client.create_run(store.experiment_id, run_name=exp_name, tags=tags)).info.run_id
    store.write(lambda: store.client.update_run(run_id, status=RESERVED))
    return run_id


def never_trained(store: Store, run_id: str) -> bool:
    """Whether a point's reserved run is still waiting: no train stage took it up."""
    return store.client.get_run(run_id).info.status == RESERVED


INCOMPLETE_TAG = "l2lab.incomplete"  # why a run is no result


def end_unlanded(store: Store, run_id: str, why: str, killed: bool = False) -> None:
    """End a point's run that is no result, saying why: its experiment failed or was stopped (before training,
    or after it: evaluate never ran, or DVC did not save it). KILLED when stopped, else FAILED; a run its
    stage already ended otherwise is left so."""
    run = store.client.get_run(run_id)
    if run.info.status not in (RESERVED, "RUNNING", "FINISHED"):
        return
    status = RunStatus.KILLED if killed else RunStatus.FAILED
    store.write(lambda: store.client.set_tag(run_id, INCOMPLETE_TAG, why))
    store.write(lambda: store.client.set_terminated(run_id, RunStatus.to_string(status)))


def point_runs(store: Store, parent_id: str, name: str) -> list:
    """A team point's runs under its sweep's parent, its latest try first."""
    return search_runs(store, f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`dvc.exp_name` = '{quote(name)}'",
                       order_by=["attributes.start_time DESC"])


def prepare_run(store: Store, parent_id: str, sweep_id: str, name: str, sets: dict[str, str] | None = None,
                tags: dict[str, str] | None = None) -> str:
    """The point's run, waiting (SCHEDULED) for its train stage: the sweep's reservation, or a new one
    when an earlier try took it. An earlier try's run still RUNNING belongs to a worker whose
    heartbeat stopped (Optuna handed its point to this one): it ends KILLED."""
    waiting = None
    for run in point_runs(store, parent_id, name):
        if run.info.status == "RUNNING":
            end_killed(store, run.info.run_id, "l2lab worker: its worker stopped sending heartbeats")
            log.warning("%s: MLflow run %s was left RUNNING by a worker that is gone: ended KILLED", name,
                        run.info.run_id)
        elif run.info.status == RESERVED:
            waiting = run.info.run_id
    return waiting or reserve(store, parent_id, sweep_id, name, sets, tags)


def finished_run(store: Store, run_id: str) -> Any:
    """The run, if it ended FINISHED and evaluated (a result); else None."""
    run = store.client.get_run(run_id)
    return run if run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics else None


def table_artifact(store: Store, run_id: str, name: str) -> list[dict[str, Any]] | None:
    """A table artifact (as logged with log_table) as rows; None when the run has none."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = store.client.download_artifacts(run_id, name, tmp)
        except Exception:  # MLflow raises its own error types for a missing artifact
            return None
        table = json.loads(Path(path).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def val_curve(store: Store, run_id: str) -> list[float]:
    """A run's val_accuracy per epoch, in epoch order."""
    history = store.client.get_metric_history(run_id, "val_accuracy")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def point_progress(store: Store, run_id: str) -> tuple[int, float | None]:
    """(epochs logged so far, the latest val_accuracy) of a point's run."""
    curve = val_curve(store, run_id)
    return len(curve), (curve[-1] if curve else None)


def cancel_reservations(store: Store, parent_id: str) -> None:
    """End the parent's still-waiting reservations KILLED: their points never started."""
    for run in search_runs(store, f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = '{RESERVED}'"):
        store.write(lambda: store.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED)))
        log.info("%s never started; its reserved run ends KILLED", run.info.run_name)


def latest_sweep(store: Store) -> tuple[str, str]:
    """(sweep id, parent run id) of the most recent sweep."""
    runs = search_runs(store, f"tags.`{ROLE_TAG}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise L2labError(f"no sweep found in {store.uri}; run `l2lab sweep` first")
    return runs[0].data.tags[SWEEP_TAG], runs[0].info.run_id


def sweep_parent_id(store: Store, sweep_id: str) -> str:
    """The parent run id of a sweep."""
    runs = search_runs(store, f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{SWEEP_TAG}` = '{quote(sweep_id)}'")
    if not runs:
        raise L2labError(f"no sweep {sweep_id!r} in {store.uri}")
    return runs[0].info.run_id


def axis_value(text: str) -> float | str:
    """A swept value as a report compares it: a number where it is one ("1e-3", "0.001"), else the name."""
    try:
        return float(text)
    except ValueError:
        return text.strip()


def sweep_axes(store: Store, parent_id: str) -> dict[str, list[float | str]]:
    """What the sweep varied, as it logged it: params.yaml key -> its values (numbers or names), in grid order."""
    params = store.client.get_run(parent_id).data.params
    return {key.removeprefix(AXIS_PREFIX): [axis_value(v) for v in value.split(",")]
            for key, value in params.items() if key.startswith(AXIS_PREFIX) and not key.startswith(FIXED_PREFIX)}


def tune_space(store: Store, parent_id: str) -> dict[str, str] | None:
    """A tune's searched keys -> their --space texts; None for a sweep that is not a tune."""
    run = store.client.get_run(parent_id)
    if run.data.tags.get(KIND_TAG) != "tune":
        return None
    prefix = f"{TUNE_PREFIX}space."
    return {k.removeprefix(prefix): v for k, v in run.data.params.items() if k.startswith(prefix)}


def sweep_versus(store: Store, parent_id: str) -> bool:
    """Whether the sweep paired coupled L2 with AdamW (l2lab sweep --versus-adamw)."""
    return store.client.get_run(parent_id).data.tags.get(VERSUS_TAG) == "adamw"


def sweep_runs(store: Store, parent_id: str) -> list[dict[str, Any]]:
    """The sweep's child runs as plain dicts: run_id, name, status, params (a run that never trained: its
    overrides), metrics, val_curve."""
    return [
        {"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
         "params": {k.removeprefix(SET_PREFIX): v for k, v in r.data.tags.items() if k.startswith(SET_PREFIX)}
         | dict(r.data.params),
         "metrics": dict(r.data.metrics), "tags": dict(r.data.tags), "val_curve": val_curve(store, r.info.run_id)}
        for r in search_runs(store, f"tags.`{PARENT_TAG}` = '{parent_id}'")
    ]
