"""Which device TensorFlow trains and scores on, and GPU memory that several processes can share."""

from __future__ import annotations

import tensorflow as tf


def prepare_device() -> str:
    """Let every GPU's memory grow as needed (several points may share one GPU), and say where training
    runs: "GPU:0 (<name>)" when TensorFlow sees a GPU (it places the ops there), else "CPU".

    Call before TensorFlow touches a device (memory growth cannot be set once a GPU is in use).
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised by an earlier call in this process: left as it is
            pass
    if not gpus:
        return "CPU"
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return f"GPU:0 ({name})" + (f", first of {len(gpus)}" if len(gpus) > 1 else "")
