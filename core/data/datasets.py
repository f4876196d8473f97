"""Data sets: finding them (Kaggle layout, class folders, the demo set, MedMNIST), patient ids, the Kaggle download (the ``cxr-data`` command is :mod:`core.jobs.commands.data`)."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import zipfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from core.data.decode import IMAGE_EXTENSIONS

__all__ = [
    "CLASS_NAMES",
    "EXPECTED_LAYOUT",
    "DatasetError",
    "ImageRecord",
    "DatasetIndex",
    "parse_patient",
    "PatientOverlap",
    "patient_overlap",
    "find_dataset",
    "index_medmnist",
    "index_path",
    "download_kaggle",
]

log = logging.getLogger(__name__)

CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label 0, label 1: the one definition every module and page uses
KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
_CLASS_ALIASES = {
    0: ("normal", "negative", "healthy", "no_pneumonia", "no-pneumonia", "0"),
    1: ("pneumonia", "positive", "abnormal", "sick", "1"),
}
_SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"),
                  "test": ("test", "testing")}
EXPECTED_LAYOUT = (
    "Expected either <folder>/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (the Kaggle layout) or "
    "<folder>/{NORMAL,PNEUMONIA}/*.jpeg (one folder per class); image types: "
    + " ".join(IMAGE_EXTENSIONS)
)
_SKIP_DIRS = {"__MACOSX", "masks"}


class DatasetError(ValueError):
    """A data set folder is missing or not laid out as expected; the message shows the expected layout."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a data set: where it is, its label (0 NORMAL, 1 PNEUMONIA), split and patient."""

    path: str
    label: int
    split: str
    patient: str
    subtype: str | None = None  # "bacteria" / "virus" / None


_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)(?:_\d+)*$", re.IGNORECASE)
_IM = re.compile(r"^((?:[A-Za-z0-9]+-)?IM-\d+)(?:-\d+)+$", re.IGNORECASE)


def parse_patient(filename: str) -> tuple[str, str | None]:
    """The patient id and pneumonia subtype encoded in a Kaggle chest X-ray file name.

    ``person1234_bacteria_3106.jpeg`` → ``("person1234", "bacteria")``;
    ``NORMAL2-IM-0381-0001.jpeg`` → ``("NORMAL2-IM-0381", None)``; anything else → ``(stem, None)``.
    """
    stem = Path(filename).name
    stem = stem[: -len(Path(stem).suffix)] if Path(stem).suffix else stem
    match = _PERSON.match(stem)
    if match:
        return match.group(1), match.group(2).lower()
    match = _IM.match(stem)
    if match:
        return match.group(1), None
    return stem, None


# --------------------------------------------------------------------------- data set index


