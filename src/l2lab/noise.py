"""Native libraries' harmless chatter kept out of the one-line-per-event log; anything else still shown."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

# Lines TensorFlow's C++ side writes straight to file descriptor 2, bypassing
# TF_CPP_MIN_LOG_LEVEL, that say nothing a user can act on:
HARMLESS = (
    # absl's notice that it has not been set up yet (TensorFlow never sets it up)
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    # oneDNN's kernels are on: results may differ from other machines in the last bits
    # (README, "Same params, same numbers": on the same machine and library versions)
    "oneDNN custom operations are on",
)


@contextmanager
def quiet_native_stderr(harmless: tuple[str, ...] = HARMLESS) -> Iterator[None]:
    """Capture what native code writes to fd 2 during the block; pass on every line but the harmless ones."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(text in line for text in harmless)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def quiet_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up chatter kept out of the one-line-per-epoch log, and without
    the libraries its import (and Keras's) would load only because they are installed (l2lab.imports).

    Without TensorFlow (installed as an extra), one line says which extra to install.
    """
    from l2lab.errors import L2labError
    from l2lab.imports import left_out

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING lines once logging is set up
    try:
        with quiet_native_stderr(), left_out():
            import tensorflow  # noqa: F401  (imported here, under the filter, before anything else does)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "tensorflow":
            raise
        raise L2labError("TensorFlow is not installed: pip install -e '.[cpu]' (or '.[gpu]' on Linux with an "
                         "NVIDIA GPU), or run `make install`, which picks one") from None
