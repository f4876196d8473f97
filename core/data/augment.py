"""Training-time augmentation: AugmentConfig → Keras 3 preprocessing layers, and a preview helper."""
from __future__ import annotations

import io

import keras
import numpy as np
from PIL import Image

from core.config import AugmentConfig

__all__ = ["ClipPixels", "PixelNoise", "RandomGamma", "RandomJpegQuality", "augmentation_layers", "preview",
           "one_at_a_time", "FILL_MODE"]

# Black constant fill: X-rays have dark borders and letterboxed images are padded with black,
# whereas "reflect" would mirror ribs and clavicles into the corners and invent anatomy.
FILL_MODE = "constant"


@keras.saving.register_keras_serializable(package="cxr_studio")
class ClipPixels(keras.layers.Layer):
    """Clips pixel values back into 0..255 after augmentation."""

    def call(self, x):
        return keras.ops.clip(x, 0.0, 255.0)


@keras.saving.register_keras_serializable(package="cxr_studio")
class PixelNoise(keras.layers.Layer):
    """Additive Gaussian noise in pixel units (keras.layers.GaussianNoise only takes stddev ≤ 1)."""

    def __init__(self, stddev: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.stddev = float(stddev)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training: bool = False):
        if not training or self.stddev <= 0:
            return x
        return x + keras.random.normal(keras.ops.shape(x), stddev=self.stddev, dtype=x.dtype,
                                       seed=self.seed_generator)

    def get_config(self) -> dict:
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}


@keras.saving.register_keras_serializable(package="cxr_studio")
class RandomGamma(keras.layers.Layer):
    """Per-image gamma ``255 · (x / 255) ** γ`` with ``γ = exp(U(−log_range, log_range))``: another detector's curve."""

    def __init__(self, log_range: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.log_range = float(log_range)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training: bool = False):
        if not training or self.log_range <= 0:
            return x
        shape = (keras.ops.shape(x)[0], 1, 1, 1)
        gamma = keras.ops.exp(keras.random.uniform(shape, -self.log_range, self.log_range, dtype=x.dtype,
                                                   seed=self.seed_generator))
        return 255.0 * keras.ops.power(keras.ops.clip(x / 255.0, 0.0, 1.0), gamma)

    def get_config(self) -> dict:
        return {**super().get_config(), "log_range": self.log_range, "seed": self.seed}


@keras.saving.register_keras_serializable(package="cxr_studio")
class RandomJpegQuality(keras.layers.Layer):
    """Re-encodes each image as a JPEG of random quality in ``min_quality..100``: another export's artefacts.

    On TensorFlow ``tf.image.adjust_jpeg_quality`` inside the tf.data pipeline; on another backend
    (the feeder calls the layers eagerly) Pillow's JPEG encoder, the same codec family, image by image.
    """

    def __init__(self, min_quality: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.min_quality = int(min_quality)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training: bool = False):
        if not training or not self.min_quality:
            return x
        if keras.backend.backend() != "tensorflow":
            return self._pillow(x)
        import tensorflow as tf  # heavy: TensorFlow

        quality = keras.random.randint((tf.shape(x)[0],), self.min_quality, 101, seed=self.seed_generator)

        def encode(args):
            image, q = args
            return tf.image.adjust_jpeg_quality(tf.clip_by_value(image / 255.0, 0.0, 1.0), q) * 255.0

        out = tf.map_fn(encode, (tf.cast(x, tf.float32), tf.cast(quality, tf.int32)),
                        fn_output_signature=tf.float32)
        return tf.cast(tf.reshape(out, tf.shape(x)), x.dtype)

    def _pillow(self, x):
        batch = np.clip(np.rint(keras.ops.convert_to_numpy(x)), 0, 255).astype(np.uint8)
        quality = keras.ops.convert_to_numpy(
            keras.random.randint((len(batch),), self.min_quality, 101, seed=self.seed_generator))
        out = np.empty(batch.shape, np.float32)
        for i, (image, q) in enumerate(zip(batch, quality)):
            buffer = io.BytesIO()
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=int(q))
            decoded = np.asarray(Image.open(buffer))
            out[i] = decoded.reshape(image.shape)
        return keras.ops.cast(keras.ops.convert_to_tensor(out), x.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "min_quality": self.min_quality, "seed": self.seed}


