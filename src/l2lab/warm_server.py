"""The warm stage server (l2lab.warm has the protocol and the stage's side): imports what the train and
evaluate stages import, once, then forks a child per stage run that a sweep's points hand over."""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import random
import runpy
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from l2lab.process import setup_logging
from l2lab.warm import ENV, MAX_REQUEST, PID_FILE, STAGES, identity

log = logging.getLogger(__name__)

STOP_TIMEOUT = 60.0  # seconds a stopping server waits for running stages (a sweep has stopped them already)
REAP_INTERVAL = 0.2  # seconds between checks for ended children (and for the server's parent)


class Server:
    """Forks a child per stage request; one thread, so that no lock is held by another thread at a fork."""

    def __init__(self, path: Path, code: dict[str, Any]) -> None:
        self.path = path
        self.identity = code  # of the code it imported
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(str(path))
        self.listener.listen(64)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.children: dict[int, socket.socket] = {}  # child pid -> the connection of the stage it runs

    def serve(self, parent: int) -> None:
        """Until SIGTERM, or until the process that started it is gone; then no new stage, and it waits for
        the running ones to end (their processes wait for them: closing on them would fail them)."""
        stopping: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
        while not stopping and os.getppid() == parent:
            for key, _ in self.selector.select(REAP_INTERVAL):
                if key.fileobj is self.listener:
                    self.accept()
                else:
                    self.client_gone(key.fileobj)
            self.reap()
        self.selector.unregister(self.listener)
        self.listener.close()
        while self.children:
            for key, _ in self.selector.select(REAP_INTERVAL):
                self.client_gone(key.fileobj)
            self.reap()

    def accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            message, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
            request = json.loads(message)
        except (OSError, ValueError):
            conn.close()
            return
        if request.get("identity") != self.identity or request.get("module") not in STAGES or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            conn.send(json.dumps({"refused": "other code or interpreter"}).encode())
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.run_child(request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ)
        conn.send(json.dumps({"pid": pid}).encode())

    def client_gone(self, conn: Any) -> None:
        """A stage's process went away (killed with SIGKILL) before its child ended: end the child as well."""
        try:
            if conn.recv(1):
                return
        except OSError:
            pass
        for pid, held in self.children.items():
            if held is conn:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.selector.unregister(conn)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            try:
                conn.send(json.dumps({"status": code if code >= 0 else 128 - code}).encode())
            except OSError:
                pass
            try:
                self.selector.unregister(conn)
            except (KeyError, ValueError):
                pass
            conn.close()

    def run_child(self, request: dict[str, Any], fds: list[int]) -> None:
        """In the forked child: become the stage's process (its stdio, folder, environment, arguments), run it, exit."""
        code: int = 1
        try:
            self.selector.close()
            self.listener.close()
            for conn in self.children.values():
                conn.close()
            for signum in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            ignored = request.get("sigint_ignored")
            signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = list(request["argv"])
            random.seed()  # as a fresh process would be; the stage seeds what its numbers depend on
            import numpy as np

            np.random.seed()
            # The stage's module is loaded already (preload); running it again as __main__, as `python -m`
            # does, is what is meant.
            warnings.filterwarnings("ignore", message=".* found in sys.modules after import of package",
                                    category=RuntimeWarning)
            log.info("%s runs in a child of the warm stage server %d (its imports done once)", request["module"],
                     os.getppid())
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                sys.stderr.write(exc.code + "\n")
        except BaseException:  # noqa: BLE001  (what a fresh process would print before exiting 1)
            traceback.print_exc()
        finally:
            try:
                atexit._run_exitfuncs()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)


def preload() -> None:
    """Import what the train and evaluate stages import, in the order they do (TensorFlow quietly first)."""
    from l2lab.imports import pyplot, quiet_tensorflow

    quiet_tensorflow()
    import keras  # noqa: F401
    import mlflow.pyfunc  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import optuna  # noqa: F401  (a tune trial's train stage reports to its study)
    import pandas  # noqa: F401

    import l2lab.devices  # noqa: F401
    import l2lab.fit  # noqa: F401
    import l2lab.scores  # noqa: F401
    import l2lab.classifier  # noqa: F401
    import l2lab.stages.evaluate  # noqa: F401
    import l2lab.stages.train  # noqa: F401
    import l2lab.studies  # noqa: F401
    import l2lab.tracking.runs  # noqa: F401
    import l2lab.tracking.store  # noqa: F401

    pyplot()


@contextmanager
def warm_server(cwd: Path) -> Iterator[str | None]:
    """A warm stage server for the stages run under cwd (with cwd/src first on its path, as the stage
    commands have it) while the block runs; yield the value of ENV, set in os.environ at once (queue
    workers started in the block inherit it; a stage that starts before the server listens waits for
    it), or None on other systems than Linux and where L2LAB_WARM=0 (every stage imports for itself).
    When the block ends it stops, letting running stages finish."""
    if sys.platform != "linux" or os.environ.get("L2LAB_WARM", "1") == "0":
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="l2lab-warm-"))  # short: a socket path holds at most 107 bytes
    path, log_file = folder / "stages.sock", folder / "server.log"
    src = cwd / "src" if (cwd / "src" / "l2lab").is_dir() else Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    saved = os.environ.get(ENV)
    with log_file.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "l2lab.warm_server", "--socket", str(path)], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    (folder / PID_FILE).write_text(str(proc.pid))
    os.environ[ENV] = str(path)
    log.info("warm stage server %d starting: train and evaluate will skip their imports", proc.pid)
    try:
        yield str(path)
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved
        if proc.poll() is not None and proc.returncode != 0:
            log.warning("the warm stage server ended early (status %d; it said: %s); the stages imported for "
                        "themselves", proc.returncode, last_line(log_file))
        proc.terminate()  # it lets running stages end first
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1] if lines else "nothing"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", type=Path, required=True, help="where to listen (a Unix socket path)")
    args = parser.parse_args()
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the stages through their own processes
    setup_logging()  # before TensorFlow's import, as in a stage (run_stage): the children log as stages do
    before = identity()
    preload()
    if identity() != before:  # a file changed while it was imported: what it holds is not known
        log.error("error: l2lab's source changed while the warm stage server imported it; not serving")
        sys.exit(1)
    server = Server(args.socket.with_name(args.socket.name + ".tmp"), before)
    os.replace(server.path, args.socket)  # appears only once listening: warm_server waits for the name
    server.path = args.socket
    try:
        server.serve(parent)
    finally:
        args.socket.unlink(missing_ok=True)
    # Served, no stage running, nothing left to write: skip the interpreter's teardown of TensorFlow,
    # which the sweep would wait for before its report.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
