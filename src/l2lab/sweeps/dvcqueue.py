"""DVC's experiment queue as a sweep uses it: queue points, start workers, read states, stop, re-run."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from l2lab.commands import RETRAIN, checked, dvc, dvc_command, git, set_args
from l2lab.errors import L2labError, first_line
from l2lab.sweeps.grid import Point

log = logging.getLogger(__name__)


def worker_count(requested: int, points: int, cores: int | None = None) -> int:
    """Queue workers to start: never more than the points, nor than the machine's cores.

    Each DVC worker is a process holding TensorFlow and a copy of the data (~1 GB on
    CIFAR-10); more workers than cores only make them wait on each other.
    """
    cores = cores or os.cpu_count() or 1
    jobs = max(1, min(requested, points, cores))
    if jobs != requested:
        log.warning("--jobs %d: starting %d worker(s) (%d point(s), %d core(s))", requested, jobs, points, cores)
    return jobs


def queue_points(points: list[Point], cwd: Path) -> None:
    """Queue every point as a named DVC experiment: what `dvc exp run --queue -n NAME -S KEY=VALUE ...`
    does, through DVC's Python API in this process (0.15 s a point instead of 1.6 s for a dvc process)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with Repo(str(cwd)) as repo, contextlib.redirect_stdout(io.StringIO()):  # DVC's "Queued experiment ..." lines
        for point in points:
            try:
                repo.experiments.run(params=[f"{k}={v}" for k, v in point.sets.items()], queue=True, name=point.name)
            except DvcException as exc:
                raise L2labError(f"dvc exp run --queue -n {point.name} failed: {first_line(exc)}") from None
            log.info("queued %s (%s)", point.name, ", ".join(f"{k}={v}" for k, v in point.sets.items()))


def retrain(point: Point, cwd: Path) -> None:
    """Queue a point again with its training forced, under the same name (its empty first try goes).

    For a point whose params, code and data equal the workspace's dvc.lock, `dvc exp run`
    skips train and evaluate ("didn't change, skipping") and calls the experiment a
    success with the lock's outputs: no run of its own, no metrics of its own.
    """
    log.warning("%s: DVC found it equal to the workspace's dvc.lock (same params, code and data) and skipped its "
                "training; queued again with training forced (dvc exp run %s)", point.name, " ".join(RETRAIN))
    dvc("queue", "remove", point.name, cwd=cwd)  # the empty first try's queue entry; --force replaces its experiment
    dvc("exp", "run", "--queue", *RETRAIN, "-n", point.name, *set_args(point.sets), cwd=cwd)
    if live_workers(cwd) == 0:  # the workers left: the queue was empty for 10 s
        restart_workers(1, cwd)


def workspace_state(cwd: Path) -> str:
    """A digest of what `dvc exp run --queue` copies into an experiment: HEAD, the changes to tracked
    files and the untracked files git does not ignore. Equal digests: a point queued now runs the same code."""
    digest = hashlib.sha256(git("rev-parse", "HEAD", cwd=cwd).encode())
    digest.update(checked(["git", "diff", "HEAD", "--binary"], "git diff", cwd).stdout.encode())
    for name in git("ls-files", "--others", "--exclude-standard", "-z", cwd=cwd).split("\0"):
        if name and (cwd / name).is_file():
            digest.update(name.encode() + b"\0" + (cwd / name).read_bytes())
    return digest.hexdigest()


WORKER_IDLE_SECONDS = 10.0  # a DVC queue worker with nothing to do leaves after this (dvc-task's TemporaryWorker)


def start_workers(jobs: int, cwd: Path) -> None:
    """`dvc queue start -j N`, waited for."""
    with _queue_start(jobs, cwd):
        pass


def restart_workers(jobs: int, cwd: Path) -> None:
    """Start the workers again once none is alive (follow.wait's restart): the control messages left
    for the ones that went are cleared first (clear_stale_controls), or the new ones could obey them."""
    clear_stale_controls(cwd)
    start_workers(jobs, cwd)


@contextlib.contextmanager
def workers_starting(jobs: int, cwd: Path) -> Iterator[None]:
    """`dvc queue start -j N` running while the block runs: its workers start (1.5-2 s of DVC's imports)
    while a sweep reserves and queues its first points. A worker waits WORKER_IDLE_SECONDS for a first
    task: if the block took that long and they left, they are started once more after it."""
    started = time.monotonic()
    with _queue_start(jobs, cwd):
        yield
    if time.monotonic() - started >= WORKER_IDLE_SECONDS and live_workers(cwd) == 0:
        start_workers(jobs, cwd)


