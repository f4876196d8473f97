"""train_speed's reference: the keras.io transfer-learning guide's pipeline as written there, and one step timed."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from benchmarks._common import CLASSES, loadavg, peak_rss_gib

__all__ = ["AUGMENT", "tutorial_worker", "profile_worker"]

AUGMENT = dict(rotation_degrees=10.0, zoom=0.1, shift=0.05, brightness=0.1, contrast=0.1)  # AugmentConfig defaults


def tutorial_worker(spec: dict) -> dict:
    """The Keras tutorial pipeline, written the way the guide writes it."""
    import keras
    import numpy as np
    import tensorflow as tf
    from keras import layers
    from sklearn.metrics import roc_auc_score

    t = {}
    start = time.perf_counter()
    keras.mixed_precision.set_global_policy(spec["precision"])  # "float32" is Keras's default
    keras.utils.set_random_seed(spec["seed"])
    size, batch, root = spec["image_size"], spec["batch_size"], Path(spec["root"])
    common = dict(labels="inferred", label_mode="binary", class_names=list(CLASSES), color_mode="rgb",
                  batch_size=batch, image_size=(size, size))
    train_ds = keras.utils.image_dataset_from_directory(root / "train", shuffle=True, seed=spec["seed"], **common)
    val_ds = keras.utils.image_dataset_from_directory(root / "val", shuffle=False, **common)
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE).cache()  # as the guide writes it
    val_ds = val_ds.prefetch(tf.data.AUTOTUNE).cache()

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = inputs
    if spec["augment"]:
        data_augmentation = keras.Sequential([
            layers.RandomRotation(AUGMENT["rotation_degrees"] / 360, fill_mode="constant"),
            layers.RandomZoom(AUGMENT["zoom"], fill_mode="constant"),
            layers.RandomTranslation(AUGMENT["shift"], AUGMENT["shift"], fill_mode="constant"),
            layers.RandomBrightness(AUGMENT["brightness"], value_range=(0, 255)),
            layers.RandomContrast(AUGMENT["contrast"], value_range=(0, 255)),
        ])
        x = data_augmentation(x)
    x = keras.applications.vgg16.preprocess_input(x)
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(spec["dropout"])(x)
    outputs = layers.Dense(1, dtype="float32")(x)  # the mixed-precision guide's float32 output; a no-op in float32
    model = keras.Model(inputs, outputs)

    def compile_at(lr: float) -> None:
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.BinaryCrossentropy(from_logits=True),
                      metrics=[keras.metrics.BinaryAccuracy(threshold=0.0), keras.metrics.AUC(from_logits=True)])

    class_weight = {int(k): v for k, v in spec["class_weight"].items()} if spec["class_weight"] else None
    compile_at(spec["head_lr"])
    t["prepare"] = time.perf_counter() - start
    t0 = time.perf_counter()
    model.fit(train_ds, epochs=spec["head_epochs"], validation_data=val_ds, class_weight=class_weight, verbose=0)
    t["head"] = time.perf_counter() - t0
    load_mid = loadavg()

    base.trainable = True
    for layer in base.layers:  # unfreeze from block 4: blocks 4 and 5 train
        layer.trainable = layer.name.startswith(tuple(f"block{b}_" for b in range(spec["unfreeze_from_block"], 6)))
    compile_at(spec["finetune_lr"])
    t0 = time.perf_counter()
    model.fit(train_ds, epochs=spec["head_epochs"] + spec["finetune_epochs"], initial_epoch=spec["head_epochs"],
              validation_data=val_ds, class_weight=class_weight, verbose=0)
    t["finetune"] = time.perf_counter() - t0
    t["train_total"] = time.perf_counter() - start

    t0 = time.perf_counter()
    test_ds = keras.utils.image_dataset_from_directory(root / "test", shuffle=False, **common)
    logits, labels = [], []
    for images, y in test_ds:
        logits.append(model.predict_on_batch(images).reshape(-1))
        labels.append(y.numpy().reshape(-1))
    t["evaluate"] = time.perf_counter() - t0
    y, z = np.concatenate(labels), np.concatenate(logits)
    return {"seconds": t, "test_auc": float(roc_auc_score(y, z)), "n_test": int(len(y)),
            "loadavg_mid": load_mid, "loadavg_end": loadavg(), "peak_rss_gib": peak_rss_gib(),
            "precision": spec["precision"]}


def profile_worker(spec: dict) -> dict:
    """One tutorial step taken apart: where its time goes at this image size and precision."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(spec["precision"])
    keras.utils.set_random_seed(spec["seed"])
    size, batch, root = spec["image_size"], spec["batch_size"], Path(spec["root"])
    ds = keras.utils.image_dataset_from_directory(root / "train", labels="inferred", label_mode="binary",
                                                  class_names=list(CLASSES), batch_size=batch,
                                                  image_size=(size, size), shuffle=False)
    out: dict = {"precision": spec["precision"], "batch_size": batch, "image_size": size}
    t0 = time.perf_counter()
    batches = [b for b in ds]  # every JPEG read, decoded and resized: what an epoch without .cache() pays
    images = sum(int(x.shape[0]) for x, _ in batches)
    out["decode_resize_s_per_image"] = (time.perf_counter() - t0) / images
    cached = ds.cache()
    for _ in cached:
        pass
    t0 = time.perf_counter()
    for _ in cached:
        pass
    out["cached_epoch_s_per_image"] = (time.perf_counter() - t0) / images

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    x = keras.applications.vgg16.preprocess_input(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, dtype="float32")(x))
    x_batch, y_batch = batches[0]

    def per_image(fn: Callable[[], object], repeats: int = 5) -> float:
        fn()  # trace and warm up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return float(np.median(times)) / int(x_batch.shape[0])

    for phase, trainable in (("head", False), ("finetune", True)):
        base.trainable = trainable
        if trainable:
            for layer in base.layers:
                layer.trainable = layer.name.startswith(("block4_", "block5_"))
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=keras.losses.BinaryCrossentropy(from_logits=True))
        out[f"{phase}_train_step_s_per_image"] = per_image(lambda: model.train_on_batch(x_batch, y_batch))
    base.trainable = False
    forward = tf.function(lambda x: model(x, training=False))
    out["forward_s_per_image"] = per_image(lambda: forward(x_batch).numpy())
    out["loadavg_end"] = loadavg()
    return out

