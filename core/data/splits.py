"""Splits: patient-grouped train / val / test splits of a data source, and the split manifest (splits.json) saved with each run."""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from core.data.datasets import (CLASS_NAMES, EXPECTED_LAYOUT, DatasetError, DatasetIndex, ImageRecord, download_kaggle,
                                find_dataset, index_medmnist, index_path)
from core.data.decode import ImageLoadError
from core.data.images import source_digest

if TYPE_CHECKING:
    from core.config import DataConfig, RunConfig

from core.data.demo import ensure_demo_dataset
from core.data.sample import check_sample, local_path, portable_path, sample_root
from core.store.files import atomic_write_text

__all__ = [
    "MANIFEST_NAME",
    "TEST_FILMS_NAME",
    "Splits",
    "FolderChanges",
    "patient_split",
    "index_source",
    "resolve_splits",
    "write_manifest",
    "read_manifest",
    "saved_splits",
    "run_splits",
    "test_manifest",
    "evaluation_splits",
    "folder_changes",
]

MANIFEST_NAME = "splits.json"
# Optional, beside splits.json: other test films a run is evaluated on and its pages browse (same format). A starter
# trained on data that does not ship (models/starter-*) names the bundled sample's test films here.
TEST_FILMS_NAME = "test-films.json"
MANIFEST_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
NO_MANIFEST_NOTE = ("this run was made before runs saved their splits (no splits.json): its splits were "
                    "re-derived from the data folder as it is now, which may differ from what it was trained on")


def patient_split(records: Sequence[ImageRecord], val_fraction: float, seed: int
                  ) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Split records into train and val, stratified by label and grouped by patient.

    Uses scikit-learn's ``StratifiedGroupKFold`` with ``round(1 / val_fraction)`` folds and takes
    one fold as validation, so no patient appears on both sides.

    Returns:
        ``(train, val)``; val records have split "val".

    Raises:
        DatasetError: too few patients per class to hold any out.
    """
    from sklearn.model_selection import StratifiedGroupKFold  # heavy: scikit-learn

    records = list(records)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
    labels = np.array([r.label for r in records])
    groups = np.array([r.patient for r in records])
    per_class = [len({g for g, y in zip(groups, labels) if y == c}) for c in (0, 1)]
    n_splits = min(max(2, round(1 / val_fraction)), min(per_class))
    if n_splits < 2:
        raise DatasetError(f"too few patients to split off validation data: {per_class[0]} NORMAL and "
                           f"{per_class[1]} PNEUMONIA patients; at least 2 of each are needed")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(records)), labels, groups))
    train = [records[i] for i in sorted(train_idx)]
    val = [replace(records[i], split="val") for i in sorted(val_idx)]
    return train, val


@dataclass
class Splits:
    """The train / val / test records of a run and where they came from.

    Read from a run's manifest, ``hashes`` holds each image's sha256 and ``unused`` the images
    of the source the run left out; ``index`` is set only when the splits were derived from the
    folder just now. ``note`` says when they were re-derived for a run without a manifest.
    """

    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]
    source: str
    index: DatasetIndex | None = None
    root: str = ""
    layout: str = ""
    unused: list[ImageRecord] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)
    note: str | None = None
    manifest: str = ""  # the file these splits were read from ("splits.json", "test-films.json"); "" if derived

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class."""
        return {name: {c: sum(1 for r in recs if r.label == i) for i, c in enumerate(CLASS_NAMES)}
                for name, recs in (("train", self.train), ("val", self.val), ("test", self.test))}

    def split(self, name: str) -> list[ImageRecord]:
        """The records of "train", "val", "test" or "unused"."""
        return {"train": self.train, "val": self.val, "test": self.test, "unused": self.unused}[name]


def _balanced_subset(records: Sequence[ImageRecord], per_class: int | None, seed: int) -> list[ImageRecord]:
    """At most ``per_class`` records of each class, chosen by a seeded permutation; order kept."""
    if per_class is None:
        return list(records)
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for label in (0, 1):
        idx = [i for i, r in enumerate(records) if r.label == label]
        keep.update(idx[j] for j in rng.permutation(len(idx))[:per_class])
    return [r for i, r in enumerate(records) if i in keep]


