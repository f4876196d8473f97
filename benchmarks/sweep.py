"""Sweep wall time against the sum of its members run alone with cold caches, side by side.

The sweep is a grid of unfreeze depths × augmentation strengths over one backbone, created with
``core.jobs.sweep.store.create_sweep`` and coordinated by ``core.jobs.sweep.coordinator.run_sweep`` (members one after another
on a CPU), starting from an empty cache folder. Each member is then trained again alone: the same
config (``data.cache = "disk"``, no test evaluation), as ``python -m core.train --run-dir`` in a
store of its own with an empty cache folder of its own, so it decodes every image and computes
every frozen output itself. Both sides read the image files through a warmed OS file cache.

What the sweep shares: the decoded images (every member after the first reads them), and the
head phase's frozen features (its augmentation is off here, so every member's head phase trains
on the same cached pooled features). Fine-tuning with augmentation trains on images and shares
nothing; without augmentation each freeze boundary computes its frozen outputs once.

    python -m benchmarks.sweep --quick      # 2 depths × 2 strengths on 100 films per class at 128 px
    python -m benchmarks.sweep              # 5 depths × 2 strengths on every training film at 224 px
    python -m benchmarks.sweep --weights ../shared/data/keras_weights/mobilenet_2_5_224_tf_no_top.h5

Early stopping is off, so a member trains the same epochs in the sweep and alone. Validation AUCs
are printed beside each other as a check that sharing changes no result (CPU kernels are not
bit-exact, so expect agreement to about the third decimal, not identity).

Then, as a user of the Sweep page would: the best member on validation (``--choose-by``, the page's
rule) becomes the final run (``core.jobs.sweep.results.create_final_run``), which is trained and evaluated once
on the official test split; its metrics.json, config.json and threshold.json are copied under
``benchmarks/results/sweep/final/``. No member is ever evaluated on test.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, base_parser, budget_flags, finish, machine, table

__all__ = ["main", "base_config"]

WEIGHTS = REPO.parent / "shared" / "data" / "keras_weights" / "mobilenet_2_5_224_tf_no_top.h5"
RESULTS = REPO / "benchmarks" / "results"


def _parser():
    p = base_parser(__doc__.splitlines()[0], parents=[budget_flags()])
    p.add_argument("--backbone", default="mobilenet")
    p.add_argument("--alpha", type=float, default=0.25)
    p.add_argument("--weights", default=None,
                   help="weights file, 'imagenet' or 'none' (default: ../shared/data/keras_weights' MobileNet α=0.25 "
                        "file when present, else 'none')")
    p.add_argument("--blocks", help="unfreeze-from-block values (default 2,3,4,5,6; --quick 4,6)")
    p.add_argument("--augment", help="augmentation strengths (default none,light)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--skip-alone", action="store_true", help="time the sweep only")
    p.add_argument("--skip-final", action="store_true", help="no final run (no test evaluation)")
    p.add_argument("--choose-by", choices=("val_auc", "val_loss"), default="val_auc",
                   help="how the final run's setting is chosen on validation (the Sweep page's default: val_auc)")
    p.add_argument("--keep", action="store_true", help="keep the temporary stores and caches (printed)")
    return p


def _defaults(args) -> None:
    quick = args.quick
    args.blocks = [int(b) for b in (args.blocks or ("4,6" if quick else "2,3,4,5,6")).split(",")]
    args.augment = (args.augment or "none,light").split(",")
    args.image_size = args.image_size or (128 if quick else 224)
    args.max_images_per_class = args.max_images_per_class or (100 if quick else None)
    args.head_epochs = args.head_epochs if args.head_epochs is not None else (1 if quick else 3)
    args.finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else (1 if quick else 3)
    if args.weights is None:
        args.weights = str(WEIGHTS) if WEIGHTS.is_file() else "none"
    elif args.weights not in ("imagenet", "none"):
        args.weights = str(Path(args.weights).resolve())
    if args.out is None:
        args.out = RESULTS / ("sweep-quick.json" if quick else "sweep.json")


def base_config(args):
    """The sweep's base settings: the head on frozen features (no augmentation there), then fine-tuning; no early stop."""
    from core.config import RunConfig

    return RunConfig().with_overrides(**{
        "name": "bench-sweep", "data.source": "folder", "data.path": str(Path(args.data).resolve()),
        "data.image_size": args.image_size, "data.max_images_per_class": args.max_images_per_class,
        "model.backbone": args.backbone, "model.alpha": args.alpha, "model.weights": args.weights,
        "model.unfreeze_from_block": args.blocks[0], "train.head.epochs": args.head_epochs,
        "train.head.augment": False, "train.finetune.epochs": args.finetune_epochs,
        "train.finetune.learning_rate": 1e-4, "train.batch_size": args.batch_size,
        "train.early_stopping_patience": 0}).validate()


