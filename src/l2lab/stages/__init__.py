"""Thin DVC stage entry points: parse arguments, load params, call one library function."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from l2lab.errors import L2labError

log = logging.getLogger("l2lab")


def setup_logging() -> None:
    """One line per event on stderr, with a timestamp."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_stage(body: Callable[[], object]) -> None:
    """Run a stage body; a known failure becomes one 'error:' line and exit status 1."""
    setup_logging()
    try:
        body()
    except L2labError as exc:
        log.error("error: %s", exc)
        sys.exit(1)
    except KeyboardInterrupt:
        log.error("error: interrupted")
        sys.exit(130)


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up chatter out of the one-line-per-epoch log."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
