"""`l2lab sweep`: a grid of queued DVC experiments, run by N workers on this machine, grouped in MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

from l2lab.sweeps.dvcqueue import (fresh_workers, queue_points, queue_state, restart_workers, retrain, stop_points,
                                   worker_count, workers_starting, workspace_state)
from l2lab.sweeps.follow import AGAIN, Progress, wait
from l2lab.sweeps.grid import Planned, Point, Sweep
from l2lab.tracking.owners import end_stale_runs
from l2lab.tracking.store import connect
from l2lab.tracking.sweeps import end_incomplete, end_unstarted, never_trained, point_progress, points_live, reserve, sweep_parent

log = logging.getLogger(__name__)


def run_sweep(planned: Planned, axes: dict[str, list[str]], fixed: dict[str, str], jobs: int, cwd: Path,
              versus_adamw: bool = False) -> Sweep:
    """Queue and run the grid that grid.plan made of axes and fixed; return the sweep with each point's
    Success/Failed. Run it under a warm_server (l2lab.warm_server), started before this module's imports
    (cli.sweep_command): stages wait for the server, and its imports are the longest of a sweep's start.

    Each point's MLflow run is created before it is queued, nested under the sweep's
    parent; the train stage takes it up by the experiment's name.
    """
    sweep_id, points, epochs = planned
    jobs = worker_count(jobs, len(points))
    store = connect(cwd)
    end_stale_runs(store)
    fresh_workers(cwd)  # none left idle by an earlier sweep, holding its environment
    # The workers import DVC while the points are queued.
    with sweep_parent(store, sweep_id, axes, fixed, versus_adamw) as parent:
        with workers_starting(jobs, cwd):
            runs = {point.name: reserve(store, parent.run_id, sweep_id, point.name, point.sets) for point in points}
            queue_points(points, cwd)
        log.info("sweep %s: %d experiments on %d worker(s); MLflow parent run %s",
                 sweep_id, len(points), jobs, parent.run_id)

        done = Settler(store, runs, {point.name: point for point in points}, cwd)

        def progress(name: str) -> Progress:
            done_epochs, val = point_progress(store, runs[name])
            return Progress(done_epochs, epochs[name], val)

        try:  # the workers leave by themselves once the queue is empty (DVC: after 10 s idle)
            results = wait(points, cwd, done, queue_state, progress=progress,
                           settled=lambda: not points_live(store, parent.run_id),
                           restart=lambda: restart_workers(jobs, cwd))
        except BaseException:  # Ctrl-C, SIGTERM or a dead queue: stop what this sweep started
            stop_points([p.name for p in points], cwd)
            raise
        parent.failed = any(status != "Success" for status in results.values())
    return Sweep(sweep_id, parent.run_id, results)


class Settler:
    """What a sweep does with each point the queue says is done: re-queue, once, a point DVC skipped as equal
    to the workspace's dvc.lock (its run never trained); end its run FAILED when it failed before or after
    training; return its final status (or AGAIN)."""

    def __init__(self, store, runs: dict[str, str], points: dict[str, Point], cwd: Path) -> None:
        self.store, self.runs, self.points, self.cwd = store, runs, points, cwd
        self.snapshot = workspace_state(cwd)
        self.retrained: set[str] = set()

    def __call__(self, name: str, status: str) -> str | None:
        store, runs = self.store, self.runs
        if status == "Success" and never_trained(store, runs[name]):
            if name not in self.retrained and workspace_state(self.cwd) == self.snapshot:
                self.retrained.add(name)
                retrain(self.points[name], self.cwd)
                return AGAIN
            status = "Failed"
            why = ("with its training forced, DVC skipped it again (see dvc queue logs " + name + ")"
                   if name in self.retrained else "the workspace has changed since the sweep queued its points")
            log.error("%s: DVC skipped its training as up to date (same params, code and data as the "
                      "workspace's dvc.lock) and it was not re-run: %s; it counts as failed", name, why)
        end_unstarted(store, runs[name])  # a point that failed before training never took up its run
        if status != "Success":  # one that trained, then failed: its FINISHED run is no result
            end_incomplete(store, runs[name], f"its DVC experiment failed after training (dvc queue logs {name})")
        log.info("%s: %s (MLflow run %s)", name, status, runs[name])
        return status
