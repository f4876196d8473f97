"""Peak resident memory of VGG16 @ 224 px, batch 32 training (target ≤ 6 GiB), ours vs the tutorial pipeline.

Each training runs in its own subprocess (the same workers as ``benchmarks.train_speed``: our
``core.jobs.run.train_run`` on a RunStore run, and the plain-Keras tutorial pipeline) and reports its
own peak RSS (``ru_maxrss``: everything the process touched, TensorFlow itself included). Two
settings: augmentation on (every phase trains on images: the largest activations) and off (our
trainer caches the frozen layers' outputs: the cache's memory shows up here).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from benchmarks._common import base_parser, finish, link_subset, loadavg, machine, ours_precision, table
from benchmarks.train_speed import run_worker, split_like_ours

TARGET_GIB = 6.0


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--train-images", type=int, help="default 256, quick 64")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1, help="epochs per phase")
    p.add_argument("--precision", default="auto")
    p.add_argument("--no-tutorial", action="store_true", help="measure ours only")
    p.add_argument("--full", action="store_true", help="the whole train split (unbalanced, as training uses it)")
    p.add_argument("--augmentation", choices=("both", "on", "off"), default="both",
                   help="which settings to measure (off = frozen outputs cached: the memory-hungry one)")
    args = p.parse_args(argv)
    n_train = "all" if args.full else args.train_images or (64 if args.quick else 256)

    info = machine()

    precision = ours_precision(args.precision)
    result = {"machine": info, "settings": {"train_images": n_train, "image_size": args.image_size,
                                            "batch_size": args.batch_size, "epochs_per_phase": args.epochs,
                                            "ours_precision": precision}, "peak_rss_gib": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-memory-") as tmp:
        root = Path(tmp)
        link_subset(args.data, root / "ours", "train", None if args.full else n_train // 2, seed=0)
        link_subset(args.data, root / "ours", "test", 8, seed=0)
        n_tr, n_val, weights = split_like_ours(root, {"image_size": args.image_size, "val_fraction": 0.15, "seed": 42})
        for augment in {"both": (True, False), "on": (True,), "off": (False,)}[args.augmentation]:
            spec = {"variant": "both" if augment else "none", "augment": augment, "image_size": args.image_size,
                    "batch_size": args.batch_size, "head_epochs": args.epochs, "finetune_epochs": args.epochs,
                    "head_lr": 1e-3, "finetune_lr": 1e-5, "unfreeze_from_block": 4, "dropout": 0.3, "seed": 42,
                    "val_fraction": 0.15, "class_weight": weights, "precision": precision}
            label = "augmentation on" if augment else "augmentation off"
            kinds = [("ours", {**spec, "root": str(root / "ours"), "store": str(root / "runs")})]
            if not args.no_tutorial:
                kinds.append(("tutorial", {**spec, "root": str(root / "tutorial")}))
            for kind, worker_spec in kinds:
                print(f"{kind}, {label}… (load {loadavg()})", flush=True)
                out = run_worker(kind, worker_spec)
                gib = out["peak_rss_gib"]
                result["peak_rss_gib"][f"{kind} | {label}"] = gib
                rows.append([kind, label, out["precision"], gib, "met" if gib <= TARGET_GIB else "missed"])
    worst = max(v for k, v in result["peak_rss_gib"].items() if k.startswith("ours"))
    result["target"] = {"gib": TARGET_GIB, "ours_worst_gib": worst, "met": worst <= TARGET_GIB}
    text = table(rows, ["pipeline", "setting", "precision", "peak RSS GiB", f"≤ {TARGET_GIB:g} GiB"])
    text += (f"\n\nVGG16 @ {args.image_size} px, batch {args.batch_size}, {n_tr} train + {n_val} val real images, "
             f"{args.epochs}+{args.epochs} epochs, each in its own process (peak RSS includes TensorFlow itself).")
    finish(result, args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
