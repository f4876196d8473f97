"""The starter model shipped with the repository: a finished run packaged as ``models/starter-<name>/``.

A starter is a normal run folder, so every page and command reads it as it reads any run, with
four differences. ``starter.json`` marks it (the run store never deletes it) and says how it was
trained. ``model.keras`` holds float16 variables (:func:`core.model.classifier.save_float16`; half the size,
read back in float32). The data it was trained on need not ship, so ``test-films.json`` names the
bundled sample's test films, on which its ``metrics.json`` is measured and which Explain and Demo
browse (:func:`core.data.splits.evaluation_splits`); its evaluation on the full test split of its
``splits.json`` is kept beside it as ``metrics-official-test.json``. Every path is saved relative
to the repository (data beside it as ``../…``), never as this machine's absolute path.

``python -m core.starter RUN_DIR DEST`` packages a finished run; both evaluations go through
:func:`core.evaluation.evaluate.evaluate_run` on the shipped float16 file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from core.config import BACKBONES, DataConfig
from core.config.paths import REPO_ROOT
from core.data.datasets import DatasetError
from core.data.preprocess import Preprocessing
from core.data.sample import check_sample
from core.data.splits import MANIFEST_NAME, TEST_FILMS_NAME, Splits, index_source, read_manifest, write_manifest
from core.evaluation.audit import shortcut_audit
from core.store.runs import STARTER_MARKER, Run, RunError

__all__ = ["OFFICIAL_METRICS", "COPIED_FILES", "portable_text", "portable_json", "absolute_paths",
           "write_sample_test_films", "package_starter"]

OFFICIAL_METRICS = "metrics-official-test.json"
# Run files a starter keeps (paths in them made portable); model.keras is re-saved in float16.
COPIED_FILES = ("config.json", "splits.json", "threshold.json", "status.json", "plan.json", "history.jsonl", "log.txt")
# An absolute POSIX path with at least two parts (/home/x, /tmp/y), or a Windows drive path.
_ABSOLUTE = re.compile(r"(?<![\w.~/-])(/[\w.-]+/[\w.-]+|[A-Za-z]:\\\\?[\w.-]+)")

Say = Callable[[str], None]


def _prefixes() -> list[tuple[str, str]]:
    """(absolute prefix, what it becomes), longest first: the repository → relative, its parent → ``..``, home → ``~``."""
    pairs: dict[str, str] = {}
    for folder, label in ((REPO_ROOT, ""), (REPO_ROOT.parent, ".."), (Path.home(), "~")):
        for variant in (str(folder), str(folder.resolve()), str(folder.absolute())):
            if variant not in ("/", "") and variant not in pairs:
                pairs[variant] = label
    return sorted(pairs.items(), key=lambda pair: len(pair[0]), reverse=True)


def portable_text(text: str) -> str:
    """``text`` with this machine's paths under the repository, beside it or in home made relative (``x``, ``../x``, ``~/x``).

    ``/repo/../shared/data`` becomes ``../shared/data``: the form :func:`core.data.sample.local_path` reads back.
    """
    for prefix, label in _prefixes():
        def swap(match: re.Match, label: str = label) -> str:
            return (f"{label}/" if label else "") if match.group(1) else (label or ".")

        text = re.sub(re.escape(prefix) + r"(?:(/)|(?![\w.~/-]))", swap, text)
    return text


def portable_json(obj: Any) -> Any:
    """JSON data with every string made portable (:func:`portable_text`)."""
    if isinstance(obj, str):
        return portable_text(obj)
    if isinstance(obj, dict):
        return {key: portable_json(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [portable_json(value) for value in obj]
    return obj


def absolute_paths(text: str) -> list[str]:
    """The absolute file paths that occur in ``text`` (what must never be saved in a shipped folder)."""
    return sorted(set(_ABSOLUTE.findall(text)))


def _copy_portable(source: Path, dest: Path) -> None:
    text = source.read_text(errors="replace")
    if source.suffix == ".json":
        text = json.dumps(portable_json(json.loads(text)), indent=1 if source.name == "splits.json" else 2) + "\n"
    else:  # log.txt, history.jsonl: line by line, as text
        text = portable_text(text)
    dest.write_text(text)


def write_sample_test_films(run_path: str | Path) -> Any:
    """Write ``test-films.json``: the bundled sample's test films (its training films listed as unused).

    Returns the ``core.data.splits.Splits`` read back from the file.

    Raises:
        DatasetError: the bundled sample is missing or damaged.
    """
    check = check_sample()
    if not check.ok:  # a starter's films must all be there: restore the sample first
        raise DatasetError(f"{check.summary()}")
    index, _ = index_source(DataConfig(source="sample"))
    test = index.split("test")
    source = (f"bundled real sample (sample/chest_xray): its {len(test)} test films, official Kaggle test originals "
              "downsized (CC BY 4.0, Kermany et al. 2018). Not the test split of splits.json, which holds what the "
              "model was trained, validated and tested on")
    splits = Splits([], [], test, source, index, index.root, index.layout, unused=index.split("train"))
    write_manifest(splits, Path(run_path) / TEST_FILMS_NAME)
    return read_manifest(Path(run_path) / TEST_FILMS_NAME)


def _recipe(run: Run) -> str:
    config = run.config()
    epochs = run.epochs()
    ran = {phase: sum(1 for row in epochs if row.get("phase") == phase) for phase in ("head", "finetune")}
    augment = config.augment
    active = ", ".join(f"{name.replace('_', ' ')} {getattr(augment, name):g}" for name in
                       ("rotation_degrees", "zoom", "shift", "brightness", "contrast", "noise_std", "gamma",
                        "blur_sigma", "jpeg_quality_min") if getattr(augment, name))
    preprocessing = Preprocessing.of(config.data)
    validation = (f"a {config.data.val_fraction:.0%} patient-grouped validation split of train"
                  if config.data.validation == "patient_split" else "the data set's own val/ folder")
    spec = BACKBONES[config.model.backbone]
    return (f"{spec.label}, {'ImageNet' if config.model.weights == 'imagenet' else config.model.weights} weights, "
            f"{config.data.image_size} px ({config.data.resize_mode}); preprocessing: "
            f"{preprocessing.describe() if preprocessing.active else 'none'}; head {ran['head']} of "
            f"{config.train.head.epochs} epochs at {config.train.head.learning_rate:g} on cached frozen features; "
            f"fine-tune from block {config.model.unfreeze_from_block} up, {ran['finetune']} of "
            f"{config.train.finetune.epochs} epochs at {config.train.finetune.learning_rate:g} with augmentation "
            f"({active or 'none'}); balanced class weights, batch {config.train.batch_size}, best checkpoint and "
            f"early stopping (patience {config.train.early_stopping_patience}) on {config.train.monitor}; threshold "
            f"rule '{config.train.threshold_method}' on {validation} (split seed {config.split_seed}, "
            f"seed {config.train.seed})")


def _log_seconds(run: Run, until: str = "") -> float | None:
    """Seconds from the run log's first timestamped line (``2026-11-25 23:46:53,920 INFO …``) to its last one
    containing ``until`` (any line by default)."""
    text = run.log_path.read_text(errors="replace") if run.log_path.is_file() else ""
    stamps = [(match.group(1), match.group(2), line) for line in text.splitlines()
              if (match := re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", line))]
    chosen = [stamp for stamp in stamps[1:] if until in stamp[2]]
    if not stamps or not chosen:
        return None
    first, last = (datetime.strptime(day, "%Y-%m-%d %H:%M:%S").timestamp() + int(ms) / 1000 for day, ms, _ in
                   (stamps[0], chosen[-1]))
    return round(last - first, 1)


def _status_seconds(status: Any) -> float | None:
    """Seconds from the run's start to its end, as its status.json records them."""
    try:
        return round((datetime.fromisoformat(status.finished_at) - datetime.fromisoformat(status.started_at))
                     .total_seconds(), 1)
    except (TypeError, ValueError):
        return None


