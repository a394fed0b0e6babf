"""The team stack's start-up on its own: ports, a server that exits, a port taken before its server binds it.

Real processes (Python's http.server as the server); needs mirakuru and port-for (the team extras), not the
servers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("mirakuru", reason="team extras not installed (make install-team)")

import port_for  # noqa: E402
from mirakuru.base import ENV_UUID  # noqa: E402
from mirakuru.base_env import processes_with_env  # noqa: E402

from l2lab.errors import L2labError
from l2lab.team import stack as team_stack  # noqa: E402


def a_stack(tmp_path: Path) -> team_stack.Stack:
    return team_stack.Stack(str(tmp_path), str(tmp_path / "pg"), 0, "pw", 0, [0, 0, 0], "key", "secret", 0, {})


def answer_missing(port: int):
    def missing() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return None
        except OSError as exc:
            return str(exc)
    return missing


def marked(mark: str, settle: float = 5.0) -> set[int]:
    """The processes carrying a server's mark, after up to settle seconds for killed ones to be reaped."""
    deadline = time.monotonic() + settle
    while (found := processes_with_env(ENV_UUID, mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def stop(stack: team_stack.Stack) -> None:
    for name, pid in stack.pids.items():
        team_stack.stop_server(pid, stack.marks.get(name), grace=5)


def test_ports_lie_below_the_ephemeral_range_each_with_its_grpc_twin_free() -> None:
    floor = team_stack._ephemeral_floor()
    ports = team_stack.free_ports(8)
    assert len(set(ports)) == 8
    for port in ports:
        if floor - team_stack.GRPC_OFFSET > 11000:  # room below the range (Linux's default 32768)
            assert 10000 <= port and port + team_stack.GRPC_OFFSET < floor
        assert not port_for.port_is_used(port) and not port_for.port_is_used(port + team_stack.GRPC_OFFSET)


def test_a_server_whose_port_was_taken_starts_again_on_another(tmp_path: Path, caplog) -> None:
    stack = a_stack(tmp_path)
    log_file = tmp_path / "server.log"
    with socket.socket() as squatter:  # takes the port after it was chosen, before the server binds it
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        ports = [squatter.getsockname()[1]]

        def start() -> None:
            team_stack.serve(stack, "http", [sys.executable, "-m", "http.server", str(ports[-1]), "--bind",
                                             "127.0.0.1"], log_file, answer_missing(ports[-1]))

        try:
            with caplog.at_level(logging.WARNING):
                team_stack.on_free_ports(start, lambda: ports.append(team_stack.free_ports(1)[0]))
        finally:
            stop(stack)
    assert len(ports) == 2 and ports[1] != ports[0]
    assert "http server exited" in caplog.text and "starting it again on other ports" in caplog.text
    assert "Address already in use" in log_file.read_text()


def test_ports_taken_every_time_end_in_one_error(tmp_path: Path) -> None:
    stack = a_stack(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        start = lambda: team_stack.serve(stack, "http", [sys.executable, "-m", "http.server", str(port), "--bind",  # noqa: E731
                                                         "127.0.0.1"], tmp_path / "server.log", answer_missing(port))
        with pytest.raises(L2labError, match="taken 2 times in a row"):
            team_stack.on_free_ports(start, lambda: None, tries=2)


def test_a_server_that_exits_fails_at_once_with_its_last_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(team_stack, "START_SECONDS", 600.0)  # an error naming the exit cannot be the deadline's
    stack = a_stack(tmp_path)
    argv = [sys.executable, "-c", "print('starting'); print('fatal: no such config', flush=True); raise SystemExit(3)"]
    with pytest.raises(L2labError) as raised:
        team_stack.serve(stack, "demo", argv, tmp_path / "demo.log", lambda: "not yet")
    assert not isinstance(raised.value, team_stack.PortTaken)
    assert str(raised.value) == f"demo server exited (fatal: no such config); see {tmp_path / 'demo.log'}"


def test_a_server_that_never_answers_is_given_up_on_naming_what_was_missing_and_stopped(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    monkeypatch.setattr(team_stack, "START_SECONDS", 3.0)
    stack = a_stack(tmp_path)
    # the server starts a worker of its own, in its own session (out of reach of a signal to the server's group)
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
              "start_new_session=True); print('waiting for volumes', flush=True); time.sleep(60)")
    with pytest.raises(L2labError, match=r"demo server did not come up in 3 s \(no bucket yet; its log's last "
                                         r"line: waiting for volumes\); see "):
        team_stack.serve(stack, "demo", [sys.executable, "-c", script], tmp_path / "demo.log", lambda: "no bucket yet")
    assert "demo" not in stack.pids
    assert marked(stack.marks["demo"]) == set()  # the server and its worker both stopped


def test_a_started_server_outlives_this_process_until_down_stops_it_and_its_workers(tmp_path: Path) -> None:
    """`l2lab team up` returns with its servers running; `down`, another process, finds each one's processes."""
    port, = team_stack.free_ports(1)
    folder = tmp_path / "stack"
    folder.mkdir()
    starter = f"""
import sys, json, dataclasses
from pathlib import Path
from l2lab.team import stack as team_stack
stack = team_stack.Stack({str(folder)!r}, {str(tmp_path / 'pg')!r}, 0, "pw", 0, [0, 0, 0], "key", "secret", 0, {{}})
script = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
          "start_new_session=True); import http.server as h; h.test(h.SimpleHTTPRequestHandler, port={port}, "
          "bind='127.0.0.1')")
def up():
    import urllib.request
    try:
        urllib.request.urlopen("http://127.0.0.1:{port}/", timeout=2)
    except OSError as exc:
        return str(exc)
team_stack.serve(stack, "mlflow", [sys.executable, "-c", script], Path({str(tmp_path / 'http.log')!r}), up)
(Path({str(folder)!r}) / "stack.json").write_text(json.dumps(dataclasses.asdict(stack)))
"""
    subprocess.run([sys.executable, "-c", starter], check=True, timeout=60)
    stack = team_stack.load(folder)
    mark = stack.marks["mlflow"]
    running = processes_with_env(ENV_UUID, mark)
    assert stack.pids["mlflow"] in running and len(running) == 2  # the server and its worker, past the starter's exit
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
        assert answer.status == 200
    team_stack.down(folder)
    assert marked(mark) == set()
    assert not folder.exists()


def test_a_failed_up_keeps_the_logs_its_error_names_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / ".team"
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "s3.log").write_text("F master.go:212 Master startup error\n")
    (folder / "s3").mkdir()
    (folder / "env").write_text("export A=1\n")
    stack = a_stack(folder)
    stack.pg_data = str(tmp_path / "pg")
    (tmp_path / "pg").mkdir()
    (folder / "stack.json").write_text(json.dumps(dataclasses.asdict(stack)))
    team_stack.down(folder, keep_logs=True)
    assert [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*"))] == ["logs", "logs/s3.log"]
    assert not (tmp_path / "pg").exists()
    (folder / "stack.json").write_text(json.dumps(dataclasses.asdict(stack)))
    team_stack.down(folder)  # `l2lab team down`: all of it
    assert not folder.exists()
