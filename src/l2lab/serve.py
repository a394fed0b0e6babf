"""`l2lab serve`: a logged model over HTTP on loopback, MLflow's own scoring app with bounds around it.

`mlflow models serve` reads a request body whole, however large, answers bad JSON with
the whole body echoed back, and runs the app in a uvicorn child process that outlives a
SIGTERM to its parent. This serves the same app (the same /invocations, /ping, /health,
/version) in this one process: a body over MAX_BODY_BYTES gets 413 before it is read, JSON
nested deeper than MAX_DEPTH gets 400 (not the app's RecursionError and 500), an error
answer's message gives the reason first (not MLflow's restatement of the input) and is cut to
MAX_ERROR_CHARS characters (its head and its tail) without the stack trace, and SIGTERM or
Ctrl-C stops the server.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Awaitable, Callable

from l2lab.errors import L2labError, first_line
from l2lab.process import stop_requested
from l2lab.classifier import MAX_IMAGES

log = logging.getLogger(__name__)

# A JSON request of MAX_IMAGES images: 3,072 values each, at most 5 bytes apiece ("255, "), and brackets.
MAX_BODY_BYTES = MAX_IMAGES * 32 * 32 * 3 * 5 + (1 << 20)
MAX_ERROR_CHARS = 2_000  # of an error's message: MLflow echoes the input it could not parse
MAX_DEPTH = 16  # JSON nesting a request may have: images are 4 levels deep under {"inputs": ...}
PREDICT_FAILED = re.compile(r"(?s)^Failed to predict data '.*'\. ?\nError: (.*)$")  # MLflow: the input, then why

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class TooLarge(Exception):
    """The request body grew past the bound while it was read."""


class TooDeep(Exception):
    """The request's JSON nests deeper than MAX_DEPTH (5,000 levels made the app fail with a RecursionError)."""


class Depth:
    """The deepest JSON nesting seen so far in a body read in chunks (brackets outside strings)."""

    def __init__(self) -> None:
        self.now = self.deepest = 0
        self.in_string = self.escaped = False

    def feed(self, chunk: bytes) -> int:
        for byte in chunk:
            if self.in_string:
                self.escaped, self.in_string = (False, True) if self.escaped else (byte == 0x5C, byte != 0x22)
            elif byte == 0x22:
                self.in_string = True
            elif byte in (0x5B, 0x7B):  # [ {
                self.now += 1
                self.deepest = max(self.deepest, self.now)
            elif byte in (0x5D, 0x7D):
                self.now -= 1
        return self.deepest


def _answer(status: int, body: dict[str, Any]) -> list[Message]:
    data = json.dumps(body).encode()
    return [{"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]},
            {"type": "http.response.body", "body": data}]


def too_large(size: int | None) -> list[Message]:
    got = f"{size} bytes" if size is not None else "more"
    return _answer(413, {"error_code": "REQUEST_TOO_LARGE",
                         "message": f"a request may hold at most {MAX_IMAGES} images ({MAX_BODY_BYTES} bytes of JSON); "
                                    f"got {got}: split it into several requests"})


def shortened(body: bytes) -> bytes:
    """An error answer with its message cut to MAX_ERROR_CHARS and no stack trace."""
    try:
        error = json.loads(body)
    except ValueError:
        return body[:MAX_ERROR_CHARS]
    if not isinstance(error, dict):
        return body[:MAX_ERROR_CHARS]
    error.pop("stack_trace", None)
    message = str(error.get("message", ""))
    reason = PREDICT_FAILED.match(message)
    if reason:  # the reason alone: the input it restates is the client's own
        message = error["message"] = reason.group(1).strip()
    if len(message) > MAX_ERROR_CHARS:  # its head and its tail: MLflow puts the input first, the model's reason last
        half = MAX_ERROR_CHARS // 2
        error["message"] = (message[:half] + f" … ({len(message) - 2 * half} more characters cut) … "
                            + message[-half:])
    return json.dumps(error).encode()


class Bounded:
    """ASGI middleware: refuse bodies over max_body (413, before they are read), shorten error answers."""

    def __init__(self, app: Callable, max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            for message in too_large(int(length)):
                await send(message)
            return None
        read, started, held, depth = 0, False, [], Depth()

        async def bounded_receive() -> Message:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > self.max_body:
                raise TooLarge()
            if depth.feed(message.get("body", b"")) > MAX_DEPTH:
                raise TooDeep()
            return message

        async def shortened_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400:  # held until its body is whole, then shortened
                    held.append(message)
                    return
            elif held:
                held.append(message)
                if message.get("more_body"):
                    return
                start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
                body = shortened(body)
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        try:
            await self.app(scope, bounded_receive, shortened_send)
        except TooLarge:
            if not started:
                for message in too_large(None):
                    await send(message)
        except TooDeep:
            if not started:
                for message in _answer(400, {"error_code": "INVALID_PARAMETER_VALUE",
                                             "message": f"the request nests more than {MAX_DEPTH} levels deep; images "
                                                        "are 4 (N, 32, 32, 3) under {\"inputs\": ...}"}):
                    await send(message)


def serve(model_uri: str, port: int) -> None:
    """Serve the model on 127.0.0.1:port until SIGTERM or Ctrl-C."""
    import mlflow.pyfunc
    import uvicorn
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    from l2lab.tracking.store import bind_fluent, connect

    bind_fluent(connect())  # runs:/ and models:/ URIs resolve in this repo's store
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        why = first_line(exc, 300) or type(exc).__name__
        raise L2labError(f"cannot load the model {model_uri}: {why}; give --model runs:/<run id>/model, or run "
                         "`l2lab report` on a sweep to register a champion") from None
    log.info("serving %s on http://127.0.0.1:%d/invocations (at most %d images a request)", model_uri, port, MAX_IMAGES)
    # In-flight requests get 5 s to finish once a stop arrives; predictions are bounded by MAX_IMAGES.
    uvicorn.run(Bounded(scoring_server.init(model)), host="127.0.0.1", port=port, timeout_graceful_shutdown=5,
                log_level="warning")
    if stop_requested() is not None:  # uvicorn stops on the signal and swallows it: exit as a stopped stage does
        raise KeyboardInterrupt()
