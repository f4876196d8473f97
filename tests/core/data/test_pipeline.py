"""Tests for core.pipeline: decode-once arrays (alone vs batch, bad files, disk cache) and tf.data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from image_samples import encode, gradient
from PIL import Image

from core.data import images as images_mod
from core.config import AugmentConfig
from core.data.datasets import ImageRecord, find_dataset
from core.data.images import load_image
from core.data.pipeline import load_arrays, make_dataset


@pytest.mark.realdata
@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_real_images_load_the_same_alone_and_in_a_batch(real_data, mode):
    index = find_dataset(real_data)
    records = index.split("train")[:3] + index.split("test")[:3]  # 224 RGB copies + full-size originals
    images, labels = load_arrays(records, 96, mode)
    assert images.shape == (6, 96, 96, 1) and images.dtype == np.uint8
    assert labels.dtype == np.float32 and labels.tolist() == [r.label for r in records]
    for i, record in enumerate(records):
        single = load_image(record.path, 96, mode)
        assert single.shape == (96, 96, 3)
        assert np.array_equal(single[..., 0], images[i, ..., 0].astype(np.float32))
        assert np.array_equal(load_image(Path(record.path).read_bytes(), 96, mode), single)


def test_load_arrays_skips_bad_files(tmp_path):
    good = tmp_path / "IM-0001-0001.png"
    good.write_bytes(encode(Image.fromarray(gradient()), "PNG"))
    bad = tmp_path / "IM-0002-0001.png"
    bad.write_bytes(b"not really a png")
    records = [ImageRecord(str(bad), 0, "train", "IM-0002"), ImageRecord(str(good), 1, "train", "IM-0001")]
    seen = []
    result = load_arrays(records, 32, progress=lambda d, t: seen.append((d, t)))
    images, labels = result
    assert images.shape == (1, 32, 32, 1) and labels.tolist() == [1.0]
    assert result.kept.tolist() == [1]
    assert result.skipped[0][0] == str(bad) and "not an image" in result.skipped[0][1]
    assert seen[-1] == (2, 2)


def test_disk_cache_round_trip_does_not_decode_again(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    records = []
    for i in range(5):
        path = folder / f"person{i}_virus_{i}.png"
        path.write_bytes(encode(Image.fromarray(np.roll(gradient(), i, axis=1)), "PNG"))
        records.append(ImageRecord(str(path), i % 2, "train", f"person{i}", "virus"))
    first = load_arrays(records, 40, "letterbox", cache="disk", cache_dir=tmp_path / "cache")
    monkeypatch.setattr(images_mod, "decode_image", lambda *a, **k: pytest.fail("decoded again"))
    second = load_arrays(records, 40, "letterbox", cache="disk", cache_dir=tmp_path / "cache")
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    with pytest.raises(pytest.fail.Exception):  # another size is another key: it must decode
        load_arrays(records, 48, "letterbox", cache="disk", cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- tf.data


def test_make_dataset_shapes_order_and_augmentation():
    rng = np.random.default_rng(0)
    images = rng.integers(30, 220, (10, 32, 32, 1), dtype=np.uint8)
    labels = (np.arange(10) % 2).astype(np.float32)
    ds = make_dataset(images, labels, 4, training=False, augment=AugmentConfig())
    batches = [(x.numpy(), y.numpy()) for x, y in ds]
    assert [x.shape for x, _ in batches] == [(4, 32, 32, 3), (4, 32, 32, 3), (2, 32, 32, 3)]
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.float32
    x_all = np.concatenate([x for x, _ in batches])
    assert np.array_equal(x_all[..., 1], images[..., 0].astype(np.float32))  # no augmentation when not training
    again = np.concatenate([x.numpy() for x, _ in ds])
    assert np.array_equal(x_all, again)

    train = make_dataset(images, labels, 10, training=True, augment=AugmentConfig(), seed=1)
    x1, y1 = next(iter(train))
    assert x1.shape == (10, 32, 32, 3)
    assert 0 <= float(np.min(x1)) and float(np.max(x1)) <= 255
    order = [images[i, ..., 0] for i in range(10)]
    assert not all(np.array_equal(x1.numpy()[i, ..., 0], order[i]) for i in range(10))
    plain = make_dataset(images, labels, 10, training=True, augment=None, seed=1)
    xp, yp = next(iter(plain))
    assert sorted(yp.numpy().tolist()) == sorted(labels.tolist())
    assert any(np.array_equal(xp.numpy()[0, ..., 0], img) for img in order)  # shuffled, pixels untouched
