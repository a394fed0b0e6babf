"""How a stage's process runs: logging set-up, the stop signals (Ctrl-C, SIGTERM) and what they
asked, and a stage body's exit: its status, one 'error:' line, or 130/143 for a stop."""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from l2lab.errors import L2labError

log = logging.getLogger("l2lab")


def setup_logging() -> None:
    """One line per event on stderr, with a timestamp."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that runs end KILLED and temporary files are removed."""


def _on_stop_signal(signum: int, frame: object) -> None:
    request_stop(signum)
    if _deferring:  # inside stops_deferred(): raised when the block ends
        _held.append(signum)
        return
    raise _stop_exception(signum)


def _stop_exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


_deferring: list[int] = []  # one entry per stops_deferred() block running
_held: list[int] = []  # stop signals that arrived in such a block, not raised yet


@contextmanager
def stops_deferred() -> Iterator[None]:
    """Hold a stop signal's exception until the block ends (the stop itself is noted at once).

    For a write to the tracking database: interrupted mid-transaction, its SQLite connection
    stays referenced by the traceback with the write lock held, and ending the run KILLED then
    waits on that lock until it gives up. A block is one attempt (seconds), never a retry loop.
    """
    _deferring.append(1)
    try:
        yield
    except BaseException:
        if len(_deferring) == 1:  # the block's own error surfaces; the stop stays noted (stop_requested)
            _held.clear()
        raise
    finally:
        _deferring.pop()
    if not _deferring and _held:
        signum = _held[0]
        _held.clear()
        raise _stop_exception(signum)


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
        raise_if_stopped()  # a library swallowed the stop and the body carried on: still a stop
    except (KeyboardInterrupt, Exception) as exc:
        if isinstance(exc, KeyboardInterrupt) or stop_requested() is not None:  # whatever the stop surfaced as
            terminated = isinstance(exc, Terminated) or stop_requested() == signal.SIGTERM
            log.error("error: %s", "terminated (SIGTERM)" if terminated else "interrupted")
            sys.exit(143 if terminated else 130)
        if isinstance(exc, L2labError):
            log.error("error: %s", exc)
            sys.exit(1)
        raise
    sys.exit(status or 0)


_stop: list[int] = []  # the signal that asked this process to stop, once one has


def request_stop(signum: int) -> None:
    """Note that a signal (SIGINT, SIGTERM) asked this process to stop; the first one counts."""
    if not _stop:
        _stop.append(signum)


def stop_requested() -> int | None:
    """The signal that asked this process to stop, if one has, whatever exception the interrupt then
    surfaced as: a library's bare `except:` can swallow the KeyboardInterrupt and fail otherwise
    (Keras's ops.shape() does, while TensorFlow traces the training step)."""
    return _stop[0] if _stop else None


def raise_if_stopped() -> None:
    """Raise the stop a library swallowed (its `except:` ate the KeyboardInterrupt and went on as if none
    came): a point whose worker is gone must not train on and end FINISHED."""
    signum = stop_requested()
    if signum is not None:
        raise _stop_exception(signum)
