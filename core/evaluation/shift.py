"""The shift report: how a folder of new films, labelled or not, differs from a run's training films, read by the run's own model; kept as ``shifts/<folder>.json``.

Before a run is used at another hospital, its films can be compared with the ones it learned from,
without labels: their sizes, shapes and intensities; how often the model calls them pneumonia
against its validation films; and whether a linear model on the run's own pooled backbone features
tells the two sets apart (:func:`core.evaluation.shift_stats.domain_classifier`). Both sides go
through the run's one image path (:func:`core.data.images.model_pixels`). A training copy stored
unlike the new films (resized, converted) carries a processing signature the network sees at once,
so the report names the films that stood for the training side, how they were stored, and lets
copies of the training films stored like the new ones stand in (``training_folder``).
"""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.config.paths import REPO_ROOT
from core.data.datasets import CLASS_NAMES, DatasetError, ImageRecord, find_dataset, parse_patient
from core.data.decode import IMAGE_EXTENSIONS, ImageLoadError
from core.data.images import is_npz_ref, model_pixels, source_digest
from core.data.preprocess import Preprocessing
from core.data.sample import local_path, portable_path
from core.data.splits import saved_splits
from core.evaluation.ensemble import member_models
from core.evaluation.metrics import sigmoid
from core.evaluation.shift_reading import recommend_site_profile, shift_reading
from core.evaluation.shift_stats import (compare_films, domain_classifier, film_statistics, positive_rates,
                                         probability_histograms, processing_signature, summarise)
from core.evaluation.sites import find_leaks
from core.store.files import atomic_write_text
from core.store.runs import RunError

__all__ = ["SHIFTS_DIR", "MIN_FILMS", "ShiftError", "shift_report", "shift_reading", "shift_names",
           "read_shift_report"]

SHIFTS_DIR = "shifts"
MIN_FILMS = 20  # fewer readable films on a side: no domain classifier worth reading
MOST_FOREIGN = 8
Progress = Callable[[float, str], None]
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class ShiftError(ValueError):
    """A shift report cannot be made; the message is one sentence for the user."""


def _shown(path: str | Path) -> str:
    """A path as the report saves it: relative to the repository when inside it or in a folder beside it
    (``../shared/…``, as a run's splits.json saves its root), else as it is."""
    text = portable_path(path)
    if not os.path.isabs(text):
        return text
    relative = Path(os.path.relpath(Path(text).resolve(), REPO_ROOT)).as_posix()
    return relative if relative.startswith("../") and not relative.startswith("../..") else text


def _existing(folder: str | Path) -> Path:
    """``folder`` as given, else (a path saved relative to the repository) inside the repository."""
    given = Path(folder).expanduser()
    return given if given.exists() else Path(local_path(str(folder)))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _new_films(folder: str | Path) -> tuple[Path, list[ImageRecord], bool]:
    """Every image file of the folder: labelled when it has class folders with both classes, else label -1."""
    path = _existing(folder)
    if not path.is_dir():
        raise ShiftError(f"folder not found: {folder}")
    try:
        index = find_dataset(path)
        return Path(index.root), index.records, True
    except DatasetError:
        pass
    records = [ImageRecord(str(p), -1, "new", parse_patient(p.name)[0]) for p in _image_files(path)]
    return path, records, False


def _exists(source: str) -> bool:
    return os.path.isfile(source.split("::", 1)[0] if is_npz_ref(source) else source)


def _sample(records: Sequence[ImageRecord], n: int, rng: np.random.Generator,
            pneumonia_share: float | None = None) -> list[ImageRecord]:
    """At most ``n`` records at random; with ``pneumonia_share``, that class mix as far as the records allow."""
    if pneumonia_share is None:
        return [records[i] for i in sorted(rng.permutation(len(records))[:n])]
    chosen: list[ImageRecord] = []
    for label, share in ((1, pneumonia_share), (0, 1 - pneumonia_share)):
        pool = [r for r in records if r.label == label]
        chosen += [pool[i] for i in rng.permutation(len(pool))[:int(round(n * share))]]
    return chosen


def _rebuild_hint(root: Any) -> str:
    """How to remake a training folder that is derived from others (the restaged Kaggle copy), or nothing."""
    if not str(root).rstrip("/").endswith("-restaged"):
        return ""
    return (f". {_shown(root)} is the restaged Kaggle copy (docs/data.md): remake it with "
            f"python -m core.data.restage KAGGLE_FOLDER ORIGINALS_FOLDER {_shown(root)}")


