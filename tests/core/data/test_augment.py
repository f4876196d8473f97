"""Tests for core.augment: settings → layers, value range, determinism of the preview."""
from __future__ import annotations

import numpy as np
import pytest

from core.data.augment import augmentation_layers, preview
from core.config import AUGMENT_STRENGTHS, AugmentConfig, augment_strength

OFF = augment_strength("none")


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


def _batch(n: int = 6, seed: int = 0) -> np.ndarray:
    """Film-like texture: a gradient with fine detail, so blur and JPEG have something to change."""
    rng = np.random.default_rng(seed)
    base = image().astype(np.float32)[None, ..., None] + rng.normal(0, 25, (n, 48, 48, 1))
    return np.clip(base, 0, 255).astype(np.float32)


def test_gamma_is_a_monotone_curve_per_image_that_keeps_black_and_white():
    import tensorflow as tf

    layers = augmentation_layers(AugmentConfig(**{**OFF.__dict__, "gamma": 0.4}), seed=3)
    batch = _batch()
    batch[:, 0, 0, 0], batch[:, 0, 1, 0] = 0.0, 255.0
    out = np.asarray(layers(tf.constant(batch), training=True))
    for before, after in zip(batch, out):
        order = np.argsort(before.ravel(), kind="stable")
        assert np.all(np.diff(after.ravel()[order]) >= -1e-3)  # same ranking of pixels: a tone curve
    assert np.allclose(out[:, 0, 0, 0], 0, atol=1e-3) and np.allclose(out[:, 0, 1, 0], 255, atol=1e-2)
    assert len({round(float(np.mean(o - b)), 3) for o, b in zip(out, batch)}) > 1  # a different γ per image


def test_blur_smooths_and_jpeg_adds_block_artefacts_only_in_training():
    import tensorflow as tf

    batch = _batch(8)
    roughness = lambda x: float(np.abs(np.diff(x, axis=2)).mean())  # noqa: E731
    blur = augmentation_layers(AugmentConfig(**{**OFF.__dict__, "blur_sigma": 1.0}), seed=0)
    blurred = np.asarray(blur(tf.constant(batch), training=True))
    assert roughness(blurred) < roughness(batch)
    jpeg = augmentation_layers(AugmentConfig(**{**OFF.__dict__, "jpeg_quality_min": 10}), seed=0)
    coded = np.asarray(jpeg(tf.constant(batch), training=True))
    assert coded.shape == batch.shape and 0 <= coded.min() and coded.max() <= 255
    assert 1.0 < np.abs(coded - batch).mean() < 40  # changed, still the same picture
    assert np.array_equal(np.asarray(jpeg(tf.constant(batch), training=False)), batch)


def test_named_strengths_validate_and_grow():
    configs = [augment_strength(name) for name in AUGMENT_STRENGTHS]
    for cfg in configs:
        cfg.validate()
    assert not augment_strength("none").active and augment_strength("acquisition").jpeg_quality_min
    assert augment_strength("strong").rotation_degrees > augment_strength("standard").rotation_degrees \
        > augment_strength("light").rotation_degrees


def test_one_at_a_time_isolates_each_active_setting():
    from core.data.augment import one_at_a_time

    cfg = AugmentConfig(rotation_degrees=5, zoom=0, shift=0, brightness=0, contrast=0.1, gamma=0.2, jpeg_quality_min=40)
    rows = one_at_a_time(cfg)
    assert [label for label, _ in rows] == ["rotation", "contrast", "gamma (tone curve)", "JPEG re-encoding"]
    for _, alone in rows:
        alone.validate()
        assert sum(bool(v) for v in alone.__dict__.values()) == 1
