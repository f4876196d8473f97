"""Tests for core.augment: settings → layers, value range, determinism of the preview."""
from __future__ import annotations

import numpy as np
import pytest

from core.augment import augmentation_layers, preview
from core.config import AugmentConfig

OFF = AugmentConfig(rotation_degrees=0, zoom=0, shift=0, brightness=0, contrast=0, horizontal_flip=False, noise_std=0)


def image() -> np.ndarray:
    yy, xx = np.mgrid[0:48, 0:48]
    return ((xx * 4 + yy * 2) % 256).astype(np.uint8)


def test_nothing_active_gives_none_and_identity_preview():
    assert augmentation_layers(OFF) is None
    copies = preview(image(), OFF, n=3)
    assert len(copies) == 3 and all(np.array_equal(c, image()) for c in copies)


def test_layers_follow_the_settings():
    names = [type(layer).__name__ for layer in augmentation_layers(AugmentConfig(horizontal_flip=True, noise_std=3)).layers]
    assert names[:1] == ["RandomFlip"] and "RandomRotation" in names and "PixelNoise" in names
    assert names[-1] == "ClipPixels"
    assert "RandomFlip" not in [type(x).__name__ for x in augmentation_layers(AugmentConfig()).layers]


@pytest.mark.parametrize("channels", [1, 3])
def test_batches_stay_in_range_and_change(channels):
    import tensorflow as tf

    layers = augmentation_layers(AugmentConfig(brightness=0.4, contrast=0.4, noise_std=20), seed=2)
    batch = np.repeat(image()[None, ..., None], 4, axis=0).repeat(channels, axis=-1).astype(np.float32)
    out = np.asarray(layers(tf.constant(batch), training=True))
    assert out.shape == batch.shape
    assert out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, batch)


def test_preview_is_deterministic_per_seed():
    cfg = AugmentConfig(noise_std=5)
    a, b, c = preview(image(), cfg, 4, seed=1), preview(image(), cfg, 4, seed=1), preview(image(), cfg, 4, seed=2)
    assert all(x.dtype == np.uint8 and x.shape == (48, 48) for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(a[0], a[1])  # the n versions differ from each other
    rgb = preview(np.stack([image()] * 3, axis=-1), cfg, 2)
    assert rgb[0].shape == (48, 48, 3)
