"""Data-parallel training under JAX and the feeder behind it: two devices train as one, padding rows carry no weight, the feeder's batches are tf.data's."""
from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.config import preset
from core.config.paths import REPO_ROOT
from core.data.batches import batches_of, real_rows
from core.data.feeder import ArrayBatches, FeatureBatches
from core.data.frozen import features_dataset
from core.data.pipeline import make_dataset
from core.evaluation.evaluate import predict_probabilities
from core.store.runs import RunStore
from core.training.callbacks import CRASH_ENV

TWO_CPU_DEVICES = "--xla_force_host_platform_device_count=2"


def clean_env(**more: str) -> dict[str, str]:
    """This process's environment without a backend, device split or crash point of its own, plus ``more``."""
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS", CRASH_ENV)}
    return {**env, "PYTHONUNBUFFERED": "1", **more}


def train(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.train", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_two_devices_under_data_parallel_train_as_one_device_with_the_global_batch(tmp_path, cache_dir):
    """Nothing random in training (no augmentation, no dropout, one seed): 2 CPU devices × 4 images under Keras's
    DataParallel give the losses and test probabilities of 1 device × 8, to rounding. 48 training, 8 validation
    and 16 test images: every batch is whole, so no row pads one. The head trains on cached frozen outputs
    (FeatureBatches), fine-tuning on images (ArrayBatches)."""
    config = preset("Quick CPU demo").with_overrides(**{  # left on TensorFlow: $KERAS_BACKEND=jax chooses
        "name": "data-parallel", "data.image_size": 32, "data.demo_images_per_class": 40, "model.dropout": 0.0,
        "train.head.epochs": 2, "train.head.augment": False, "train.head.learning_rate": 1e-2,
        "train.finetune.epochs": 2, "train.batch_size": 4, "train.early_stopping_patience": 0, "train.seed": 7})
    config_file = tmp_path / "config.json"
    config_file.write_text(config.to_json())
    common = ["--config", str(config_file), "--no-augment"]
    two = train([*common, "--store", str(tmp_path / "two"), "--device", "mirrored"],
                clean_env(KERAS_BACKEND="jax", XLA_FLAGS=TWO_CPU_DEVICES))
    assert two.returncode == 0, two.stderr[-3000:]
    one = train([*common, "--store", str(tmp_path / "one"), "--device", "cpu", "--batch-size", "8"],
                clean_env(KERAS_BACKEND="jax"))
    assert one.returncode == 0, one.stderr[-3000:]
    (parallel,), (single,) = RunStore(tmp_path / "two").list(), RunStore(tmp_path / "one").list()

    for run in (parallel, single):
        assert run.status().state == "finished", run.log_tail()
        assert run.config().train.backend == "jax", "a new run records the backend $KERAS_BACKEND chose"
        assert not run.config().augment.active and run.config().model.dropout == 0
        assert "train 48, val 8, test 16 images" in run.log_path.read_text()
    plan = parallel.read_json("plan.json")
    assert (plan["strategy"], plan["replicas"], plan["backend"]) == ("mirrored", 2, "jax")
    assert "keras.distribution.DataParallel over 2 CPU devices" in plan["reason"]
    assert parallel.status().device["replicas"] == 2
    assert (single.read_json("plan.json")["strategy"], single.read_json("plan.json")["replicas"]) == ("cpu", 1)
    assert [p["note"].startswith("frozen layers computed once") for p in parallel.history("phase")] == [True, False]

    rows, reference = parallel.history("epoch"), single.history("epoch")
    assert [row["epoch"] for row in rows] == [row["epoch"] for row in reference] == [1, 2, 3, 4]
    assert [row["iterations"] for row in rows] == [row["iterations"] for row in reference] == [6, 12, 6, 12]
    for row, same in zip(rows, reference):
        for key in ("loss", "val_loss"):
            assert row[key] == pytest.approx(same[key], rel=1e-4), (row["epoch"], key)
    assert abs(rows[-1]["loss"] - rows[0]["loss"]) > 0.05, "training moved the weights"
    mine, theirs = parallel.metrics()["predictions"], single.metrics()["predictions"]
    assert [p["file"] for p in mine] == [p["file"] for p in theirs] and len(mine) == 16
    probabilities = np.array([p["probability"] for p in mine])
    assert np.abs(probabilities - [p["probability"] for p in theirs]).max() < 1e-5
    assert probabilities.std() > 1e-3, "the models tell films apart"


# ------------------------------------------------------------------------------------------------ padding
def _numbered(n: int, side: int = 4) -> np.ndarray:
    """uint8 (n, side, side, 1) images whose every pixel is the image's own index."""
    return np.repeat(np.arange(n, dtype=np.uint8), side * side).reshape(n, side, side, 1)


def test_the_feeder_pads_a_short_last_batch_to_the_device_count_with_zero_weights():
    labels = np.array([0, 1, 1, 0, 1, 1, 1], np.float32)
    class_weight = {0: 7 / 4, 1: 7 / 10}
    for training in (False, True):
        fed = ArrayBatches(_numbered(7), labels, 4, training=training, seed=5, class_weight=class_weight,
                           multiple_of=2)
        batches = list(batches_of(fed))
        assert [len(batch[1]) for batch in batches] == [4, 4], "4 real rows, then 3 real and 1 padding"
        x, y, w = batches[1]
        ids = np.asarray(x)[:, 0, 0, 0].astype(int)
        assert ids[3] == ids[0] and y[3] == y[0] and w[3] == 0 and (w[:3] > 0).all(), "a copy of the first, weight 0"
        seen, weights, expected = [], [], []
        for batch in batches:
            keep, batch_labels = real_rows(batch)
            rows = np.asarray(batch[0])[:, 0, 0, 0].astype(int)[keep]
            seen += list(rows)
            np.testing.assert_array_equal(batch_labels[keep], labels[rows])
            weights += list(np.asarray(batch[2])[keep])
            # Keras divides by every row: the real rows of a padded batch weigh rows / real more (loss = their mean)
            expected += [class_weight[int(labels[i])] * len(keep) / keep.sum() for i in rows]
        assert sorted(seen) == list(range(7)), "every image exactly once, no padding row among them"
        assert weights == pytest.approx(expected)
    features = FeatureBatches(np.arange(21, dtype=np.float16).reshape(7, 3), labels, 4, training=False,
                              multiple_of=2)
    x, y, w = features[1]
    np.testing.assert_array_equal(x[:, 0], [12, 15, 18, 12])
    np.testing.assert_allclose(w, [4 / 3, 4 / 3, 4 / 3, 0])
    assert x.dtype == np.float32
    assert real_rows(features[0])[0].all() and real_rows((x, y))[0] is None, "tf.data batches have no padding"
    unpadded = ArrayBatches(_numbered(7), labels, 4, training=False)
    assert len(unpadded[1][1]) == 3 and (np.asarray(unpadded[1][2]) == 1).all()


def test_predictions_over_a_padded_feeder_drop_the_padding_rows():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    images, labels = _numbered(7), np.zeros(7, np.float32)
    padded = predict_probabilities(model, ArrayBatches(images, labels, 4, training=False, multiple_of=3))
    assert padded.shape == (7,)
    np.testing.assert_allclose(padded, predict_probabilities(model, images), rtol=1e-6)


def _padded_against_plain():
    from core.training.fit import compile_classifier

    rng = np.random.default_rng(0)
    features = rng.normal(size=(7, 3)).astype(np.float16)
    labels = np.array([0, 1, 1, 0, 1, 0, 0], np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    compile_classifier(model, 1e-3, jit_compile=False)

    def evaluate(rows, **kwargs):
        return model.evaluate(FeatureBatches(features[rows], labels[rows], 4, training=False, **kwargs),
                              return_dict=True, verbose=0)

    everything = slice(None)
    return (evaluate(everything), evaluate(everything, multiple_of=2),
            [evaluate(slice(0, 4))["loss"], evaluate(slice(4, 7))["loss"]])


def test_a_padded_batchs_loss_is_the_mean_over_its_real_rows():
    plain, padded, (first, last) = _padded_against_plain()  # the last batch: 3 real rows, 1 padding row
    assert plain["loss"] == pytest.approx((4 * first + 3 * last) / 7, rel=1e-6)
    # Keras weighs each batch's loss by its rows, padding included: the last batch counts as 4 rows, its loss
    # being the mean over its 3 real ones (the padding row weighs nothing, the real ones 4/3 each).
    assert padded["loss"] == pytest.approx((4 * first + 4 * last) / 8, rel=1e-6)


@pytest.mark.xfail(strict=True, reason=(
    "known limit, documented (docs/gpu.md): under DataParallel Keras's epoch figures count a padded last batch "
    "as full (its loss is the mean over its real rows, weighing 4 rows here for 3), and compile(metrics=...) "
    "takes no sample weights, so the padding copies count in accuracy and AUC; the exact validation AUC, the "
    "threshold and the test evaluation drop them"))
def test_padding_rows_leave_the_epoch_figures_unchanged():
    plain, padded, _ = _padded_against_plain()
    for key in ("loss", "accuracy", "auc"):
        assert padded[key] == pytest.approx(plain[key], rel=1e-6), key


# ------------------------------------------------------------------------------------------------ feeder vs tf.data
def test_the_feeders_batches_are_tf_datas_when_not_training():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (11, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 2, 11).astype(np.float32)
    pipeline = make_dataset(images, labels, 4, training=False)
    assert isinstance(pipeline, tf.data.Dataset), "this process runs Keras on TensorFlow"
    expected = [(x.numpy(), y.numpy()) for x, y in pipeline]
    for source in (images, images[..., 0]):  # (N, S, S, 1) or (N, S, S)
        fed = list(batches_of(ArrayBatches(source, labels, 4, training=False)))
        assert len(fed) == len(expected) == 3
        for (x, y, w), (tf_x, tf_y) in zip(fed, expected):
            x = np.asarray(x)
            assert x.dtype == tf_x.dtype == np.float32 and x.shape == tf_x.shape and x.shape[1:] == (8, 8, 3)
            np.testing.assert_array_equal(x, tf_x)
            np.testing.assert_array_equal(y, tf_y)
            assert (np.asarray(w) == 1).all()
    features = rng.normal(size=(11, 5)).astype(np.float16)
    cached = [(x.numpy(), y.numpy()) for x, y in features_dataset(features, labels, 4, training=False)]
    for (x, y, _), (tf_x, tf_y) in zip(batches_of(FeatureBatches(features, labels, 4, training=False)), cached):
        np.testing.assert_array_equal(x, tf_x)
        np.testing.assert_array_equal(y, tf_y)


def _epoch_orders(kind: str, seed: int, epochs: int = 3, n: int = 10) -> list[list[int]]:
    """The image indices of each training epoch, in order, from tf.data or the feeder; labels checked to follow."""
    images, labels = _numbered(n, side=2), (np.arange(n) % 2).astype(np.float32)
    if kind == "tf.data":
        pipeline = make_dataset(images, labels, 4, training=True, seed=seed)
        passes = [[(x.numpy(), y.numpy()) for x, y in pipeline] for _ in range(epochs)]  # each pass is an epoch
    else:
        fed, passes = ArrayBatches(images, labels, 4, training=True, seed=seed), []
        for _ in range(epochs):
            passes.append([(np.asarray(x), y) for x, y, _ in (fed[i] for i in range(len(fed)))])
            fed.on_epoch_end()  # what Keras's fit calls between epochs
    orders = []
    for batches in passes:
        assert [len(y) for _, y in batches] == [4, 4, 2]
        order = [int(i) for x, _ in batches for i in x[:, 0, 0, 0]]
        np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels[order])
        orders.append(order)
    return orders


@pytest.mark.parametrize("kind", ["tf.data", "feeder"])
def test_training_batches_hold_each_image_once_an_epoch_reshuffled_the_same_for_the_same_seed(kind):
    orders = _epoch_orders(kind, seed=3)
    assert all(sorted(order) == list(range(10)) for order in orders), "each image exactly once per epoch"
    assert len({tuple(order) for order in orders}) == 3, "a new order every epoch"
    assert orders != [sorted(order) for order in orders]
    assert _epoch_orders(kind, seed=3) == orders, "the same seed gives the same orders"
    assert _epoch_orders(kind, seed=4)[0] != orders[0]
