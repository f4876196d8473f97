"""Tests for core.datasets: patient ids, data set discovery, the Kaggle download and the inspect CLI."""
from __future__ import annotations

import pytest
from image_samples import touch_images

from core.data import datasets as datasets_mod
from core.jobs.commands import data as data_command
from core.data.datasets import DatasetError, find_dataset, parse_patient


# --------------------------------------------------------------------------- patient ids


@pytest.mark.parametrize("name, expected", [
    ("person1234_bacteria_3106.jpeg", ("person1234", "bacteria")),
    ("person56_virus_112.jpeg", ("person56", "virus")),
    ("IM-0115-0001.jpeg", ("IM-0115", None)),
    ("NORMAL2-IM-0381-0001.jpeg", ("NORMAL2-IM-0381", None)),
    ("IM-0640-0001-0001.jpeg", ("IM-0640", None)),
    ("scan_42.png", ("scan_42", None)),
    ("/some/dir/person7_virus_9.png", ("person7", "virus")),
])
def test_parse_patient(name, expected):
    assert parse_patient(name) == expected



# --------------------------------------------------------------------------- find_dataset


@pytest.mark.realdata
def test_find_dataset_real_kaggle_layout(real_data):
    index = find_dataset(real_data.parent)  # the parent holding chest_xray/ works too
    assert index.layout == "kaggle"
    assert index.counts() == {"train": {"NORMAL": 1341, "PNEUMONIA": 3875},
                              "val": {"NORMAL": 8, "PNEUMONIA": 8},
                              "test": {"NORMAL": 234, "PNEUMONIA": 390}}
    assert len(index.duplicates) == 30
    assert ["test/NORMAL/NORMAL2-IM-0095-0001.jpeg", "test/NORMAL/NORMAL2-IM-0096-0001.jpeg"] in index.duplicates
    assert any("person1372_bacteria_3503.jpeg" in p for p in index.problems)
    assert index.patients("test") < 624
    subtypes = {r.subtype for r in index.split("train") if r.label == 1}
    assert subtypes == {"bacteria", "virus"}



def test_find_dataset_class_folders_with_aliases_and_problems(tmp_path):
    touch_images(tmp_path / "normal", ["IM-0001-0001.png", "IM-0002-0001.png"])
    touch_images(tmp_path / "Pneumonia", ["person1_virus_1.png", "person2_bacteria_3.jpg"])
    (tmp_path / "normal" / "notes.txt").write_text("hi")
    (tmp_path / "normal" / ".DS_Store").write_bytes(b"x")
    touch_images(tmp_path / "Pneumonia" / "extra", ["a.png"])
    index = find_dataset(tmp_path)
    assert index.layout == "class_folders"
    assert index.counts() == {"train": {"NORMAL": 2, "PNEUMONIA": 2}}
    text = " | ".join(index.problems)
    assert "notes.txt" in text and "DS_Store" not in text
    assert "unexpected folder" in text


@pytest.mark.parametrize("setup, words", [
    ("missing", "not found"),
    ("empty", "empty"),
    ("one_class", "only class NORMAL"),
    ("loose_files", "no class folders"),
    ("wrong_subfolders", "no class folders"),
])
def test_find_dataset_bad_folders(tmp_path, setup, words):
    root = tmp_path / "data"
    if setup != "missing":
        root.mkdir()
    if setup == "one_class":
        touch_images(root / "NORMAL", ["a.png"])
    elif setup == "loose_files":
        touch_images(root, ["a.png", "b.png"])
    elif setup == "wrong_subfolders":
        touch_images(root / "cats", ["a.png"])
        touch_images(root / "dogs", ["b.png"])
    with pytest.raises(DatasetError) as err:
        find_dataset(root)
    message = str(err.value)
    assert words in message
    assert "{NORMAL,PNEUMONIA}" in message  # says what layout is expected



def test_download_kaggle_fails_fast_offline(monkeypatch):
    import sys
    import types

    downloads, said = [], []
    monkeypatch.setattr(datasets_mod, "_online", lambda *a, **k: "OSError: network unreachable")
    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(
        dataset_download=lambda *a, **k: downloads.append(a) or pytest.fail("kagglehub was asked to download")))
    with pytest.raises(DatasetError, match="offline") as err:
        datasets_mod.download_kaggle(progress=said.append)
    assert "network unreachable" in str(err.value)  # the probe's own reason is passed on
    assert downloads == [] and said == [], "offline, the download is never attempted (kagglehub would hang)"


def test_cli_inspect(tmp_path, capsys):
    touch_images(tmp_path / "NORMAL", ["IM-0001-0001.png", "IM-0001-0002.png"])
    touch_images(tmp_path / "PNEUMONIA", ["person1_virus_1.png"])
    assert data_command.main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "NORMAL" in out and "patients" in out and "64/64/64" in out
    assert data_command.main(["inspect", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
