"""Thin DVC stage entry points: parse arguments, load params, call one library function."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Callable

from l2lab.errors import L2labError, request_stop, stop_requested

log = logging.getLogger("l2lab")


def setup_logging() -> None:
    """One line per event on stderr, with a timestamp."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that runs end KILLED and temporary files are removed."""


def _on_stop_signal(signum: int, frame: object) -> None:
    request_stop(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def run_stage(body: Callable[[], int | None]) -> None:
    """Run a stage body and exit with its status (None: 0); a known failure is one 'error:' line and 1.

    Ctrl-C and SIGTERM unwind through the body (so MLflow runs end KILLED and no
    half-written output is left), then exit 130 or 143 as shells expect.
    """
    setup_logging()
    signal.signal(signal.SIGTERM, _on_stop_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where a shell made it ignored
        signal.signal(signal.SIGINT, _on_stop_signal)
    try:
        status = body()
    except L2labError as exc:
        if stop_requested() is None:
            log.error("error: %s", exc)
            sys.exit(1)
        stopped(exc)
    except (KeyboardInterrupt, Exception) as exc:
        if stop_requested() is None and not isinstance(exc, KeyboardInterrupt):
            raise
        stopped(exc)
    sys.exit(status or 0)


def stopped(exc: BaseException) -> None:
    """The one line and exit status of a stage that a signal stopped, whatever error that surfaced as."""
    terminated = isinstance(exc, Terminated) or stop_requested() == signal.SIGTERM
    log.error("error: %s", "terminated (SIGTERM)" if terminated else "interrupted")
    sys.exit(143 if terminated else 130)

