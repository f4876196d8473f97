"""The ``python -m core.train`` command line: train a new run, train or resume a run folder, list resumable runs, or estimate a run's time."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from core.config import PRESETS, AugmentConfig, ConfigError, RunConfig, preset
from core.runs import Run, RunError, RunStore

__all__ = ["main", "parser", "config_from_args"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.train", description="Train a chest X-ray classifier (two phases: "
                                "head, then fine-tune) into the run store, headless.")
    src = p.add_argument_group("what to run")
    src.add_argument("--config", help="a run config JSON file (fully describes a run)")
    src.add_argument("--preset", choices=list(PRESETS), help="start from a named preset")
    src.add_argument("--run-dir", help="train an existing run folder (used by the dashboard)")
    src.add_argument("--resume", nargs="?", const="", metavar="RUN_ID",
                     help="resume an interrupted run from its last completed epoch; without an id, list the resumable runs")
    src.add_argument("--store", help="run store folder (default models/ or $CXR_STUDIO_RUNS)")
    src.add_argument("--estimate", action="store_true",
                     help="print the time estimate of the settings as JSON (a probe of a few batches; downloads nothing)")
    src.add_argument("--estimate-steps", type=int, default=2, help="timed batches per phase for --estimate")
    ov = p.add_argument_group("common settings (override the config)")
    ov.add_argument("--name")
    ov.add_argument("--data", help="'demo', a data set folder, or a PneumoniaMNIST .npz file")
    ov.add_argument("--backbone")
    ov.add_argument("--weights", help="'imagenet', 'none' or a weights file")
    ov.add_argument("--alpha", type=float)
    ov.add_argument("--image-size", type=int)
    ov.add_argument("--batch-size", type=int)
    ov.add_argument("--head-epochs", type=int)
    ov.add_argument("--finetune-epochs", type=int)
    ov.add_argument("--head-lr", type=float)
    ov.add_argument("--finetune-lr", type=float)
    ov.add_argument("--unfreeze-from-block", type=int)
    ov.add_argument("--monitor", help="what checkpoints and early stopping follow: val_loss or val_exact_auc")
    ov.add_argument("--max-images-per-class", type=int)
    ov.add_argument("--max-test-images-per-class", type=int)
    ov.add_argument("--no-augment", action="store_true")
    ov.add_argument("--device", choices=["auto", "cpu", "gpu", "mirrored", "multiworker"])
    ov.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"])
    ov.add_argument("--seed", type=int)
    ov.add_argument("--cpu-devices", type=int, help="split the CPU into N logical devices (tests MirroredStrategy)")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config: ``--config`` or ``--preset`` (else the defaults) with the flags given on top; validated."""
    config = RunConfig.load(args.config) if args.config else preset(args.preset) if args.preset else RunConfig()
    overrides = {
        "name": args.name, "model.backbone": args.backbone, "model.weights": args.weights,
        "model.alpha": args.alpha, "data.image_size": args.image_size, "train.batch_size": args.batch_size,
        "train.head.epochs": args.head_epochs, "train.finetune.epochs": args.finetune_epochs,
        "train.head.learning_rate": args.head_lr, "train.finetune.learning_rate": args.finetune_lr,
        "model.unfreeze_from_block": args.unfreeze_from_block, "train.monitor": args.monitor,
        "data.max_images_per_class": args.max_images_per_class,
        "data.max_test_images_per_class": args.max_test_images_per_class,
        "train.device": args.device, "train.precision": args.precision, "train.seed": args.seed,
    }
    if args.data:
        if args.data == "demo":
            overrides.update({"data.source": "demo", "data.path": None})
        elif args.data.endswith(".npz"):
            overrides.update({"data.source": "medmnist", "data.path": args.data})
        else:
            overrides.update({"data.source": "folder", "data.path": args.data})
    if args.no_augment:  # every augmentation setting off: 0, or False for the flip
        overrides.update({f"augment.{f.name}": False if isinstance(f.default, bool) else 0
                          for f in dataclasses.fields(AugmentConfig)})
    return config.with_overrides(**{k: v for k, v in overrides.items() if v is not None}).validate()


def _list_resumable(store: RunStore) -> int:
    """``--resume`` without an id: say which runs can be resumed, and fail (nothing was resumed)."""
    runs = store.resumable()
    print(f"error: --resume needs a run id. Resumable runs in {store.root}:" if runs else
          f"error: --resume needs a run id, and no run in {store.root} can be resumed.", file=sys.stderr)
    for run in runs:
        status = run.status()
        print(f"{run.id}\t{status.state}\tepoch {status.epoch}/{status.epochs_total or '?'}")
    return 2


def _estimate(args: argparse.Namespace) -> int:
    """``--estimate``: one JSON line on stdout, the estimate or ``{"error": …}``."""
    from core.estimate import estimate_run_time
    from core.train import readable_error

    try:
        result = estimate_run_time(config_from_args(args), steps=max(1, args.estimate_steps))
    except Exception as exc:  # noqa: BLE001 - the caller shows the reason, whatever it is
        print(json.dumps({"error": readable_error(exc)}))
        return 2
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    from core.train import LOG_FORMAT, run_and_record

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    store = RunStore(args.store)
    if args.resume == "" and not args.run_dir:
        return _list_resumable(store)
    from core.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    if args.cpu_devices or os.environ.get("CXR_STUDIO_CPU_DEVICES"):
        from core.device import split_cpu

        split_cpu(args.cpu_devices or int(os.environ["CXR_STUDIO_CPU_DEVICES"]))
    if args.estimate:
        return _estimate(args)
    try:
        if args.run_dir:
            run, resume = Run(Path(args.run_dir)), args.resume is not None
        elif args.resume:
            run, resume = store.get(args.resume), True
        else:
            run, resume = store.create(config_from_args(args)), False
    except (ConfigError, RunError, json.JSONDecodeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run {run.id} in {run.path.parent}", file=sys.stderr)
    code = run_and_record(run, resume)
    status = run.status()
    print(json.dumps({"run": run.id, "state": status.state, "error": status.error,
                      "metrics": {k: (run.metrics() or {}).get(k) for k in ("sensitivity", "specificity", "roc_auc")}}))
    return code