def index_source(cfg: DataConfig, cache_dir: str | Path | None = None) -> tuple[DatasetIndex, str]:
    """The index of a run's data source and the source in words (the demo set is generated on first use).

    Raises:
        DatasetError: the source is unknown, has no path, or cannot be found.
    """
    if cfg.source == "demo":
        root = ensure_demo_dataset(cache_dir, images_per_class=cfg.demo_images_per_class)
        return find_dataset(root), f"synthetic demo set (generated, not real X-rays) at {root}"
    if cfg.source == "sample":
        return _sample_index()
    if cfg.source == "medmnist":
        if not cfg.path:
            raise DatasetError("a MedMNIST source needs data.path pointing to the .npz file")
        return index_medmnist(cfg.path), f"MedMNIST file {cfg.path}"
    if cfg.source in ("folder", "kaggle"):
        path = cfg.path or (download_kaggle() if cfg.source == "kaggle" else None)
        if not path:
            raise DatasetError(f"a folder source needs data.path. {EXPECTED_LAYOUT}")
        index = find_dataset(path)
        return index, f"{'Kaggle chest_xray' if index.layout == 'kaggle' else 'class folders'} at {index.root}"
    raise DatasetError(f"unknown data source {cfg.source!r}")


def _sample_index() -> tuple[DatasetIndex, str]:
    """The bundled real sample, less any film its integrity check finds missing or altered."""
    check = check_sample()
    if check.problem:
        raise DatasetError(f"{check.problem}. Restore it with `git checkout -- sample/` (or rebuild it with "
                           "`python -m core.datasets make-sample`), or choose another data source")
    index = find_dataset(sample_root())
    if check.damaged:
        bad = {os.path.join(index.root, *rel.split("/")) for rel in check.damaged}
        index.records = [r for r in index.records if r.path not in bad]
    if not check.ok:
        index.problems.insert(0, check.summary())
    return index, (f"bundled real sample of the Kaggle chest X-ray set ({portable_path(index.root)}; CC BY 4.0, "
                   "Kermany et al. 2018)")


def resolve_splits(cfg: DataConfig, seed: int, cache_dir: str | Path | None = None) -> Splits:
    """Derive the train / val / test records for data settings from the folder as it is now.

    A run uses :func:`run_splits` instead, which saves the result once and reads it back after.
    The test split is never mixed into train or val. With ``validation="patient_split"``
    validation is carved out of train by patient (the 16-image official val is ignored);
    ``"official"`` uses the data set's own val split. A class-folder set without a test split
    gets a patient-grouped test split carved out first (said in ``source``).
    ``max_images_per_class`` caps train per class and val in proportion
    (``val_fraction / (1 - val_fraction)`` of it); ``max_test_images_per_class`` caps test.

    Raises:
        DatasetError: the data cannot be found or does not fit the settings.
    """
    index, source = index_source(cfg, cache_dir)
    pool = index.split("train")
    test = index.split("test")
    if not pool:
        raise DatasetError(f"no train images in {index.root}. {EXPECTED_LAYOUT}")
    if not test:
        pool, test = patient_split(pool, cfg.val_fraction, seed + 1)
        test = [replace(r, split="test") for r in test]
        source += f"; no test split found, so {len(test)} images ({cfg.val_fraction:.0%}) were held out by patient as test"
    if cfg.validation == "official" or index.layout == "medmnist":
        train, val = pool, index.split("val")
        if not val or len({r.label for r in val}) < 2:
            raise DatasetError(f"validation='official' needs a val split with both classes in {index.root}; "
                               "use validation='patient_split' instead")
        source += "; official val split"
    else:
        train, val = patient_split(pool, cfg.val_fraction, seed)
        source += f"; val = {cfg.val_fraction:.0%} of train, grouped by patient"
    if cfg.max_images_per_class is not None:
        train = _balanced_subset(train, cfg.max_images_per_class, seed)
        val_cap = max(2, int(np.ceil(cfg.max_images_per_class * cfg.val_fraction / (1 - cfg.val_fraction))))
        val = _balanced_subset(val, val_cap, seed)
    test = _balanced_subset(test, cfg.max_test_images_per_class, seed)
    used = {r.path for r in (*train, *val, *test)}
    unused = [replace(r, split="unused") for r in index.records if r.path not in used]
    return Splits(train, val, test, source, index, index.root, index.layout, unused)