def _warm_file_cache(data: Path) -> int:
    """Read every training and validation file once, so neither side pays for the disk and both see the OS cache."""
    total = 0
    for split in ("train", "val"):
        for path in sorted((data / split).rglob("*")):
            if path.is_file():
                total += len(path.read_bytes())
    return total


def _member_seconds(run) -> float | None:
    """From the member's launch to its process's exit, as the coordinator recorded them in ``launch.json``."""
    launch = run.launch_record() or {}
    return launch["ended"] - launch["time"] if "ended" in launch and "time" in launch else None


def _shared(run) -> str:
    notes = [f"{row['phase']}: {row['note'].rsplit('; ', 1)[-1]}" for row in run.history("phase")
             if "disk cache" in row.get("note", "")]
    return ", ".join(notes) or "images (augmented)"


def _train(run, env: dict[str, str] | None = None) -> tuple[float, int]:
    """``python -m core.train --run-dir`` on ``run`` in a subprocess, logging to its log.txt; (wall seconds, exit code)."""
    started = time.perf_counter()
    with open(run.log_path, "a") as log:
        code = subprocess.run([sys.executable, "-m", "core.train", "--run-dir", str(run.path)], cwd=REPO,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                              stdout=log, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - started, code


def _alone(config, workdir: Path, index: int) -> tuple[float, float | None, int]:
    """Train one member's config alone, cold caches; returns (wall seconds, validation AUC, exit code)."""
    from core.store.runs import RunStore
    from core.jobs.sweep import validation_figures

    cache = workdir / f"cache-alone-{index}"
    run = RunStore(workdir / f"store-alone-{index}").create(config)
    seconds, code = _train(run, {"CXR_STUDIO_CACHE": str(cache)})
    shutil.rmtree(cache, ignore_errors=True)  # the next member starts cold too
    return seconds, validation_figures(run, n_boot=0).get("val_auc"), code


def _final_run(sweep, store, by: str, dest: Path | None) -> dict[str, Any]:
    """Train the best member's settings as the final run and evaluate it once on test, as the Sweep page's action does."""
    from benchmarks.quality import copy_run_files, path_roots
    from core.jobs.sweep import create_final_run, sweep_results

    results = sweep_results(sweep, n_boot=1000)
    run = create_final_run(sweep, store, by=by)
    member = sweep.spec["final"]["member"]
    chosen = next(r for r in results if r.run_id == member)
    seconds, code = _train(run)  # in the sweep's cache folder: the final run shares like a member
    m = run.read_json("metrics.json") or {}
    ci = m.get("ci") or {}
    out: dict[str, Any] = {
        "chosen_by": by, "settings": chosen.settings, "member_val_auc": chosen.val_auc,
        "member_val_auc_ci": list(chosen.val_auc_ci), "member_val_loss": chosen.val_loss,
        "exit_code": code, "seconds": seconds, "split": m.get("split"), "n": m.get("n"),
        "threshold": m.get("threshold"), "threshold_rule": (m.get("threshold_info") or {}).get("method"),
        **{key: m.get(key) for key in ("accuracy", "sensitivity", "specificity", "roc_auc")},
        "ci": {key: ci.get(key) for key in ("accuracy", "sensitivity", "specificity", "roc_auc")},
    }
    if dest is not None and m:
        shutil.rmtree(dest, ignore_errors=True)
        out["files"] = copy_run_files(run.path, dest, path_roots((store.root, "<store>")))
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _defaults(args)
    from core.jobs.commands.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    from core.store.runs import RunStore
    from core.jobs.sweep import create_sweep, describe, member_slots, run_sweep, sweep_results

    info = machine()
    base = base_config(args)
    workdir = Path(tempfile.mkdtemp(prefix="cxr-sweep-bench-"))
    print(f"work folder {workdir}; warming the OS file cache…", file=sys.stderr)
    warmed = _warm_file_cache(Path(args.data))

    os.environ["CXR_STUDIO_CACHE"] = str(workdir / "cache-sweep")  # cold: created by the first member
    sweep = create_sweep(RunStore(workdir / "store-sweep"), base,
                         {"unfreeze_from_block": args.blocks, "augment": args.augment}, "bench")
    print(f"sweep {sweep.id}: {len(sweep.members())} members", file=sys.stderr)
    started = time.perf_counter()
    code = run_sweep(sweep)
    sweep_seconds = time.perf_counter() - started
    results = {r.run_id: r for r in sweep_results(sweep, n_boot=0)}
    final = None
    if not args.skip_final and code == 0:
        dest = None if args.quick else RESULTS / "sweep" / "final"
        final = _final_run(sweep, RunStore(workdir / "store-sweep"), args.choose_by, dest)
        print(f"final run: {describe(final['settings'])}, test AUC {final['roc_auc']}", file=sys.stderr)

    rows, members = [], []
    for index, (run, settings) in enumerate(sweep.members(), start=1):
        in_sweep = _member_seconds(run)
        alone = (None, None, None) if args.skip_alone else _alone(run.config(), workdir, index)
        print(f"member {index}: in the sweep {in_sweep or 0:.0f} s, alone {alone[0] or 0:.0f} s", file=sys.stderr)
        member = {"settings": settings, "state": results[run.id].state, "seconds_in_sweep": in_sweep,
                  "seconds_alone": alone[0], "alone_exit_code": alone[2], "shared": _shared(run),
                  "val_auc_in_sweep": results[run.id].val_auc, "val_auc_alone": alone[1]}
        members.append(member)
        rows.append([index, describe(settings), results[run.id].state, in_sweep, alone[0],
                     member["val_auc_in_sweep"], alone[1], member["shared"]])
    alone_total = None if args.skip_alone else sum(m["seconds_alone"] for m in members)
    result: dict[str, Any] = {
        "benchmark": "sweep", "machine": info, "quick": args.quick,
        "settings": {"data": os.path.relpath(Path(args.data).resolve(), REPO), "backbone": args.backbone,
                     "alpha": args.alpha, "weights": Path(args.weights).name, "image_size": args.image_size,
                     "max_images_per_class": args.max_images_per_class, "head_epochs": args.head_epochs,
                     "finetune_epochs": args.finetune_epochs, "blocks": args.blocks, "augment": args.augment,
                     "warmed_bytes": warmed},
        "member_slots": member_slots(),  # [None]: one after another; GPU ids: one member per GPU
        "sweep_exit_code": code, "sweep_seconds": sweep_seconds, "members_alone_seconds": alone_total,
        "speed_up": alone_total / sweep_seconds if alone_total else None, "members": members,
        "final": final,
    }
    text = table(rows, ["#", "settings", "state", "s in sweep", "s alone", "val AUC sweep", "val AUC alone", "shared"])
    text += f"\n\nsweep wall time {sweep_seconds:.0f} s"
    if alone_total:
        text += (f"  vs  members alone (cold caches) {alone_total:.0f} s  →  {alone_total / sweep_seconds:.2f}× "
                 f"({alone_total - sweep_seconds:.0f} s saved)")
    if final:
        text += (f"\n\nchosen on validation ({final['chosen_by']}): {describe(final['settings'])}, val AUC "
                 f"{final['member_val_auc']:.4f}; final run on the official test split ({final['n']} films) at threshold "
                 f"{final['threshold']}: sensitivity {final['sensitivity']:.3f}, specificity {final['specificity']:.3f}, "
                 f"AUC {final['roc_auc']:.4f}, accuracy {final['accuracy']:.3f} ({final['seconds']:.0f} s to train + evaluate)")
    finish(result, args.out, text)
    if args.keep:
        print(f"stores and caches kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
