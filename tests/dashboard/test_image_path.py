"""Explain, Demo and the gallery show the probability the run was evaluated with: real films, a PNG, a DICOM, PneumoniaMNIST."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from image_samples import dicom
from PIL import Image
from test_pages import metric, open_page, texts

from core.config import preset
from core.data.datasets import CLASS_NAMES, parse_patient
from core.data.decode import decode_image
from core.data.images import load_image
from core.store.runs import RunStore
from core.data.splits import saved_splits

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _tiny_real_set(real_data: Path, root: Path) -> dict[str, str]:
    """8 train films per class (one per patient); as test, 2 full-size originals per class plus a PNG and a
    DICOM made from two more originals. Returns the test file names by kind."""
    made = {}
    for cls in CLASS_NAMES:
        (root / "train" / cls).mkdir(parents=True)
        (root / "test" / cls).mkdir(parents=True)
        patients: set[str] = set()
        for film in sorted((real_data / "train" / cls).iterdir()):
            if len(patients) < 8 and parse_patient(film.name)[0] not in patients:
                patients.add(parse_patient(film.name)[0])
                shutil.copy(film, root / "train" / cls)
        originals = sorted((real_data / "test" / cls).iterdir())[:3]
        for film in originals[:2]:
            shutil.copy(film, root / "test" / cls)
        gray = decode_image(originals[2].read_bytes(), originals[2].name)
        if cls == "NORMAL":  # an 8-bit grayscale PNG export of a real film
            made["png"] = "IM-9001-0001.png"
            Image.fromarray(gray).save(root / "test" / cls / made["png"])
        else:  # a 12-bit MONOCHROME1 DICOM with a rescale and a VOI window, from a real film
            made["dicom"] = "person9001_bacteria_1.dcm"
            stored = 4095 - gray.astype(np.uint16) * 16
            (root / "test" / cls / made["dicom"]).write_bytes(
                dicom(stored, "MONOCHROME1", slope=2.0, intercept=-1000.0, window=(3000.0, 7000.0)))
    return made


@pytest.fixture(scope="module")
def trained_on_real_films(tmp_path_factory, real_data):
    """A one-epoch small CNN trained and evaluated through the trainer on the tiny real set."""
    from core.jobs.run import run_and_record

    root = tmp_path_factory.mktemp("films")
    made = _tiny_real_set(real_data, root / "chest_xray")
    config = preset("Quick CPU demo").with_overrides(**{
        "name": "one-image-path", "data.source": "folder", "data.path": str(root / "chest_xray"),
        "data.image_size": 48, "data.val_fraction": 0.25, "train.finetune.epochs": 1, "train.batch_size": 8,
    })
    store = RunStore(root / "runs")
    run = store.create(config)
    assert run_and_record(run, resume=False) == 0, run.raw_status().error
    return store, run, made


def test_the_pages_probability_equals_metrics_json_for_jpeg_png_and_dicom(trained_on_real_films, monkeypatch):
    from dashboard import resources

    store, run, made = trained_on_real_films
    predictions = run.metrics()["predictions"]
    assert sorted(p["file"] for p in predictions) == sorted(r.path for r in saved_splits(run.path).test)
    assert {Path(p["file"]).suffix for p in predictions} == {".jpeg", ".png", ".dcm"}
    assert {made["png"], made["dicom"]} <= {Path(p["file"]).name for p in predictions}
    config, threshold = run.config(), run.threshold()
    path, modified = resources.model_key(run)
    for p in predictions:
        file = Path(p["file"])
        # Picked from the test split (a path) and uploaded (bytes with a name): both as the pages do it.
        for source in (str(file), file.read_bytes()):
            image = load_image(source, config.data.image_size, config.data.resize_mode, filename=file.name)
            shown = resources.explain_image(run.id, path, modified, resources.digest(image.tobytes()), image,
                                            "gradcam", None, threshold)["probability"]
            assert shown == pytest.approx(p["probability"], abs=1e-5), file.name

    # And on the page itself: the Explain picker shows the saved probability for the PNG and the DICOM.
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(store.root))
    at = open_page("explain")
    for p in predictions:
        if Path(p["file"]).suffix in (".png", ".dcm"):
            at.selectbox(key="explain_pick").set_value(p["file"]).run()
            assert not at.exception
            assert metric(at, "P(pneumonia)") == f"{p['probability']:.1%}"
            assert metric(at, "True label") == CLASS_NAMES[p["label"]]


@pytest.fixture(scope="module")
def medmnist_run(tmp_path_factory, medmnist_npz):
    """A PneumoniaMNIST run as the trainer leaves it: splits.json, an (untrained) model, threshold, metrics.json."""
    import keras

    from core.evaluation.evaluate import evaluate_run
    from core.model.classifier import build_classifier
    from core.data.splits import run_splits

    config = preset("Quick CPU demo").with_overrides(**{
        "name": "pneumoniamnist", "data.source": "medmnist", "data.path": str(medmnist_npz),
        "data.image_size": 32, "data.max_test_images_per_class": 6,
    })
    store = RunStore(tmp_path_factory.mktemp("runs"))
    run = store.create(config)
    run_splits(config, run.path)
    keras.utils.set_random_seed(0)
    build_classifier(config.model, 32).save(run.model_path)
    run.write_json("threshold.json", {"threshold": 0.5, "method": "youden"})
    evaluate_run(run)
    run.update_status(state="finished")
    return store, run


def test_a_pneumoniamnist_run_opens_in_explain_demo_and_the_gallery(medmnist_run, monkeypatch):
    store, run = medmnist_run
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(store.root))
    predictions = run.metrics()["predictions"]
    assert all("::test::" in p["file"] for p in predictions)

    at = open_page("explain")
    first = predictions[0]
    assert at.selectbox(key="explain_pick").value == first["file"]
    assert not at.error and len(at.image) == 3
    assert metric(at, "P(pneumonia)") == f"{first['probability']:.1%}"

    at = open_page("demo", demo_order="File name")
    assert f"Case 1 of {len(predictions)}" in texts(at)
    by_name = min(predictions, key=lambda p: Path(p["file"]).name)
    assert metric(at, "Probability of pneumonia") == f"{100 * by_name['probability']:.1f} %"
    assert len(at.image) == 2 and not at.exception

    at = open_page("evaluate")
    mistakes = [b for b in at.button if b.label == "Explain"]
    assert mistakes and "(image not found)" not in texts(at)
    assert len(at.image) == len(mistakes)  # one thumbnail per misclassified film
    mistakes[0].click().run()
    assert at.title[0].value == "Explain" and not at.error and len(at.image) == 3