def _training_films(splits: Any, training_folder: str | Path | None, n: int, seed: int,
                    pneumonia_share: float | None) -> tuple[list[ImageRecord], dict[str, Any]]:
    """The films that stand for the run's training side, and where they came from."""
    listed = splits.train
    rng = np.random.default_rng(seed + 1)
    if training_folder is None:
        present = [r for r in listed if _exists(r.path)]
        if len(present) < MIN_FILMS:
            raise ShiftError(f"the run's training films are not on this machine: {len(listed) - len(present)} of the "
                             f"{len(listed)} listed in its splits.json are missing from {_shown(splits.root)}. "
                             "Put that folder back, or give copies of the training films (a folder holding files "
                             "of the same names, any extension) as the training side" + _rebuild_hint(splits.root))
        info = {"source": "the run's training split", "folder": _shown(splits.root), "listed": len(listed),
                "on_disk": len(present), "identical": None}
    else:
        folder = _existing(training_folder)
        if not folder.is_dir():
            raise ShiftError(f"training films folder not found: {training_folder}")
        by_name = {p.stem: p for p in _image_files(folder)}  # by name, the extension aside: a copy may be re-encoded
        present = [ImageRecord(str(by_name[Path(r.path).stem]), r.label, "train", r.patient, r.subtype)
                   for r in listed if Path(r.path).stem in by_name]
        if len(present) < MIN_FILMS:
            raise ShiftError(f"only {len(present)} files in {training_folder} are named like the run's "
                             f"{len(listed)} training films; at least {MIN_FILMS} are needed")
        info = {"source": "copies of the run's training films", "folder": _shown(folder),
                "listed": len(listed), "on_disk": len(present)}
    chosen = _sample(present, n, rng, pneumonia_share)
    if training_folder is not None:
        original = {Path(r.path).stem: splits.hashes.get(r.path) for r in listed}
        info["identical"] = sum(source_digest(r.path) == original.get(Path(r.path).stem) for r in chosen)
    return chosen, info


def _header(source: str) -> dict[str, Any] | None:
    """A file's stored size, colour mode, format and bytes, from its header only (None for MedMNIST arrays)."""
    if is_npz_ref(source):
        return None
    try:
        with Image.open(source) as img:
            return {"width": img.width, "height": img.height, "mode": img.mode, "format": img.format,
                    "bytes": os.path.getsize(source)}
    except Exception:  # noqa: BLE001 - a bad file is reported by the decode, not here
        return None


def _forward(model: Any) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Images (N,S,S) uint8 → (pooled backbone features, P(pneumonia)) in one pass: a sub-model ending at ``pool``.

    An ensemble's features are its members' pooled features side by side.
    """
    import keras  # heavy: Keras

    members = member_models(model) or [model]
    try:
        pools = [m.get_layer("pool").output for m in members]
    except ValueError:
        raise ShiftError("this run's model has no pooling layer named 'pool' to read features from") from None
    if len(members) == 1:
        both = keras.Model(model.input, [pools[0], model.output])

        def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            features, logits = both.predict_on_batch(np.repeat(images[..., None], 3, -1).astype(np.float32))
            return np.asarray(features, np.float32), sigmoid(np.asarray(logits).reshape(-1))
        return run
    parts = [keras.Model(m.input, pool) for m, pool in zip(members, pools)]

    def run_ensemble(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.repeat(images[..., None], 3, -1).astype(np.float32)
        features = np.concatenate([np.asarray(p.predict_on_batch(x), np.float32) for p in parts], axis=1)
        return features, sigmoid(np.asarray(model.predict_on_batch(x)).reshape(-1))
    return run_ensemble


def _embed(forward: Callable, records: Sequence[ImageRecord], framing: tuple[int, str, Preprocessing],
           report: Progress, start: float, span: float, what: str, batch: int = 32) -> dict[str, Any]:
    """Each readable film's features, probability and statistics through the one image path; unreadable ones listed."""
    def read(record: ImageRecord) -> tuple[np.ndarray | None, dict | None, str | None]:
        try:
            pixels = model_pixels(record.path, framing[0], framing[1], preprocessing=framing[2])
            return pixels, _header(record.path), None
        except (ImageLoadError, OSError) as exc:
            return None, None, str(exc)

    kept, features, probs, stats, skipped = [], [], [], [], []
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for first in range(0, len(records), batch):
            chunk = records[first:first + batch]
            pixels = []
            for record, (image, header, error) in zip(chunk, pool.map(read, chunk)):
                if image is None:
                    skipped.append({"file": _shown(record.path), "error": error})
                    continue
                kept.append(record)
                pixels.append(image)
                stats.append(film_statistics(image, header))
            if pixels:
                f, p = forward(np.stack(pixels))
                features.append(f)
                probs.append(p)
            done = min(first + batch, len(records))
            report(start + span * done / max(1, len(records)), f"{what}: {done} of {len(records)} films")
    return {"records": kept, "features": np.concatenate(features) if features else np.zeros((0, 0), np.float32),
            "probabilities": np.concatenate(probs) if probs else np.zeros(0), "stats": stats, "skipped": skipped}


