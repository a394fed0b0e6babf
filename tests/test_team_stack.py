"""The team stack's start-up on its own: ports, a server that exits, a port taken before its server binds it.

Real processes (Python's http.server as the server), no team extras needed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from l2lab.errors import L2labError
from l2lab.team import stack as team_stack


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


def stop(stack: team_stack.Stack) -> None:
    for pid in stack.pids.values():
        team_stack._stop_group(pid, grace=5)


def test_ports_lie_below_the_ephemeral_range_each_with_its_grpc_twin_free() -> None:
    floor = team_stack._ephemeral_floor()
    ports = team_stack.free_ports(8)
    assert len(set(ports)) == 8
    for port in ports:
        if floor - team_stack.GRPC_OFFSET > 11000:  # room below the range (Linux's default 32768)
            assert 10000 <= port and port + team_stack.GRPC_OFFSET < floor
        assert team_stack._free(port) and team_stack._free(port + team_stack.GRPC_OFFSET)


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


def test_a_server_that_never_answers_is_given_up_on_naming_what_was_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(team_stack, "START_SECONDS", 3.0)
    stack = a_stack(tmp_path)
    try:
        with pytest.raises(L2labError, match=r"demo server did not come up in 3 s \(no bucket yet; its log's last "
                                             r"line: waiting for volumes\); see "):
            team_stack.serve(stack, "demo", [sys.executable, "-c", "import time; print('waiting for volumes', "
                                             "flush=True); time.sleep(60)"], tmp_path / "demo.log", lambda: "no bucket yet")
        assert team_stack._alive(stack.pids["demo"])  # left for `down`, which stops what stack.pids names
    finally:
        stop(stack)
    assert not team_stack._alive(stack.pids["demo"])


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
