"""The one exception type stages turn into a one-line error and a non-zero exit, and a walk over causes."""

from __future__ import annotations

from typing import Iterator


class L2labError(Exception):
    """A failure the user can act on; its message is one line naming the cause."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an error's message, at most limit characters; "" when it has none
    (libraries put whole inputs, tracebacks and SQL in theirs)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else ""


def causes(exc: BaseException) -> Iterator[BaseException]:
    """exc, then what it was raised from or during, and so on (libraries wrap each other's errors)."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__
