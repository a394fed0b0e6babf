"""How l2lab imports the big libraries: TensorFlow quietly and lean, matplotlib headless.

Libraries a process does not use are kept out of it.

TensorFlow's, Keras's and MLflow's own imports load scikit-learn, matplotlib, SciPy, pandas
and pyarrow whenever they are installed (Keras's scikit-learn wrappers and plotting helpers,
the legacy `tf.keras` behind TensorFlow's `feature_column`, MLflow's dataset registry),
about 150 MB of memory and a second of start-up in every process that imports them. Each of
those imports is optional in the library that makes it (`try: import pandas except
ImportError: ...`), so a process that will not use a library can have it refused while the
big libraries load. Anything imported later, after the block, loads as usual.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

# What TensorFlow's and Keras's imports load only because it is installed. The training loop uses none
# of it; a stage that does (evaluate's scores, MLflow's model logging) imports it itself, afterwards.
OPTIONAL_AT_IMPORT = frozenset({"sklearn", "matplotlib", "scipy", "pandas", "pyarrow"})


class _Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"{fullname} is left out of this process (l2lab.imports)", name=fullname)
        return None


@contextmanager
def left_out(names: frozenset[str] = OPTIONAL_AT_IMPORT) -> Iterator[None]:
    """Within the block, importing any of these top-level packages (not already loaded) fails as if it
    were not installed."""
    finder = _Refuse(frozenset(name for name in names if name not in sys.modules))
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


# Lines TensorFlow's C++ side writes straight to file descriptor 2, bypassing
# TF_CPP_MIN_LOG_LEVEL, that say nothing a user can act on:
HARMLESS = (
    # absl's notice that it has not been set up yet (TensorFlow never sets it up)
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    # oneDNN's kernels are on: results may differ from other machines in the last bits
    # (same params give the same numbers on the same machine and library versions)
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

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING lines once logging is set up
    try:
        with quiet_native_stderr(), left_out():
            import tensorflow  # noqa: F401  (imported here, under the filter, before anything else does)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "tensorflow":
            raise
        raise L2labError("TensorFlow is not installed: pip install -e '.[cpu]' (or '.[gpu]' on Linux with an "
                         "NVIDIA GPU), or run `make install`, which picks one") from None


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend: figures are files, never windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
