"""Choose between quality rows on validation only: each row's seeds trained without reading test, compared seed by seed.

The first row of ``--rows`` is the reference; every other row is a candidate recipe (for example the
same recipe with the fine-tune phase un-augmented). Each row runs with the seeds
``benchmarks.quality`` uses (training seeds 42, 43, 44 sharing the validation split of seed 42),
as normal runs in the run store with ``train.evaluate_test = False``: the trainer never opens the
test split. The figures are each run's saved validation predictions (``threshold.json``): exact
ROC AUC with its patient-bootstrap interval, and log loss (``core.jobs.sweep.results.validation_figures``).

A finished run of the same settings already in the store is reused, whether or not that earlier
run was also evaluated on test (its test figures are not read here; the table says which runs had
been). A candidate *helps* when it lowers the validation loss in every seed and lowers the AUC in
none; it *hurts* when it raises the loss in every seed; otherwise the seeds disagree
(``benchmarks.augmentation.verdict``, the rule written before any run). The chosen recipe is the
candidate that helps with the lowest mean validation loss, or the reference when none helps.

    python -m benchmarks.recipe_choice --rows efficientnet-lite0-imagenet,efficientnet-lite0-imagenet-noaug
    python -m benchmarks.recipe_choice --rows mobilenet025-imagenet,mobilenet025-imagenet-noaug --seeds 2 \\
        --max-images-per-class 100 --image-size 128        # a smoke run

The test figures of the chosen recipe come afterwards from ``python -m benchmarks.quality --rows
<chosen>``, which trains its runs afresh with the test evaluation switched on.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import quality
from benchmarks.quality.orchestrate import prepare_row_data
from benchmarks._common import REPO, finish, machine, table
from benchmarks.augmentation import verdict

__all__ = ["main", "compare", "choose"]

RESULTS = REPO / "benchmarks" / "results"
IGNORED = ("train.evaluate_test",)  # the only setting a reused run may differ in


def _mean_sd(values: list[float]) -> list[float] | None:
    if not values:
        return None
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row: mean ± sd of validation AUC and loss, and the paired (same seed) differences to the first row."""
    reference = {r["seed"]: r for r in rows[0]["runs"] if r.get("val_auc") is not None} if rows else {}
    out = []
    for index, row in enumerate(rows):
        done = [r for r in row["runs"] if r.get("val_auc") is not None]
        paired = [(r["val_loss"] - reference[r["seed"]]["val_loss"], r["val_auc"] - reference[r["seed"]]["val_auc"])
                  for r in done if r["seed"] in reference]
        d_loss, d_auc = [d for d, _ in paired], [d for _, d in paired]
        complete = len(paired) == len(row["runs"]) == len(reference) and len(paired) > 0
        out.append({**row, "val_auc": _mean_sd([r["val_auc"] for r in done]),
                    "val_loss": _mean_sd([r["val_loss"] for r in done]),
                    "loss_minus_reference": d_loss, "auc_minus_reference": d_auc,
                    "verdict": f"not run: {row['error']}" if row.get("error") else "reference" if index == 0 else
                    (verdict(d_loss, d_auc) if complete else "incomplete: not every seed finished")})
    return out


def choose(compared: list[dict[str, Any]]) -> str | None:
    """The recipe to take: among the candidates that help, the lowest mean validation loss; else the reference."""
    helping = [row for row in compared[1:] if row["verdict"] == "helps"]
    if helping:
        return min(helping, key=lambda row: row["val_loss"][0])["name"]
    return compared[0]["name"] if compared and compared[0]["verdict"] == "reference" else None


def _parser() -> argparse.ArgumentParser:
    """The data set, seeds, store and override flags of ``benchmarks.quality`` (one definition), then its own."""
    shared, _ = quality.row_flags()
    p = argparse.ArgumentParser(prog="python -m benchmarks.recipe_choice", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, parents=[shared])
    p.add_argument("--rows", required=True, help="comma-separated benchmarks.quality rows; the first is the reference")
    p.add_argument("--out", type=Path, help="JSON figures (default: benchmarks/results/recipe_choice-<data>-<rows>.json "
                                            "for a full run; smoke runs print only)")
    return p