@dataclass
class DatasetIndex:
    """Every image of a data set with its label, split and patient, plus problems found on the way."""

    root: str
    layout: str  # "kaggle" | "class_folders" | "demo" | "medmnist"
    records: list[ImageRecord]
    problems: list[str] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)  # groups of byte-identical files

    def split(self, name: str) -> list[ImageRecord]:
        """Records of one split ("train", "val" or "test")."""
        return [r for r in self.records if r.split == name]

    @property
    def splits(self) -> list[str]:
        """Splits present, in train/val/test order."""
        present = {r.split for r in self.records}
        return [s for s in ("train", "val", "test") if s in present]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class: ``{"train": {"NORMAL": 1341, "PNEUMONIA": 3875}, ...}``."""
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            out.setdefault(r.split, {c: 0 for c in CLASS_NAMES})[CLASS_NAMES[r.label]] += 1
        return {s: out[s] for s in ("train", "val", "test") if s in out}

    def patients(self, split: str | None = None) -> int:
        """Number of distinct patients, in one split or overall."""
        return len({r.patient for r in self.records if split is None or r.split == split})


def _match(name: str, aliases: dict) -> object | None:
    low = name.lower()
    for key, names in aliases.items():
        if low in names:
            return key
    return None


def _visible(entries: Iterable[os.DirEntry]) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".") and e.name not in _SKIP_DIRS),
                  key=lambda e: e.name)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _named_dirs(folder: Path, aliases: dict) -> dict:
    """Sub-folders whose names match ``aliases`` (case-insensitive), first match per key."""
    found: dict = {}
    with os.scandir(folder) as it:
        for entry in _visible(it):
            if entry.is_dir():
                key = _match(entry.name, aliases)
                if key is not None and key not in found:
                    found[key] = Path(entry.path)
    return found


def _class_dirs(folder: Path) -> dict[int, Path]:
    return _named_dirs(folder, _CLASS_ALIASES)


def _split_dirs(folder: Path) -> dict[str, Path]:
    return _named_dirs(folder, _SPLIT_ALIASES)


def _locate_root(path: Path) -> Path:
    """The folder holding split or class folders: ``path`` itself or a ``chest_xray`` folder below it."""
    for candidate in (path, path / "chest_xray", path / "chest_xray" / "chest_xray"):
        if candidate.is_dir() and (_split_dirs(candidate) or _class_dirs(candidate)):
            return candidate
    return path


def _count_stray_images(folder: Path, recursive: bool) -> int:
    n = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS]
        n += sum(1 for f in filenames if _is_image_name(f) and not f.startswith("."))
        if not recursive:
            break
    return n


def _scan_class_folder(folder: Path, label: int, split: str, root: Path,
                       records: list[ImageRecord], problems: list[str]) -> None:
    other: list[str] = []
    n = 0
    with os.scandir(folder) as it:
        for entry in _visible(it):
            if entry.is_dir():
                stray = _count_stray_images(Path(entry.path), recursive=True)
                if stray:
                    problems.append(f"{stray} images in unexpected folder {Path(entry.path).relative_to(root)} "
                                    "(ignored; put images directly in the class folder)")
            elif _is_image_name(entry.name):
                patient, subtype = parse_patient(entry.name)
                records.append(ImageRecord(entry.path, label, split, patient, subtype))
                n += 1
            else:
                other.append(entry.name)
    if other:
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        problems.append(f"{len(other)} non-image files skipped in {folder.relative_to(root)}: {shown}")
    if n == 0:
        problems.append(f"empty class folder {folder.relative_to(root)}")


def _find_duplicates(records: Sequence[ImageRecord], root: Path) -> tuple[list[list[str]], list[str]]:
    """Byte-identical files by md5, as groups of relative paths, and problem lines for them."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for r in records:
        by_size[os.path.getsize(r.path)].append(r.path)
    candidates = [p for paths in by_size.values() if len(paths) > 1 for p in paths]  # only same-size files

    def digest(path: str) -> str:
        with open(path, "rb") as fh:
            return hashlib.md5(fh.read(), usedforsecurity=False).hexdigest()

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        hashes = dict(zip(candidates, pool.map(digest, candidates)))
    groups: dict[str, list[str]] = defaultdict(list)
    for path, h in hashes.items():
        groups[h].append(os.path.relpath(path, root))
    dupes = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    problems = []
    for group in dupes:
        splits = {Path(p).parts[0] for p in group} if len(Path(group[0]).parts) > 2 else set()
        where = "across splits (leak!)" if len(splits) > 1 else "byte-identical duplicates"
        problems.append(f"{where}: " + " = ".join(group))
    return dupes, problems


