"""The command ``python -m benchmarks.quality``: its flags, the rows it runs, one invocation from runs to report."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.quality.flags import row_flags
from benchmarks.quality.orchestrate import RowOutcome, build_config, prepare_row_data, resolve_data, run_seeds
from benchmarks.quality.paths import MOBILENET_025_FILE, REPO, REPORT_FILE, RESULTS_DIR
from benchmarks.quality.render import render_report
from benchmarks.quality.results import copy_row_results, path_roots, portable, portable_arg, portable_text
from benchmarks.quality.rows import KAGGLE_DEFAULT_ROWS, KAGGLE_ROWS, MEDMNIST_DEFAULT_ROWS, MEDMNIST_ROWS, Row
from benchmarks.quality.splice import start_marker, write_section
from benchmarks.quality.summary import build_summary, machine_description, merge_summary

__all__ = ["DESCRIPTION", "build_parser", "select_rows", "is_smoke", "main"]

# The command's --help text: what the benchmark does, how to run it, and what it writes where.
DESCRIPTION = """Quality benchmark: train named rows with the project's recipe on real X-rays, several seeds per row and
their ensemble, evaluate every run once on the official test split, and table the runs' metrics.json
against the issue's targets, published results and the trivial baseline.

    python -m benchmarks.quality                       # Kaggle chest_xray (../shared/data/chest_xray), 3 seeds per row
    python -m benchmarks.quality --medmnist            # PneumoniaMNIST (../shared/data/medmnist/pneumoniamnist.npz)
    python -m benchmarks.quality --threshold-method youden_midpoint   # fix the rule benchmarks.operating_point chose
    python -m benchmarks.quality --rows small-cnn-scratch --seeds 1 --finetune-epochs 5 --max-images-per-class 200

Every run is a normal run in the run store (``RunStore.create`` + ``Run.launch``, the same
``python -m core.train`` the dashboard starts), so the Runs and Evaluate pages show the very same
run and numbers. A row is trained with ``--seeds`` N training seeds (the base seed + 0..N-1) that
share one validation split (``data.split_seed`` = the base seed), one run each; with N ≥ 2 their
ensemble (``core.jobs.ensemble.create_ensemble``: the mean of the members' logits, its own threshold on
validation, one test evaluation) is one more run, launched and awaited the same way. Validation
is carved out of train by patient (Kaggle) or is the official val split (MedMNIST); the epochs
(early stopping on ``train.monitor``) and the decision threshold (``train.threshold_method``) are
chosen on it. The test split is read once per run, at its end, by ``core.evaluation.evaluate.evaluate_run``.
Every figure is taken from the runs' ``metrics.json``.

A full run (Kaggle or MedMNIST, no subset) writes into the repository: each run's ``metrics.json``,
``config.json`` and ``threshold.json`` (an ensemble's ``ensemble.json`` too) under
``benchmarks/results/quality/<data>/<row>/<seed42|…|ensemble>/``, a ``summary.json`` per data set with
every figure of the report, and the report as that data set's section of ``benchmarks/RESULTS-quality.md``.
Paths of this machine are written relative to the repository (``../shared/data/…``). Smoke runs
(``--data demo`` or ``--max-…-images-per-class``) write beside the run store instead, unless ``--results``
and ``--out`` say where.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command's parser: the flags shared with benchmarks.recipe_choice (:func:`row_flags`), then its own."""
    from core.config.catalog import THRESHOLD_METHODS

    shared, ov = row_flags()
    ov.add_argument("--backbone", help="with no --rows: one 'custom' row = the default recipe with this backbone")
    ov.add_argument("--weights", help="'imagenet', 'none' or a weights file")
    ov.add_argument("--alpha", type=float)
    ov.add_argument("--unfreeze-from-block", type=int)
    ov.add_argument("--batch-size", type=int)
    ov.add_argument("--threshold-method", choices=THRESHOLD_METHODS,
                    help="the rule that picks each run's threshold on validation (train.threshold_method; default: "
                         "the project default), e.g. the one benchmarks.operating_point chose")
    ov.add_argument("--target-sensitivity", type=float, help="for --threshold-method sensitivity")
    ov.add_argument("--max-test-images-per-class", type=int, help="test subset (for smoke tests only; not comparable)")
    ov.add_argument("--demo-images-per-class", type=int, help="size of the synthetic set with --data demo")
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter, parents=[shared])
    p.add_argument("--rows", help="comma-separated row names (see --list); default: the standard rows of the data set")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument("--ensemble", action=argparse.BooleanOptionalAction, default=None,
                   help="one more run per row: the ensemble of its seed runs (default: on with 2 or more seeds)")
    p.add_argument("--resume", action="store_true",
                   help="reuse runs of exactly the same config in the store: finished ones as they are, failed, stopped "
                        "or interrupted ones resumed; only what is missing is trained")
    p.add_argument("--out", help="the markdown report: a file with this data set's section markers gets its section "
                                 "replaced, any other file is written whole (default: the data set's section of "
                                 f"{REPORT_FILE.as_posix()}; for smoke runs <store>/quality-<data>-<time>.md)")
    p.add_argument("--results", help=f"folder for the copied run files and summary.json, per data set (default: "
                                     f"{RESULTS_DIR.as_posix()}; for smoke runs <store>/quality-results)")
    env = p.add_argument_group("weights")
    env.add_argument("--keras-home", help="KERAS_HOME for the trainer (its models/ is the Keras weights cache)")
    env.add_argument("--copy-weights-to-cache", action="store_true",
                     help="copy the Keras-named files of ../shared/data/keras_weights into the Keras cache first, so "
                          "weights='imagenet' finds them")
    return p


