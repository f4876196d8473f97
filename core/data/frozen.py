"""Frozen layers computed once: split a model at its freeze boundary and cache the frozen part's output.

When a phase trains with the bottom of the network frozen and no augmentation, the frozen part
maps each image to the same tensor every epoch. Computing that tensor once and training only the
top turns the head phase into a logistic regression on cached features and cuts fine-tuning to
the unfrozen blocks. The top model reuses the full model's layer objects, so its weights *are*
the full model's weights: nothing is copied back. With a cache folder the outputs are also kept on
disk, keyed by the frozen layers' weights and the images themselves, so another run with the same
frozen bottom (a sweep's next member) reads them instead of computing them again. Results are
identical in expectation (dropout and augmentation-free inputs are the same; frozen BatchNorm runs
in inference mode either way).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import keras
import numpy as np
import psutil

from core.config.backend import current_backend
from core.data.batches import batches_of, real_rows
from core.data.feeder import FeatureBatches

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["FrozenSplit", "split_at_freeze_boundary", "cache_plan", "compute_frozen", "frozen_features",
           "frozen_cache_key", "features_dataset"]

log = logging.getLogger("cxr_studio.frozen")


@dataclass
class FrozenSplit:
    """``top(bottom(x)) == model(x)``; ``bottom`` holds only frozen layers."""

    bottom: keras.Model
    top: keras.Model
    boundary: str  # the layer whose input (or output, for the head) is cached

    def bytes_per_image(self, dtype_bytes: int = 2) -> int:
        return int(np.prod(self.bottom.output.shape[1:])) * dtype_bytes


def split_at_freeze_boundary(model: keras.Model) -> FrozenSplit | None:
    """Split where the first layer with trainable weights begins; None when nothing below is frozen.

    Only single-tensor boundaries are split (true at every block boundary of the registered
    backbones); anything else returns None and the phase trains on images.
    """
    first = next((layer for layer in model.layers if layer.trainable_weights), None)
    if first is None:
        return None
    if first.name == "logit":
        boundary_tensor, boundary = model.get_layer("pool").output, "pool"  # head phase: pooled features
    else:
        boundary_tensor, boundary = first.input, first.name
    if isinstance(boundary_tensor, (list, tuple)) or boundary_tensor is model.input:
        return None
    below = _layers_below(model, boundary_tensor)
    if any(layer.trainable_weights for layer in below) or not any(layer.weights for layer in below):
        return None  # something below still trains, or nothing below is worth computing once
    try:
        bottom = keras.Model(model.input, boundary_tensor, name="frozen_bottom")
        top = keras.Model(boundary_tensor, model.output, name="trainable_top")
    except ValueError:
        return None
    return FrozenSplit(bottom, top, boundary)


def _layers_below(model: keras.Model, tensor) -> list:
    try:
        return keras.Model(model.input, tensor).layers
    except ValueError:
        return []


def cache_plan(split: FrozenSplit | None, n_images: int, augment_active: bool, enabled: bool,
               memory_fraction: float = 0.35) -> tuple[bool, str]:
    """Whether to cache this phase's frozen outputs, and the reason in words (shown to the user)."""
    if not enabled:
        return False, "frozen-layer caching is switched off"
    if split is None:
        return False, "nothing below the trainable layers is frozen"
    if augment_active:
        return False, "augmentation is on in this phase, so the frozen layers see new inputs every epoch"
    need = split.bytes_per_image() * n_images
    budget = psutil.virtual_memory().available * memory_fraction
    if need > budget:
        return False, (f"the frozen outputs at '{split.boundary}' would need {need / 2**30:.1f} GiB, "
                       f"more than the {budget / 2**30:.1f} GiB budget")
    size = f"{need / 2**20:.0f} MiB" if need >= 2**20 else f"{need / 2**10:.0f} KiB"
    return True, f"frozen layers computed once: training from cached outputs at '{split.boundary}' ({size})"


def compute_frozen(split: FrozenSplit, dataset: "tf.data.Dataset") -> np.ndarray:
    """Run the frozen bottom once over a (non-shuffled, non-augmented) dataset; float16 storage.

    The forward pass is one compiled function (1.8× faster than calling the model eagerly) and
    writes into one preallocated array (no list of batches plus a concatenated copy). On another
    backend than TensorFlow the dataset is the feeder and the compiled function Keras's own
    ``predict_on_batch``; rows that only pad a batch are dropped.
    """
    if current_backend() != "tensorflow":
        return _compute_frozen_anywhere(split, dataset)
    import tensorflow as tf  # heavy: TensorFlow

    forward = tf.function(lambda x: tf.cast(split.bottom(x, training=False), tf.float16), reduce_retracing=True)
    n = int(dataset.reduce(np.int64(0), lambda count, batch: count + tf.cast(tf.shape(batch[0])[0], tf.int64)))
    out = np.empty((n, *split.bottom.output.shape[1:]), np.float16)
    done = 0
    for images, _ in dataset:
        batch = forward(images).numpy()
        out[done:done + len(batch)] = batch
        done += len(batch)
    return out


