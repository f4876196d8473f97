"""The bundled real sample: where it lives, its citation, how it is rebuilt from the Kaggle set, and its integrity check.

The sample is a few dozen official test films per class and a small training subset of the
Kaggle "Chest X-Ray Images (Pneumonia)" set (Kermany, Zhang, Goldbaum 2018, CC BY 4.0),
downsized so that the whole folder stays under 10 MB and ships with the repository. It is
rebuilt deterministically by ``python -m core.datasets make-sample SRC DEST``: patients are
chosen in the order of a salted hash of their id, every film of a chosen patient is taken
(patients stay whole), and no patient id of the sample's train occurs in the official test
split. ``MANIFEST.csv`` beside the images lists each file with its sha256, so a missing or
damaged file is found by :func:`check_sample` without decoding anything.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from core.config.paths import REPO_ROOT
from core.data.datasets import CLASS_NAMES, DatasetError, ImageRecord, find_dataset

__all__ = [
    "REPO_ROOT",
    "SAMPLE_DIR",
    "SAMPLE_CITATION",
    "SAMPLE_LICENCE",
    "SampleSpec",
    "SampleCheck",
    "sample_root",
    "make_sample",
    "check_sample",
    "portable_path",
    "local_path",
]


SAMPLE_DIR = "sample/chest_xray"  # relative to the repository
MANIFEST = "MANIFEST.csv"
README = "README.md"
_SALT = "cxr-studio-sample-v1"
SAMPLE_CITATION = (
    "Kermany, D.; Zhang, K.; Goldbaum, M. (2018). Labeled Optical Coherence Tomography (OCT) and Chest "
    "X-Ray Images for Classification. Mendeley Data, v2. doi:10.17632/rscbjbr9sj.2. Paper: Kermany, D. S. "
    "et al. (2018). Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning. "
    "Cell 172(5):1122-1131.e9. doi:10.1016/j.cell.2018.02.010."
)
SAMPLE_LICENCE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
SAMPLE_CHANGES = "downsized (grayscale, Lanczos, aspect ratio kept) and re-encoded as JPEG; file names unchanged"


def sample_root() -> Path:
    """The bundled sample's folder: ``$CXR_STUDIO_SAMPLE`` if set, else ``sample/chest_xray`` in the repository."""
    env = os.environ.get("CXR_STUDIO_SAMPLE")
    return Path(env).expanduser().absolute() if env else REPO_ROOT / SAMPLE_DIR


# --------------------------------------------------------------------------- paths saved in run folders


def portable_path(path: str | Path) -> str:
    """A data path as a run folder saves it: relative to the repository when inside it (POSIX), else unchanged.

    A run trained on the bundled sample, such as a starter model shipped in ``models/``, then
    finds its images on any clone, wherever the repository lies.
    """
    text = str(path)
    if "::" in text or not os.path.isabs(text):
        return text
    resolved = Path(text).resolve()
    return resolved.relative_to(REPO_ROOT).as_posix() if resolved.is_relative_to(REPO_ROOT) else text


def local_path(saved: str) -> str:
    """The path on this machine of a path saved by :func:`portable_path` (relative = inside the repository)."""
    if not saved or "::" in saved or os.path.isabs(saved):
        return saved
    return os.path.join(str(REPO_ROOT), *saved.split("/"))


# --------------------------------------------------------------------------- building the sample


@dataclass(frozen=True)
class SampleSpec:
    """How many films, and how small.

    The defaults give about 9 MB: 40+ test films per class at up to 896 px (enough to zoom in),
    and 160+ training films per class at up to 288 px (the quick preset trains at 224 px).
    """

    test_per_class: int = 40
    train_per_class: int = 160
    test_longest_side: int = 896
    train_longest_side: int = 288
    test_quality: int = 82
    train_quality: int = 85


def _rank(patient: str) -> str:
    return hashlib.sha256(f"{_SALT}|{patient}".encode()).hexdigest()