def find_dataset(path: str | Path) -> DatasetIndex:
    """Index a chest X-ray data set folder.

    Accepts the Kaggle layout ``{train,val,test}/{NORMAL,PNEUMONIA}`` (also when ``path`` is
    the parent of ``chest_xray/``) or one folder per class without split folders (every record
    then gets split "train"; the caller splits). Class and split folder names are matched
    case-insensitively, with aliases (``normal``/``negative``/``0``, ``val``/``validation``).

    Raises:
        DatasetError: the folder is missing, empty, has no class folders or only one class.
    """
    given = Path(path).expanduser().absolute()
    if not given.exists():
        raise DatasetError(f"folder not found: {given}. {EXPECTED_LAYOUT}")
    if not given.is_dir():
        raise DatasetError(f"not a folder: {given}. {EXPECTED_LAYOUT}")
    root = _locate_root(given)
    records: list[ImageRecord] = []
    problems: list[str] = []
    splits = _split_dirs(root)
    is_demo = (root / "README.txt").is_file() and (root / "masks").is_dir()
    if splits:
        layout = "demo" if is_demo else "kaggle"
        for split, split_dir in splits.items():
            classes = _class_dirs(split_dir)
            if not classes:
                n = _count_stray_images(split_dir, recursive=True)
                problems.append(f"split folder {split_dir.name} has no NORMAL/PNEUMONIA class folders"
                                + (f" ({n} images ignored)" if n else ""))
                continue
            for label, class_dir in sorted(classes.items()):
                _scan_class_folder(class_dir, label, split, root, records, problems)
            stray = _count_stray_images(split_dir, recursive=False)
            if stray:
                problems.append(f"{stray} images directly in {split_dir.name}/ outside the class folders (ignored)")
    else:
        classes = _class_dirs(root)
        if not classes:
            with os.scandir(root) as it:
                entries = _visible(it)
            if not entries:
                raise DatasetError(f"folder is empty: {root}. {EXPECTED_LAYOUT}")
            n = _count_stray_images(root, recursive=True)
            subdirs = [e.name for e in entries if e.is_dir()]
            found = f"found {n} images but no class folders" if n else "found no images"
            seen = f" (sub-folders: {', '.join(subdirs[:5])})" if subdirs else ""
            raise DatasetError(f"{found} in {root}{seen}. {EXPECTED_LAYOUT}")
        layout = "class_folders"
        for label, class_dir in sorted(classes.items()):
            _scan_class_folder(class_dir, label, "train", root, records, problems)
    stray = _count_stray_images(root, recursive=False)
    if stray:
        problems.append(f"{stray} images directly in {root.name}/ outside the class folders (ignored)")

    present = {r.label for r in records}
    if not records:
        raise DatasetError(f"no images found in the class folders of {root}. {EXPECTED_LAYOUT}")
    if present != {0, 1}:
        only = CLASS_NAMES[present.pop()]
        missing = CLASS_NAMES[1 - CLASS_NAMES.index(only)]
        raise DatasetError(f"only class {only} has images in {root}; a {missing} folder with images is "
                           f"needed too. {EXPECTED_LAYOUT}")
    records.sort(key=lambda r: r.path)
    duplicates, dupe_problems = _find_duplicates(records, root)
    return DatasetIndex(str(root), layout, records, problems + dupe_problems, duplicates)


@dataclass
class PatientOverlap:
    """Patient ids that occur in both the train and the test split of a data set, as file names give them."""

    test_patients: int
    shared: list[str]
    differing: list[str]  # shared ids whose class or pneumonia type differs between train and test
    examples: list[tuple[str, str, str]]  # (patient id, what it is in train, what it is in test)


def _kinds(records: Iterable[ImageRecord]) -> dict[str, str]:
    kinds: dict[str, set[str]] = defaultdict(set)
    for r in records:
        adjective = {"bacteria": "bacterial", "virus": "viral"}.get(r.subtype or "", r.subtype)
        kinds[r.patient].add(f"{adjective} pneumonia" if r.label and r.subtype else CLASS_NAMES[r.label])
    return {patient: " and ".join(sorted(k)) for patient, k in kinds.items()}


