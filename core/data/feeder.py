"""The backend-neutral input feeder: batches of cached uint8 images (or cached frozen outputs) as a ``keras.utils.PyDataset``, for Keras on JAX.

The same arrays as the tf.data pipeline (:func:`core.data.pipeline.make_dataset`), gathered by
index in the same order when not training, the same Keras preprocessing layers when training, 3
channels, float32 0..255. What differs is who runs it: Keras's own ``PyDataset`` loop instead of
tf.data, so no TensorFlow is imported. Every batch is ``(x, y, w)``: ``w`` carries the class weights
(Keras refuses ``class_weight`` beside sample weights) and is 0 on the rows that pad a batch to a
multiple of the data-parallel device count, so a consumer drops exactly the rows with ``w == 0``.
"""
from __future__ import annotations

import math

import keras
import numpy as np

from core.config import AugmentConfig

__all__ = ["ArrayBatches", "FeatureBatches"]


class _Batches(keras.utils.PyDataset):
    """Index batches over ``n`` rows: a new seeded permutation every epoch when training, fixed order otherwise."""

    def __init__(self, labels: np.ndarray, batch_size: int, *, training: bool, seed: int = 0,
                 class_weight: dict[int, float] | None = None, multiple_of: int = 1):
        super().__init__(workers=1, use_multiprocessing=False)
        self.labels = np.asarray(labels, dtype=np.float32).reshape(-1)
        self.batch_size, self.training, self.seed = int(batch_size), training, seed
        self.multiple_of = max(1, int(multiple_of))
        self.weights = np.ones(len(self.labels), np.float32)
        if class_weight:
            self.weights = np.array([class_weight[int(v)] for v in self.labels], np.float32)
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        n = len(self.labels)
        if not self.training:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()

    def indices(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.order[index * self.batch_size:(index + 1) * self.batch_size]

    def _pad(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices padded (repeating the first row) to a multiple of the device count, and the weight of each row.

        Keras divides a batch's weighted loss by all its rows, padding included, so the real rows of a padded
        batch weigh ``padded / real`` more: its loss is then the mean over its real rows, as a short batch's is
        on one device. (Keras's other metrics take no weights: they count the ≤ devices − 1 padding copies.)
        """
        weights = self.weights[idx]
        short = -len(idx) % self.multiple_of
        if short:
            real = len(idx)
            idx = np.concatenate([idx, np.full(short, idx[0])])
            weights = np.concatenate([weights * (len(idx) / real), np.zeros(short, np.float32)]).astype(np.float32)
        return idx, weights


class ArrayBatches(_Batches):
    """``(float32 (B, S, S, 3) 0..255, labels, weights)`` batches over uint8 (N, S, S, 1) images.

    ``compile_augmentation``: run the augmentation layers as one XLA program (``stateless_call`` under
    ``jax.jit``, the seed generators' state carried from batch to batch) instead of op by op. None
    decides by device: compiled on a GPU, where dispatching each op eagerly held fed fine-tuning at a
    tenth of the step's rate (benchmarks/results/gpu.json), eager on a CPU, where the compiled
    program was slower (0.76 against 0.33 s per batch of 32 at 224 px, 2 cores).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, *, training: bool,
                 augment: AugmentConfig | None = None, seed: int = 0, class_weight: dict[int, float] | None = None,
                 multiple_of: int = 1, compile_augmentation: bool | None = None):
        super().__init__(labels, batch_size, training=training, seed=seed, class_weight=class_weight,
                         multiple_of=multiple_of)
        self.images = images if images.ndim == 4 else images[..., None]
        from core.data.augment import augmentation_layers  # heavy: Keras layers

        self.layers = augmentation_layers(augment, seed) if (training and augment is not None) else None
        self._compiled = self._state = None
        if self.layers is not None and keras.backend.backend() == "jax":
            import jax  # heavy: JAX

            if compile_augmentation is None:
                compile_augmentation = jax.devices()[0].platform != "cpu"
            if compile_augmentation and not getattr(augment, "jpeg_quality_min", 0):  # Pillow's JPEG runs eagerly
                self.layers.build((None, *self.images.shape[1:]))
                self._state = [v.value for v in self.layers.non_trainable_variables]
                self._compiled = jax.jit(lambda state, x: self.layers.stateless_call([], state, x, training=True))

    def __getitem__(self, index: int):
        idx, weights = self._pad(self.indices(index))
        x = keras.ops.cast(keras.ops.convert_to_tensor(self.images[idx]), "float32")
        if self._compiled is not None:
            x, self._state = self._compiled(self._state, x)
        elif self.layers is not None:
            x = self.layers(x, training=True)
        if x.shape[-1] == 1:
            x = keras.ops.repeat(x, 3, axis=-1)
        return x, self.labels[idx], weights


class FeatureBatches(_Batches):
    """``(float32 features, labels, weights)`` batches over cached float16 frozen outputs (read in place by index)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, batch_size: int, *, training: bool, seed: int = 0,
                 class_weight: dict[int, float] | None = None, multiple_of: int = 1):
        super().__init__(labels, batch_size, training=training, seed=seed, class_weight=class_weight,
                         multiple_of=multiple_of)
        self.features = features

    def __getitem__(self, index: int):
        idx, weights = self._pad(self.indices(index))
        return self.features[idx].astype(np.float32), self.labels[idx], weights