def augmentation_layers(cfg: AugmentConfig, seed: int = 0) -> keras.Sequential | None:
    """Keras preprocessing layers for ``cfg`` working on float 0..255 batches (B, S, S, C), C = 1 or 3.

    Call the result with ``training=True`` (the noise layer is a no-op otherwise). Every layer is
    tf.data-compatible, so it can run inside ``Dataset.map``, and runs on any Keras backend (the feeder).

    Args:
        cfg: the augmentation settings.
        seed: base seed; each layer gets its own derived seed.

    Returns:
        A ``keras.Sequential``, or None when no augmentation is active.
    """
    if not cfg.active:
        return None
    stack: list[keras.layers.Layer] = []
    seeds = iter(range(seed * 16 + 1, seed * 16 + 16))
    if cfg.horizontal_flip:
        stack.append(keras.layers.RandomFlip("horizontal", seed=next(seeds)))
    if cfg.rotation_degrees:
        stack.append(keras.layers.RandomRotation(cfg.rotation_degrees / 360.0, fill_mode=FILL_MODE,
                                                 fill_value=0.0, seed=next(seeds)))
    if cfg.zoom:
        stack.append(keras.layers.RandomZoom(cfg.zoom, fill_mode=FILL_MODE, fill_value=0.0, seed=next(seeds)))
    if cfg.shift:
        stack.append(keras.layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode=FILL_MODE,
                                                    fill_value=0.0, seed=next(seeds)))
    if cfg.brightness:
        stack.append(keras.layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=next(seeds)))
    if cfg.contrast:
        stack.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=next(seeds)))
    if cfg.gamma:
        stack.append(RandomGamma(cfg.gamma, seed=next(seeds)))
    if cfg.blur_sigma:
        # Half the images, σ drawn per batch (Keras's layer); kernel 5 covers ±2σ at σ ≤ 1.
        stack.append(keras.layers.RandomGaussianBlur(factor=(0.5, 0.5), kernel_size=5, sigma=(0.0, cfg.blur_sigma),
                                                     value_range=(0, 255), seed=next(seeds)))
    if cfg.jpeg_quality_min:
        stack.append(ClipPixels())
        stack.append(RandomJpegQuality(cfg.jpeg_quality_min, seed=next(seeds)))
    if cfg.noise_std:
        stack.append(PixelNoise(cfg.noise_std, seed=next(seeds)))
    stack.append(ClipPixels())
    return keras.Sequential(stack, name="augmentation")


def preview(image: np.ndarray, cfg: AugmentConfig, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """``n`` augmented uint8 copies of one image, the same for the same seed.

    Args:
        image: (H, W) grayscale or (H, W, 3) image, uint8 or float 0..255.
        cfg: the augmentation settings.
        n: how many versions.
        seed: random seed.

    Returns:
        ``n`` uint8 arrays of the input's shape (copies of the input when nothing is active).
    """
    array = np.asarray(image)
    squeeze = array.ndim == 2
    batch = np.repeat(array.reshape(1, *array.shape[:2], -1).astype("float32"), n, axis=0)
    layers = augmentation_layers(cfg, seed)
    if layers is not None:
        batch = np.asarray(keras.ops.convert_to_numpy(layers(keras.ops.convert_to_tensor(batch), training=True)))
    out = np.clip(np.rint(batch), 0, 255).astype(np.uint8)
    return [img[..., 0] if squeeze else img for img in out]


# What each setting does, in the user's words; the order of the preview rows.
_LABELS = {
    "horizontal_flip": "horizontal flip", "rotation_degrees": "rotation", "zoom": "zoom (scale)",
    "shift": "shift (translation)", "brightness": "brightness", "contrast": "contrast", "gamma": "gamma (tone curve)",
    "blur_sigma": "blur", "jpeg_quality_min": "JPEG re-encoding", "noise_std": "noise",
}


def one_at_a_time(cfg: AugmentConfig) -> list[tuple[str, AugmentConfig]]:
    """Each active setting of ``cfg`` alone (everything else off), labelled, for a per-augmentation preview."""
    off = {name: type(value)(0) for name, value in cfg.__dict__.items()}
    return [(label, AugmentConfig(**{**off, name: getattr(cfg, name)}))
            for name, label in _LABELS.items() if getattr(cfg, name)]