def _this_machine() -> str:
    import psutil

    return f"{os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2 ** 30:.0f} GiB memory"


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "n_positive", "n_patients", "threshold", "accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc",
            "brier")
    return {**{key: metrics.get(key) for key in keys}, "ci": metrics.get("ci")}


def package_starter(source: str | Path, dest: str | Path, *, machine: str | None = None, note: str | None = None,
                    chosen: str | None = None, say: Say = print) -> Run:
    """Package the finished run ``source`` as the starter run folder ``dest`` (which must not exist yet).

    Copies the run's files with portable paths, re-saves its model with float16 variables,
    evaluates that file on the full test split of its ``splits.json`` (``metrics-official-test.json``)
    and on the bundled sample's test films (``test-films.json`` → ``metrics.json``), runs the shortcut
    audit on those films (``audit.json``), and writes ``starter.json``. The run's own data must be where its ``splits.json`` says.

    Args:
        source: the finished run's folder.
        dest: the starter's folder, e.g. ``models/starter-efficientnet-lite0``.
        machine: the training machine in words (default: this machine's cores and memory).
        note: anything about the training a reader of ``starter.json`` should know (an interruption, a resume).
        chosen: how this run was chosen to ship, and on what data (``starter.json``'s ``chosen``).

    Raises:
        RunError: the source is not a finished run with a model, or ``dest`` exists.
        DatasetError: the run's data or the bundled sample cannot be read.
    """
    from core.evaluation.evaluate import evaluate_run  # heavy: scikit-learn
    from core.model.classifier import load_model, save_float16  # heavy: Keras

    origin, dest = Run(Path(source)), Path(dest)
    status = origin.raw_status()
    if status.state != "finished" or not origin.model_path.is_file():
        raise RunError(f"run {origin.id} is {status.state}{'' if origin.model_path.is_file() else ' without a model'}: "
                       "only a finished run is packaged")
    if dest.exists():
        raise RunError(f"{dest} exists; remove it first (a starter is packaged once, from one run)")
    started = time.time()
    dest.mkdir(parents=True)
    run = Run(dest)
    try:
        for name in COPIED_FILES:
            if (origin.path / name).is_file():
                _copy_portable(origin.path / name, dest / name)
        say(f"copied {', '.join(n for n in COPIED_FILES if (dest / n).is_file())} with portable paths")
        save_float16(load_model(origin.model_path), run.model_path)
        say(f"model.keras in float16: {run.model_path.stat().st_size / 1e6:.1f} MB "
            f"(was {origin.model_path.stat().st_size / 1e6:.1f} MB)")

        official = evaluate_run(run, splits=read_manifest(dest / MANIFEST_NAME), save_as=OFFICIAL_METRICS,
                                progress=lambda f, m: None)
        run.write_json(OFFICIAL_METRICS, portable_json(run.read_json(OFFICIAL_METRICS)))
        say(f"{OFFICIAL_METRICS}: {official['n']} images, ROC AUC {official['roc_auc']:.3f}")
        write_sample_test_films(dest)
        sample = evaluate_run(run, progress=lambda f, m: None)
        say(f"metrics.json ({TEST_FILMS_NAME}): {sample['n']} images, ROC AUC {sample['roc_auc']:.3f}")
        audit = shortcut_audit(run)  # saved as audit.json, so a clone's Evaluate page writes nothing into the folder
        say(f"audit.json: {audit['border']['flipped']} of {audit['n']} calls change without the border")

        run.write_json(STARTER_MARKER, {
            "name": dest.name,
            "about": ("The ready starter model shipped with the repository: a finished run of the project's best "
                      "offline recipe, packaged by core.starter. Its metrics.json is on the bundled sample's test "
                      f"films ({TEST_FILMS_NAME}; what Evaluate, Explain and Demo show); its evaluation on the full "
                      f"official test split of splits.json is {OFFICIAL_METRICS}."),
            "source_run": origin.id,
            "recipe": _recipe(origin),
            **({"chosen": chosen} if chosen else {}),
            "trained": {"started_at": status.started_at, "finished_at": status.finished_at,
                        "wall_seconds": _status_seconds(status) or _log_seconds(origin),
                        "epochs_seconds": _log_seconds(origin, until=" INFO epoch "),
                        "machine": machine or _this_machine(),
                        "device": status.device, **({"note": note} if note else {})},
            "weights": ("model.keras stores float16 variables (core.model.classifier.save_float16, no optimizer state); "
                        "core.model.classifier.load_model reads them into a float32 model. Both metrics files were measured "
                        "with this file. threshold.json (rule 'fixed' = 0.5 unless it says otherwise) and its "
                        "validation probabilities are from the float32 weights before the cast."),
            "official_test_metrics": OFFICIAL_METRICS,
            "test_films": TEST_FILMS_NAME,
            "official_test": _headline(official),
            "sample_test": _headline(sample),
            "packaged_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "packaging_seconds": round(time.time() - started, 1),
        })
        found = {p.name: paths for p in sorted(dest.iterdir()) if p.suffix in (".json", ".jsonl", ".txt")
                 and (paths := absolute_paths(p.read_text(errors="replace")))}
        if found:
            raise RunError(f"absolute paths left in the starter: {found}")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # no half-made starter in the store
        raise
    return run
