"""The restaged copy: squashed training films get their shape back, validation comes from originals, nothing else is lost."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import DataConfig
from core.data.datasets import DatasetError, find_dataset
from core.data.restage import read_original_sizes, restage, unsqueezed
from core.data.splits import patient_split, resolve_splits


def _film(path: Path, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8), mode="L").save(path)


@pytest.fixture()
def staged(tmp_path: Path) -> tuple[Path, Path]:
    """A Kaggle-layout set squashed to 40 x 40 (12 patients a class) and originals of half of its films."""
    root, originals = tmp_path / "kaggle", tmp_path / "originals"
    rows = []
    for c, (name, stem) in enumerate((("NORMAL", "IM-{:04d}-0001.jpeg"), ("PNEUMONIA", "person{}_bacteria_1.jpeg"))):
        for i in range(12):
            file = stem.format(i + 1)
            _film(root / "train" / name / file, (40, 40), 100 * c + i)
            if i % 2 == 0:  # an original: NORMAL films 1.2 wide, PNEUMONIA 1.6, with one odd one per class
                ratio = (1.2, 1.6)[c] if i else 2.0
                _film(originals / name / file, (round(60 * ratio), 60), 500 + 100 * c + i)
                rows.append({"class": name, "filename": file, "orig_width": round(600 * ratio), "orig_height": 600})
        for i in range(3):
            _film(root / "test" / name / f"test-{c}-{i}.jpeg", (50, 40), 900 + 10 * c + i)
    with (originals / "MANIFEST.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["class", "filename", "orig_width", "orig_height"])
        writer.writeheader()
        writer.writerows(rows)
    return root, originals


def test_a_square_film_is_stretched_back_to_its_ratio_and_other_films_are_left_alone():
    square = np.zeros((40, 40), np.uint8)
    assert unsqueezed(square, 1.5).shape == (40, 60)  # wider than tall: the width comes back
    assert unsqueezed(square, 0.8).shape == (50, 40)  # taller than wide: the height comes back
    assert unsqueezed(np.zeros((40, 50), np.uint8), 1.5).shape == (40, 50)  # not squashed: unchanged


def test_restaged_training_films_have_their_own_ratio_or_their_class_median(staged, tmp_path):
    root, originals = staged
    out = tmp_path / "restaged"
    report = restage(root, originals, out, val_fraction=0.25, split_seed=7)
    sizes = read_original_sizes(originals)
    assert sizes.class_median == {"NORMAL": 1.2, "PNEUMONIA": 1.6}  # the odd 2.0 films do not move a median of 6
    train, val = patient_split(find_dataset(root).split("train"), 0.25, 7)
    for record in train:
        name = ("NORMAL", "PNEUMONIA")[record.label]
        file = Path(record.path).name
        with Image.open(out / "train" / name / (Path(file).stem + ".png")) as img:
            ratio = sizes.ratios.get((name, file), sizes.class_median[name])
            assert img.size == (round(40 * ratio), 40)
    assert sum(report.train.values()) == len(train)
    assert report.train_own_ratio == {n: sum(1 for r in train if ("NORMAL", "PNEUMONIA")[r.label] == n
                                             and (n, Path(r.path).name) in sizes.ratios) for n in report.train}


def test_validation_holds_only_the_validation_patients_originals_byte_for_byte(staged, tmp_path):
    root, originals = staged
    out = tmp_path / "restaged"
    report = restage(root, originals, out, val_fraction=0.25, split_seed=7)
    train, val = patient_split(find_dataset(root).split("train"), 0.25, 7)
    val_files = sorted(p.relative_to(out / "val").as_posix() for p in (out / "val").rglob("*.jpeg"))
    expected = sorted(f"{('NORMAL', 'PNEUMONIA')[r.label]}/{Path(r.path).name}" for r in val
                      if (originals / ("NORMAL", "PNEUMONIA")[r.label] / Path(r.path).name).is_file())
    assert val_files == expected and val_files
    for file in val_files:
        assert (out / "val" / file).read_bytes() == (originals / file).read_bytes()
    assert report.val_without_original == len(val) - len(expected)
    # no validation patient trains
    restaged_train = find_dataset(out).split("train")
    assert not {r.patient for r in restaged_train} & {r.patient for r in val}


def test_a_run_on_the_restaged_copy_validates_on_originals_and_tests_on_the_untouched_test_split(staged, tmp_path):
    root, originals = staged
    out = tmp_path / "restaged"
    restage(root, originals, out, val_fraction=0.25, split_seed=7)
    splits = resolve_splits(DataConfig(source="folder", path=str(out), validation="official"), seed=1)
    assert {Path(r.path).suffix for r in splits.train} == {".png"}
    assert {Path(r.path).suffix for r in splits.val} == {".jpeg"}
    assert sorted(Path(r.path).read_bytes() for r in splits.test) == sorted(
        p.read_bytes() for p in (root / "test").rglob("*.jpeg"))


def test_restage_never_overwrites_a_folder_it_did_not_write_and_replaces_its_own(staged, tmp_path):
    root, originals = staged
    foreign = tmp_path / "mine"
    (foreign / "keep.txt").parent.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(DatasetError, match="not written by restage"):
        restage(root, originals, foreign)
    assert (foreign / "keep.txt").read_text() == "precious"
    out = tmp_path / "restaged"
    first = restage(root, originals, out, val_fraction=0.25, split_seed=7)
    again = restage(root, originals, out, val_fraction=0.25, split_seed=7)
    assert again.train == first.train and not (tmp_path / "restaged.partial").exists()


def test_originals_without_a_manifest_or_with_one_class_get_a_clear_error(staged, tmp_path):
    root, originals = staged
    (originals / "MANIFEST.csv").rename(originals / "other.csv")
    with pytest.raises(DatasetError, match="no MANIFEST.csv"):
        restage(root, originals, tmp_path / "out")
    (originals / "MANIFEST.csv").write_text("class,filename,orig_width,orig_height\nNORMAL,a.jpeg,10,8\n")
    with pytest.raises(DatasetError, match="no PNEUMONIA film"):
        restage(root, originals, tmp_path / "out")
    assert not (tmp_path / "out").exists()
