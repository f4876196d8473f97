"""Training speed: the Keras transfer-learning tutorial pipeline vs our trainer, same recipe, same images, one run.

The reference recipe: VGG16, base frozen and a new head trained, then blocks 4-5 unfrozen and
fine-tuned at a low learning rate, batch 32, binary cross-entropy on logits, balanced class
weights. Both pipelines see the same N real training images split the same way (our
patient-grouped split, applied to both), and are tested on the same slice of the official test
split, scored with ``sklearn.metrics.roc_auc_score``.

- **tutorial**: the pipeline as a user writes it from the Keras guide "Transfer learning &
  fine-tuning": ``keras.utils.image_dataset_from_directory`` (every JPEG decoded and resized every
  epoch), augmentation layers inside the model, ``prefetch(AUTOTUNE)``, ``fit`` with
  ``base.trainable = False``, then unfreeze, recompile at the low rate, ``fit`` again. float32.
- **ours**: ``core.train.train_run`` on a run created in a ``RunStore`` in a temporary folder: the
  product path (decode once, frozen layers computed once where no augmentation runs, batch
  augmentation in tf.data, the precision ``plan_device`` picks for VGG16 on this machine).

Each pipeline runs in its own subprocess (clean dtype policy, threads and memory), one after the
other in the same invocation, so the ratio is measured side by side. ImageNet weights are not
available offline, so VGG16 has random weights in both (``weights=None``): compute is the same,
AUCs are low-ish.

Run ``python -m benchmarks.train_speed --quick`` (under 5 minutes on 2 CPU cores).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import (CLASSES, REPO, base_parser, finish, link_records, link_subset, loadavg, machine,
                                peak_rss_gib, table)

VARIANTS = {"none": "no augmentation in either phase", "both": "augmentation on in both phases"}
AUGMENT = dict(rotation_degrees=10.0, zoom=0.1, shift=0.05, brightness=0.1, contrast=0.1)  # AugmentConfig defaults


# ------------------------------------------------------------------------------------------ tutorial
def tutorial_worker(spec: dict) -> dict:
    """The Keras tutorial pipeline, written the way the guide writes it."""
    import keras
    import numpy as np
    import tensorflow as tf
    from keras import layers
    from sklearn.metrics import roc_auc_score

    t = {}
    start = time.perf_counter()
    keras.utils.set_random_seed(spec["seed"])
    size, batch, root = spec["image_size"], spec["batch_size"], Path(spec["root"])
    common = dict(labels="inferred", label_mode="binary", class_names=list(CLASSES), color_mode="rgb",
                  batch_size=batch, image_size=(size, size))
    train_ds = keras.utils.image_dataset_from_directory(root / "train", shuffle=True, seed=spec["seed"], **common)
    val_ds = keras.utils.image_dataset_from_directory(root / "val", shuffle=False, **common)
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
    val_ds = val_ds.prefetch(tf.data.AUTOTUNE)

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
    outputs = layers.Dense(1)(x)
    model = keras.Model(inputs, outputs)

    def compile_at(lr):
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
            "loadavg_mid": load_mid, "loadavg_end": loadavg(), "peak_rss_gib": peak_rss_gib(), "precision": "float32"}


# ------------------------------------------------------------------------------------------ ours
def ours_worker(spec: dict) -> dict:
    """The product path: a run in a RunStore, trained by core.train.train_run."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    import core.train as trainer
    from core.config import AugmentConfig, DataConfig, ModelConfig, PhaseConfig, RunConfig, TrainConfig
    from core.runs import RunStore

    augment = AugmentConfig(**AUGMENT) if spec["augment"] else AugmentConfig(**{k: 0 for k in AUGMENT})
    config = RunConfig(
        name=f"train-speed-{spec['variant']}",
        data=DataConfig(source="folder", path=spec["root"], image_size=spec["image_size"], validation="patient_split",
                        val_fraction=spec["val_fraction"], cache="memory"),
        augment=augment,
        model=ModelConfig(backbone="vgg16", weights="none", unfreeze_from_block=spec["unfreeze_from_block"],
                          dropout=spec["dropout"]),
        train=TrainConfig(head=PhaseConfig(spec["head_epochs"], spec["head_lr"], augment=spec["augment"]),
                          finetune=PhaseConfig(spec["finetune_epochs"], spec["finetune_lr"], augment=spec["augment"]),
                          batch_size=spec["batch_size"], early_stopping_patience=0, seed=spec["seed"],
                          device="cpu", precision=spec["precision"]),
    ).validate()
    marks: list[tuple[str, float]] = []

    def stamp(name, fn):  # record when each stage of the real trainer begins; behaviour unchanged
        def wrapper(*args, **kwargs):
            marks.append((name, time.perf_counter()))
            out = fn(*args, **kwargs)
            marks.append((name + "_done", time.perf_counter()))
            return out
        return wrapper

    trainer._phase_inputs = stamp("phase", trainer._phase_inputs)
    trainer._finish = stamp("finish", trainer._finish)
    run = RunStore(Path(spec["store"])).create(config)
    start = time.perf_counter()
    trainer.train_run(run)
    end = time.perf_counter()
    status = run.status()
    if status.state != "finished":
        raise RuntimeError(f"our run ended {status.state}: {status.error}")
    phases = [t for name, t in marks if name == "phase"]
    caching = [b - a for (n1, a), (n2, b) in zip(marks, marks[1:]) if n1 == "phase" and n2 == "phase_done"]
    finish_at = next(t for name, t in marks if name == "finish")
    t = {"prepare": phases[0] - start, "head": phases[1] - phases[0], "finetune": finish_at - phases[1],
         "train_total": finish_at - start, "evaluate": end - finish_at,
         "cache_head": caching[0], "cache_finetune": caching[1]}
    metrics = run.metrics()
    preds = metrics["predictions"]
    y = np.array([p["label"] for p in preds])
    prob = np.array([p["probability"] for p in preds])
    notes = [row["note"] for row in run.history("phase")]
    epochs = [{"phase": r["phase"], "seconds": r["seconds"]} for r in run.history("epoch")]
    return {"seconds": t, "test_auc": float(roc_auc_score(y, prob)), "metrics_roc_auc": metrics.get("roc_auc"),
            "n_test": int(len(y)), "phase_notes": notes, "epochs": epochs,
            "device": status.device if hasattr(status, "device") else None,
            "precision": config.train.precision, "loadavg_end": loadavg(), "peak_rss_gib": peak_rss_gib()}