def _choose(records: list[ImageRecord], per_class: int, exclude: set[str] = frozenset()) -> list[ImageRecord]:
    """Whole patients in salted-hash order, per class, until each class has ``per_class`` films."""
    by_patient: dict[tuple[int, str], list[ImageRecord]] = defaultdict(list)
    for r in records:
        if r.patient not in exclude:
            by_patient[(r.label, r.patient)].append(r)
    chosen: list[ImageRecord] = []
    for label in (0, 1):
        patients = sorted((p for (y, p) in by_patient if y == label), key=_rank)
        count = 0
        for patient in patients:
            if count >= per_class:
                break
            films = sorted(by_patient[(label, patient)], key=lambda r: Path(r.path).name)
            chosen += films
            count += len(films)
        if count < per_class:
            raise DatasetError(f"only {count} {CLASS_NAMES[label]} films available for the sample; {per_class} asked")
    return chosen


def _downsize(path: str, longest: int, quality: int) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        original = img.size
        gray = img.convert("L")
        gray.thumbnail((longest, longest), Image.LANCZOS)  # never upscales
        buffer = io.BytesIO()
        gray.save(buffer, "JPEG", quality=quality, optimize=True)
        return buffer.getvalue(), gray.size, original


def _readme(counts: dict[str, dict[str, int]], patients: dict[str, int], spec: SampleSpec, total_bytes: int,
            train_from: str) -> str:
    rows = "\n".join(f"| {split} | {c['NORMAL']} | {c['PNEUMONIA']} | {patients[split]} |" for split, c in counts.items())
    return f"""# Bundled real sample of the Kaggle chest X-ray set

Real pediatric chest radiographs, a small subset of:

> {SAMPLE_CITATION}

Licence: {SAMPLE_LICENCE}. The layout and split follow Paul Mooney's Kaggle copy,
"Chest X-Ray Images (Pneumonia)" (`chest_xray/{{train,val,test}}/{{NORMAL,PNEUMONIA}}`).

**What was changed:** {SAMPLE_CHANGES}. Test films: longest side at most
{spec.test_longest_side} px, JPEG quality {spec.test_quality}, from the official test originals.
Train films: longest side at most {spec.train_longest_side} px, JPEG quality {spec.train_quality},
from {train_from}. Nothing else was altered; no film was cropped or edited.

| split | NORMAL | PNEUMONIA | patients |
|---|---:|---:|---:|
{rows}

Total: {total_bytes / 1e6:.1f} MB. Validation is carved out of `train` by patient when a run
trains. The films were chosen deterministically by `python -m core.datasets make-sample SRC DEST`
(whole patients, in the order of a salted hash of the patient id); no patient id of `train`
occurs in the official test split. `MANIFEST.csv` lists every file with its patient id, its
sha256 and the size of the file it was made from.

For research and education only — not for diagnosis.
"""


@dataclass
class SampleBuild:
    """What :func:`make_sample` wrote."""

    root: Path
    counts: dict[str, dict[str, int]]
    patients: dict[str, int]
    total_bytes: int


