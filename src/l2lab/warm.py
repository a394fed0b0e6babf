"""Warm stages, the stage's side: a sweep (or a worker of its own) starts one process that has imported
TensorFlow, Keras and MLflow once (l2lab.warm_server) and forks a fresh child for every train or evaluate
stage its points run, so that no point pays those imports (docs/performance.md has their cost).

The stage's command stays the one dvc.yaml gives (`python -m l2lab.stages.train ...`); its main() first
asks the server that $L2LAB_WARM_SERVER names to run it (`hand_over`), passing its own stdin, stdout
and stderr, working folder, environment and arguments, and forwarding the signals it gets (Ctrl-C,
SIGTERM) to the child. It runs the stage itself, as before, when the variable is unset, the server is
gone, or the server's code is not this checkout's: a stage's numbers never depend on the server.

Each child starts from the server's state after its imports, before any TensorFlow op ran, and sets
every seed itself (fit.make_deterministic), as a fresh process does; tests/test_warm.py checks that a
warm stage gives the cold one's numbers, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from l2lab.deps import code_digest

ENV = "L2LAB_WARM_SERVER"  # the server's socket; unset: every stage imports for itself
STAGES = ("l2lab.stages.train", "l2lab.stages.evaluate")  # the ones whose imports are worth sharing
PID_FILE = "server.pid"  # beside the socket: the server's process id, there from its start
START_WAIT = 120.0  # seconds a stage waits for a server that is still importing
MAX_REQUEST = 1 << 20  # bytes: arguments, working folder and environment of one stage run, as JSON


def identity() -> dict[str, Any]:
    """What must match between a stage and the server for the server to run it: the interpreter and,
    per stage, a digest of the l2lab source files it imports (deps.code_digest)."""
    return {"python": os.path.realpath(sys.executable), "version": sys.version,
            "code": {module: code_digest(module) for module in STAGES}}


def listening(path: Path) -> bool:
    """Whether the server at path listens, waiting while it is still importing (its process alive, its
    socket not there yet): a sweep starts its workers before its server is ready."""
    deadline = time.monotonic() + START_WAIT
    while not path.exists():
        try:
            os.kill(int((path.parent / PID_FILE).read_text()), 0)
        except (OSError, ValueError):
            return False  # no server there, or it ended before listening
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def hand_over(module: str) -> None:
    """Run this stage in the warm server and exit with its status; return (having done nothing) when
    there is no server to run it, so that the caller runs the stage itself."""
    path = os.environ.get(ENV)
    if not path or sys.platform != "linux":  # fork after TensorFlow's import is safe on Linux only
        return
    if not listening(Path(path)):
        return
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(path)
    except OSError:
        return  # the server is gone (its sweep ended) or never started: run here
    with conn:
        env = {k: v for k, v in os.environ.items() if k != ENV}  # the child runs the stage, not hand_over again
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # as a shell's background job has it
        request = {"module": module, "argv": sys.argv, "cwd": os.getcwd(), "env": env, "identity": identity(),
                   "sigint_ignored": ignored}
        try:
            socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
            reply = json.loads(conn.recv(MAX_REQUEST) or b"{}")
        except (OSError, ValueError):
            return
        if "pid" not in reply:
            return  # refused (other code, another interpreter): run here
        child = reply["pid"]

        def forward(signum: int, frame: object) -> None:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

        for signum in (signal.SIGTERM, signal.SIGHUP) if ignored else (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, forward)
        try:
            ended = json.loads(conn.recv(MAX_REQUEST) or b"{}")
        except (OSError, ValueError):
            ended = {}
    if "status" not in ended:
        sys.stderr.write(f"error: the warm stage server ended while it ran {module}; run the stage again\n")
        sys.exit(1)
    sys.exit(ended["status"])
