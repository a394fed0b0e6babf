"""The served model's input check: uint8 images of the right shape, or a message saying what is expected."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from l2lab.classifier import check_images


def test_uint8_and_whole_number_pixels_pass() -> None:
    x = np.zeros((2, 32, 32, 3), np.uint8)
    assert check_images(x) is x
    ints = np.full((1, 32, 32, 3), 255, np.int64)  # what JSON integers parse to
    assert check_images(ints).dtype == np.uint8 and check_images(ints).max() == 255


@pytest.mark.fault
@pytest.mark.parametrize(
    ("given", "why"),
    [
        (np.full((1, 32, 32, 3), 0.5), "got float64 values"),
        (np.zeros((1, 32, 32)), "got shape (1, 32, 32)"),
        (np.zeros((32, 32, 3), np.uint8), "got shape (32, 32, 3)"),
        (np.full((1, 32, 32, 3), 300), "got values from 300 to 300"),
        (np.full((1, 32, 32, 3), -1), "got values from -1 to -1"),
        (pd.DataFrame({"a": [1]}), "got a table"),
    ],
)
def test_anything_else_is_refused_with_what_is_expected(given: object, why: str) -> None:
    with pytest.raises(MlflowException) as info:
        check_images(given)
    assert info.value.message.startswith("expected uint8 pixels 0-255, shape (N, 32, 32, 3): " + why)
    assert info.value.get_http_status_code() == 400


def test_defining_the_classifier_warns_nothing() -> None:
    """MLflow's "Add type hints to the `predict` method" reached every train log: MLflow warns inside its own
    catch_warnings, past any filter of ours (a fresh clone's first `dvc exp run` showed it)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-W", "always", "-c", "import l2lab.classifier"], capture_output=True,
                          text=True, check=True)
    assert "type hint" not in proc.stderr.lower(), proc.stderr
