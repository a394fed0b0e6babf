"""The one exception type stages turn into a one-line error and a non-zero exit, and a walk over causes."""

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
