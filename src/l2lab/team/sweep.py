"""`l2lab sweep --storage`: a grid enqueued for `l2lab worker`s on any machine, followed to its end."""

from __future__ import annotations

import logging
from pathlib import Path

from l2lab.sweeps.follow import Progress, wait
from l2lab.sweeps.grid import Sweep, plan
from l2lab.team import queue as team_queue
from l2lab.team.clone import check_shared_tracking, pushed_commit
from l2lab.tracking.owners import end_stale_runs
from l2lab.tracking.store import connect
from l2lab.tracking.sweeps import end_unstarted, point_progress, point_runs, reserve, sweep_parent

log = logging.getLogger(__name__)


def run_team_sweep(axes: dict[str, list[str]], fixed: dict[str, str], cwd: Path, storage_url: str,
                   versus_adamw: bool = False) -> Sweep:
    """Enqueue the grid in the team's Optuna storage for `l2lab worker`s, and follow it to the end.

    The parent run and every point's reserved run are created on the tracking server
    first, as for a local sweep. Ctrl-C or SIGTERM cancels the points no worker has taken
    (their runs end KILLED); points already running finish on their workers.
    """
    sweep_id, points, epochs = plan(axes, fixed, cwd, versus_adamw)
    check_shared_tracking(cwd)
    commit = pushed_commit(cwd)
    store = connect(cwd)
    storage = team_queue.open_storage(storage_url)
    study = team_queue.new_study(storage, sweep_id)  # before the parent run: a clash leaves nothing behind
    end_stale_runs(store)
    with sweep_parent(store, sweep_id, axes, fixed, versus_adamw) as parent:
        runs = {point.name: reserve(store, parent.run_id, sweep_id, point.name, point.sets) for point in points}
        team_queue.enqueue(study, sweep_id, [(p.name, p.sets) for p in points],
                           {"commit": commit, "parent_run_id": parent.run_id})
        log.info("sweep %s: %d points enqueued for team workers (commit %s; MLflow parent run %s); on each "
                 "worker machine: l2lab worker --sweep %s", sweep_id, len(points), commit[:12], parent.run_id, sweep_id)

        def done(name: str, status: str) -> None:
            end_unstarted(store, runs[name])
            log.info("%s: %s", name, status)

        def progress(name: str) -> Progress:  # of the point's latest try (a retry has a run of its own)
            tries = point_runs(store, parent.run_id, name)
            done_epochs, val = point_progress(store, tries[0].info.run_id if tries else runs[name])
            return Progress(done_epochs, epochs[name], val)

        try:  # workers come and go: a team sweep never counts as stalled
            results = wait(points, cwd, done, read_state=lambda _: (team_queue.point_states(study), 1), progress=progress)
        except BaseException:
            cancelled = team_queue.cancel_waiting(storage, study)
            if cancelled:
                log.info("cancelled (no worker had taken them): %s", ", ".join(cancelled))
            raise
        parent.failed = any(status != "Success" for status in results.values())
    return Sweep(sweep_id, parent.run_id, results)
