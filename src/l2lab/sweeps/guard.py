"""Run a command that must not outlive the worker that started it.

`python -m l2lab.sweeps.guard CMD...` starts CMD in a session of its own and watches its
standard input, a pipe whose other end only the worker holds. When the worker dies, even
by SIGKILL, the pipe closes and the guard interrupts CMD's whole process group (SIGINT:
the train stage then ends its MLflow run KILLED), then kills it if it lingers. Without it
an orphaned `dvc exp run` would finish a point that another worker is re-running. Ctrl-C
(SIGINT) or SIGTERM to the guard is passed on the same way; CMD killed by a signal takes
its whole group along (no stage outlives it). Exits with CMD's status.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

GRACE_SECONDS = 60.0  # after SIGINT, how long CMD has to end its runs before SIGKILL


def interrupt(proc: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """SIGINT to the command's process group; SIGKILL to it after grace seconds if it still runs."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def say(why: str) -> None:
    """One line in the command's output (the point's log): why it was stopped."""
    print(f"l2lab guard: {why}; interrupting the experiment (SIGINT to its processes)", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m l2lab.sweeps.guard CMD [ARG...]", file=sys.stderr)
        return 2
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    # Handlers first: exec resets them to the default in CMD, where an inherited "ignore" (a
    # worker started in the background by a shell ignores SIGINT) would stay and make CMD deaf.
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
    while proc.poll() is None:
        if stopping:
            say("stopped")
            interrupt(proc)
            break
        try:
            readable, _, _ = select.select([sys.stdin], [], [], 0.5)
        except InterruptedError:
            continue
        if readable and not os.read(sys.stdin.fileno(), 1024):  # EOF: the worker is gone
            say("its worker is gone")
            interrupt(proc)
            break
    status = proc.wait()
    if status < 0:  # killed: its stages, reparented to init, would train on
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
