"""Thin DVC stage entry points: parse arguments, load params, call one library function."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Callable

from l2lab.errors import L2labError

log = logging.getLogger("l2lab")


def setup_logging() -> None:
    """One line per event on stderr, with a timestamp."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that runs end KILLED and temporary files are removed."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def run_stage(body: Callable[[], int | None]) -> None:
    """Run a stage body and exit with its status (None: 0); a known failure is one 'error:' line and 1.

    Ctrl-C and SIGTERM unwind through the body (so MLflow runs end KILLED and no
    half-written output is left), then exit 130 or 143 as shells expect.
    """
    setup_logging()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        status = body()
    except L2labError as exc:
        log.error("error: %s", exc)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        log.error("error: %s", "terminated (SIGTERM)" if terminated else "interrupted")
        sys.exit(143 if terminated else 130)
    sys.exit(status or 0)

