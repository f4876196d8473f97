"""Starter runs (models/starter-*, marked by starter.json): listed but never deleted, packaged by core.starter, and the
EfficientNet-Lite0 starter shipped in models/: complete, small, portable, and the same probability for the same film."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import preset
from core.store.runs import STARTER_MARKER, RunError, RunStore


def test_a_starter_run_is_listed_and_its_delete_is_refused(tmp_path):
    store = RunStore(tmp_path)
    starter, other = store.create(preset("Quick real-sample demo")), store.create(preset("Quick CPU demo"))
    starter.write_json(STARTER_MARKER, {"note": "shipped with the repository"})
    assert starter.starter == {"note": "shipped with the repository"} and other.starter is None
    with pytest.raises(RunError, match="starter model shipped with the repository"):
        store.delete(starter.id)
    (starter.path / STARTER_MARKER).write_text("{not json")  # a damaged marker still protects the run
    with pytest.raises(RunError, match="starter"):
        store.delete(starter.id)
    store.delete(other.id)
    assert [run.id for run in store.list()] == [starter.id]


# ---------------------------------------------------------------------------------- packaging a starter
def _tiny_finished_sample_run(store: RunStore):
    """A finished small-CNN run on the bundled sample at 32 px, untrained: real files, a model that loads in a blink."""
    import keras

    from core.model.classifier import build_classifier
    from core.data.splits import run_splits

    config = preset("Quick real-sample demo").with_overrides(**{
        "name": "tiny", "model.backbone": "small_cnn", "model.weights": "none", "model.unfreeze_from_block": 1,
        "data.image_size": 32, "train.threshold_method": "fixed"})
    run = store.create(config)
    keras.utils.set_random_seed(0)
    build_classifier(config.model, 32).save(run.model_path)
    run_splits(config, run.path)
    run.write_json("threshold.json", {"threshold": 0.5, "method": "fixed", "chosen_on": "validation (54 images)"})
    run.update_status(state="finished", started_at="2026-11-25T23:00:00+00:00", finished_at="2026-11-25T23:01:00+00:00")
    return run


def test_a_packaged_starter_has_float16_weights_portable_paths_and_both_evaluations(tmp_path):
    import json
    import zipfile

    import keras
    import numpy as np

    from core.evaluation.evaluate import predict_probabilities
    from core.data.images import Preprocessing, load_image
    from core.model.classifier import load_model
    from core.config.paths import REPO_ROOT
    from core.data.sample import local_path
    from core.data.splits import TEST_FILMS_NAME, evaluation_splits
    from core.jobs.starter import OFFICIAL_METRICS, absolute_paths, package_starter

    store = RunStore(tmp_path / "models")
    source = _tiny_finished_sample_run(store)
    starter = package_starter(source.path, store.root / "starter-tiny", machine="a test machine", say=lambda m: None)

    marker = starter.starter
    assert marker["source_run"] == source.id and marker["official_test_metrics"] == OFFICIAL_METRICS
    assert marker["trained"]["machine"] == "a test machine" and "float16" in marker["weights"]
    with pytest.raises(RunError, match="starter"):
        store.delete(starter.id)
    # float16 on disk, float32 in memory, same values
    with zipfile.ZipFile(starter.model_path) as archive:
        layers = json.loads(archive.read("config.json"))["config"]["layers"]
    weighted = [json.dumps(layer["config"]["dtype"]) for layer in layers if layer["class_name"] in ("Conv2D", "Dense")]
    assert weighted and all("float16" in dtype for dtype in weighted)
    model = load_model(starter.model_path)
    assert {w.dtype for w in model.weights} == {"float32"}
    original = keras.models.load_model(source.model_path, compile=False).get_weights()
    assert all(np.array_equal(w, o.astype(np.float16).astype(np.float32)) for w, o in zip(model.get_weights(), original))

    # metrics.json: on the sample's test films (test-films.json), as the single-image path predicts them
    metrics, official = starter.metrics(), starter.official_test_metrics()
    assert metrics["splits"]["from"] == TEST_FILMS_NAME and official["splits"]["from"] == "splits.json"
    assert metrics["n"] == 80 and [r.path for r in evaluation_splits(starter.config(), starter.path).test] \
        == [local_path(p["file"]) for p in metrics["predictions"]]
    assert all(p["file"].startswith("sample/chest_xray/test/") for p in metrics["predictions"])
    first = metrics["predictions"][0]
    data = starter.config().data
    image = load_image(local_path(first["file"]), 32, data.resize_mode, preprocessing=Preprocessing.of(data))
    assert predict_probabilities(model, image)[0] == pytest.approx(first["probability"], abs=1e-5)
    # nothing in the folder names this machine
    for path in starter.path.iterdir():
        if path.suffix in (".json", ".jsonl", ".txt"):
            text = path.read_text()
            assert not absolute_paths(text) and str(REPO_ROOT) not in text, path.name


def test_packaging_refuses_an_unfinished_run_and_an_existing_folder(tmp_path):
    from core.jobs.starter import package_starter

    store = RunStore(tmp_path / "models")
    unfinished = store.create(preset("Quick real-sample demo"))
    with pytest.raises(RunError, match="only a finished run"):
        package_starter(unfinished.path, tmp_path / "starter-x", say=lambda m: None)
    (tmp_path / "starter-y").mkdir()
    finished = _tiny_finished_sample_run(store)
    with pytest.raises(RunError, match="exists"):
        package_starter(finished.path, tmp_path / "starter-y", say=lambda m: None)


def test_portable_text_makes_paths_of_this_machine_relative():
    from core.config.paths import REPO_ROOT
    from core.jobs.starter import absolute_paths, portable_text

    text = (f"run in {REPO_ROOT}/models; data at {REPO_ROOT}/../shared/data/chest_xray; {REPO_ROOT.parent}/shared/x.jpeg; "
            "licence https://creativecommons.org/licenses/by/4.0/; doi:10.17632/rscbjbr9sj.2")
    out = portable_text(text)
    assert out == ("run in models; data at ../shared/data/chest_xray; ../shared/x.jpeg; "
                   "licence https://creativecommons.org/licenses/by/4.0/; doi:10.17632/rscbjbr9sj.2")
    assert absolute_paths(out) == [] and absolute_paths(text)


# ---------------------------------------------------------------------------------- the starter shipped in models/
SHIPPED_ID = "starter-efficientnet-lite0"


@pytest.fixture(scope="module")
def shipped():
    from core.store.runs import Run
    from core.config.paths import REPO_ROOT

    return Run(REPO_ROOT / "models" / SHIPPED_ID)


def test_the_shipped_starter_is_a_complete_run_under_20_mb(shipped):
    from core.data.splits import read_manifest

    files = {p.name for p in shipped.path.iterdir()}
    assert {"config.json", "splits.json", "threshold.json", "status.json", "history.jsonl", "log.txt", "model.keras",
            "metrics.json", "metrics-official-test.json", "test-films.json", "starter.json"} <= files
    assert sum(p.stat().st_size for p in shipped.path.rglob("*") if p.is_file()) <= 20_000_000
    assert shipped.status().state == "finished" and shipped.config().model.backbone == "efficientnet_lite0"
    marker = shipped.starter
    choice = json.loads((shipped.path.parents[1] / "benchmarks" / "results" / "starter-choice.json").read_text())["decision"]
    assert marker["source_run"] == choice["chosen"] and marker["trained"]["wall_seconds"]  # the committed choice
    assert "benchmarks.starter_choice" in marker["chosen"] and "validation" in marker["chosen"]
    # metrics-official-test.json: the whole official test split of splits.json, with patient CIs and subtypes
    official, test = shipped.official_test_metrics(), read_manifest(shipped.path / "splits.json").test
    assert official["n"] == len(test) == 624 and official["n_patients"] == 427
    assert official["splits"]["from"] == "splits.json" and official["skipped"] == []
    assert None not in official["ci"]["roc_auc"] and set(official["subgroups"]) == {"bacteria", "virus"}
    assert marker["official_test"]["roc_auc"] == official["roc_auc"]


def test_the_shipped_starter_cannot_be_deleted(shipped, tmp_path):
    import shutil

    store = RunStore(tmp_path / "models")
    shutil.copytree(shipped.path, store.root / SHIPPED_ID)
    with pytest.raises(RunError, match="starter model shipped with the repository"):
        store.delete(SHIPPED_ID)
    assert [run.id for run in store.list()] == [SHIPPED_ID]


def test_the_shipped_starter_names_no_path_of_this_machine(shipped):
    from core.config.paths import REPO_ROOT
    from core.jobs.starter import absolute_paths

    for path in sorted(shipped.path.iterdir()):
        if path.suffix in (".json", ".jsonl", ".txt"):
            text = path.read_text()
            assert not absolute_paths(text), (path.name, absolute_paths(text)[:3])
            assert str(REPO_ROOT) not in text and str(Path.home()) not in text, path.name


def test_the_shipped_starters_probabilities_are_what_the_one_image_path_gives(shipped):
    """Same film, same probability: metrics.json against load_image + load_model on the shipped float16 file."""
    import numpy as np

    from core.evaluation.evaluate import predict_probabilities
    from core.data.images import load_image
    from core.data.preprocess import Preprocessing
    from core.model.classifier import load_model
    from core.data.sample import local_path, sample_root
    from core.data.splits import TEST_FILMS_NAME, evaluation_splits

    config, metrics = shipped.config(), shipped.metrics()
    films = evaluation_splits(config, shipped.path)
    assert films.manifest == TEST_FILMS_NAME and metrics["splits"]["from"] == TEST_FILMS_NAME
    files = [local_path(p["file"]) for p in metrics["predictions"]]
    assert files == [r.path for r in films.test] and len(files) == 80
    assert all(Path(f).resolve().is_relative_to(sample_root().resolve()) and Path(f).is_file() for f in files)
    model = load_model(shipped.model_path)
    assert {w.dtype for w in model.weights} == {"float32"}
    preprocessing = Preprocessing.of(config.data)
    assert preprocessing.active  # the shipped starter crops to the body, inpaints markers, applies CLAHE
    images = np.stack([load_image(f, config.data.image_size, config.data.resize_mode, preprocessing=preprocessing)
                       for f in files])
    fresh = predict_probabilities(model, images)
    stored = np.array([p["probability"] for p in metrics["predictions"]])
    assert np.abs(fresh - stored).max() < 1e-5