# ------------------------------------------------------------------------------------------ driver
def _split_like_ours(root: Path, spec: dict) -> tuple[int, int, dict]:
    """Our patient-grouped train/val split of the subset, symlinked as train/ val/ test/ for the tutorial."""
    from core.config import DataConfig
    from core.splits import resolve_splits
    from core.train import class_weights

    import numpy as np

    splits = resolve_splits(DataConfig(source="folder", path=str(root / "ours"), image_size=spec["image_size"],
                                       validation="patient_split", val_fraction=spec["val_fraction"]), spec["seed"])
    for name, records in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        link_records({cls: [r.path for r in records if r.label == i] for i, cls in enumerate(CLASSES)},
                     root / "tutorial", name)
    weights = class_weights(np.array([r.label for r in splits.train]), "balanced")
    return len(splits.train), len(splits.val), weights


def _run_worker(kind: str, spec: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    out = fh.name + ".out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", "--worker", kind, fh.name, out],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, spec_path, out = sys.argv[2:5]
        spec = json.loads(Path(spec_path).read_text())
        result = (tutorial_worker if kind == "tutorial" else ours_worker)(spec)
        Path(out).write_text(json.dumps(result, default=str))
        return 0

    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--train-images", type=int, help="N real training images before the val split (balanced; default 400, quick 96)")
    p.add_argument("--test-images", type=int, help="images from the official test split (balanced; default 100, quick 40)")
    p.add_argument("--image-size", type=int, help="default 224, quick 96")
    p.add_argument("--head-epochs", type=int, help="default 10, quick 4")
    p.add_argument("--finetune-epochs", type=int, help="default 10, quick 4")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--finetune-lr", type=float, default=1e-5)
    p.add_argument("--unfreeze-from-block", type=int, default=4)
    p.add_argument("--variants", default="none,both", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--precision", default="auto", help="ours: auto (plan_device's choice for VGG16 here), float32, mixed_bfloat16")
    p.add_argument("--also-float32", action="store_true", help="also run ours in float32 (splits the gain: caching vs bf16)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)

    n_train = args.train_images or (96 if args.quick else 400)
    n_test = args.test_images or (40 if args.quick else 100)
    size = args.image_size or (96 if args.quick else 224)
    head_epochs = args.head_epochs if args.head_epochs is not None else (4 if args.quick else 10)
    finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else (4 if args.quick else 10)

    info = machine()
    from core.device import plan_device

    precision = args.precision
    if precision == "auto":
        plan = plan_device("cpu", "auto", False, backbone="vgg16")
        precision, precision_reason = plan.precision, plan.reason
    else:
        precision_reason = "set with --precision"
    print(f"machine: {info['cpu']}, {info['cores']} cores, flags {info['cpu_flags']}, GPUs: {info['gpus'] or 'none'}; "
          f"load {info['loadavg_start']}")
    print(f"ours precision: {precision} ({precision_reason})")

    result = {"machine": info, "settings": {"train_images": n_train, "test_images": n_test, "image_size": size,
                                            "batch_size": args.batch_size, "head_epochs": head_epochs,
                                            "finetune_epochs": finetune_epochs, "unfreeze_from_block": args.unfreeze_from_block,
                                            "head_lr": args.head_lr, "finetune_lr": args.finetune_lr, "seed": args.seed,
                                            "ours_precision": precision, "precision_reason": precision_reason},
              "runs": {}}
    with tempfile.TemporaryDirectory(prefix="cxr-train-speed-") as tmp:
        root = Path(tmp)
        link_subset(args.data, root / "ours", "train", n_train // 2, seed=args.seed)
        test_files = link_subset(args.data, root / "ours", "test", n_test // 2, seed=args.seed)
        n_tr, n_val, weights = _split_like_ours(root, {"image_size": size, "val_fraction": 0.15, "seed": args.seed})
        result["settings"].update(train_after_split=n_tr, val=n_val, class_weight=weights)
        print(f"data: {n_train} training images from {args.data}/train → {n_tr} train + {n_val} val (patient-grouped), "
              f"{sum(map(len, test_files.values()))} test images; {size} px, epochs {head_epochs}+{finetune_epochs}")
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        for position, variant in enumerate(variants):
            if variant not in VARIANTS:
                raise SystemExit(f"--variants: unknown {variant!r}; choose from {', '.join(VARIANTS)}")
            spec = {"variant": variant, "augment": variant == "both", "image_size": size, "batch_size": args.batch_size,
                    "head_epochs": head_epochs, "finetune_epochs": finetune_epochs, "head_lr": args.head_lr,
                    "finetune_lr": args.finetune_lr, "unfreeze_from_block": args.unfreeze_from_block, "dropout": 0.3,
                    "seed": args.seed, "val_fraction": 0.15, "class_weight": weights, "precision": precision,
                    "n_train": n_tr, "n_val": n_val}
            runs = {}
            # A B, B A, …: a drift in the machine's load between runs favours neither pipeline on average.
            order = ("tutorial", "ours") if position % 2 == 0 else ("ours", "tutorial")
            for kind in order:
                print(f"[{variant}] {kind} ({'float32' if kind == 'tutorial' else precision})… (load {loadavg()})", flush=True)
                extra = {"root": str(root / "tutorial")} if kind == "tutorial" else {"root": str(root / "ours"),
                                                                                       "store": str(root / "runs")}
                runs[kind] = _run_worker(kind, {**spec, **extra})
            runs = {"tutorial": runs["tutorial"], "ours": runs["ours"]}
            if args.also_float32 and precision != "float32":
                print(f"[{variant}] ours (float32)… (load {loadavg()})", flush=True)
                runs["ours_float32"] = _run_worker("ours", {**spec, "precision": "float32", "root": str(root / "ours"),
                                                            "store": str(root / "runs")})
            for run in runs.values():
                s = run["seconds"]
                run["images_per_sec"] = {
                    "head": n_tr * head_epochs / s["head"] if s["head"] else None,
                    "finetune": n_tr * finetune_epochs / s["finetune"] if s["finetune"] else None,
                    "end_to_end": n_tr * (head_epochs + finetune_epochs) / s["train_total"],
                }
            tut = runs["tutorial"]["seconds"]
            for name, run in runs.items():
                run["speedup_vs_tutorial"] = {k: tut[k] / run["seconds"][k] for k in ("head", "finetune", "train_total")}
                run["auc_minus_tutorial"] = run["test_auc"] - runs["tutorial"]["test_auc"]
            result["runs"][variant] = runs

    rows = []
    for variant, runs in result["runs"].items():
        for name, run in runs.items():
            s, r = run["seconds"], run["speedup_vs_tutorial"]
            rows.append([variant, name, run["precision"], s["prepare"], s["head"], s["finetune"], s["train_total"],
                         run["images_per_sec"]["end_to_end"], f"{r['head']:.2f}×", f"{r['finetune']:.2f}×",
                         f"{r['train_total']:.2f}×", f"{run['test_auc']:.3f}", f"{run['auc_minus_tutorial']:+.3f}",
                         s["evaluate"], run["peak_rss_gib"]])
    text = table(rows, ["aug", "pipeline", "precision", "prep s", "head s", "finetune s", "train s", "img/s e2e",
                        "head ×", "finetune ×", "end-to-end ×", "test AUC", "ΔAUC", "eval s", "peak GiB"])
    notes = []
    for variant, runs in result["runs"].items():
        for note in runs["ours"].get("phase_notes", []):
            notes.append(f"  [{variant}] ours: {note}")
    text += ("\n\nphase notes (what the trainer could cache, and why not):\n" + "\n".join(notes)) if notes else ""
    text += ("\n\n× = tutorial seconds / this pipeline's seconds, measured in this run; 'train s' = data + model + both "
             "phases (test evaluation excluded, shown as 'eval s'); VGG16 weights=None in both (offline); no GPU.")
    finish(result, args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