def _training_text(info: dict[str, Any], n: int, seed: int, summary: dict[str, Any], size: int, mode: str,
                   matched_mix: bool) -> str:
    common = summary.get("common_size") or {}
    modes = ", ".join(f"{k} ({v})" for k, v in sorted(summary.get("modes", {}).items()))
    stored = (f"stored at {common['width']} × {common['height']} px for {common['share']:.0%} of them"
              if common.get("share", 0) >= 0.5 else "stored at various sizes")
    mix = " to match the new folder’s class mix" if matched_mix else ""
    if info["source"] == "the run's training split":
        where = (f"{n} of the run's {info['listed']} training films (its splits.json), drawn at random (seed {seed})"
                 f"{mix}, as stored in {info['folder']}")
    else:
        where = (f"{n} copies of the run's training films, drawn at random (seed {seed}){mix} from those found by "
                 f"file name in {info['folder']} ({info['on_disk']} of its {info['listed']} training films are "
                 f"there; {info['identical']} of the {n} drawn are byte-identical to the films trained on)")
    return (f"Training side: {where}; {stored}, colour mode {modes}. Both sides went through the run's one image "
            f"path ({size} × {size} px, resize '{mode}').")


def _safe(name: str) -> str:
    return _NAME.sub("-", name.strip()).strip("-.")[:60] or "folder"


def shift_names(run: Any) -> list[str]:
    """The run's saved shift reports, oldest first."""
    folder = Path(run.path) / SHIFTS_DIR
    files = sorted(folder.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name)) if folder.is_dir() else []
    return [p.stem for p in files]


def read_shift_report(run: Any, name: str) -> dict[str, Any]:
    """One saved report. Raises ShiftError when it is missing or unreadable."""
    path = Path(run.path) / SHIFTS_DIR / f"{_safe(name)}.json"
    try:
        return {**json.loads(path.read_text()), "path": str(path)}
    except (OSError, ValueError) as exc:
        raise ShiftError(f"shift report {path.name} cannot be read ({type(exc).__name__})") from None


def _save(run: Any, report: dict[str, Any], folder: Path) -> Path:
    base, taken = _safe(folder.name), set(shift_names(run))
    name, n = base, 1
    while name in taken:  # never overwritten: "-2", "-3", …
        n += 1
        name = f"{base}-{n}"
    path = Path(run.path) / SHIFTS_DIR / f"{name}.json"
    atomic_write_text(path, json.dumps(report, indent=1))
    return path


