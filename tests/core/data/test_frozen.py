"""Frozen-layer caching: the split is exact, shares weights, and is used only when it is exact."""
from __future__ import annotations

import numpy as np
import pytest

from core.config import ModelConfig, preset
from core.data.frozen import cache_plan, split_at_freeze_boundary
from core.model.classifier import build_classifier, set_trainable
from core.store.runs import RunStore
from core.jobs.run import run_and_record


@pytest.mark.parametrize("backbone, phase, boundary", [
    ("vgg16", "head", "pool"),
    ("vgg16", "finetune", "block4_conv1"),
    ("resnet50v2", "finetune", "conv4_block1_1_conv"),
])
def test_split_is_exact(backbone, phase, boundary):
    cfg = ModelConfig(backbone=backbone, weights="imagenet", unfreeze_from_block=4)  # weights only steer BN freezing
    model = build_classifier(ModelConfig(backbone=backbone, weights="none"), 64)
    set_trainable(model, cfg, phase)
    split = split_at_freeze_boundary(model)
    assert split is not None and split.boundary == boundary
    assert not any(layer.trainable_weights for layer in split.bottom.layers)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(split.top(split.bottom(x)), model(x), rtol=1e-5, atol=1e-5)


def test_top_shares_the_full_models_weights():
    cfg = ModelConfig(backbone="vgg16", weights="none", unfreeze_from_block=4)
    model = build_classifier(cfg, 32)
    split = split_at_freeze_boundary(model)  # head phase after build
    kernel, bias = split.top.get_layer("logit").get_weights()
    split.top.get_layer("logit").set_weights([kernel + 1.0, bias])
    np.testing.assert_array_equal(model.get_layer("logit").get_weights()[0], kernel + 1.0)


def test_nothing_frozen_means_no_split():
    cfg = ModelConfig(backbone="small_cnn", weights="none", unfreeze_from_block=1)
    model = build_classifier(cfg, 32)
    set_trainable(model, cfg, "finetune")
    assert split_at_freeze_boundary(model) is None
    assert cache_plan(None, 100, False, True) == (False, "nothing below the trainable layers is frozen")


def test_cache_plan_explains_why_not():
    model = build_classifier(ModelConfig(backbone="vgg16", weights="none"), 32)
    split = split_at_freeze_boundary(model)
    assert cache_plan(split, 100, True, True)[1].startswith("augmentation is on")
    assert not cache_plan(split, 10 ** 12, False, True)[0]
    ok, note = cache_plan(split, 100, False, True)
    assert ok and "computed once" in note


def test_frozen_outputs_on_disk_are_read_back_only_for_the_same_weights_and_pixels(tmp_path):
    from core.data.frozen import frozen_features
    from core.data.pipeline import make_dataset

    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 1), dtype=np.uint8)

    def features(model, pixels):
        split = split_at_freeze_boundary(model)
        computed = []
        dataset = lambda: computed.append(1) or make_dataset(pixels, np.zeros(len(pixels)), 4, training=False)
        out, hit = frozen_features(split, pixels, dataset, cache_dir=tmp_path)
        assert hit != bool(computed)  # read back, or computed: never both
        return np.asarray(out), hit

    model = build_classifier(ModelConfig(backbone="small_cnn", weights="none"), 32)
    first, hit = features(model, images)
    assert not hit and len(list((tmp_path / "frozen").glob("*.npy"))) == 1
    again, hit = features(model, images)
    assert hit and np.array_equal(again, first)
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert not features(model, changed)[1]  # another pixel: another key
    other = build_classifier(ModelConfig(backbone="small_cnn", weights="none"), 32)  # other random weights
    assert not features(other, images)[1]


@pytest.mark.slow
def test_run_caches_the_head_phase_and_says_why_finetune_is_not(tmp_path, cache_dir):
    config = preset("Quick CPU demo").with_overrides(**{
        "model.backbone": "vgg16", "model.unfreeze_from_block": 5, "data.image_size": 32,
        "data.demo_images_per_class": 60,
        "train.head.epochs": 2, "train.head.augment": False, "train.head.learning_rate": 1e-3,
        "train.finetune.epochs": 1, "train.early_stopping_patience": 0,
    })
    run = RunStore(tmp_path).create(config)
    assert run_and_record(run, resume=False) == 0, run.raw_status().error
    notes = {row["phase"]: row["note"] for row in run.history("phase")}
    assert "computed once" in notes["head"]
    assert "augmentation is on" in notes["finetune"]
    assert [row["epoch"] for row in run.epochs()] == [1, 2, 3]
    assert run.status().state == "finished"
