"""Restaging a squashed training copy: each film gets its width back, and validation comes from originals.

The staged Kaggle training copy was squashed to 224 × 224 before it reached us, so every film carries its
original width/height ratio as a horizontal squeeze of the anatomy, and that ratio alone tells the classes
apart (NORMAL films are squarer; ROC AUC 0.86 on the 1,747 films whose originals exist). This module writes a
new data set folder (the Kaggle layout, so any run can use it with ``data.validation = "official"``):

- ``train/``: every staged training film of the training patients, stretched back to its original ratio: the
  film's own ratio where an originals manifest lists it (``orig_width``, ``orig_height``), else its class's
  median ratio in that manifest. With the class median the leftover distortion (median / true ratio) is centred
  on 1 in both classes, so a squeeze no longer tells the class. Written as PNG: no further JPEG generation.
- ``val/``: the validation patients' original files (longest side 512, their real shape), copied byte for byte;
  validation films without an original are left out. Validation thus sees films the way new films arrive.
- ``test/``: a link to the official test folder (original bytes, untouched).

The validation patients are :func:`core.data.splits.patient_split` of the staged train split with the same
fraction and seed a run would use, so a run trained on the staged copy with ``data.split_seed`` = that seed
has the same validation patients, and its figures can be put beside a run on the restaged copy.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from core.data.datasets import CLASS_NAMES, DatasetError, ImageRecord, find_dataset
from core.data.images import ImageLoadError, read_image
from core.data.splits import patient_split

__all__ = ["OriginalSizes", "read_original_sizes", "unsqueezed", "RestageReport", "restage", "main"]

PROVENANCE_FILE = "RESTAGED.json"


@dataclass(frozen=True)
class OriginalSizes:
    """An originals manifest: each film's original width/height ratio by (class name, file name), and the class medians."""

    ratios: dict[tuple[str, str], float]
    files: dict[tuple[str, str], Path]
    class_median: dict[str, float]


def read_original_sizes(folder: str | Path) -> OriginalSizes:
    """``<folder>/MANIFEST.csv`` (columns ``class``, ``filename``, ``orig_width``, ``orig_height``) and its files.

    Raises:
        DatasetError: no manifest, or one without those columns or without a class.
    """
    folder = Path(folder)
    manifest = folder / "MANIFEST.csv"
    try:
        with manifest.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        ratios = {(r["class"], r["filename"]): int(r["orig_width"]) / int(r["orig_height"]) for r in rows}
    except FileNotFoundError:
        raise DatasetError(f"no MANIFEST.csv in {folder}: the originals folder needs one (class, filename, "
                           "orig_width, orig_height)") from None
    except (KeyError, ValueError, ZeroDivisionError, csv.Error) as exc:
        raise DatasetError(f"{manifest} is not an originals manifest ({type(exc).__name__}: {exc})") from None
    medians = {name: statistics.median(r for (c, _), r in ratios.items() if c == name)
               for name in {c for c, _ in ratios}}
    missing = [name for name in CLASS_NAMES if name not in medians]
    if missing:
        raise DatasetError(f"{manifest} lists no {' or '.join(missing)} film; a class median needs both classes")
    files = {key: folder / key[0] / key[1] for key in ratios}
    return OriginalSizes(ratios, files, medians)


def unsqueezed(gray: np.ndarray, ratio: float) -> np.ndarray:
    """A square (squashed) film stretched back to ``ratio`` = width / height, never shrunk; other films unchanged."""
    height, width = gray.shape[:2]
    if height != width or ratio <= 0:
        return gray
    size = (round(width * ratio), height) if ratio >= 1 else (width, round(height / ratio))
    return np.asarray(Image.fromarray(gray, mode="L").resize(size, Image.BICUBIC), dtype=np.uint8)


