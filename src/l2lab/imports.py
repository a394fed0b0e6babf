"""Libraries a process does not use, kept out of it.

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
import sys
from contextlib import contextmanager
from typing import Iterator

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
