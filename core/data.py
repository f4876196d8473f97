"""Data: finding data sets, patient ids and grouped splits, image decoding and validation, and the tf.data pipeline."""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import socket
import sys
import tempfile
import warnings
import zipfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.config import AugmentConfig, DataConfig

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "CLASS_NAMES",
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "MAX_MEGAPIXELS",
    "ImageLoadError",
    "DatasetError",
    "ImageRecord",
    "DatasetIndex",
    "Splits",
    "LoadedArrays",
    "parse_patient",
    "find_dataset",
    "image_size_spread",
    "index_medmnist",
    "patient_split",
    "resolve_splits",
    "download_kaggle",
    "decode_image",
    "prepare_image",
    "load_image",
    "load_arrays",
    "make_dataset",
]

log = logging.getLogger(__name__)

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm")
MIN_SIDE = 32
MAX_MEGAPIXELS = 100
KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
_CLASS_ALIASES = {
    0: ("normal", "negative", "healthy", "no_pneumonia", "no-pneumonia", "0"),
    1: ("pneumonia", "positive", "abnormal", "sick", "1"),
}
_SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"),
                  "test": ("test", "testing")}
_EXPECTED_LAYOUT = (
    "Expected either <folder>/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (the Kaggle layout) or "
    "<folder>/{NORMAL,PNEUMONIA}/*.jpeg (one folder per class); image types: "
    + " ".join(IMAGE_EXTENSIONS)
)
_SKIP_DIRS = {"__MACOSX", "masks"}


class ImageLoadError(ValueError):
    """An image could not be used; the message says why in words a person can act on."""


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
        raise DatasetError(f"folder not found: {given}. {_EXPECTED_LAYOUT}")
    if not given.is_dir():
        raise DatasetError(f"not a folder: {given}. {_EXPECTED_LAYOUT}")
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
                raise DatasetError(f"folder is empty: {root}. {_EXPECTED_LAYOUT}")
            n = _count_stray_images(root, recursive=True)
            subdirs = [e.name for e in entries if e.is_dir()]
            found = f"found {n} images but no class folders" if n else "found no images"
            seen = f" (sub-folders: {', '.join(subdirs[:5])})" if subdirs else ""
            raise DatasetError(f"{found} in {root}{seen}. {_EXPECTED_LAYOUT}")
        layout = "class_folders"
        for label, class_dir in sorted(classes.items()):
            _scan_class_folder(class_dir, label, "train", root, records, problems)
    stray = _count_stray_images(root, recursive=False)
    if stray:
        problems.append(f"{stray} images directly in {root.name}/ outside the class folders (ignored)")

    present = {r.label for r in records}
    if not records:
        raise DatasetError(f"no images found in the class folders of {root}. {_EXPECTED_LAYOUT}")
    if present != {0, 1}:
        only = CLASS_NAMES[present.pop()]
        missing = CLASS_NAMES[1 - CLASS_NAMES.index(only)]
        raise DatasetError(f"only class {only} has images in {root}; a {missing} folder with images is "
                           f"needed too. {_EXPECTED_LAYOUT}")
    records.sort(key=lambda r: r.path)
    duplicates, dupe_problems = _find_duplicates(records, root)
    return DatasetIndex(str(root), layout, records, problems + dupe_problems, duplicates)


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
    npz_path = Path(path).expanduser()
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


