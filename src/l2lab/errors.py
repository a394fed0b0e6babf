"""The one exception type stages turn into a one-line error and a non-zero exit."""


class L2labError(Exception):
    """A failure the user can act on; its message is one line naming the cause."""