def shift_report(run: Any, folder: str | Path, *, max_films: int = 300, seed: int = 0,
                 progress: Progress | None = None, training_folder: str | Path | None = None,
                 model: Any = None, save: bool = True) -> dict[str, Any]:
    """Compare a folder of new films (labelled or not) with the run's training films, and (by default) save the report.

    Up to ``max_films`` readable films of each side are drawn at random with ``seed``. The new side
    leaves out films byte-identical to the run's training or validation films (named under
    ``leaks``) and lists unreadable ones under ``skipped``. The training side is drawn from the run's
    ``splits.json`` (matched to the new folder's class mix when it is labelled), or from
    ``training_folder``: copies of the training films, matched by file name, to compare like with
    like. Saved as ``shifts/<folder name>.json`` in the run folder (an existing name gets "-2", "-3",
    …), with ``path`` in the returned dict.

    Returns:
        A JSON-serialisable dict: ``films`` (each side's statistics and the comparison), ``positive_rate``,
        ``histograms``, ``domain`` (``auc``, ``ci``, ``n_new``, ``n_train``, ``most_foreign``), ``skipped``,
        ``leaks``, ``training_side`` (in words), ``reading`` and ``recommend_site_profile``.

    Raises:
        ShiftError: the folder or the training films cannot be found, or too few readable new films remain.
        core.store.runs.RunError: the run has no trained model.
    """
    from core.model.classifier import load_model  # heavy: Keras

    report = progress or (lambda fraction, message: None)
    if not Path(run.model_path).is_file():
        raise RunError(f"run {Path(run.path).name} has no trained model; train it first")
    splits = saved_splits(run.path)
    if splits is None:
        raise ShiftError(f"run {Path(run.path).name} saved no splits.json, so its training films are not known")
    root, records, labelled = _new_films(folder)
    if len(records) < MIN_FILMS:
        raise ShiftError(f"{folder} holds {len(records)} image files; a shift report needs at least {MIN_FILMS}")
    report(0.02, "hashing the new films")
    skipped: list[dict[str, str]] = []
    digests: list[str] = []
    for record in records:
        try:
            digests.append(source_digest(record.path))
        except ImageLoadError as exc:
            digests.append("")
            skipped.append({"file": _shown(record.path), "error": str(exc)})
    leaks = find_leaks(run, records, digests)
    leaks.update({kind: [_shown(local_path(f)) for f in leaks[kind]] for kind in ("identical", "same_patient")})
    identical = set(leaks["identical"])
    fresh = [r for r, d in zip(records, digests) if d and _shown(r.path) not in identical]
    if len(fresh) < MIN_FILMS:
        raise ShiftError(f"only {len(fresh)} of the {len(records)} films in {folder} are readable and new "
                         f"({len(identical)} are byte-identical to the run's training or validation films); "
                         f"a shift report needs at least {MIN_FILMS}")
    rng = np.random.default_rng(seed)
    chosen = _sample(fresh, max_films, rng)
    share = float(np.mean([r.label for r in chosen])) if labelled else None
    train_records, train_info = _training_films(splits, training_folder, max_films, seed, share)

    config = run.config()
    size, mode = config.data.image_size, config.data.resize_mode
    report(0.05, "loading the model")
    forward = _forward(model if model is not None else load_model(run.model_path))
    framing = (size, mode, Preprocessing.of(config.data))  # the run's own image path
    new = _embed(forward, chosen, framing, report, 0.08, 0.42, "new films")
    train = _embed(forward, train_records, framing, report, 0.5, 0.4, "training films")
    skipped += new["skipped"]
    if len(new["records"]) < MIN_FILMS:
        raise ShiftError(f"only {len(new['records'])} films of {folder} could be read; a shift report needs at least "
                         f"{MIN_FILMS} ({len(skipped)} unreadable)")
    if len(train["records"]) < MIN_FILMS:
        raise ShiftError(f"only {len(train['records'])} of the training films drawn could be read "
                         f"({len(train['skipped'])} unreadable)")

    report(0.92, "training the domain classifier")
    try:
        domain = domain_classifier(new["features"], train["features"], [r.patient for r in new["records"]],
                                   [r.patient for r in train["records"]], seed=seed)
    except ValueError as exc:
        raise ShiftError(str(exc)) from None
    scores = np.asarray(domain["scores_new"])
    order = np.argsort(-scores, kind="stable")[:MOST_FOREIGN]
    domain["most_foreign"] = [{"file": _shown(new["records"][i].path), "score": float(scores[i]),
                               "probability": float(new["probabilities"][i])} for i in order]
    summaries = {"new": summarise(new["stats"]), "training": summarise(train["stats"])}
    info = run.read_json("threshold.json") or {}
    validation = info.get("validation") or {}
    labels = [r.label for r in new["records"]] if labelled else None
    out = {
        "version": 1, "run_id": Path(run.path).name, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "folder": _shown(root), "labelled": labelled, "films_in_folder": len(records),
        "image_size": size, "resize_mode": mode, "max_films": max_films, "seed": seed,
        "training_side": _training_text(train_info, len(train["records"]), seed, summaries["training"], size, mode,
                                        share is not None),
        "training": {**train_info, "n": len(train["records"]), "skipped": train["skipped"],
                     "signature": processing_signature(summaries["new"], summaries["training"]),
                     "counts": {c: sum(r.label == i for r in train["records"]) for i, c in enumerate(CLASS_NAMES)}},
        "films": {**summaries, "compare": compare_films(new["stats"], train["stats"])},
        "positive_rate": positive_rates(new["probabilities"], run.threshold(), validation, labels),
        "histograms": probability_histograms(new["probabilities"], validation.get("probabilities")),
        "domain": domain, "skipped": skipped, "leaks": leaks,
        "per_film": [{"file": _shown(r.path), "label": r.label if labelled else None,
                      "probability": float(p), "domain_score": float(s)}
                     for r, p, s in zip(new["records"], new["probabilities"], scores)],
    }
    out["reading"], out["recommend_site_profile"] = shift_reading(out), recommend_site_profile(out)
    if save:
        out["path"] = str(_save(run, out, root))
    report(1.0, f"saved {SHIFTS_DIR}/{Path(out['path']).name}" if save else "done")
    return out