# --------------------------------------------------------------------------- splits


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
    from sklearn.model_selection import StratifiedGroupKFold

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
    """The train / val / test records of a run, where they came from, and the index they came from."""

    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]
    source: str
    index: DatasetIndex

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class."""
        return {name: {c: sum(1 for r in recs if r.label == i) for i, c in enumerate(CLASS_NAMES)}
                for name, recs in (("train", self.train), ("val", self.val), ("test", self.test))}


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


def resolve_splits(cfg: DataConfig, seed: int, cache_dir: str | Path | None = None) -> Splits:
    """The train / val / test records for a run's data settings.

    The test split is never mixed into train or val. With ``validation="patient_split"``
    validation is carved out of train by patient (the 16-image official val is ignored);
    ``"official"`` uses the data set's own val split. A class-folder set without a test split
    gets a patient-grouped test split carved out first (said in ``source``).
    ``max_images_per_class`` caps train per class and val in proportion
    (``val_fraction / (1 - val_fraction)`` of it); ``max_test_images_per_class`` caps test.

    Raises:
        DatasetError: the data cannot be found or does not fit the settings.
    """
    if cfg.source == "demo":
        from core.demo import ensure_demo_dataset

        root = ensure_demo_dataset(cache_dir, images_per_class=cfg.demo_images_per_class)
        index = find_dataset(root)
        source = f"synthetic demo set (generated, not real X-rays) at {root}"
    elif cfg.source == "medmnist":
        if not cfg.path:
            raise DatasetError("a MedMNIST source needs data.path pointing to the .npz file")
        index = index_medmnist(cfg.path)
        source = f"MedMNIST file {cfg.path}"
    elif cfg.source in ("folder", "kaggle"):
        path = cfg.path or (download_kaggle() if cfg.source == "kaggle" else None)
        if not path:
            raise DatasetError(f"a folder source needs data.path. {_EXPECTED_LAYOUT}")
        index = find_dataset(path)
        source = f"{'Kaggle chest_xray' if index.layout == 'kaggle' else 'class folders'} at {index.root}"
    else:
        raise DatasetError(f"unknown data source {cfg.source!r}")

    pool = index.split("train")
    test = index.split("test")
    if not pool:
        raise DatasetError(f"no train images in {index.root}. {_EXPECTED_LAYOUT}")
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
    return Splits(train, val, test, source, index)


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
        import kagglehub
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


# --------------------------------------------------------------------------- decoding


def _looks_like(data: bytes) -> str | None:
    """A name for common non-image contents, for error messages."""
    head = data[:512]
    signatures = (
        (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive (or Office document)"),
        (b"\x1f\x8b", "a gzip archive"), (b"\x93NUMPY", "a NumPy array file"),
        (b"Rar!", "a RAR archive"), (b"7z\xbc\xaf", "a 7-Zip archive"),
        (b"\x7fELF", "a program (ELF)"), (b"MZ", "a Windows program"),
    )
    for magic, what in signatures:
        if head.startswith(magic):
            return what
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if lowered.startswith(b"<svg") or b"<svg" in lowered[:200]:
        return "an SVG drawing (vector images are not supported)"
    if head.lstrip().startswith((b"{", b"[")) and _is_text(head):
        return "JSON text"
    if b"\x00" not in head and _is_text(head):
        return "a text file"
    return None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(1, len(text))


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_MEGAPIXELS * 1_000_000:
        raise ImageLoadError(f"image is {width}x{height} px ({width * height / 1e6:.0f} MP); "
                             f"the limit is {MAX_MEGAPIXELS} MP")
    if min(width, height) < MIN_SIDE:
        raise ImageLoadError(f"image is {width}x{height} px; at least {MIN_SIDE} px a side is needed")


def _is_dicom(data: bytes, filename: str) -> bool:
    return data[128:132] == b"DICM" or filename.lower().endswith(".dcm")


def _to_uint8_minmax(array: np.ndarray) -> np.ndarray:
    """Stretch any numeric array to 0..255; a flat image becomes black."""
    array = np.asarray(array, dtype=np.float64)
    lo, hi = float(np.min(array)), float(np.max(array))
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.rint((array - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _decode_dicom(data: bytes) -> np.ndarray:
    """DICOM → uint8 grayscale: Modality LUT, VOI window (else min/max), MONOCHROME1 inverted.

    Patient tags are read by pydicom but never returned or logged.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if data[:4] == b"DICM":  # preamble stripped but magic kept: put the preamble back
        data = bytes(128) + data
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (InvalidDicomError, AttributeError, ValueError, TypeError, EOFError, OSError) as exc:
        raise ImageLoadError(f"not a readable DICOM image ({type(exc).__name__}: {exc})") from None
    _check_size(cols, rows)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises plain exceptions for missing codecs and short data
        raise ImageLoadError(f"DICOM pixel data cannot be decoded ({exc}); it may be truncated or use a "
                             "compression this installation cannot read") from None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) == 3:
        pixels = np.asarray(Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB").convert("L"))
        return pixels
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        # DICOM PS3.3 C.11.2.1.2 linear window function, mapped to 0..255.
        out = np.clip(((values - (c - 0.5)) / max(w - 1.0, 1.0) + 0.5), 0.0, 1.0) * 255.0
        gray = np.rint(out).astype(np.uint8)
    elif "VOILUTSequence" in ds:
        gray = _to_uint8_minmax(apply_voi_lut(values, ds))
    else:
        gray = _to_uint8_minmax(values)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1: high values are dark
    return gray


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    """Any PIL mode → uint8 grayscale; alpha is composited on black, 16-bit is min/max scaled."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # Min/max rather than >>8: X-ray PNG/TIFFs usually hold 10-12-bit data in 16 bits, which
        # >>8 would crush into a few dark levels; stretching keeps all the contrast there is.
        return _to_uint8_minmax(np.asarray(img))
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8)


def _open_checked(data: bytes) -> Image.Image:
    """``Image.open`` with typed errors; the size limit is checked from the header before decoding."""
    if not data:
        raise ImageLoadError("file is empty")
    try:
        # PIL warns between 89 and 179 MP and raises above; our own 100 MP limit is checked below.
        # (No warnings.catch_warnings here: it is not thread-safe and load_arrays uses threads.)
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)) / 1e6:.0f} MP" if pixels else "too many pixels"
        dims = _png_dims(data)
        text = f"{dims[0]}x{dims[1]} px ({size})" if dims else size
        raise ImageLoadError(f"image is {text}; the limit is {MAX_MEGAPIXELS} MP") from None
    except UnidentifiedImageError:
        what = _looks_like(data)
        raise ImageLoadError(f"not an image file (looks like {what})" if what else
                             "not an image file, or an image type that cannot be read "
                             f"(supported: {' '.join(IMAGE_EXTENSIONS)})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(f"image header cannot be read ({exc}); the file may be damaged") from None
    _check_size(*img.size)
    return img


def _png_dims(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _decode(data: bytes, filename: str = "", draft_size: int | None = None) -> np.ndarray:
    if not data:
        raise ImageLoadError("file is empty")
    if _is_dicom(data, filename):
        return _decode_dicom(data)
    img = _open_checked(data)
    try:
        if draft_size and img.format == "JPEG":
            # Let the JPEG decoder downscale by 1/2..1/8 while staying ≥ the target size: several
            # times faster on 2,000 px films, and the final resize does the rest.
            img.draft("L", (draft_size, draft_size))
        img.load()  # force the full decode so truncated files fail here, not later
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img = ImageOps.exif_transpose(img)
        gray = _pil_to_gray(img)
    except ImageLoadError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        kind = img.format or "image"
        reason = "truncated" if "truncated" in str(exc).lower() or isinstance(exc, EOFError) else "damaged"
        raise ImageLoadError(f"{reason} {kind} file ({exc})") from None
    _check_size(gray.shape[1], gray.shape[0])
    return gray


def decode_image(data: bytes, filename: str = "") -> np.ndarray:
    """Decode image bytes to uint8 grayscale (H, W).

    Reads JPEG, PNG (8/16-bit, RGBA composited on black, palette), BMP, TIFF (incl. 16-bit),
    WebP, GIF (first frame) and DICOM (Modality LUT, VOI window, MONOCHROME1 inverted; patient
    tags are never returned). EXIF orientation is applied; colour is converted to grayscale.

    Args:
        data: the file's bytes.
        filename: optional name; a ``.dcm`` suffix selects DICOM even without the preamble.

    Raises:
        ImageLoadError: empty, not an image, truncated, smaller than 32 px a side, or more than
            100 megapixels (checked from the header before the pixels are decoded).
    """
    return _decode(bytes(data), filename)


def _resize_plan(width: int, height: int, image_size: int, resize_mode: str) -> tuple[tuple[int, int], tuple[int, int]]:
    if resize_mode == "stretch":
        return (image_size, image_size), (0, 0)
    if resize_mode != "letterbox":
        raise ValueError(f"resize_mode must be 'stretch' or 'letterbox'; got {resize_mode!r}")
    scale = image_size / max(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    return new, ((image_size - new[0]) // 2, (image_size - new[1]) // 2)


def _resize_uint8(gray: np.ndarray, image_size: int, resize_mode: str) -> np.ndarray:
    """The one resize used everywhere: PIL bilinear (antialiased when shrinking), uint8 in and out."""
    gray = np.asarray(gray)
    if gray.ndim == 3:
        gray = gray[..., 0] if gray.shape[-1] in (1, 3) else gray
    if gray.dtype != np.uint8:
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    img = Image.fromarray(gray, mode="L")
    size, offset = _resize_plan(img.width, img.height, image_size, resize_mode)
    if img.size != size:
        img = img.resize(size, Image.BILINEAR)
    if resize_mode == "letterbox":
        canvas = Image.new("L", (image_size, image_size), 0)
        canvas.paste(img, offset)
        img = canvas
    return np.asarray(img, dtype=np.uint8)


def prepare_image(gray: np.ndarray, image_size: int, resize_mode: str = "stretch") -> np.ndarray:
    """Resize grayscale to the model's input: float32 (S, S, 3) in 0..255.

    Uses the same PIL resize as :func:`load_arrays`, so a single image and the same image in a
    batch get identical pixels. ``"letterbox"`` keeps the aspect ratio and pads with black.
    """
    small = _resize_uint8(gray, image_size, resize_mode)
    return np.repeat(small[..., None], 3, axis=-1).astype(np.float32)


_NPZ_REF = re.compile(r"^(?P<file>.+\.npz)::(?P<split>train|val|test)::(?P<index>\d+)$")


def _npz_image(ref: str, opened: dict | None = None) -> np.ndarray:
    match = _NPZ_REF.match(ref)
    if not match:
        raise ImageLoadError(f"not a MedMNIST reference: {ref!r} (expected file.npz::split::index)")
    file, split, index = match["file"], match["split"], int(match["index"])
    try:
        if opened is not None and file in opened:
            images = opened[file][split]
        else:
            with np.load(file, allow_pickle=False) as npz:
                images = np.asarray(npz[f"{split}_images"])
            if opened is not None:
                opened.setdefault(file, {})[split] = images
        array = images[index]
    except (OSError, KeyError, IndexError, ValueError, zipfile.BadZipFile) as exc:
        raise ImageLoadError(f"cannot read image {index} of {split} in {file} ({exc})") from None
    return array if array.ndim == 2 else _pil_to_gray(Image.fromarray(array))


def _read_source(source: bytes | str | Path, image_size: int | None, opened: dict | None = None) -> np.ndarray:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(bytes(source), "", image_size)
    text = str(source)
    if "::" in text and _NPZ_REF.match(text):
        return _npz_image(text, opened)
    try:
        data = Path(text).read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(f"file not found: {text}") from None
    except IsADirectoryError:
        raise ImageLoadError(f"is a folder, not an image file: {text}") from None
    except OSError as exc:
        raise ImageLoadError(f"cannot read {text}: {exc.strerror or exc}") from None
    return _decode(data, text, image_size)


def load_image(source: bytes | str | Path, image_size: int, resize_mode: str = "stretch") -> np.ndarray:
    """Decode and prepare one image: float32 (S, S, 3) in 0..255.

    Args:
        source: file bytes, a file path, or a MedMNIST reference ``"x.npz::split::i"``.

    Raises:
        ImageLoadError: see :func:`decode_image`.
    """
    return prepare_image(_read_source(source, image_size), image_size, resize_mode)


# --------------------------------------------------------------------------- arrays and tf.data


class LoadedArrays(tuple):
    """``(images, labels)`` from :func:`load_arrays`, with what was skipped.

    Unpacks like a 2-tuple. ``kept`` are the indices into the records that were loaded (images
    row i is ``records[kept[i]]``); ``skipped`` lists ``(path, reason)`` for records that failed.
    """

    images: np.ndarray
    labels: np.ndarray
    kept: np.ndarray
    skipped: list[tuple[str, str]]

    def __new__(cls, images: np.ndarray, labels: np.ndarray, kept: np.ndarray,
                skipped: list[tuple[str, str]]) -> "LoadedArrays":
        obj = super().__new__(cls, (images, labels))
        obj.images, obj.labels, obj.kept, obj.skipped = images, labels, kept, skipped
        return obj


def _cache_key(records: Sequence[ImageRecord], image_size: int, resize_mode: str) -> str:
    h = hashlib.sha256(f"v1|{image_size}|{resize_mode}|{len(records)}".encode())
    stats: dict[str, str] = {}
    for r in records:
        file = r.path.split("::", 1)[0]
        if file not in stats:
            try:
                st = os.stat(file)
                stats[file] = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stats[file] = "missing"
        h.update(f"\n{r.path}|{r.label}|{stats[file]}".encode())
    return h.hexdigest()[:24]


def _default_cache_dir() -> Path:
    from core.demo import default_cache_dir

    return default_cache_dir()


def load_arrays(
    records: Sequence[ImageRecord],
    image_size: int,
    resize_mode: str = "stretch",
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LoadedArrays:
    """Decode every image once into uint8 (N, S, S, 1) plus float32 labels (N,).

    Decoding runs in a thread pool (PIL releases the GIL). A record that fails to decode is
    skipped with a logged warning and listed in the result's ``skipped``; ``kept`` maps rows
    back to records. With ``cache="disk"`` the arrays are stored as ``.npy`` under
    ``<cache_dir>/arrays/`` keyed by (paths, labels, file sizes and mtimes, size, resize mode),
    so a later call (also from another process) memory-maps them without decoding.

    Args:
        records: the images to load.
        image_size: output side in pixels.
        resize_mode: "stretch" or "letterbox".
        cache: "memory" / "none" (decode into memory) or "disk".
        cache_dir: cache root; default ``$CXR_STUDIO_CACHE`` or ``~/.cache/cxr-studio``.
        progress: called as ``progress(done, total)``.

    Returns:
        :class:`LoadedArrays`, which unpacks as ``images, labels``.
    """
    records = list(records)
    total = len(records)
    files = None
    if cache == "disk":
        folder = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
        folder = folder / "arrays"
        key = _cache_key(records, image_size, resize_mode)
        files = {name: folder / f"{key}.{name}.npy" for name in ("images", "labels", "kept")}
        meta = folder / f"{key}.json"
        if meta.is_file() and all(p.is_file() for p in files.values()):
            try:
                skipped = [tuple(x) for x in json.loads(meta.read_text())["skipped"]]
                images = np.load(files["images"], mmap_mode="r", allow_pickle=False)
                labels = np.load(files["labels"], allow_pickle=False)
                kept = np.load(files["kept"], allow_pickle=False)
                if progress:
                    progress(total, total)
                return LoadedArrays(images, labels, kept, skipped)
            except (OSError, ValueError, KeyError):
                log.warning("array cache %s is unreadable; decoding again", key)

    images = np.zeros((total, image_size, image_size, 1), dtype=np.uint8)
    ok = np.zeros(total, dtype=bool)
    skipped: list[tuple[str, str]] = []
    opened: dict = {}

    def work(i: int) -> tuple[int, str | None]:
        try:
            gray = _read_source(records[i].path, image_size, opened)
            images[i, ..., 0] = _resize_uint8(gray, image_size, resize_mode)
            return i, None
        except ImageLoadError as exc:
            return i, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for done, (i, error) in enumerate(pool.map(work, range(total)), start=1):
            if error is None:
                ok[i] = True
            else:
                skipped.append((records[i].path, error))
                log.warning("skipped %s: %s", records[i].path, error)
            if progress and (done == total or done % 16 == 0):
                progress(done, total)
    kept = np.flatnonzero(ok)
    if len(kept) < total:
        images = images[kept]
    labels = np.array([records[i].label for i in kept], dtype=np.float32)

    if files is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in (("images", images), ("labels", labels), ("kept", kept)):
            with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as fh:
                np.save(fh, array, allow_pickle=False)
            os.replace(fh.name, files[name])
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as fh:
            json.dump({"skipped": skipped, "count": total, "image_size": image_size,
                       "resize_mode": resize_mode}, fh)
        os.replace(fh.name, meta)  # written last: its presence means the arrays are complete
    return LoadedArrays(images, labels, kept, skipped)


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    training: bool,
    augment: AugmentConfig | None = None,
    seed: int = 0,
) -> "tf.data.Dataset":
    """A batched tf.data pipeline over uint8 (N, S, S, 1) images.

    Training: shuffle (seeded, reshuffled every epoch) → batch → augment (if active) → 3
    channels → prefetch. Not training: fixed order, no augmentation. Shuffling and batching
    work on indices, so images are gathered once per batch rather than copied into a shuffle
    buffer.

    Yields:
        ``(float32 (B, S, S, 3) in 0..255, float32 (B,))``.
    """
    import tensorflow as tf

    from core.augment import augmentation_layers

    images_t = tf.convert_to_tensor(np.asarray(images))
    if images_t.shape.rank == 3:
        images_t = images_t[..., None]
    labels_t = tf.convert_to_tensor(np.asarray(labels, dtype=np.float32))
    n = int(images_t.shape[0])
    layers = augmentation_layers(augment, seed) if (training and augment is not None) else None

    def to_batch(idx):
        x = tf.cast(tf.gather(images_t, idx), tf.float32)
        if layers is not None:
            x = layers(x, training=True)
        if x.shape[-1] == 1:
            x = tf.repeat(x, 3, axis=-1)
        return x, tf.gather(labels_t, idx)

    ds = tf.data.Dataset.range(n)
    if training:
        ds = ds.shuffle(max(1, n), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(to_batch, num_parallel_calls=tf.data.AUTOTUNE,
                                  deterministic=not training or None)
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- CLI


def image_size_spread(records: Sequence[ImageRecord], sample: int = 200, seed: int = 0) -> dict:
    """Widths and heights of a random sample of images, read from headers only, and a one-line summary."""
    files = [r.path for r in records if "::" not in r.path]
    widths: list[int] = []
    heights: list[int] = []
    if files:
        rng = np.random.default_rng(seed)
        chosen = [files[i] for i in rng.choice(len(files), size=min(sample, len(files)), replace=False)]
        for path in chosen:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Image.open(path) as img:  # header only, no pixel decode
                        widths.append(img.width)
                        heights.append(img.height)
            except Exception:  # a bad file is reported by load, not here
                continue
    if not widths:
        summary = "n/a" if not files else "no readable headers in the sample"
    else:
        w, h = np.array(widths), np.array(heights)
        summary = (f"width min/median/max {w.min()}/{int(np.median(w))}/{w.max()} px, "
                   f"height {h.min()}/{int(np.median(h))}/{h.max()} px (sample of {len(widths)})")
    return {"widths": widths, "heights": heights, "summary": summary}


def _inspect(path: str) -> int:
    index = index_medmnist(path) if str(path).endswith(".npz") else find_dataset(path)
    print(f"{index.root}  (layout: {index.layout})")
    for split, counts in index.counts().items():
        n = sum(counts.values())
        per = "  ".join(f"{c} {v:5d}" for c, v in counts.items())
        print(f"  {split:5s} {n:6d} images  {per}  patients {index.patients(split):5d}")
    if index.layout != "medmnist":
        for split in index.splits:
            print(f"  {split:5s} image size: {image_size_spread(index.split(split))['summary']}")
    print(f"problems ({len(index.problems)}):" if index.problems else "problems: none")
    for line in index.problems:
        print(f"  - {line}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.data inspect PATH`` / ``python -m core.data download``."""
    parser = argparse.ArgumentParser(prog="python -m core.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="counts, patients, image sizes and problems of a data set")
    p_inspect.add_argument("path", help="data set folder (or a MedMNIST .npz)")
    sub.add_parser("download", help=f"download {KAGGLE_DATASET} with kagglehub")
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            return _inspect(args.path)
        print(download_kaggle(progress=lambda msg: print(msg, file=sys.stderr)))
        return 0
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