def _compute_frozen_anywhere(split: FrozenSplit, dataset) -> np.ndarray:
    out = np.empty((len(dataset.labels), *split.bottom.output.shape[1:]), np.float16)
    done = 0
    for batch in batches_of(dataset):
        keep, _ = real_rows(batch)
        values = np.asarray(keras.ops.convert_to_numpy(split.bottom.predict_on_batch(batch[0]))).astype(np.float16)
        values = values if keep is None else values[keep]
        out[done:done + len(values)] = values
        done += len(values)
    return out


def frozen_cache_key(split: FrozenSplit, images: np.ndarray) -> str:
    """What the frozen outputs depend on, hashed: the boundary, the dtype policy, every weight of the frozen
    bottom (so backbone, weights file, width and seed), and the images' pixels (so data, image size, resize,
    preprocessing).

    Exact by construction: a changed weights file or data folder gives another key, never a stale hit.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"frozen-v1|{split.boundary}|{tuple(split.bottom.output.shape[1:])}|"
                  f"{split.bottom.dtype_policy.name}|{images.shape}|{images.dtype}".encode())
    for weight in split.bottom.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"|{weight.path}|{value.shape}|{value.dtype}|".encode())
        digest.update(value.tobytes())
    for start in range(0, len(images), 256):  # in slices: a memory-mapped array is not read in whole
        digest.update(np.ascontiguousarray(images[start:start + 256]).tobytes())
    return digest.hexdigest()


def frozen_features(split: FrozenSplit, images: np.ndarray, dataset: Callable[[], "tf.data.Dataset"], *,
                    cache_dir: str | Path | None = None) -> tuple[np.ndarray, bool]:
    """The frozen bottom's outputs for ``images``: read from ``<cache_dir>/frozen/`` when there, else computed.

    Args:
        split: the model split at its freeze boundary.
        images: the images ``dataset`` yields, in order (they key the cache).
        dataset: builds the plain (unshuffled, unaugmented) dataset; called only when computing.
        cache_dir: the cache root; None computes and keeps nothing on disk.

    Returns:
        ``(features, read_from_cache)``; features are float16, memory-mapped when read from the cache.
    """
    if cache_dir is None:
        return compute_frozen(split, dataset()), False
    folder = Path(cache_dir).expanduser() / "frozen"
    key = frozen_cache_key(split, images)
    path = folder / f"{key}.npy"
    expected = (len(images), *split.bottom.output.shape[1:])
    if path.is_file():
        try:
            features = np.load(path, mmap_mode="r", allow_pickle=False)
            if features.shape == expected:
                log.info("frozen outputs at '%s' read from the disk cache (%s)", split.boundary, key)
                return features, True
        except (OSError, ValueError):
            pass
        log.warning("frozen-output cache %s is unreadable; computing again", key)
    features = compute_frozen(split, dataset())
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as handle:
        np.save(handle, features, allow_pickle=False)
    os.replace(handle.name, path)  # atomic: a reader sees the whole file or none
    log.info("frozen outputs at '%s' computed and saved to the disk cache (%s)", split.boundary, key)
    return features, False


def features_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int, *, training: bool,
                     seed: int = 0, class_weight: dict[int, float] | None = None,
                     multiple_of: int = 1) -> "tf.data.Dataset | FeatureBatches":
    """Batches of cached frozen outputs (float32) with labels, shuffled each epoch when training.

    Batches are gathered from ``features`` in place by index: ``from_tensor_slices`` would copy
    the whole cache into the graph (3.3 GiB more for the Kaggle train split at VGG16's block 4).
    On another backend than TensorFlow: :class:`core.data.feeder.FeatureBatches`, with the class
    weights and padding of :func:`core.data.pipeline.make_dataset`.
    """
    if current_backend() != "tensorflow":
        return FeatureBatches(features, labels, batch_size, training=training, seed=seed, class_weight=class_weight,
                              multiple_of=multiple_of)
    import tensorflow as tf  # heavy: TensorFlow

    labels = np.asarray(labels, dtype=np.float32)
    shape = tuple(features.shape[1:])

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return features[idx].astype(np.float32), labels[idx]

    def to_batch(idx):
        x, y = tf.numpy_function(gather, [idx], (tf.float32, tf.float32), stateful=False)
        return tf.ensure_shape(x, (None, *shape)), tf.ensure_shape(y, (None,))

    ds = tf.data.Dataset.range(len(labels))
    if training:
        ds = ds.shuffle(max(1, len(labels)), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(to_batch, num_parallel_calls=tf.data.AUTOTUNE,
                                    deterministic=not training or None).prefetch(tf.data.AUTOTUNE)
