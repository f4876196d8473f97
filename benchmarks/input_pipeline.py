"""Input pipeline: images/s of the data pipeline alone vs the model that consumes it (target ≥ 10×), same run.

Pipelines, each drained batch by batch with nothing else running:
- ``ours decode once``: ``core.data.pipeline.load_arrays`` (JPEG decode + resize, thread pool), paid once per run.
- ``ours epoch``: ``core.data.pipeline.make_dataset`` over the cached uint8 arrays (shuffle, gather, 3 channels),
  without and with the default augmentation (batched Keras layers inside ``Dataset.map``).
- ``tutorial epoch``: ``keras.utils.image_dataset_from_directory`` + ``prefetch`` (decodes every JPEG
  every epoch), for reference.
Model rates (VGG16 in the precision ``plan_device`` picks): the frozen forward pass (the fastest
consumer of images: our head phase computes it once) and the fine-tune train step on images (what an
augmented phase runs every step). Ratio = pipeline images/s ÷ model images/s.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import base_parser, finish, link_subset, loadavg, machine, ours_precision, table


def _drain(dataset, epochs: int) -> tuple[float, int]:
    """Seconds and images for ``epochs`` passes over a dataset (first batch of the first pass excluded: tracing)."""
    it = iter(dataset)
    first = next(it)
    n, start = 0, time.perf_counter()
    for batch in it:
        n += len(batch[0])
    for _ in range(epochs - 1):
        for batch in dataset:
            n += len(batch[0])
    del first
    return time.perf_counter() - start, n


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, help="real training images (default 1024, quick 256)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, help="passes over the images per pipeline (default 3, quick 2)")
    p.add_argument("--precision", default="auto")
    args = p.parse_args(argv)
    n_images = args.images or (256 if args.quick else 1024)
    epochs = args.epochs or (2 if args.quick else 3)
    size, batch = args.image_size, args.batch_size

    info = machine()
    import keras
    import tensorflow as tf

    from core.config import AugmentConfig, ModelConfig
    from core.data.datasets import find_dataset
    from core.data.pipeline import load_arrays, make_dataset
    from core.model.classifier import build_classifier, set_trainable

    precision = ours_precision(args.precision)
    result = {"machine": info, "settings": {"images": n_images, "image_size": size, "batch_size": batch,
                                            "epochs": epochs, "precision": precision}}
    rates = {}
    with tempfile.TemporaryDirectory(prefix="cxr-input-") as tmp:
        root = Path(tmp)
        link_subset(args.data, root, "train", n_images // 2, seed=0)
        records = find_dataset(root).split("train")

        start = time.perf_counter()
        x, y = load_arrays(records, size, "stretch", cache="memory")
        rates["ours decode once (load_arrays)"] = len(y) / (time.perf_counter() - start)
        print(f"decoded {len(y)} images (load {loadavg()})", flush=True)

        for name, augment in (("ours epoch, no augmentation", None), ("ours epoch, augmentation", AugmentConfig())):
            ds = make_dataset(x, y, batch, training=True, augment=augment, seed=0)
            seconds, n = _drain(ds, epochs)
            rates[name] = n / seconds
            print(f"{name}: {rates[name]:.0f} img/s (load {loadavg()})", flush=True)

        ds = keras.utils.image_dataset_from_directory(root / "train", label_mode="binary", batch_size=batch,
                                                      image_size=(size, size), shuffle=True, seed=0)
        ds = ds.prefetch(tf.data.AUTOTUNE)
        seconds, n = _drain(ds, epochs)
        rates["tutorial epoch (image_dataset_from_directory)"] = n / seconds
        print(f"tutorial: {rates['tutorial epoch (image_dataset_from_directory)']:.0f} img/s (load {loadavg()})", flush=True)

    keras.mixed_precision.set_dtype_policy(precision)
    cfg = ModelConfig(backbone="vgg16", weights="none", unfreeze_from_block=4)
    model = build_classifier(cfg, size)
    xb = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    yb = (np.arange(batch) % 2).astype("float32")
    model_rates = {}
    model.predict_on_batch(xb)
    start = time.perf_counter()
    for _ in range(2):
        model.predict_on_batch(xb)
    model_rates[f"VGG16 forward ({precision})"] = 2 * batch / (time.perf_counter() - start)
    set_trainable(model, cfg, "finetune")
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    model.train_on_batch(xb, yb)
    start = time.perf_counter()
    for _ in range(2):
        model.train_on_batch(xb, yb)
    model_rates[f"VGG16 fine-tune step on images ({precision})"] = 2 * batch / (time.perf_counter() - start)
    print(f"model: {model_rates} (load {loadavg()})", flush=True)

    fastest_model = max(model_rates.values())
    rows = [[name, rate, f"{rate / fastest_model:.1f}×"] for name, rate in rates.items()]
    rows += [[name, rate, "1.0×" if rate == fastest_model else f"{rate / fastest_model:.2f}×"] for name, rate in model_rates.items()]
    result.update(pipeline_images_per_s=rates, model_images_per_s=model_rates,
                  ratio_vs_fastest_model={k: v / fastest_model for k, v in rates.items()})
    worst = min(rates["ours epoch, no augmentation"], rates["ours epoch, augmentation"]) / fastest_model
    result["target_met"] = worst >= 10
    text = table(rows, ["stage", "img/s", "÷ fastest model"])
    text += (f"\n\n{n_images} real images at {size} px, batch {batch}; target ≥ 10× for our per-epoch pipeline: "
             f"{worst:.1f}× ({'met' if worst >= 10 else 'missed'}) against the fastest model stage.")
    finish(result, args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
