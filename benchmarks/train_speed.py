"""Training speed: the keras.io transfer-learning guide's pipeline vs our trainer, same recipe, same images, same precision.

The reference recipe: VGG16, base frozen and a new head trained, then blocks 4-5 unfrozen and
fine-tuned at a low learning rate, batch 32, binary cross-entropy on logits, balanced class
weights. Both pipelines see the same N real training images split the same way (our
patient-grouped split, applied to both), and are tested on the same slice of the official test
split, scored with ``sklearn.metrics.roc_auc_score``.

- **tutorial**: the pipeline as the Keras guide "Transfer learning & fine-tuning" writes it:
  ``keras.utils.image_dataset_from_directory``, then ``.prefetch(AUTOTUNE).cache()`` as the guide
  does (decoded once, in the first epoch), augmentation layers inside the model, ``fit`` with
  ``base.trainable = False``, then unfreeze, recompile at the low rate, ``fit`` again. Run twice:
  in float32 (Keras's default) and in the precision policy ours uses (``mixed_bfloat16`` here, set
  as the Keras mixed-precision guide says, with a float32 output layer).
- **ours**: ``core.jobs.run.train_run`` on a run created in a ``RunStore`` in a temporary folder: the
  product path (decode once, frozen layers computed once where no augmentation runs, batch
  augmentation in tf.data), in float32 and in the precision ``plan_device`` picks for VGG16 here.

So the table separates "ours vs the tutorial at the same precision" from "what bf16 adds". Each
pipeline runs in its own subprocess (clean dtype policy, threads and memory); ``--repeats`` rounds
run every pipeline once per augmentation setting, in a rotated order (interleaved), and the
summary gives the median and range over the rounds. ``--profile`` adds one profiled tutorial step
(data vs compute, cold vs cached). ImageNet weights are not available offline, so VGG16 has random
weights in both (``weights=None``): compute is the same, AUCs are low-ish.

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
from benchmarks.train_speed_tutorial import AUGMENT, profile_worker, tutorial_worker

VARIANTS = {"none": "no augmentation in either phase", "both": "augmentation on in both phases"}


# ------------------------------------------------------------------------------------------ ours
def ours_worker(spec: dict) -> dict:
    """The product path: a run in a RunStore, trained by core.jobs.run.train_run."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    import core.jobs.run as runner
    import core.training.fit as trainer
    from core.config import AugmentConfig, DataConfig, ModelConfig, PhaseConfig, RunConfig, TrainConfig
    from core.store.runs import RunStore

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

    trainer.phase_inputs = stamp("phase", trainer.phase_inputs)
    runner.finish_run = stamp("finish", runner.finish_run)  # threshold on validation, then the test evaluation
    run = RunStore(Path(spec["store"])).create(config)
    start = time.perf_counter()
    runner.train_run(run)
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
def split_like_ours(root: Path, spec: dict) -> tuple[int, int, dict]:
    """Our patient-grouped train/val split of the subset, symlinked as train/ val/ test/ for the tutorial."""
    from core.config import DataConfig
    from core.data.splits import resolve_splits
    from core.training.fit import class_weights

    import numpy as np

    splits = resolve_splits(DataConfig(source="folder", path=str(root / "ours"), image_size=spec["image_size"],
                                       validation="patient_split", val_fraction=spec["val_fraction"]), spec["seed"])
    for name, records in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        link_records({cls: [r.path for r in records if r.label == i] for i, cls in enumerate(CLASSES)},
                     root / "tutorial", name)
    weights = class_weights(np.array([r.label for r in splits.train]), "balanced")
    return len(splits.train), len(splits.val), weights


def run_worker(kind: str, spec: dict) -> dict:
    """One pipeline (``tutorial``, ``ours`` or ``profile``) in its own ``--worker`` process; its JSON figures."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    out = fh.name + ".out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", "--worker", kind, fh.name, out],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(Path(out).read_text())


PIPELINES = ("tutorial-float32", "tutorial-same", "ours-float32", "ours-same")


def _pipeline(name: str, precision: str) -> tuple[str, str]:
    """``("tutorial" | "ours", dtype policy)`` of a pipeline name; "same" is ours' precision."""
    kind, which = name.split("-")
    return kind, precision if which == "same" else "float32"


