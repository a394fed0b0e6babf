"""A loopback HTTP server for download tests: serves bytes, and misbehaves on request."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    ranges: bool = True  # honour "Range: bytes=N-"
    drop_after: int | None = None  # close the connection after this many body bytes...
    drops: int = 0  # ...this many times
    stall: float = 0.0  # seconds to sit silent before answering
    auth: str | None = None  # the Authorization header required (401 without it)
    redirect: str | None = None  # answer 302 with this Location
    requests: list[dict[str, str]] = field(default_factory=list)


def wait_http(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until a server process answers url (any HTTP status); fail if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server for {url} exited"
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer")


def stop(server: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM a server the test started and wait for it; SIGKILL it past grace seconds (mlflow's server took over
    30 s to exit once, with a study training beside the suite on 2 cores)."""
    server.terminate()
    try:
        server.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=30)


def free_port() -> int:
    """A loopback port nobody listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackServer:
    """ThreadingHTTPServer on 127.0.0.1 with a route table; use as a context manager."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # stalled handlers must not hold up shutdown
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def add(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.url(path)

    def __enter__(self) -> "LoopbackServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                route.requests.append(dict(self.headers))
                if route.stall:
                    time.sleep(route.stall)
                    return
                if route.redirect is not None:
                    self.send_response(302)
                    self.send_header("Location", route.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.auth is not None and self.headers.get("Authorization") != route.auth:
                    self.send_error(401)
                    return
                if route.status != 200:
                    self.send_error(route.status)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if match and route.ranges:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(route.body) - 1}/{len(route.body)}")
                else:
                    self.send_response(200)
                body = route.body[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if route.drop_after is not None and route.drops > 0:
                    route.drops -= 1
                    self.wfile.write(body[: route.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Handler
