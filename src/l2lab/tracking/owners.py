"""A RUNNING run means a live process: each run names its process, and runs whose process is gone are ended."""

from __future__ import annotations

import logging
import os
import socket

import psutil
from mlflow.entities import RunStatus, RunTag

from l2lab.tracking.store import Store, search_runs

log = logging.getLogger(__name__)

HOST_TAG = "l2lab.host"
PID_TAG = "l2lab.pid"
ENDED_BY_TAG = "l2lab.ended_by"  # who ended a run KILLED, and why
STARTED_TAG = "l2lab.pid_started"  # the process's start time (s since the epoch): pids are reused


def owner_tags() -> dict[str, str]:
    """Which process holds a run open: this one."""
    me = psutil.Process(os.getpid())
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(me.pid), STARTED_TAG: f"{me.create_time():.2f}"}


def process_gone(tags: dict[str, str]) -> bool:
    """True only when the run names a process of this host that no longer runs; unknown owners are left alone."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    try:
        started = psutil.Process(int(tags[PID_TAG])).create_time()
    except psutil.NoSuchProcess:
        return True
    return abs(started - float(tags.get(STARTED_TAG, started))) > 1.0  # the pid now belongs to another process


def end_stale_runs(store: Store) -> list[str]:
    """End KILLED every RUNNING run whose process on this host is gone (kill -9, OOM killer); return their ids."""
    ended = []
    for run in search_runs(store, "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if not process_gone(tags):
            continue
        run_id = run.info.run_id
        end_killed(store, run_id, "l2lab: its process was gone")
        log.warning("MLflow run %s (%s) was RUNNING but its process %s on %s is gone (killed?): ended KILLED",
                    run_id, run.info.run_name, tags[PID_TAG], tags[HOST_TAG])
        ended.append(run_id)
    return ended


def end_killed(store: Store, run_id: str, why: str) -> None:
    """End a run KILLED, saying why in its tag l2lab.ended_by."""
    store.write(lambda: store.client.log_batch(run_id, tags=[RunTag(ENDED_BY_TAG, why)]))
    store.write(lambda: store.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED)))