@dataclass
class RestageReport:
    """What :func:`restage` wrote, in numbers, saved as ``RESTAGED.json`` in the new folder."""

    source: str
    originals: str
    val_fraction: float
    split_seed: int
    train: dict[str, int] = field(default_factory=dict)  # per class
    train_own_ratio: dict[str, int] = field(default_factory=dict)  # per class: un-squeezed by the film's own ratio
    class_median_ratio: dict[str, float] = field(default_factory=dict)
    val: dict[str, int] = field(default_factory=dict)
    val_without_original: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable staged films

    def summary(self) -> str:
        own = sum(self.train_own_ratio.values())
        return (f"train {sum(self.train.values())} films ({own} by their own ratio, the rest by their class median "
                + ", ".join(f"{k} {v:.2f}" for k, v in sorted(self.class_median_ratio.items()))
                + f"); val {sum(self.val.values())} originals ({self.val_without_original} validation films have "
                f"none and were left out); {len(self.skipped)} unreadable")


def _class_name(record: ImageRecord) -> str:
    return CLASS_NAMES[record.label]


def restage(kaggle_root: str | Path, originals: str | Path, out: str | Path, *, val_fraction: float = 0.15,
            split_seed: int = 42, progress: Callable[[int, int], None] | None = None) -> RestageReport:
    """Write the restaged copy of a Kaggle-layout data set to ``out`` (see the module's docstring).

    ``out`` must not exist yet or be a folder this function wrote (it is then replaced), so nothing else is lost.

    Raises:
        DatasetError: the data set or the originals cannot be read, or ``out`` is another folder.
    """
    index = find_dataset(kaggle_root)
    sizes = read_original_sizes(originals)
    out = Path(out)
    if out.exists():
        if not (out / PROVENANCE_FILE).is_file():
            raise DatasetError(f"{out} exists and was not written by restage; choose a new folder")
        shutil.rmtree(out)
    pool = index.split("train")
    test = index.split("test")
    if not pool or not test:
        raise DatasetError(f"{kaggle_root} needs train and test splits (Kaggle layout)")
    train, val = patient_split(pool, val_fraction, split_seed)
    report = RestageReport(str(kaggle_root), str(originals), val_fraction, split_seed,
                           class_median_ratio={k: round(v, 4) for k, v in sorted(sizes.class_median.items())})
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    for record in val:
        key = (_class_name(record), Path(record.path).name)
        if key not in sizes.files or not sizes.files[key].is_file():
            report.val_without_original += 1
            continue
        target = tmp / "val" / key[0] / key[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sizes.files[key], target)
        report.val[key[0]] = report.val.get(key[0], 0) + 1
    for done, record in enumerate(train, start=1):
        name = _class_name(record)
        key = (name, Path(record.path).name)
        try:
            gray = read_image(record.path)
        except ImageLoadError as exc:
            report.skipped.append((record.path, str(exc)))
            continue
        ratio = sizes.ratios.get(key, sizes.class_median[name])
        report.train_own_ratio[name] = report.train_own_ratio.get(name, 0) + int(key in sizes.ratios)
        target = tmp / "train" / name / (Path(record.path).stem + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(unsqueezed(gray, ratio), mode="L").save(target)
        report.train[name] = report.train.get(name, 0) + 1
        if progress and (done == len(train) or done % 256 == 0):
            progress(done, len(train))
    test_dir = Path(index.root) / "test"
    os.symlink(os.path.abspath(test_dir), tmp / "test", target_is_directory=True)
    (tmp / PROVENANCE_FILE).write_text(json.dumps(asdict(report), indent=1))
    os.replace(tmp, out)  # the folder appears whole or not at all
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.data.restage", description=__doc__.splitlines()[0])
    parser.add_argument("kaggle_root", help="a Kaggle-layout data set whose train split was squashed to squares")
    parser.add_argument("originals", help="a folder of originals with MANIFEST.csv (orig_width, orig_height)")
    parser.add_argument("out", help="the new folder (Kaggle layout)")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--split-seed", type=int, default=42)
    args = parser.parse_args(argv)
    try:
        report = restage(args.kaggle_root, args.originals, args.out, val_fraction=args.val_fraction,
                         split_seed=args.split_seed,
                         progress=lambda d, t: print(f"\r{d}/{t} training films", end="", file=sys.stderr))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\n{args.out}: {report.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