def make_sample(src: str | Path, dest: str | Path, train_from: str | Path | None = None,
                spec: SampleSpec = SampleSpec()) -> SampleBuild:
    """Build the bundled sample from a Kaggle-layout folder (deterministic: same source, same files).

    Args:
        src: the Kaggle ``chest_xray`` folder (``train`` and ``test`` with ``NORMAL``/``PNEUMONIA``).
        dest: the sample folder to write (``sample/chest_xray``); it must not hold images yet.
        train_from: optional folder of ``NORMAL``/``PNEUMONIA`` class folders with higher-resolution
            copies of training films under their official names; only films found there are used.
        spec: counts, sizes and JPEG qualities.

    Raises:
        DatasetError: the source lacks a split or enough films, or ``dest`` already holds images.
    """
    index = find_dataset(src)
    test, train = index.split("test"), index.split("train")
    if not test or not train:
        raise DatasetError(f"{index.root} needs both train and test splits (the Kaggle layout)")
    readme_source = "the official training files"
    if train_from is not None:
        better = {Path(r.path).name: r.path for r in find_dataset(train_from).records}
        train = [ImageRecord(better[Path(r.path).name], r.label, r.split, r.patient, r.subtype)
                 for r in train if Path(r.path).name in better]
        readme_source = f"copies of the official training files in `{Path(train_from).name}`"
    dest = Path(dest)
    if dest.exists() and any(dest.rglob("*.jpeg")):
        raise DatasetError(f"{dest} already holds images; remove them first")
    chosen_test = _choose(test, spec.test_per_class)
    official_test_ids = {r.patient for r in test}
    chosen_train = _choose(train, spec.train_per_class, exclude=official_test_ids)

    rows, total = [], 0
    for records, split, longest, quality in ((chosen_train, "train", spec.train_longest_side, spec.train_quality),
                                             (chosen_test, "test", spec.test_longest_side, spec.test_quality)):
        for r in records:
            data, size, original = _downsize(r.path, longest, quality)
            name = Path(r.path).name
            target = dest / split / CLASS_NAMES[r.label] / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            total += len(data)
            rows.append({"split": split, "class": CLASS_NAMES[r.label], "file": name, "patient": r.patient,
                         "subtype": r.subtype or "", "width": size[0], "height": size[1],
                         "source_width": original[0], "source_height": original[1],
                         "sha256": hashlib.sha256(data).hexdigest()})
    with open(dest / MANIFEST, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    counts = {split: {c: sum(1 for row in rows if row["split"] == split and row["class"] == c) for c in CLASS_NAMES}
              for split in ("train", "test")}
    patients = {split: len({(row["class"], row["patient"]) for row in rows if row["split"] == split})
                for split in ("train", "test")}
    (dest / README).write_text(_readme(counts, patients, spec, total, readme_source))
    return SampleBuild(dest, counts, patients, total)


# --------------------------------------------------------------------------- checking it


@dataclass
class SampleCheck:
    """The bundled sample as found: present or not, and which files are missing or altered."""

    root: Path
    present: bool
    files: int = 0
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # content differs from MANIFEST.csv
    problem: str | None = None  # why the sample cannot be used at all

    @property
    def ok(self) -> bool:
        return self.present and not self.problem and not self.missing and not self.damaged

    def summary(self) -> str:
        """One line a user reads."""
        if self.problem:
            return self.problem
        if self.ok:
            return f"all {self.files} films of the bundled sample are present and intact"
        parts = [f"{len(items)} {what}" for what, items in (("missing", self.missing), ("damaged or altered", self.damaged))
                 if items]
        shown = ", ".join([*self.missing, *self.damaged][:5])
        return (f"the bundled sample has {' and '.join(parts)} of {self.files} films ({shown}); those films are "
                "left out. Restore them with `git checkout -- sample/`.")


def check_sample(root: str | Path | None = None) -> SampleCheck:
    """Compare the sample folder with its ``MANIFEST.csv`` (existence and sha256; nothing is decoded)."""
    root = Path(root) if root is not None else sample_root()
    manifest = root / MANIFEST
    if not root.is_dir():
        return SampleCheck(root, False, problem=f"the bundled real sample is missing (no folder {root})")
    try:
        with open(manifest, newline="") as handle:
            rows = list(csv.DictReader(handle))
        files = [(f"{row['split']}/{row['class']}/{row['file']}", row["sha256"]) for row in rows]
    except (OSError, KeyError, csv.Error) as exc:
        return SampleCheck(root, True, problem=f"the bundled sample's {MANIFEST} cannot be read ({exc})")
    check = SampleCheck(root, True, files=len(files))
    for rel, expected in files:
        try:
            actual = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        except FileNotFoundError:
            check.missing.append(rel)
            continue
        except OSError:
            actual = ""
        if actual != expected:
            check.damaged.append(rel)
    if len(check.missing) + len(check.damaged) == len(files):
        check.problem = f"none of the {len(files)} films of the bundled sample in {root} is usable"
    return check
