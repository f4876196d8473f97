"""Which Keras 3 backend a process trains on: the supported ones, choosing one before Keras is imported, and the one-line refusals of TensorFlow-only features."""
from __future__ import annotations

import importlib
import os
import sys

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "BACKEND_ENV", "BackendError", "check_backend", "use_backend",
           "current_backend", "require_tensorflow", "backend_from_env"]

# What a run can be trained with. TensorFlow is the default and the dashboard's: tf.data, multi-worker
# tf.distribute, SavedModel/TFLite export and tf-keras-vis CAMs exist only there. JAX trains the same models
# with the same callbacks and run folder, and needs no CUDA-specific TensorFlow on a GPU machine.
BACKENDS = ("tensorflow", "jax")
DEFAULT_BACKEND = "tensorflow"
BACKEND_ENV = "KERAS_BACKEND"


class BackendError(ValueError):
    """A backend that is not supported, or a feature the current backend does not have; one line a person can act on."""


def check_backend(name: str) -> str:
    """``name`` when it is a supported backend, else :class:`BackendError` listing the supported ones."""
    if name not in BACKENDS:
        raise BackendError(f"Keras backend {name!r} is not supported: choose one of {', '.join(BACKENDS)}")
    return name


def backend_from_env(environ: dict[str, str] | None = None) -> str | None:
    """The backend ``$KERAS_BACKEND`` asks for (checked), or None when it is unset."""
    value = (os.environ if environ is None else environ).get(BACKEND_ENV, "").strip()
    return check_backend(value) if value else None


def _imported_keras():
    """Keras once its import (perhaps under way in another thread) is over, or None if nothing has imported it.

    ``sys.modules`` holds a module from the moment its import starts; importing it again waits on the import lock
    until it is complete, so a page thread never meets a half-imported Keras.
    """
    if "keras" not in sys.modules:
        return None
    return importlib.import_module("keras")


def use_backend(name: str) -> str:
    """Make this process run Keras on ``name``; call it before Keras is imported.

    Keras reads ``$KERAS_BACKEND`` once, at its first import, so a process that has already imported
    Keras on another backend cannot switch: that is a :class:`BackendError`, never a silent mix.
    """
    check_backend(name)
    keras = _imported_keras()
    if keras is not None:
        running = keras.backend.backend()
        if running != name:
            raise BackendError(f"this process already runs Keras on {running}; start a new process with "
                               f"{BACKEND_ENV}={name} to train on {name}")
        return name
    os.environ[BACKEND_ENV] = name
    return name


def current_backend() -> str:
    """The backend Keras runs (or will run) on in this process, without importing Keras."""
    keras = _imported_keras()
    if keras is not None:
        return keras.backend.backend()
    return os.environ.get(BACKEND_ENV, "").strip() or DEFAULT_BACKEND


def require_tensorflow(feature: str) -> None:
    """Refuse a TensorFlow-only ``feature`` in one line when this process runs Keras on another backend."""
    backend = current_backend()
    if backend != "tensorflow":
        raise BackendError(f"{feature} needs the TensorFlow backend, and this process runs Keras on {backend}: "
                           f"run it with {BACKEND_ENV}=tensorflow (the dashboard does), on any run's model.keras")
