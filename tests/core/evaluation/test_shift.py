"""The shift report on real films: the shipped starter's model, with half of the bundled sample's training films standing
as a run's training split. Films of the same population are not told apart; blurred films are; the films it finds most
foreign are the altered ones; unreadable files, leaked training films, a small folder and absent training films are named."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from core.data.datasets import ImageRecord, find_dataset
from core.data.splits import Splits, write_manifest
from core.evaluation.shift import ShiftError, read_shift_report, shift_names, shift_report
from core.evaluation.shift_stats import domain_classifier, positive_rates, processing_signature, summarise
from core.store.runs import RunStore

REPO = Path(__file__).resolve().parents[3]
STARTER = REPO / "models" / "starter-efficientnet-lite0"
SAMPLE = REPO / "sample" / "chest_xray"
FILMS = 200  # per side at most: every film of a half is used


def _halves() -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The sample's training films split in two by patient, within each class (a seeded draw)."""
    records = find_dataset(SAMPLE).split("train")
    rng = np.random.default_rng(7)
    first, second = [], []
    for label in (0, 1):
        patients = sorted({r.patient for r in records if r.label == label})
        chosen = set(rng.permutation(patients)[: len(patients) // 2])
        for r in records:
            if r.label == label:
                (first if r.patient in chosen else second).append(r)
    return first, second


def _copy(records: list[ImageRecord], folder: Path, alter=None) -> Path:
    for r in records:
        target = folder / ("PNEUMONIA" if r.label else "NORMAL") / Path(r.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(r.path) as img:
            altered = alter(img.convert("L"), r) if alter is not None else None
        if altered is None:  # unaltered films keep their bytes
            shutil.copy(r.path, target)
        else:
            altered.save(target, quality=90)
    return folder


@pytest.fixture(scope="module")
def model():
    if not (STARTER / "model.keras").is_file():
        pytest.skip("the shipped starter is not in this checkout")
    from core.model.classifier import load_model

    return load_model(STARTER / "model.keras")


@pytest.fixture(scope="module")
def half_run(tmp_path_factory, model):
    """The starter's model and validation threshold, with the first half of the sample's training films as its split."""
    first, second = _halves()
    store = RunStore(tmp_path_factory.mktemp("store"))
    run_dir = store.root / "half-sample"
    run_dir.mkdir()
    for name in ("model.keras", "config.json", "threshold.json", "status.json"):
        shutil.copy(STARTER / name, run_dir / name)
    write_manifest(Splits(first, [], [], "first half of the sample's training films", root=str(SAMPLE),
                          layout="kaggle"), run_dir / "splits.json")
    return store.get("half-sample"), first, second


@pytest.fixture(scope="module")
def same_site(half_run, model, tmp_path_factory):
    """The other half of the sample as a new folder, with two unreadable files and one film the run trained on."""
    run, first, second = half_run
    folder = _copy(second, tmp_path_factory.mktemp("same") / "site")
    (folder / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "PNEUMONIA" / "notes.png").write_bytes(b"not an image at all")
    leaked = first[0]
    shutil.copy(leaked.path, folder / ("PNEUMONIA" if leaked.label else "NORMAL") / Path(leaked.path).name)
    return shift_report(run, folder, max_films=FILMS, model=model), leaked, len(second)


def test_two_halves_of_one_population_are_not_told_apart(same_site):
    report, _, n_second = same_site
    domain = report["domain"]
    assert domain["n_new"] == n_second and domain["n_train"] > 100
    low, high = domain["ci"]
    assert low < 0.5 < high and 0.35 < domain["auc"] < 0.65, domain["auc"]
    assert not report["recommend_site_profile"]
    assert "Nothing here calls for a site profile first" in report["reading"][-1]
    assert report["training"]["signature"] == []  # both halves stored alike
    assert json.loads(json.dumps(report)) == report  # JSON as it is


def test_unreadable_files_are_skipped_and_listed(same_site):
    report, _, _ = same_site
    assert {s["file"].rsplit("/", 1)[-1] for s in report["skipped"]} == {"broken.jpeg", "notes.png"}
    assert "2 unreadable files were skipped" in " ".join(report["reading"])


def test_a_film_the_run_trained_on_is_named_as_a_leak_and_left_out(same_site):
    report, leaked, _ = same_site
    name = Path(leaked.path).name
    assert [f.rsplit("/", 1)[-1] for f in report["leaks"]["identical"]] == [name]
    assert name not in {f["file"].rsplit("/", 1)[-1] for f in report["per_film"]}
    assert "1 films are byte-identical" in " ".join(report["reading"])


def test_the_report_is_saved_and_never_overwritten(half_run, same_site, model, tmp_path):
    run, first, second = half_run
    report, _, _ = same_site
    saved = read_shift_report(run, "site")
    assert saved["domain"]["auc"] == report["domain"]["auc"] and Path(report["path"]).name == "site.json"
    blurred = _copy(second, tmp_path / "site", lambda img, r: img.filter(ImageFilter.GaussianBlur(6)))
    again = shift_report(run, blurred, max_films=FILMS, model=model)
    assert Path(again["path"]).name == "site-2.json" and shift_names(run) == ["site", "site-2"]
    assert read_shift_report(run, "site")["domain"]["auc"] == report["domain"]["auc"]
    # Strongly blurred films of the same population are foreign to the model.
    assert again["domain"]["auc"] > 0.9 and again["domain"]["ci"][0] > 0.8
    assert again["recommend_site_profile"] and "Make a site profile before using this run there" in again["reading"][-1]


def test_the_films_it_finds_most_foreign_are_the_altered_ones(half_run, model, tmp_path):
    run, _, second = half_run
    # Through the plain image path (stretch, no preprocessing): the starter's body crop and CLAHE make an inverted
    # film less foreign to its features (AUC 0.83 measured with them), and this test is about the report's ranking.
    plain = RunStore(tmp_path / "store").root / "plain-half"
    shutil.copytree(run.path, plain, ignore=shutil.ignore_patterns("shifts"))
    config = json.loads((plain / "config.json").read_text())
    config["data"].update(resize_mode="stretch", field_of_view="full", remove_markers=False, intensity="none")
    (plain / "config.json").write_text(json.dumps(config))
    run = RunStore(tmp_path / "store").get("plain-half")
    # A sixth of the films, of both classes: the classifier learns what many new films share (with a handful,
    # about two per training fold, it cannot, and the handful does not stand out in its ranking either).
    inverted = {Path(r.path).name for r in second[::6]}

    def alter(img, record):
        return ImageOps.invert(img) if Path(record.path).name in inverted else None

    report = shift_report(run, _copy(second, tmp_path / "mixed", alter), max_films=FILMS, model=model, save=False)
    from sklearn.metrics import roc_auc_score

    films = report["per_film"]
    altered = [f["file"].rsplit("/", 1)[-1] in inverted for f in films]
    # They rank above the unaltered films (measured 0.90; a few inverted films fall in a fold whose model learned
    # less of them), and fill the top of the list beside the odd unaltered film (7 of 8 measured).
    assert roc_auc_score(altered, [f["domain_score"] for f in films]) > 0.85
    top = [f["file"].rsplit("/", 1)[-1] for f in report["domain"]["most_foreign"]]
    assert len(top) == 8 and sum(name in inverted for name in top) >= 6, (top, sorted(inverted))
    assert "path" not in report  # save=False: nothing written


def test_a_folder_with_too_few_films_gets_a_sentence(half_run, tmp_path):
    run, _, second = half_run
    folder = _copy(second[:5], tmp_path / "tiny")
    with pytest.raises(ShiftError, match="holds 5 image files; a shift report needs at least 20"):
        shift_report(run, folder)
    with pytest.raises(ShiftError, match="folder not found"):
        shift_report(run, tmp_path / "nowhere")


def test_a_run_whose_training_films_are_absent_says_so_and_copies_can_stand_in(model, tmp_path):
    store = RunStore(tmp_path / "store")
    shutil.copytree(STARTER, store.root / STARTER.name, ignore=shutil.ignore_patterns("shifts", "sites"))
    run = store.get(STARTER.name)
    manifest = json.loads((run.path / "splits.json").read_text())
    manifest["root"] = "../no-such-folder/chest_xray"
    (run.path / "splits.json").write_text(json.dumps(manifest))
    with pytest.raises(ShiftError, match="training films are not on this machine.*no-such-folder"):
        shift_report(run, SAMPLE / "test")
    # The sample's training films are downsized copies of Kaggle training films: matched by name, they stand in.
    report = shift_report(run, SAMPLE / "test", max_films=60, model=model, training_folder=SAMPLE / "train", save=False)
    assert report["training"]["source"] == "copies of the run's training films"
    assert report["training_side"].startswith("Training side: 60 copies of the run's training films, drawn at random")
    assert "found by file name in sample/chest_xray/train" in report["training_side"]
    assert report["training"]["identical"] == 0 and report["labelled"]
    drawn = [film["label"] for film in report["per_film"]]
    assert report["training"]["counts"] == {"NORMAL": drawn.count(0), "PNEUMONIA": drawn.count(1)}  # the same class mix


def test_the_staged_training_copy_is_named_as_a_processing_signature(model, tmp_path, real_data):
    """A run trained on the staged Kaggle copy (the v2 starter was): its training side is stored at 224 × 224."""
    store = RunStore(tmp_path / "store")
    shutil.copytree(STARTER, store.root / STARTER.name, ignore=shutil.ignore_patterns("shifts", "sites"))
    run = store.get(STARTER.name)
    staged = find_dataset(real_data).split("train")
    write_manifest(Splits(staged, [], [], "the staged Kaggle training copy", root=str(real_data), layout="kaggle"),
                   run.path / "splits.json")
    trained = len(staged)
    report = shift_report(run, SAMPLE / "test", max_films=60, model=model, save=False)
    assert any("224 × 224" in s for s in report["training"]["signature"])
    reading = " ".join(report["reading"])
    assert "processing signature" in reading and "staged Kaggle training copy" in reading
    assert report["training_side"].startswith(f"Training side: 60 of the run's {trained} training films")


# ---------------------------------------------------------------------------------- the figures alone
def test_the_domain_classifier_separates_shifted_features_and_not_a_random_split():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(150, 64)), rng.normal(size=(150, 64))
    patients = [f"p{i // 2}" for i in range(150)]  # two films per patient
    same = domain_classifier(a, b, patients, [f"q{i // 2}" for i in range(150)])
    assert same["ci"][0] < 0.5 < same["ci"][1]
    shifted = domain_classifier(a + 0.5, b, patients, [f"q{i // 2}" for i in range(150)])
    assert shifted["auc"] > 0.95 and shifted["folds"] == 5


def test_the_positive_rate_is_judged_against_what_validation_predicts_at_the_new_prevalence():
    validation = {"labels": [0] * 100 + [1] * 100, "probabilities": [0.1] * 90 + [0.9] * 10 + [0.9] * 80 + [0.1] * 20}
    labels = [0] * 50 + [1] * 150  # more pneumonia than validation: more positive calls, as expected
    prob = np.r_[np.full(45, 0.1), np.full(5, 0.9), np.full(120, 0.9), np.full(30, 0.1)]
    rates = positive_rates(prob, 0.5, validation, labels)
    assert rates["validation"]["rate"] == pytest.approx(0.45) and rates["new"]["rate"] == pytest.approx(0.625)
    assert rates["expected"]["rate"] == pytest.approx(0.75 * 0.8 + 0.25 * 0.1)
    assert rates["expected"]["p_value"] > 0.05 and rates["p_value"] < 0.01


def test_a_copy_stored_at_one_size_in_another_colour_mode_is_a_processing_signature():
    staged = [{"width": 224, "height": 224, "mode": "RGB"}] * 20
    originals = [{"width": 1000 + i, "height": 800, "mode": "L"} for i in range(20)]
    found = processing_signature(summarise(originals), summarise(staged))
    assert len(found) == 2 and "224 × 224" in found[0] and "RGB" in found[1]
    assert processing_signature(summarise(originals), summarise(originals)) == []
