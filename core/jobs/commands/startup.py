"""Process start-up for the command lines: TensorFlow imported without its C++ start-up notes."""
from __future__ import annotations

import os
import sys

__all__ = ["import_tensorflow_quietly"]


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras and probe the devices with file descriptor 2 pointed at /dev/null.

    TensorFlow 2.21 logs through absl before any Python code can configure it, so
    ``TF_CPP_MIN_LOG_LEVEL`` no longer hides its start-up lines (oneDNN, CPU features, "could not find
    cuda drivers", a failed ``cuInit`` on machines without a GPU). Only this start-up is silenced:
    later warnings and every Python exception still reach stderr. ``CXR_STUDIO_TF_VERBOSE=1`` keeps
    the notes, for diagnosing a GPU set-up.
    """
    if os.environ.get("CXR_STUDIO_TF_VERBOSE") or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import tensorflow as tf  # heavy: TensorFlow

        tf.config.list_physical_devices()  # the CUDA probe logs here, once per process
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
