"""Tests for core.splits: patient-grouped splits and the split manifest saved with a run."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from image_samples import touch_images

from core.config import DataConfig
from core.data.datasets import CLASS_NAMES, DatasetError, ImageRecord, parse_patient
from core.data.splits import MANIFEST_NAME, folder_changes, patient_split, resolve_splits, run_splits


@pytest.mark.realdata
def test_patient_split_on_real_names_is_grouped_and_stratified(real_data):
    records = []
    for label, cls in enumerate(CLASS_NAMES):
        for name in os.listdir(real_data / "train" / cls):
            records.append(ImageRecord(name, label, "train", *parse_patient(name)))
    train, val = patient_split(records, 0.15, seed=3)
    assert len(train) + len(val) == len(records) == 5216
    assert not {r.patient for r in train} & {r.patient for r in val}
    assert {r.split for r in val} == {"val"}
    assert 0.10 < len(val) / len(records) < 0.20
    share = lambda recs: sum(r.label for r in recs) / len(recs)  # noqa: E731
    assert abs(share(val) - share(records)) < 0.03
    assert patient_split(records, 0.15, seed=3)[1] == val  # deterministic



# --------------------------------------------------------------------------- resolve_splits


def test_resolve_splits_demo(cache_dir):
    cfg = DataConfig(source="demo", demo_images_per_class=24, max_images_per_class=6, max_test_images_per_class=3)
    splits = resolve_splits(cfg, seed=0, cache_dir=cache_dir)
    assert "synthetic" in splits.source
    assert splits.counts()["train"] == {"NORMAL": 6, "PNEUMONIA": 6}
    assert splits.counts()["test"] == {"NORMAL": 3, "PNEUMONIA": 3}
    train_p, val_p, test_p = ({r.patient for r in s} for s in (splits.train, splits.val, splits.test))
    assert not (train_p & val_p) and not (train_p & test_p) and not (val_p & test_p)
    assert {r.split for r in splits.val} == {"val"} and {r.split for r in splits.test} == {"test"}
    official = resolve_splits(DataConfig(source="demo", demo_images_per_class=24, validation="official"), 0, cache_dir)
    assert {r.split for r in official.val} == {"val"} and len(official.val) >= 8


def test_resolve_splits_class_folders_carves_a_test_split(tmp_path):
    touch_images(tmp_path / "NORMAL", [f"IM-{k:04d}-0001.png" for k in range(20)])
    touch_images(tmp_path / "PNEUMONIA", [f"person{k}_virus_{k}.png" for k in range(20)])
    splits = resolve_splits(DataConfig(source="folder", path=str(tmp_path), val_fraction=0.2), seed=0)
    assert "test" in splits.source and "held out" in splits.source
    assert len(splits.test) > 0 and len(splits.val) > 0
    assert len(splits.train) + len(splits.val) + len(splits.test) == 40
    paths = [{r.path for r in s} for s in (splits.train, splits.val, splits.test)]
    assert not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    with pytest.raises(DatasetError, match="official"):
        resolve_splits(DataConfig(source="folder", path=str(tmp_path), validation="official"), seed=0)


# --------------------------------------------------------------------------- the manifest saved with a run


def _folder_run(tmp_path, seed: int = 0):
    """A class-folder data set of 20 patients per class and the config of a run on it."""
    from core.config import RunConfig

    touch_images(tmp_path / "data" / "NORMAL", [f"IM-{k:04d}-0001.png" for k in range(20)])
    touch_images(tmp_path / "data" / "PNEUMONIA", [f"person{k}_virus_{k}.png" for k in range(20)])
    config = RunConfig(data=DataConfig(source="folder", path=str(tmp_path / "data"), val_fraction=0.2,
                                       max_images_per_class=8))
    config.train.seed = seed
    return config, tmp_path / "run"


def test_run_splits_saves_every_image_once_and_reads_it_back(tmp_path):
    config, run_path = _folder_run(tmp_path)
    run_path.mkdir()
    first = run_splits(config, run_path)
    manifest = json.loads((run_path / MANIFEST_NAME).read_text())
    rows = manifest["images"]
    assert len(rows) == 40  # the images the run leaves out are listed too, as "unused"
    assert {row["split"] for row in rows} == {"train", "val", "test", "unused"}
    assert set(rows[0]) >= {"file", "split", "label", "patient", "sha256"}
    some = next(row for row in rows if row["split"] == "test")
    on_disk = (tmp_path / "data" / some["file"]).read_bytes()
    assert some["sha256"] == hashlib.sha256(on_disk).hexdigest()
    assert not Path(some["file"]).is_absolute()

    # A resumed run with other settings, and a folder that gained a file, still gets the saved splits.
    written = (run_path / MANIFEST_NAME).read_bytes()
    touch_images(tmp_path / "data" / "NORMAL", ["IM-0999-0001.png"])
    config.train.seed = 7
    again = run_splits(config, run_path)
    assert (run_path / MANIFEST_NAME).read_bytes() == written  # read, never rewritten
    for name in ("train", "val", "test"):
        assert again.split(name) == first.split(name)
    assert first.test and not {r.patient for r in first.test} & {r.patient for r in first.train}


def test_folder_changes_name_missing_changed_and_added_files(tmp_path):
    config, run_path = _folder_run(tmp_path)
    splits = run_splits(config, run_path)
    gone, edited = splits.test[0].path, splits.test[1].path
    os.remove(gone)
    Path(edited).write_bytes(Path(edited).read_bytes() + b"\0")
    touch_images(tmp_path / "data" / "PNEUMONIA", ["person99_virus_99.png"])
    changes = folder_changes(run_splits(config, run_path), check=("test",))
    relative = lambda path: Path(path).relative_to(tmp_path / "data").as_posix()  # noqa: E731
    assert changes.missing == [relative(gone)]
    assert changes.changed == [relative(edited)]
    assert changes.added == ["PNEUMONIA/person99_virus_99.png"]
    assert "1 missing, 1 changed, 1 added" in changes.summary()
    assert "missing" in changes.unusable[gone] and "sha256" in changes.unusable[edited]
    assert not folder_changes(run_splits(config, run_path), check=("train",)).missing  # only test was touched


def test_a_run_without_a_manifest_re_derives_its_splits_with_a_note(tmp_path):
    config, run_path = _folder_run(tmp_path)
    run_path.mkdir()
    splits = run_splits(config, run_path, create=False)
    assert "re-derived" in splits.note and not splits.hashes
    assert not (run_path / MANIFEST_NAME).exists()


def test_medmnist_manifest_hashes_the_arrays(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    np.savez(tmp_path / "tiny.npz", **arrays)
    from core.config import RunConfig

    config = RunConfig(data=DataConfig(source="medmnist", path=str(tmp_path / "tiny.npz")))
    splits = run_splits(config, tmp_path / "run")
    rows = json.loads((tmp_path / "run" / MANIFEST_NAME).read_text())["images"]
    assert {row["file"] for row in rows if row["split"] == "test"} == {f"test::{i}" for i in range(6)}
    third = splits.test[3]
    assert third.path.endswith("tiny.npz::test::3")
    assert splits.hashes[third.path] == hashlib.sha256(arrays["test_images"][3].tobytes()).hexdigest()
    assert not folder_changes(splits).any