# --------------------------------------------------------------------------- the manifest


def _relative(path: str, root: str, layout: str) -> str:
    """A record's path as stored: ``split::i`` inside a MedMNIST file, else relative to the root (POSIX)."""
    if layout == "medmnist":
        return path[len(root) + 2:]
    return Path(os.path.relpath(path, root)).as_posix()


def _absolute(file: str, root: str, layout: str) -> str:
    return f"{root}::{file}" if layout == "medmnist" else os.path.join(root, *file.split("/"))


def _digests(paths: Sequence[str]) -> list[str]:
    """sha256 of every source (file bytes, or a MedMNIST array's bytes); "" for one that cannot be read."""
    opened: dict = {}

    def digest(path: str) -> str:
        try:
            return source_digest(path, opened)
        except ImageLoadError:
            return ""

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        return list(pool.map(digest, paths))


def write_manifest(splits: Splits, path: str | Path) -> None:
    """Save ``splits`` as a manifest: one row per image of the source (file, split, label, patient, sha256).

    Images the run leaves out are listed with split "unused", so a file that appears in the folder
    later can be told apart from one that was there all along. Written atomically.
    """
    records = [*splits.train, *splits.val, *splits.test, *splits.unused]
    rows = [{"file": _relative(r.path, splits.root, splits.layout), "split": r.split, "label": r.label,
             "patient": r.patient, "subtype": r.subtype, "sha256": digest}
            for r, digest in zip(records, _digests([r.path for r in records]))]

    # A root inside the repository is saved relative to it, so a run shipped in models/ finds its images.
    manifest = {"version": MANIFEST_VERSION, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "root": portable_path(splits.root), "layout": splits.layout, "source": splits.source, "images": rows}
    atomic_write_text(Path(path), json.dumps(manifest, indent=1))


