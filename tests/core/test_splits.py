"""Tests for core.splits: patient-grouped splits and the split manifest saved with a run."""
from __future__ import annotations

import os

import pytest
from image_samples import touch_images

from core.config import DataConfig
from core.datasets import CLASS_NAMES, DatasetError, ImageRecord, parse_patient
from core.splits import patient_split, resolve_splits


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
