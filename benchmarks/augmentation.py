"""Which augmentation strength helps, decided on validation only: one recipe, every named strength, three seeds.

The strengths of ``core.config`` (``none``, ``light``, ``standard``, ``acquisition`` — JPEG quality,
blur, gamma, scale and shift, the acquisition-shift set — and ``strong``) are the grid of one sweep
(``core.sweep``) together with ``train.seed``; every member shares one validation split
(``data.split_seed`` fixed), trains its head on frozen features (no augmentation there) and
fine-tunes with the strength. Members are compared on their saved validation predictions (ROC AUC,
log loss) and **never evaluated on test**.

Per strength the table gives the mean ± sd over seeds and the paired difference to ``none`` (same
seed, same split, same initial weights): a strength *helps* when every seed lowers the validation
loss and none lowers the AUC; it *hurts* when every seed raises the loss; otherwise the seeds
disagree and the data cannot tell.

    python -m benchmarks.augmentation --quick     # 2 strengths × 2 seeds on 100 films per class at 128 px
    python -m benchmarks.augmentation             # 5 strengths × 3 seeds, every training film, 224 px
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, base_parser, budget_flags, finish, machine, table

__all__ = ["main", "verdict"]

WEIGHTS = REPO.parent / "shared" / "data" / "keras_weights" / "mobilenet_2_5_224_tf_no_top.h5"
RESULTS = REPO / "benchmarks" / "results"
STRENGTHS = ("none", "light", "standard", "acquisition", "strong")


def verdict(loss_deltas: list[float], auc_deltas: list[float]) -> str:
    """'helps', 'hurts' or 'seeds disagree' from the paired per-seed differences to no augmentation."""
    if loss_deltas and all(d < 0 for d in loss_deltas) and all(d >= 0 for d in auc_deltas):
        return "helps"
    if loss_deltas and all(d > 0 for d in loss_deltas):
        return "hurts"
    return "seeds disagree"


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], parents=[budget_flags()])
    p.add_argument("--strengths", help=f"comma list (default {','.join(STRENGTHS)}; --quick none,acquisition)")
    p.add_argument("--seeds", help="comma list (default 42,43,44; --quick 42,43)")
    p.add_argument("--unfreeze-from-block", type=int, default=4)
    args = p.parse_args(argv)
    quick = args.quick
    strengths = (args.strengths or ("none,acquisition" if quick else ",".join(STRENGTHS))).split(",")
    seeds = [int(s) for s in (args.seeds or ("42,43" if quick else "42,43,44")).split(",")]
    if "none" not in strengths:
        raise SystemExit("--strengths must include none: every strength is compared with it, seed by seed")
    size = args.image_size or (128 if quick else 224)
    cap = args.max_images_per_class or (100 if quick else None)
    head = args.head_epochs if args.head_epochs is not None else (1 if quick else 3)
    finetune = args.finetune_epochs if args.finetune_epochs is not None else (1 if quick else 3)
    out = args.out or RESULTS / ("augmentation-quick.json" if quick else "augmentation.json")

    from core.jobs.commands.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    from core.config import RunConfig
    from core.store.runs import RunStore
    from core.jobs.sweep import create_sweep, run_sweep, sweep_results

    base = RunConfig().with_overrides(**{
        "name": "bench-augmentation", "data.source": "folder", "data.path": str(Path(args.data).resolve()),
        "data.image_size": size, "data.max_images_per_class": cap, "data.split_seed": 42,
        "model.backbone": "mobilenet", "model.alpha": 0.25,
        "model.weights": str(WEIGHTS) if WEIGHTS.is_file() else "none",
        "model.unfreeze_from_block": args.unfreeze_from_block, "train.head.epochs": head, "train.head.augment": False,
        "train.finetune.epochs": finetune, "train.finetune.learning_rate": 1e-4, "train.finetune.augment": True,
        "train.early_stopping_patience": 0}).validate()
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="cxr-augmentation-bench-"))
    os.environ["CXR_STUDIO_CACHE"] = str(work / "cache")
    try:
        sweep = create_sweep(RunStore(work / "store"), base, {"augment": strengths, "train.seed": seeds}, "augmentation")
        print(f"sweep of {len(sweep.members())} members (strengths × seeds); work folder {work}", file=sys.stderr)
        started = time.perf_counter()
        code = run_sweep(sweep)
        seconds = time.perf_counter() - started
        members = [{"settings": r.settings, "state": r.state, "val_auc": r.val_auc, "val_auc_ci": list(r.val_auc_ci),
                    "val_loss": r.val_loss, "val_images": r.val_images}
                   for r in sweep_results(sweep, n_boot=1000)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    finished = {(m["settings"].get("augment"), m["settings"].get("train.seed")): m
                 for m in members if m["state"] == "finished" and m["val_auc"] is not None}
    rows, summary = [], {}
    for strength in strengths:
        runs = [finished[(strength, s)] for s in seeds if (strength, s) in finished]
        aucs, losses = [m["val_auc"] for m in runs], [m["val_loss"] for m in runs]
        paired = [(finished[(strength, s)]["val_loss"] - finished[("none", s)]["val_loss"],
                   finished[(strength, s)]["val_auc"] - finished[("none", s)]["val_auc"])
                  for s in seeds if (strength, s) in finished and ("none", s) in finished]
        d_loss, d_auc = [d for d, _ in paired], [d for _, d in paired]
        entry = {"seeds": len(aucs), "val_auc": _mean_sd(aucs) if aucs else None,
                 "val_loss": _mean_sd(losses) if losses else None, "loss_minus_none": d_loss,
                 "auc_minus_none": d_auc, "verdict": "baseline" if strength == "none" else verdict(d_loss, d_auc)}
        summary[strength] = entry
        rows.append([strength, len(aucs),
                     f"{entry['val_auc'][0]:.4f} ± {entry['val_auc'][1]:.4f}" if aucs else "—",
                     f"{entry['val_loss'][0]:.4f} ± {entry['val_loss'][1]:.4f}" if losses else "—",
                     " ".join(f"{d:+.4f}" for d in d_loss) if strength != "none" else "",
                     " ".join(f"{d:+.4f}" for d in d_auc) if strength != "none" else "", entry["verdict"]])
    result: dict[str, Any] = {
        "benchmark": "augmentation", "machine": info, "quick": quick, "sweep_exit_code": code, "seconds": seconds,
        "settings": {"data": os.path.relpath(Path(args.data).resolve(), REPO), "backbone": "mobilenet", "alpha": 0.25,
                     "weights": Path(base.model.weights).name, "image_size": size, "max_images_per_class": cap,
                     "head_epochs": head, "finetune_epochs": finetune, "unfreeze_from_block": args.unfreeze_from_block,
                     "strengths": strengths, "seeds": seeds, "split_seed": 42},
        "members": members, "summary": summary,
    }
    text = table(rows, ["strength", "seeds", "val AUC mean ± sd", "val loss mean ± sd", "Δ loss vs none, per seed",
                        "Δ AUC vs none, per seed", "verdict"])
    text += (f"\n\n{len(members)} members in {seconds:.0f} s; validation only (each member's saved validation "
             "predictions), never the test split.")
    finish(result, out, text)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
