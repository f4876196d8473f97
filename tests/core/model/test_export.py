"""Exports: every format loads back and gives the Keras model's probability."""
from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.config import ModelConfig
from core.model.export import export_keras, export_run, export_savedmodel, export_tflite
from core.model.classifier import build_classifier, load_model

SIZE = 32


@pytest.fixture(scope="module")
def model_and_image():
    keras.utils.set_random_seed(0)
    model = build_classifier(ModelConfig(backbone="small_cnn", weights="none", unfreeze_from_block=1), SIZE)
    model.get_layer("logit").set_weights([np.full((128, 1), 0.05, np.float32), np.array([-0.2], np.float32)])
    image = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    probability = float(tf.sigmoid(model(image, training=False))[0, 0])
    return model, image, probability


def test_keras_file_round_trip(model_and_image, tmp_path):
    model, image, probability = model_and_image
    path = export_keras(model, tmp_path / "m.keras")
    reloaded = load_model(path)
    assert float(tf.sigmoid(reloaded(image))[0, 0]) == pytest.approx(probability, abs=1e-6)


def test_savedmodel_serving_signature(model_and_image, tmp_path):
    model, image, probability = model_and_image
    folder = export_savedmodel(model, tmp_path / "saved")
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    assert serve.structured_input_signature[1]["image"].dtype == tf.float32
    out = serve(image=tf.constant(image))
    assert float(out["probability"][0, 0]) == pytest.approx(probability, abs=1e-6)
    assert float(tf.sigmoid(out["logit"])[0, 0]) == pytest.approx(probability, abs=1e-6)


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_within_1e4(model_and_image, tmp_path):
    model, image, probability = model_and_image
    path = export_tflite(model, tmp_path / "m.tflite")
    interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    out = runner(image=image)
    assert float(out["probability"][0, 0]) == pytest.approx(probability, abs=1e-4)


def test_export_run_writes_every_format_under_the_run(model_and_image, tmp_path):
    from core.config import DataConfig, RunConfig
    from core.store.runs import RunStore

    model, image, probability = model_and_image
    run = RunStore(tmp_path / "models").create(RunConfig(
        name="export me", data=DataConfig(source="demo", image_size=SIZE),
        model=ModelConfig(backbone="small_cnn", weights="none", unfreeze_from_block=1)))
    model.save(run.model_path)
    run.write_json("threshold.json", {"threshold": 0.3, "method": "youden", "val_auc": 0.9})

    keras_file = export_run(run, "keras")
    assert keras_file.parent == run.path / "export" and keras_file.suffix == ".keras"
    assert float(tf.sigmoid(load_model(keras_file)(image))[0, 0]) == pytest.approx(probability, abs=1e-6)

    archive = export_run(run, "savedmodel")
    assert archive.suffix == ".zip" and archive.parent == run.path / "export"
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "unzipped")
    assert any(n.endswith("saved_model.pb") for n in names) and any(n.endswith("serving.json") for n in names)
    folder = next((tmp_path / "unzipped").iterdir())
    out = tf.saved_model.load(str(folder)).signatures["serving_default"](image=tf.constant(image))
    assert float(out["probability"][0, 0]) == pytest.approx(probability, abs=1e-6)

    tflite = export_run(run, "tflite")
    assert tflite.is_file() and tflite.stat().st_size > 1000
    info = json.loads((run.path / "export" / "serving.json").read_text())
    assert info["threshold"] == 0.3 and info["input"]["shape"] == [None, SIZE, SIZE, 3]
    assert not [p for p in (run.path / "export").iterdir() if p.name.startswith(".")]  # no temp leftovers

    with pytest.raises(ValueError, match="format"):
        export_run(run, "onnx")