def read_manifest(path: str | Path) -> Splits:
    """The splits saved in a manifest, with each image's sha256 in ``hashes``.

    Raises:
        DatasetError: the manifest is unreadable or not a split manifest.
    """
    try:
        raw = json.loads(Path(path).read_text())
        root, layout = local_path(str(raw["root"])), str(raw["layout"])
        by_split: dict[str, list[ImageRecord]] = {name: [] for name in (*SPLIT_NAMES, "unused")}
        hashes: dict[str, str] = {}
        for row in raw["images"]:
            file = _absolute(row["file"], root, layout)
            by_split[row["split"]].append(ImageRecord(file, int(row["label"]), row["split"], row["patient"],
                                                      row.get("subtype")))
            hashes[file] = row["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"the split manifest {path} cannot be read ({type(exc).__name__}: {exc})") from None
    return Splits(by_split["train"], by_split["val"], by_split["test"], str(raw.get("source", root)), None,
                  root, layout, by_split["unused"], hashes, manifest=Path(path).name)


def saved_splits(run_path: str | Path) -> Splits | None:
    """The splits a run saved (its ``splits.json``), or None for a run made before runs saved them."""
    path = Path(run_path) / MANIFEST_NAME
    return read_manifest(path) if path.is_file() else None


def run_splits(config: RunConfig, run_path: str | Path, *, create: bool = True,
               cache_dir: str | Path | None = None) -> Splits:
    """A run's splits, from its ``splits.json``; the first call (training) derives and saves them.

    Once the manifest exists it is only read, never rewritten (a resumed run keeps its splits,
    whatever happened to the folder since). Without a manifest and with ``create=False`` (a run
    made before runs saved their splits) the splits are re-derived and ``note`` says so.

    Raises:
        DatasetError: the data cannot be found, does not fit the settings, or the manifest is unreadable.
    """
    saved = saved_splits(run_path)
    if saved is not None:
        return saved
    splits = resolve_splits(config.data, config.split_seed, cache_dir)
    if not create:
        splits.note = NO_MANIFEST_NOTE
        return splits
    write_manifest(splits, Path(run_path) / MANIFEST_NAME)
    return read_manifest(Path(run_path) / MANIFEST_NAME)


def test_manifest(run_path: str | Path) -> Path:
    """The manifest whose test split a run is evaluated on and its pages browse: its ``test-films.json`` when it
    has one, else its ``splits.json`` (which may not exist for a run made before runs saved their splits)."""
    films = Path(run_path) / TEST_FILMS_NAME
    return films if films.is_file() else Path(run_path) / MANIFEST_NAME


def evaluation_splits(config: RunConfig, run_path: str | Path) -> Splits:
    """The splits whose test images a run is evaluated on (``metrics.json``, the audit, Explain and Demo).

    A run's own test split (:func:`run_splits`, never re-saved), unless the run holds a ``test-films.json``:
    then its test films, read explicitly (``Splits.manifest`` says which file). ``splits.json`` keeps
    describing what the model was trained, validated and tested on either way.

    Raises:
        DatasetError: a manifest is unreadable, or a run without one has data that cannot be found.
    """
    films = Path(run_path) / TEST_FILMS_NAME
    return read_manifest(films) if films.is_file() else run_splits(config, run_path, create=False)


# --------------------------------------------------------------------------- what changed since


@dataclass
class FolderChanges:
    """How a data source differs from a run's manifest; files relative to the data root."""

    missing: list[str] = field(default_factory=list)  # in the manifest, gone from the folder
    changed: list[str] = field(default_factory=list)  # in both, with other content (sha256)
    added: list[str] = field(default_factory=list)  # in the folder, not in the manifest
    checked: tuple[str, ...] = SPLIT_NAMES
    unusable: dict[str, str] = field(default_factory=dict, repr=False)  # record path -> why it cannot be used

    @property
    def any(self) -> bool:
        return bool(self.missing or self.changed or self.added)

    def summary(self) -> str:
        """One line: ``"2 missing, 1 changed and 3 added since the run saved its splits"``."""
        if not self.any:
            return "the data folder matches the run's saved splits"
        parts = [f"{len(items)} {what}" for what, items in
                 (("missing", self.missing), ("changed", self.changed), ("added", self.added)) if items]
        return f"{', '.join(parts)} since the run saved its splits ({'/'.join(self.checked)} checked)"

    def to_dict(self) -> dict[str, Any]:
        return {"missing": self.missing, "changed": self.changed, "added": self.added,
                "checked": list(self.checked), "summary": self.summary()}


def folder_changes(splits: Splits, check: Iterable[str] = SPLIT_NAMES) -> FolderChanges:
    """Compare the folder as it is now with a run's manifest.

    ``missing`` and ``changed`` (by sha256) cover the images of the splits in ``check``; ``added``
    lists every image the folder holds now that the manifest does not list at all.
    """
    check = tuple(check)
    if not splits.hashes:
        raise ValueError("these splits were not read from a manifest: there is nothing to compare with")
    records = [r for name in check for r in splits.split(name)]
    now = dict(zip((r.path for r in records), _digests([r.path for r in records])))
    changes = FolderChanges(checked=check)
    for r in records:
        rel = _relative(r.path, splits.root, splits.layout)
        if not now[r.path] and splits.hashes[r.path]:
            changes.missing.append(rel)
            changes.unusable[r.path] = f"missing: in the run's saved {r.split} split, gone from the folder"
        elif now[r.path] != splits.hashes[r.path]:
            changes.changed.append(rel)
            changes.unusable[r.path] = ("changed since training: its content (sha256) differs from the "
                                        f"run's saved {r.split} split")
    try:
        current = index_path(splits.root).records
    except DatasetError:  # the whole folder is gone: every checked file is already missing
        current = []
    changes.added = sorted(_relative(r.path, splits.root, splits.layout) for r in current
                           if r.path not in splits.hashes)
    return changes
