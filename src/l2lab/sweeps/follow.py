"""Following a sweep to its end: poll its points' states, log progress, hand each finished point on."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from l2lab.errors import L2labError
from l2lab.sweeps.grid import Point

log = logging.getLogger(__name__)


POLL_SECONDS = 5.0  # between reads of DVC's queue (each opens the repo: about 0.3 s of a core)
SETTLE_SECONDS = 0.5  # between the cheap checks that end a wait early (settled)


STALLED_POLLS = 6  # polls with nothing running and no worker alive before a sweep gives up


RESTARTS = 3  # times a sweep starts the queue's workers again when they left with its points still queued


PROGRESS_SECONDS = 30.0  # a progress line at least this often while points run


DONE = ("Success", "Failed")


@dataclass(frozen=True)
class Progress:
    """How far a running point is: epochs logged out of its epochs, and its latest val_accuracy."""

    epochs_done: int
    epochs: int
    val_accuracy: float | None


def progress_line(done: int, total: int, failed: int, running: dict[str, Progress], elapsed: float) -> str:
    """One progress line: counts, each running point's epoch and val_accuracy, and the time left."""
    line = f"{done}/{total} done ({failed} failed), {len(running)} running"
    for name, p in running.items():
        val = f", val_accuracy {p.val_accuracy:.4f}" if p.val_accuracy is not None else ""
        line += f"; {name}: epoch {p.epochs_done}/{p.epochs}{val}"
    # In points. Training is most of a point, not all: start-up and evaluation come after the
    # last epoch, so a point whose epochs are all done still counts as 90% done.
    finished = done + sum(0.9 * p.epochs_done / p.epochs for p in running.values() if p.epochs)
    if finished > 0 and done < total:
        left = elapsed / finished * (total - finished)
        line += f"; about {left / 60:.0f} min left" if left >= 90 else f"; about {left:.0f} s left"
    return line


AGAIN = "Queued again"  # what on_done returns for a point it put back in the queue


def wait(points: list[Point], cwd: Path, on_done: Callable[[str, str], str | None],
         read_state: Callable[[Path], tuple[dict[str, str], int]],
         progress: Callable[[str], Progress] = lambda name: Progress(0, 0, None),
         settled: Callable[[], bool] = lambda: False, total: int | None = None,
         restart: Callable[[], None] | None = None) -> dict[str, str]:
    """Poll the queue until every point is done; call on_done(name, status) once for each.

    on_done returns the point's final status (None: the queue's), or AGAIN when it queued
    the point again: it is then followed until it is done once more.

    Logs a progress line whenever the counts change and at least every PROGRESS_SECONDS
    while points run, with each running point's epoch (from progress(name)). A running
    point is alive whatever the worker count says (DVC can report 0 workers while a
    task runs); the sweep gives up only when none of its points runs and no worker is
    left for STALLED_POLLS polls in a row. Between two reads of the queue it waits
    POLL_SECONDS, or less once settled() says that nothing is left running (the last
    points' runs have ended, and DVC is committing them): the sweep's end is not held
    back by a poll.

    restart() starts the workers again (`dvc queue start`), up to RESTARTS times, when none
    is alive, none of the points runs and some are still queued: a DVC worker checks every
    10 s whether it has work, and one that checks in the moment between taking a point and
    the next being queued (a tune queues its next trial when one ends) leaves after the point
    it holds, with the next one still in the queue.

    on_done may append points to the list (a tune asks for its next trial when one ends): they are followed
    too, until total (default: the points given) are done.
    """
    seen: dict[str, str] = {}
    last_counts, last_logged, started = "", 0.0, time.monotonic()
    idle_polls, restarts = 0, 0
    total = total if total is not None else len(points)
    while len(seen) < total:
        names = [p.name for p in points]
        states, workers = read_state(cwd)
        for name in names:
            status = states.get(name)
            if name not in seen and status in DONE:
                final = on_done(name, status) or status
                if final != AGAIN:
                    seen[name] = final
        names = [p.name for p in points]
        running = sum(states.get(n) == "Running" for n in names)
        stalled = len(seen) < len(names) and running == 0 and workers == 0
        queued = [n for n in names if n not in seen and states.get(n) == "Queued"]
        if stalled and queued and restart is not None and restarts < RESTARTS:
            restarts += 1
            log.warning("the DVC queue's workers left with %d point(s) still queued (%s): starting them again",
                        len(queued), ", ".join(queued))
            restart()
            stalled = False
        idle_polls = idle_polls + 1 if stalled else 0
        if idle_polls > STALLED_POLLS:
            left = [n for n in names if n not in seen]
            raise L2labError(f"the DVC queue has no workers left but {len(left)} point(s) are not done "
                             f"({', '.join(left)}); run `dvc queue start`, then `l2lab report`")
        failed = sum(s == "Failed" for s in seen.values())
        counts = f"{len(seen)}/{failed}/{running}"
        now = time.monotonic()
        if counts != last_counts or (running and now - last_logged >= PROGRESS_SECONDS):
            live = {n: progress(n) for n in names if states.get(n) == "Running"}
            log.info("sweep progress: %s", progress_line(len(seen), total, failed, live, now - started))
            last_counts, last_logged = counts, now
        if len(seen) < total:
            deadline, step = time.monotonic() + POLL_SECONDS, min(SETTLE_SECONDS, POLL_SECONDS)
            time.sleep(step)
            while time.monotonic() < deadline and not settled():
                time.sleep(step)
    return seen