@contextlib.contextmanager
def _queue_start(jobs: int, cwd: Path) -> Iterator[None]:
    """`dvc queue start -j N` while the block runs, waited for after it; its failure is one L2labError.

    The workers it forks outlive it and keep inherited pipes open, so its output goes to a file,
    not a pipe, or waiting for it would wait for the whole queue."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([dvc_command(), "queue", "start", "-j", str(jobs)], cwd=cwd, stdout=out, stderr=out)
        try:
            yield
        finally:
            status = proc.wait()
        if status != 0:
            out.seek(0)
            lines = out.read().strip().splitlines() or ["no output"]
            raise L2labError(f"dvc queue start -j {jobs} failed: {lines[-1]}")


def queue_state(cwd: Path) -> tuple[dict[str, str], int]:
    """(experiment name -> Queued/Running/Success/Failed, live queue workers): the states through DVC's
    Python API, the workers from the process table (live_workers)."""
    from dvc.repo import Repo

    logging.getLogger("kombu").setLevel(logging.ERROR)  # "No hostname was supplied": DVC's local queue needs none
    with Repo(str(cwd)) as repo:
        queue = repo.experiments.celery_queue
        states: dict[str, str] = {}
        for entry in queue.status():  # running, queued, failed, then succeeded: a name's first entry is its latest
            if entry.get("name"):
                states.setdefault(entry["name"], entry["status"])
    return states, live_workers(cwd)


def live_workers(cwd: Path) -> int:
    """How many of the repo's DVC queue workers are alive (worker_processes)."""
    return len(worker_processes(cwd))


def worker_processes(cwd: Path) -> list:
    """The repo's live DVC queue workers (`dvc exp queue-worker`, started in its root), as psutil processes.

    Read from the process table: DVC's own count (`queue.worker_status()`, Celery's inspect
    broadcast) waits out Celery's reply timeout on every call, and a sweep reads it at each poll.
    """
    import psutil

    root = os.path.realpath(cwd)
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        cmdline, where = proc.info["cmdline"] or [], proc.info["cwd"]
        if ("queue-worker" in cmdline and "exp" in cmdline and where and os.path.realpath(where) == root
                and proc.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(proc)
    return found


def fresh_workers(cwd: Path, grace: float = 30.0) -> None:
    """Before a sweep queues its first point: stop the queue workers an earlier sweep left idle, and clear
    the control messages left for workers that are gone (clear_stale_controls).

    A worker waits 10 s for work after the queue empties, and `dvc queue start` starts none
    while one of that name lives: a sweep started within those 10 s would run its points in the
    earlier sweep's worker, with that sweep's environment (its MLFLOW_TRACKING_URI, its warm
    stage server, gone since, so every stage imported for itself). Workers that have points
    queued or running are another sweep's, still going in this repo: left alone, with a warning.
    """
    import psutil

    workers = worker_processes(cwd)
    if workers:
        busy = [name for name, state in queue_state(cwd)[0].items() if state in ("Queued", "Running")]
        if busy:
            log.warning("this repo's DVC queue is still running %d experiment(s) of another sweep (%s): this "
                        "sweep's points wait behind them, in its worker(s)", len(busy), ", ".join(busy[:3]))
            return
        for proc in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()  # idle: nothing queued or running, so no experiment is cut short
        _, alive = psutil.wait_procs(workers, timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        log.info("stopped %d idle DVC queue worker(s) left by an earlier sweep (they hold its environment)",
                 len(workers))
    clear_stale_controls(cwd)


def stop_points(names: list[str], cwd: Path, grace: float = 120.0) -> None:
    """Take a stopped sweep's points out of the queue: queued ones removed, running ones interrupted (Ctrl-C).

    An interrupted point's train stage ends its MLflow run KILLED; this waits (up to
    grace seconds) until none of the points runs any more.
    """
    states, _ = queue_state(cwd)
    queued = [n for n in names if states.get(n) == "Queued"]
    running = [n for n in names if states.get(n) == "Running"]
    if queued:
        dvc("queue", "remove", *queued, cwd=cwd)
        log.info("removed from the queue: %s", ", ".join(queued))
    if running:
        subprocess.run([dvc_command(), "queue", "kill", *running], cwd=cwd, capture_output=True, text=True)
        log.info("interrupted: %s", ", ".join(running))
    deadline = time.monotonic() + grace
    while running and time.monotonic() < deadline:
        time.sleep(1.0)
        states, _ = queue_state(cwd)
        running = [n for n in running if states.get(n) == "Running"]
    if running:
        subprocess.run([dvc_command(), "queue", "kill", "--force", *running], cwd=cwd, capture_output=True, text=True)
        log.warning("killed (did not stop within %.0f s): %s", grace, ", ".join(running))


def clear_stale_controls(cwd: Path) -> int:
    """Delete control messages (shutdown, inspect) waiting for queue workers that are gone; return how many.

    DVC's local queue is Celery on a filesystem broker, and `dvc queue start` names its
    workers the same every time (dvc-exp-<repo hash>-<n>@localhost). A `dvc queue stop`
    sent after they left (they leave by themselves after 10 s idle) waits in the broker,
    and the next workers of those names obey it after their first task: a sweep then
    stalls with points still queued (the symptom of DVC issue #10562). Called only when
    no worker is alive, so no live worker's message is lost; control messages never hold
    tasks.
    """
    inbox = cwd / ".dvc" / "tmp" / "exps" / "celery" / "broker" / "in"
    stale = sorted(inbox.glob("*.celery.pidbox.msg")) if inbox.is_dir() else []
    for message in stale:
        message.unlink(missing_ok=True)
    if stale:
        log.info("removed %d stale control message(s) left in DVC's queue broker", len(stale))
    return len(stale)
