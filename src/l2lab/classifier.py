"""The logged MLflow model: uint8 images in, class probabilities and the predicted label out.

It travels with the model (the l2lab package is logged as the model's code), so
`mlflow.pyfunc.load_model` and `mlflow models serve` need no checkout. Bad input is
refused with a message (HTTP 400 when served), never cast: float pixels in [0, 1]
cast to uint8 would come back as confident garbage.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from l2lab.data import IMAGE_SHAPE
EXPECTED = "uint8 pixels 0-255, shape (N, 32, 32, 3)"
KERAS_ARTIFACT = "keras_model"  # the .keras file among the model's artifacts
MAX_IMAGES = 1024  # per request when served over HTTP (l2lab serve, mlflow models serve): about 15 MB of JSON
SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"  # "true" in MLflow's scoring server


def refuse(why: str) -> MlflowException:
    return MlflowException(f"expected {EXPECTED}: {why}", error_code=INVALID_PARAMETER_VALUE)


def check_images(model_input: Any) -> np.ndarray:
    """The input as a (N, 32, 32, 3) uint8 array, or an error that says what is expected."""
    if isinstance(model_input, pd.DataFrame):
        raise refuse("got a table; send a nested list as {\"inputs\": [...]}")
    x = np.asarray(model_input)
    if x.shape[1:] != IMAGE_SHAPE or x.ndim != 4:
        raise refuse(f"got shape {x.shape}")
    if os.environ.get(SERVING_ENV) == "true" and len(x) > MAX_IMAGES:
        raise refuse(f"got {len(x)} images; a request holds at most {MAX_IMAGES}: split it")
    if not np.issubdtype(x.dtype, np.integer):  # JSON floats, even 128.0: pixels are whole numbers
        raise refuse(f"got {x.dtype} values (scale floats in [0, 1] by 255 and round them first)")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise refuse(f"got values from {x.min()} to {x.max()}")
    return x.astype(np.uint8, copy=False)


class Classifier(PythonModel):
    """The trained Keras model behind MLflow's pyfunc interface, with the class names."""

    # predict has no type hint on purpose (see predict): MLflow's check for one, which warned "Add type hints to
    # the `predict` method" in every train log (inside MLflow's own warnings.catch_warnings, past any filter of
    # ours), is skipped the way MLflow's own hint-less models skip it.
    _skip_type_hint_validation = True

    def __init__(self, classes: list[str]) -> None:
        self.classes = list(classes)
        self.model = None

    def load_context(self, context: Any) -> None:
        import keras

        self.model = keras.models.load_model(context.artifacts[KERAS_ARTIFACT])

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: ANN001
        """One row per image: "label" (the most likely class), then each class's probability.

        model_input has no type hint on purpose: MLflow reads one as an input schema and
        converts the input to it, which is the silent cast check_images exists to refuse.
        """
        x = check_images(model_input)
        probs = np.asarray(self.model.predict(x, batch_size=256, verbose=0), dtype=np.float64)  # (N, 10)
        table = pd.DataFrame(probs, columns=self.classes)
        table.insert(0, "label", [self.classes[i] for i in probs.argmax(axis=1)])
        return table