def _quality_args(args: argparse.Namespace) -> argparse.Namespace:
    """The override namespace ``benchmarks.quality.build_config`` reads, with only this command's overrides set."""
    ns = quality.build_parser().parse_args([])
    for key in ("seed", "image_size", "head_epochs", "finetune_epochs", "max_images_per_class"):
        setattr(ns, key, getattr(args, key))
    return ns


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    if len(names) < 2:
        raise SystemExit("error: --rows needs a reference row and at least one candidate")
    if not 1 <= args.seeds <= 10:
        raise SystemExit(f"error: --seeds must be 1..10; got {args.seeds}")

    from core.jobs.commands.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    from core.store.runs import RunStore
    from core.jobs.sweep import validation_figures

    kind, data_path = quality.resolve_data(args.data, args.medmnist)
    table_rows = quality.MEDMNIST_ROWS if kind == "medmnist" else quality.KAGGLE_ROWS
    unknown = [n for n in names if n not in table_rows]
    if unknown:
        raise SystemExit(f"error: unknown row {unknown[0]!r}; choose from {', '.join(table_rows)}")
    store = RunStore(args.store)
    info = machine()
    qargs = _quality_args(args)
    say = lambda message: print(message, flush=True)  # noqa: E731
    started = time.time()
    rows: list[dict[str, Any]] = []
    for name in names:
        row = table_rows[name]
        prepare_row_data(row, kind, say)
        config = quality.build_config(name, row, kind, data_path, qargs)
        problem = quality.preflight_weights(config)
        entry: dict[str, Any] = {"name": name, "summary": row.summary, "weights": quality.weights_label(config),
                                 "error": problem, "runs": []}
        rows.append(entry)
        if problem:
            say(f"[{name}] not run: {problem}")
            continue
        base = config.train.seed
        for seed in range(base, base + args.seeds):
            member = quality.seed_config(config, seed, base, f"quality-{kind}-seed{seed}-{name}")
            wanted = member.with_overrides(**{"train.evaluate_test": False}).validate()
            reused = quality.reusable_run(store, wanted, ignore=IGNORED, finished_only=True)
            result = quality.RowResult(name, row.summary, seed=seed, label=f"seed {seed}", config=wanted.to_dict())
            quality.follow_run(reused or store.create(wanted), result, {}, say=say)
            run = store.get(result.run_id)
            figures = validation_figures(run, n_boot=1000) if result.state == "finished" else {}
            entry["runs"].append({
                "seed": seed, "run_id": result.run_id, "state": result.state, "error": result.error,
                "reused": reused is not None, "test_read_by_that_run": bool(run.config().train.evaluate_test),
                "epochs": result.epochs, "best_epoch": result.best_epoch,
                "train_seconds": result.train_seconds, "wall_seconds": result.wall_seconds,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in figures.items()}})
            if result.interrupted:
                break
    seconds = time.time() - started
    compared = compare(rows)

    lines = []
    for row in compared:
        if row["error"]:
            lines.append([row["name"], "—", "—", "—", "", "", f"not run: {row['error']}"])
            continue
        per_seed = " / ".join(f"{r['val_auc']:.4f} [{r['val_auc_ci'][0]:.3f}–{r['val_auc_ci'][1]:.3f}]"
                              if r.get("val_auc") is not None else r["state"] for r in row["runs"])
        lines.append([row["name"], per_seed,
                      f"{row['val_auc'][0]:.4f} ± {row['val_auc'][1]:.4f}" if row["val_auc"] else "—",
                      f"{row['val_loss'][0]:.3f} ± {row['val_loss'][1]:.3f}" if row["val_loss"] else "—",
                      " ".join(f"{d:+.3f}" for d in row["loss_minus_reference"]) if row["verdict"] != "reference" else "",
                      " ".join(f"{d:+.4f}" for d in row["auc_minus_reference"]) if row["verdict"] != "reference" else "",
                      row["verdict"]])
    seeds = list(range(qargs.seed or 42, (qargs.seed or 42) + args.seeds))
    text = table(lines, ["row", f"val AUC per seed ({', '.join(map(str, seeds))}) [patient bootstrap]",
                         "val AUC mean ± sd", "val loss mean ± sd", "Δ loss vs reference, per seed",
                         "Δ AUC vs reference, per seed", "verdict"])
    runs = [r for row in compared for r in row["runs"]]
    chosen = choose(compared)
    text += f"\n\nChosen on validation: {chosen or 'nothing (the reference did not run)'}."
    text += (f"\n\n{len(runs)} runs ({sum(r['reused'] for r in runs)} reused from the store, "
             f"{sum(r['test_read_by_that_run'] for r in runs)} of them had been evaluated on test when they were "
             f"trained; none of their test figures is read here) in {seconds:.0f} s. Validation only.")
    smoke = args.max_images_per_class is not None or kind == "demo"
    out = args.out or (None if smoke else RESULTS / f"recipe_choice-{kind}-{'-vs-'.join(names)}.json")
    result = {"benchmark": "recipe_choice", "machine": info,
              "data": kind, "command": "python -m benchmarks.recipe_choice " + " ".join(argv or sys.argv[1:]),
              "seconds": seconds, "seeds": seeds, "chosen": chosen, "rows": quality.portable(compared, quality.path_roots())}
    finish(result, out, text)
    return 0 if all(r["state"] == "finished" for r in runs) and not any(row["error"] for row in compared) else 1


if __name__ == "__main__":
    sys.exit(main())