def patient_overlap(index: DatasetIndex) -> PatientOverlap | None:
    """Test patient ids that also occur in train; None when the set has no train or no test split.

    In the Kaggle set 170 of the 427 test patient ids occur in train, and for every one of them the
    pneumonia type differs (``person1`` is bacterial in train and viral in test): the ids were
    numbered per split, so these are probably different children, not a leak.
    """
    train, test = _kinds(index.split("train")), _kinds(index.split("test"))
    if not train or not test:
        return None
    shared = sorted(set(train) & set(test), key=lambda p: (len(p), p))
    differing = [p for p in shared if train[p] != test[p]]
    examples = [(p, train[p], test[p]) for p in (differing or shared)[:5]]
    return PatientOverlap(len(test), shared, differing, examples)


def _npz_arrays(path: str | Path) -> np.lib.npyio.NpzFile:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read MedMNIST file {path}: {exc}") from None


def index_medmnist(path: str | Path) -> DatasetIndex:
    """Index a MedMNIST ``.npz`` (``train_images``/``train_labels``/``val_*``/``test_*``).

    Records use the path form ``"{npz}::{split}::{i}"`` and patient ``"{split}-{i}"`` (MedMNIST
    has no patient ids; its own splits are patient-disjoint).
    """
    npz_path = Path(path).expanduser().absolute()
    if not npz_path.is_file():
        raise DatasetError(f"MedMNIST file not found: {npz_path} (expected e.g. pneumoniamnist.npz)")
    records: list[ImageRecord] = []
    with _npz_arrays(npz_path) as npz:
        for split in ("train", "val", "test"):
            if f"{split}_labels" not in npz.files or f"{split}_images" not in npz.files:
                continue
            labels = np.asarray(npz[f"{split}_labels"]).reshape(-1)
            records += [ImageRecord(f"{npz_path}::{split}::{i}", int(y), split, f"{split}-{i}", None)
                        for i, y in enumerate(labels)]
    if not records:
        raise DatasetError(f"{npz_path} has no train_images/train_labels arrays (not a MedMNIST file?)")
    if {r.label for r in records} - {0, 1}:
        raise DatasetError(f"{npz_path} has labels other than 0/1; only binary PneumoniaMNIST is supported")
    return DatasetIndex(str(npz_path), "medmnist", records, [])


def index_path(path: str | Path) -> DatasetIndex:
    """Index a folder (:func:`find_dataset`) or a MedMNIST ``.npz`` (:func:`index_medmnist`)."""
    return index_medmnist(path) if str(path).endswith(".npz") else find_dataset(path)


# --------------------------------------------------------------------------- Kaggle download


def _online(host: str = "www.kaggle.com", port: int = 443, timeout: float = 5.0) -> str | None:
    """None when a TCP connection to ``host`` works, else what went wrong."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def download_kaggle(progress: Callable[[str], None] | None = None) -> Path:
    """Download (or reuse kagglehub's cached copy of) the Kaggle chest X-ray set.

    Args:
        progress: called with short status lines.

    Returns:
        The folder holding ``train``, ``val`` and ``test``.

    Raises:
        DatasetError: offline, kagglehub missing, credentials refused, or an unexpected layout.
    """
    say = progress or (lambda msg: log.info(msg))
    problem = _online()
    if problem:
        raise DatasetError(f"cannot reach www.kaggle.com ({problem}); this machine looks offline. Download "
                           f"{KAGGLE_DATASET} elsewhere and use a folder source pointing at chest_xray/")
    try:
        import kagglehub  # heavy: kagglehub
    except ImportError:
        raise DatasetError("the kagglehub package is not installed (pip install kagglehub)") from None
    say(f"downloading {KAGGLE_DATASET} with kagglehub (about 1.2 GB the first time)")
    try:
        base = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as exc:  # kagglehub raises many types (HTTP, auth, disk)
        raise DatasetError(f"Kaggle download failed: {type(exc).__name__}: {exc}") from None
    root = _locate_root(base)
    if not _split_dirs(root):
        raise DatasetError(f"downloaded {KAGGLE_DATASET} to {base} but found no train/val/test folders in it")
    say(f"data set ready at {root}")
    return root
