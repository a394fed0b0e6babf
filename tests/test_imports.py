"""A stage's TensorFlow import leaves out the libraries only TensorFlow's and Keras's own imports want."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Run in a fresh interpreter: this test process has pandas, scikit-learn, ... loaded already.
PROBE = r"""
import json, sys
import numpy as np
from l2lab.imports import OPTIONAL_AT_IMPORT
from l2lab.imports import quiet_tensorflow

quiet_tensorflow()
import keras
from l2lab.model import build_model
from l2lab.params import TrainParams

loaded_after_import = sorted(name for name in OPTIONAL_AT_IMPORT if name in sys.modules)
model = build_model(TrainParams(seed=0, l2=1e-3, l1=0.0, weight_decay=0.0, learning_rate=1e-3, batch_size=32,
                                epochs=1, precision="float32"))
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
x = np.random.default_rng(0).integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
model.fit(x, np.arange(64) % 10, batch_size=32, epochs=1, verbose=0)
loaded_after_training = sorted(name for name in OPTIONAL_AT_IMPORT if name in sys.modules)
import pandas, sklearn.metrics  # what a stage uses itself still loads, afterwards
print(json.dumps([loaded_after_import, loaded_after_training, pandas.DataFrame({"a": [1]}).shape[0]]))
"""


def test_tensorflow_loads_without_the_optional_libraries_and_they_still_load_later() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    after_import, after_training, rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert after_import == [] and after_training == [] and rows == 1


def test_only_the_named_libraries_are_refused_and_only_inside_the_block() -> None:
    from l2lab.imports import left_out

    with left_out(frozenset({"l2lab_not_a_module_either", "json"})):
        with pytest.raises(ModuleNotFoundError, match="left out"):
            __import__("l2lab_not_a_module_either")
        assert __import__("json") is json  # already loaded: left as it is
        import csv  # noqa: F401  (not named: imports as usual)
    with pytest.raises(ModuleNotFoundError) as raised:
        __import__("l2lab_not_a_module_either")
    assert "left out" not in str(raised.value)
