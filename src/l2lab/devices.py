"""Which device TensorFlow trains and scores on, and GPU memory that several processes can share."""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class Device:
    name: str  # where the splits live and the step runs: "/GPU:0" or "/CPU:0"
    label: str  # what the log line and the run's l2lab.device tag say: "GPU:0 (<name>)" or "CPU"


def prepare_device() -> Device:
    """Let every GPU's memory grow as needed (several points may share one GPU), and choose the device
    training runs on: the first GPU when TensorFlow sees one (it places the ops there), else the CPU.

    Call before TensorFlow touches a device (memory growth cannot be set once a GPU is in use).
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised by an earlier call in this process: left as it is
            pass
    if not gpus:
        return Device("/CPU:0", "CPU")
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return Device("/GPU:0", f"GPU:0 ({name})" + (f", first of {len(gpus)}" if len(gpus) > 1 else ""))
