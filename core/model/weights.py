"""Where pretrained weights live: the Keras cache folder, each backbone's ImageNet file name, and the error when they are missing."""
from __future__ import annotations

import os
from pathlib import Path

from core.config.catalog import BackboneSpec

__all__ = ["WeightsUnavailableError", "keras_cache_dir", "imagenet_file_name"]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found locally nor downloaded."""


def keras_cache_dir() -> Path:
    """Where Keras looks for downloaded weights (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    try:  # what Keras itself resolved when it was imported (it reads KERAS_HOME once)
        from keras.src.backend.config import keras_home  # heavy: Keras

        home = keras_home()
    except ImportError:  # pragma: no cover - older/newer Keras layouts
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(os.path.expanduser(home)) / "models"


def imagenet_file_name(spec: BackboneSpec, alpha: float | None = None) -> str:
    if spec.imagenet_file is None:
        raise WeightsUnavailableError(f"{spec.label} has no ImageNet weights; use weights 'none'")
    return spec.imagenet_file(alpha or spec.default_alpha)
