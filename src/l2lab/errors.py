"""The one exception type stages turn into a one-line error and a non-zero exit, a walk over causes, and
whether a signal has asked this process to stop."""

from __future__ import annotations

from typing import Iterator


class L2labError(Exception):
    """A failure the user can act on; its message is one line naming the cause."""


def causes(exc: BaseException) -> Iterator[BaseException]:
    """exc, then what it was raised from or during, and so on (libraries wrap each other's errors)."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


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