def select_rows(args: argparse.Namespace, kind: str) -> list[tuple[str, Row]]:
    """The rows to run, by name; ``--backbone`` without ``--rows`` gives one 'custom' row."""
    table = MEDMNIST_ROWS if kind == "medmnist" else KAGGLE_ROWS
    defaults = MEDMNIST_DEFAULT_ROWS if kind == "medmnist" else KAGGLE_DEFAULT_ROWS
    if args.rows:
        names = [n.strip() for n in args.rows.split(",") if n.strip()]
        unknown = [n for n in names if n not in table]
        if unknown:
            raise SystemExit(f"error: unknown row {unknown[0]!r}; choose from {', '.join(table)}")
        return [(n, table[n]) for n in names]
    if args.backbone:
        return [("custom", Row(f"the default recipe with backbone {args.backbone} and the given overrides", {}))]
    if kind == "demo":
        return [("small-cnn-scratch", KAGGLE_ROWS["small-cnn-scratch"])]
    return [(n, table[n]) for n in defaults]


def is_smoke(args: argparse.Namespace, kind: str) -> bool:
    """Synthetic images or a subset: such runs never write into the repository's results unless asked to."""
    return kind == "demo" or args.max_images_per_class is not None or args.max_test_images_per_class is not None


def _copy_weights_to_cache() -> list[str]:
    """Copy the Keras-named weights file of the shared data into the Keras cache; returns what was copied."""
    from core.model.weights import keras_cache_dir

    cache = keras_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    copied = []
    source = REPO / MOBILENET_025_FILE  # the only file here that carries Keras's own name and format
    if source.is_file() and not (cache / source.name).exists():
        shutil.copy2(source, cache / source.name)
        copied.append(str(cache / source.name))
    return copied


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's data, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the selected rows, copy their files, write summary.json and the report; 0 when every run finished."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.seeds <= 10:
        parser.error(f"--seeds must be 1..10; got {args.seeds}")
    ensemble = args.seeds >= 2 if args.ensemble is None else args.ensemble
    if ensemble and args.seeds < 2:
        parser.error("--ensemble needs --seeds 2 or more")
    kind, data_path = resolve_data(args.data, args.medmnist)
    if args.list:
        for table_kind, table, defaults in (("kaggle", KAGGLE_ROWS, KAGGLE_DEFAULT_ROWS),
                                            ("medmnist", MEDMNIST_ROWS, MEDMNIST_DEFAULT_ROWS)):
            print(f"{table_kind} (* = run by default):")
            for name, row in table.items():
                print(f"  {'*' if name in defaults else ' '} {name}: {row.summary}")
        return 0
    if args.keras_home:
        os.environ["KERAS_HOME"] = str(Path(args.keras_home).expanduser().absolute())  # before keras is imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core.config import ConfigError
    from core.data.demo import default_cache_dir
    from core.store.runs import RunStore

    rows = select_rows(args, kind)
    store = RunStore(args.store)
    smoke = is_smoke(args, kind)
    if args.results:
        results_root = Path(args.results)
    else:
        results_root = store.root / "quality-results" if smoke else REPO / RESULTS_DIR
    if args.copy_weights_to_cache:
        for path in _copy_weights_to_cache():
            print(f"copied into the Keras cache: {path}")
    env = {"KERAS_HOME": os.environ["KERAS_HOME"]} if args.keras_home else {}
    machine = machine_description()
    date = datetime.now().strftime("%Y-%m-%d %H:%M")
    say = lambda message: print(message, flush=True)  # noqa: E731
    say(f"machine: {machine}\ndata: {kind} at {data_path}\nrows: {', '.join(n for n, _ in rows)}; "
        f"{args.seeds} seed(s) each{' and their ensemble' if ensemble else ''}")
    started = time.time()
    outcomes: list[RowOutcome] = []
    for name, row in rows:
        if any(o.interrupted for o in outcomes):
            outcomes.append(RowOutcome(name, row.summary, error="interrupted before it started"))
            continue
        try:
            prepare_row_data(row, kind, say)
            config = build_config(name, row, kind, data_path, args)
        except ConfigError as exc:
            outcomes.append(RowOutcome(name, row.summary, error=f"invalid settings: {exc}"))
            say(f"[{name}] not run: {exc}")
            continue
        outcomes.append(run_seeds(store, name, row, config, kind, args.seeds, ensemble, env, say=say,
                                  reuse=args.resume))
    wall = time.time() - started

    data_root = None if kind == "demo" else Path(data_path).absolute()
    roots = path_roots((data_root, "<data>"), (store.root, "<store>"), (default_cache_dir(), "<cache>"),
                       (results_root, "<results>"))
    command = "python -m benchmarks.quality" + (" " + shlex.join(portable_arg(a, roots) for a in argv) if argv else "")
    folder = results_root / kind
    for outcome in outcomes:
        copy_row_results(outcome, folder / outcome.name, roots)
    summary = build_summary(outcomes, kind, command, machine, date=date, wall_seconds=wall,
                            results=portable_text(str(folder.absolute()), roots))
    summary = portable(merge_summary(_read_json(folder / "summary.json"), summary), roots)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = portable_text(render_report(summary), roots)

    out = Path(args.out) if args.out else (store.root / f"quality-{kind}-{datetime.now():%Y%m%d-%H%M%S}.md" if smoke
                                           else REPO / REPORT_FILE)
    if out.resolve() == (REPO / REPORT_FILE).resolve() or (out.is_file() and start_marker(kind) in out.read_text()):
        write_section(out, kind, report)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
    say("")
    say(report)
    say(f"report: {out}\nrun files and summary.json: {folder}")
    ran = [r for o in outcomes for r in o.all_results]
    return 0 if all(r.state in ("finished", "not run") for r in ran) and not any(o.interrupted for o in outcomes) else 1
