"""The ``cxr-data`` / ``python -m core.datasets`` command: inspect a data set, download the Kaggle set, rebuild the bundled sample."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from core.data.datasets import KAGGLE_DATASET, DatasetError, download_kaggle, index_path
from core.data.images import image_size_spread
from core.data.sample import make_sample

__all__ = ["main"]



def _inspect(path: str) -> int:
    index = index_path(path)
    print(f"{index.root}  (layout: {index.layout})")
    for split, counts in index.counts().items():
        n = sum(counts.values())
        per = "  ".join(f"{c} {v:5d}" for c, v in counts.items())
        print(f"  {split:5s} {n:6d} images  {per}  patients {index.patients(split):5d}")
    if index.layout != "medmnist":
        for split in index.splits:
            print(f"  {split:5s} image size: {image_size_spread([r.path for r in index.split(split)])['summary']}")
    print(f"problems ({len(index.problems)}):" if index.problems else "problems: none")
    for line in index.problems:
        print(f"  - {line}")
    return 0


def _make_sample(src: str, dest: str, train_from: str | None) -> int:
    built = make_sample(src, dest, train_from)
    for split, counts in built.counts.items():
        print(f"  {split:5s} NORMAL {counts['NORMAL']:4d}  PNEUMONIA {counts['PNEUMONIA']:4d}  "
              f"patients {built.patients[split]:4d}")
    print(f"wrote {built.root} ({built.total_bytes / 1e6:.1f} MB) with MANIFEST.csv and README.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.datasets inspect PATH`` / ``download`` / ``make-sample SRC DEST``."""
    parser = argparse.ArgumentParser(prog="python -m core.datasets", description="Inspect, download or sample the chest X-ray data sets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="counts, patients, image sizes and problems of a data set")
    p_inspect.add_argument("path", help="data set folder (or a MedMNIST .npz)")
    sub.add_parser("download", help=f"download {KAGGLE_DATASET} with kagglehub")
    p_sample = sub.add_parser("make-sample", help="rebuild the bundled real sample from a Kaggle-layout folder")
    p_sample.add_argument("src", help="the Kaggle chest_xray folder (train/ and test/)")
    p_sample.add_argument("dest", help="where to write it, e.g. sample/chest_xray")
    p_sample.add_argument("--train-from", help="class folders with higher-resolution copies of the training films")
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            return _inspect(args.path)
        if args.command == "make-sample":
            return _make_sample(args.src, args.dest, args.train_from)
        print(download_kaggle(progress=lambda msg: print(msg, file=sys.stderr)))
        return 0
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
