"""The bundled real sample: its size, licence and patient separation, the deterministic rebuild, the integrity check."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from image_samples import touch_images
from PIL import Image

from core.config import DataConfig
from core.data.datasets import DatasetError, find_dataset, patient_overlap
from core.data.sample import SampleSpec, check_sample, local_path, make_sample, portable_path, sample_root
from core.data.splits import resolve_splits


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "MANIFEST.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_bundled_sample_is_small_cited_intact_and_keeps_patients_apart():
    root = sample_root()
    check = check_sample(root)
    assert check.ok, check.summary()
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) <= 10_000_000
    readme = (root / "README.md").read_text()
    for needed in ("doi:10.17632/rscbjbr9sj.2", "doi:10.1016/j.cell.2018.02.010", "CC BY 4.0", "downsized"):
        assert needed in readme
    index = find_dataset(root)
    counts = index.counts()
    assert set(counts) == {"train", "test"} and min(min(c.values()) for c in counts.values()) >= 24
    assert patient_overlap(index).shared == []
    # Official names: each file's patient id parses back from its name.
    by_path = {Path(r.path).name: r.patient for r in index.records}
    assert all(by_path[row["file"]] == row["patient"] for row in _manifest(root))


def _kaggle_tree(root: Path) -> None:
    for split, offset in (("train", 0), ("test", 100)):
        touch_images(root / split / "NORMAL", [f"IM-{offset + k:04d}-000{j}.jpeg" for k in range(6) for j in (1, 2)])
        touch_images(root / split / "PNEUMONIA", [f"person{offset + k}_bacteria_{k}.jpeg" for k in range(8)])
    touch_images(root / "train" / "PNEUMONIA", ["person100_virus_1.jpeg"])  # an id that also occurs in test


def test_make_sample_is_deterministic_keeps_patients_whole_and_out_of_test(tmp_path):
    _kaggle_tree(tmp_path / "src")
    spec = SampleSpec(test_per_class=3, train_per_class=4, test_longest_side=40, train_longest_side=24)
    first = make_sample(tmp_path / "src", tmp_path / "a", spec=spec)
    make_sample(tmp_path / "src", tmp_path / "b", spec=spec)
    assert _manifest(tmp_path / "a") == _manifest(tmp_path / "b")
    rows = _manifest(tmp_path / "a")
    normal_test = [r for r in rows if r["split"] == "test" and r["class"] == "NORMAL"]
    assert len(normal_test) == 4 and len({r["patient"] for r in normal_test}) == 2  # 2 films per patient, whole
    assert "person100" not in {r["patient"] for r in rows if r["split"] == "train"}
    assert first.counts["train"]["PNEUMONIA"] == 4
    with Image.open(tmp_path / "a" / "test" / "NORMAL" / normal_test[0]["file"]) as img:
        assert img.format == "JPEG" and img.mode == "L" and max(img.size) == 40
    assert check_sample(tmp_path / "a").ok
    with pytest.raises(DatasetError, match="already holds images"):
        make_sample(tmp_path / "src", tmp_path / "a", spec=spec)


def test_check_and_index_say_which_films_are_missing_or_damaged(tmp_path, monkeypatch):
    copy = tmp_path / "chest_xray"
    shutil.copytree(sample_root(), copy)
    rows = _manifest(copy)
    gone = copy / rows[0]["split"] / rows[0]["class"] / rows[0]["file"]
    broken = copy / rows[-1]["split"] / rows[-1]["class"] / rows[-1]["file"]
    gone.unlink()
    broken.write_bytes(broken.read_bytes()[:200])
    check = check_sample(copy)
    assert not check.ok and check.problem is None
    assert check.missing == [f"{rows[0]['split']}/{rows[0]['class']}/{rows[0]['file']}"]
    assert len(check.damaged) == 1 and "1 missing and 1 damaged" in check.summary()
    monkeypatch.setenv("CXR_STUDIO_SAMPLE", str(copy))
    splits = resolve_splits(DataConfig(source="sample"), 0)
    used = {Path(r.path).name for r in (*splits.train, *splits.val, *splits.test)}
    assert rows[0]["file"] not in used and rows[-1]["file"] not in used
    assert check.summary() in splits.index.problems
    assert check_sample(tmp_path / "nowhere").problem.startswith("the bundled real sample is missing")
    monkeypatch.setenv("CXR_STUDIO_SAMPLE", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="missing"):
        resolve_splits(DataConfig(source="sample"), 0)


def test_paths_inside_the_repository_are_saved_relative_to_it(tmp_path):
    inside = sample_root() / "test" / "NORMAL" / "x.jpeg"
    assert portable_path(inside) == "sample/chest_xray/test/NORMAL/x.jpeg"
    assert Path(local_path(portable_path(inside))) == inside
    outside = str(tmp_path / "y.jpeg")
    assert portable_path(outside) == outside and local_path(outside) == outside
    assert portable_path("a.npz::test::3") == "a.npz::test::3"


@pytest.mark.realdata
def test_make_sample_rebuilds_the_bundled_sample_from_the_kaggle_set(real_data, tmp_path):
    aspect = real_data.parent / "chest_xray_train_aspect512"
    if not aspect.is_dir():
        pytest.skip("chest_xray_train_aspect512 not present")
    make_sample(real_data, tmp_path / "rebuilt", train_from=aspect)
    assert _manifest(tmp_path / "rebuilt") == _manifest(sample_root())


@pytest.mark.realdata
def test_patient_ids_shared_by_train_and_test_in_the_kaggle_set(real_data):
    overlap = patient_overlap(find_dataset(real_data))
    assert (len(overlap.shared), overlap.test_patients) == (170, 427)
    assert overlap.differing == overlap.shared  # every shared id changes pneumonia type: other numbering schemes
    assert ("person1", "bacterial pneumonia", "viral pneumonia") in overlap.examples