def _median_range(values: list[float]) -> dict[str, float]:
    import statistics

    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(rounds: list[dict], variants: list[str], pipelines: list[str], n_tr: int, epochs: tuple[int, int]) -> dict:
    """Median and range over the rounds of every stage's seconds, images/s and the ratios that matter."""
    out: dict = {}
    for variant in variants:
        runs = [r[variant] for r in rounds if variant in r]
        per = {}
        for name in pipelines:
            got = [r[name] for r in runs if name in r]
            if not got:
                continue
            per[name] = {key: _median_range([g["seconds"][key] for g in got])
                         for key in ("prepare", "head", "finetune", "train_total")}
            per[name]["images_per_sec_end_to_end"] = _median_range(
                [n_tr * sum(epochs) / g["seconds"]["train_total"] for g in got])
            per[name]["test_auc"] = _median_range([g["test_auc"] for g in got])
            per[name]["precision"] = got[0]["precision"]
        ratios = {}
        pairs = {"ours vs tutorial, both float32": ("tutorial-float32", "ours-float32"),
                 "ours vs tutorial, both in ours' precision": ("tutorial-same", "ours-same"),
                 "what bf16 adds to the tutorial": ("tutorial-float32", "tutorial-same"),
                 "what bf16 adds to ours": ("ours-float32", "ours-same"),
                 "ours as shipped vs the tutorial as written (float32)": ("tutorial-float32", "ours-same")}
        for label, (slow, fast) in pairs.items():
            both = [r for r in runs if slow in r and fast in r]
            if both:
                ratios[label] = {key: _median_range([r[slow]["seconds"][key] / r[fast]["seconds"][key] for r in both])
                                 for key in ("head", "finetune", "train_total")}
        out[variant] = {"pipelines": per, "ratios": ratios}
    return out


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, spec_path, out = sys.argv[2:5]
        spec = json.loads(Path(spec_path).read_text())
        worker = {"tutorial": tutorial_worker, "ours": ours_worker, "profile": profile_worker}[kind]
        Path(out).write_text(json.dumps(worker(spec), default=str))
        return 0

    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--train-images", type=int, help="N real training images before the val split (balanced; default 200, quick 64)")
    p.add_argument("--test-images", type=int, help="images from the official test split (balanced; default 100, quick 40)")
    p.add_argument("--image-size", type=int, help="default 224, quick 96")
    p.add_argument("--head-epochs", type=int, help="default 5, quick 2")
    p.add_argument("--finetune-epochs", type=int, help="default 5, quick 2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--finetune-lr", type=float, default=1e-5)
    p.add_argument("--unfreeze-from-block", type=int, default=4)
    p.add_argument("--variants", default="none,both", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--pipelines", default=",".join(PIPELINES),
                   help="comma list of tutorial-float32, tutorial-same, ours-float32, ours-same ('same' = ours' precision)")
    p.add_argument("--precision", default="auto", help="ours' precision: auto (plan_device's choice for VGG16 here), float32, mixed_bfloat16")
    p.add_argument("--repeats", type=int, help="interleaved rounds (default 3, quick 1)")
    p.add_argument("--profile", action="store_true", help="also take one tutorial step apart (float32 and ours' precision)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)

    n_train = args.train_images or (64 if args.quick else 200)
    n_test = args.test_images or (40 if args.quick else 100)
    size = args.image_size or (96 if args.quick else 224)
    head_epochs = args.head_epochs if args.head_epochs is not None else (2 if args.quick else 5)
    finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else (2 if args.quick else 5)
    repeats = args.repeats or (1 if args.quick else 3)
    pipelines = [name.strip() for name in args.pipelines.split(",") if name.strip()]
    for name in pipelines:
        if name not in PIPELINES:
            raise SystemExit(f"--pipelines: unknown {name!r}; choose from {', '.join(PIPELINES)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in variants:
        if variant not in VARIANTS:
            raise SystemExit(f"--variants: unknown {variant!r}; choose from {', '.join(VARIANTS)}")

    info = machine()
    from core.training.device import plan_device

    precision = args.precision
    if precision == "auto":
        plan = plan_device("cpu", "auto", False, backbone="vgg16")
        precision, precision_reason = plan.precision, plan.reason
    else:
        precision_reason = "set with --precision"
    print(f"machine: {info['cpu']}, {info['cores']} cores, flags {info['cpu_flags']}, GPUs: {info['gpus'] or 'none'}; "
          f"load {info['loadavg_start']}")
    print(f"ours' precision: {precision} ({precision_reason})")

    result = {"machine": info, "settings": {"train_images": n_train, "test_images": n_test, "image_size": size,
                                            "batch_size": args.batch_size, "head_epochs": head_epochs,
                                            "finetune_epochs": finetune_epochs, "unfreeze_from_block": args.unfreeze_from_block,
                                            "head_lr": args.head_lr, "finetune_lr": args.finetune_lr, "seed": args.seed,
                                            "ours_precision": precision, "precision_reason": precision_reason,
                                            "repeats": repeats, "pipelines": pipelines, "variants": variants},
              "rounds": []}
    with tempfile.TemporaryDirectory(prefix="cxr-train-speed-") as tmp:
        root = Path(tmp)
        link_subset(args.data, root / "ours", "train", n_train // 2, seed=args.seed)
        test_files = link_subset(args.data, root / "ours", "test", n_test // 2, seed=args.seed)
        n_tr, n_val, weights = split_like_ours(root, {"image_size": size, "val_fraction": 0.15, "seed": args.seed})
        result["settings"].update(train_after_split=n_tr, val=n_val, class_weight=weights)
        print(f"data: {n_train} training images from {args.data}/train → {n_tr} train + {n_val} val (patient-grouped), "
              f"{sum(map(len, test_files.values()))} test images; {size} px, epochs {head_epochs}+{finetune_epochs}, "
              f"{repeats} interleaved rounds")
        step = 0
        for round_index in range(repeats):
            this_round: dict = {}
            for variant in variants:
                spec = {"variant": variant, "augment": variant == "both", "image_size": size, "batch_size": args.batch_size,
                        "head_epochs": head_epochs, "finetune_epochs": finetune_epochs, "head_lr": args.head_lr,
                        "finetune_lr": args.finetune_lr, "unfreeze_from_block": args.unfreeze_from_block, "dropout": 0.3,
                        "seed": args.seed, "val_fraction": 0.15, "class_weight": weights, "n_train": n_tr, "n_val": n_val}
                # rotated order: each pipeline takes each position once every len(pipelines) turns, so a drift in
                # the machine's load favours none of them
                order = pipelines[step % len(pipelines):] + pipelines[:step % len(pipelines)]
                step += 1
                runs = {}
                for name in order:
                    kind, dtype = _pipeline(name, precision)
                    print(f"[round {round_index + 1}/{repeats} · aug {variant}] {name} ({dtype})… (load {loadavg()})",
                          flush=True)
                    extra = ({"root": str(root / "tutorial")} if kind == "tutorial"
                             else {"root": str(root / "ours"), "store": str(root / "runs")})
                    runs[name] = run_worker(kind, {**spec, **extra, "precision": dtype})
                    runs[name]["order"] = order.index(name)
                this_round[variant] = runs
            result["rounds"].append(this_round)
        if args.profile:
            result["profile"] = {}
            for dtype in dict.fromkeys(("float32", precision)):
                print(f"profiling one tutorial step ({dtype})…", flush=True)
                result["profile"][dtype] = run_worker("profile", {"root": str(root / "tutorial"), "image_size": size,
                                                                   "batch_size": args.batch_size, "seed": args.seed,
                                                                   "precision": dtype})
    result["summary"] = summarise(result["rounds"], variants, pipelines, n_tr, (head_epochs, finetune_epochs))

    rows = []
    for variant, summary in result["summary"].items():
        for name, fig in summary["pipelines"].items():
            def mr(d, fmt="{:.0f}"):
                return f"{fmt.format(d['median'])} [{fmt.format(d['min'])}–{fmt.format(d['max'])}]"
            rows.append([variant, name, fig["precision"], mr(fig["head"]), mr(fig["finetune"]), mr(fig["train_total"]),
                         mr(fig["images_per_sec_end_to_end"], "{:.1f}"), mr(fig["test_auc"], "{:.3f}")])
    text = table(rows, ["aug", "pipeline", "precision", "head s", "finetune s", "train s", "img·epochs/s", "test AUC"])
    ratio_rows = []
    for variant, summary in result["summary"].items():
        for label, r in summary["ratios"].items():
            ratio_rows.append([variant, label] + [f"{r[k]['median']:.2f}× [{r[k]['min']:.2f}–{r[k]['max']:.2f}]"
                                                  for k in ("head", "finetune", "train_total")])
    text += "\n\n" + table(ratio_rows, ["aug", "comparison", "head", "fine-tune", "end to end"])
    if result.get("profile"):
        prof_rows = [[dtype, f["decode_resize_s_per_image"] * 1e3, f["cached_epoch_s_per_image"] * 1e3,
                      f["forward_s_per_image"] * 1e3, f["head_train_step_s_per_image"] * 1e3,
                      f["finetune_train_step_s_per_image"] * 1e3] for dtype, f in result["profile"].items()]
        text += "\n\none tutorial step, ms per image:\n" + table(
            prof_rows, ["precision", "decode+resize (epoch 1)", "from .cache()", "frozen forward",
                        "head train step", "fine-tune train step"])
    notes = sorted({f"  [{variant}] ours: {note}" for rnd in result["rounds"] for variant, runs in rnd.items()
                    for name, run in runs.items() if name.startswith("ours") for note in run.get("phase_notes", [])})
    text += ("\n\nphase notes (what the trainer could cache, and why not):\n" + "\n".join(notes)) if notes else ""
    text += (f"\n\nmedian [min–max] over {repeats} interleaved rounds; × = slower pipeline's seconds / faster one's, "
             "per round; 'train s' = data + model + both phases (test evaluation excluded); VGG16 weights=None in all "
             "(offline); no GPU.")
    finish(result, args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
