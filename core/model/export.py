"""Model export for deployment: Keras file, TensorFlow SavedModel (TF Serving) and TFLite, per run."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras

from core.config.backend import require_tensorflow

TENSORFLOW_ONLY = "SavedModel and TFLite export (TensorFlow's converters)"
require_tensorflow(TENSORFLOW_ONLY)  # one line, not an ImportError
import tensorflow as tf  # noqa: E402

from core.model.classifier import load_model

__all__ = ["EXPORT_FORMATS", "export_keras", "export_savedmodel", "export_tflite", "export_run", "serving_info"]

EXPORT_FORMATS = {"keras": "Keras (.keras)", "savedmodel": "TF SavedModel (zip, TF Serving)", "tflite": "TFLite (.tflite)"}


def _input_spec(model: keras.Model) -> tf.TensorSpec:
    height, width, channels = model.input_shape[1:]
    return tf.TensorSpec((None, height, width, channels), tf.float32, name="image")


def export_keras(model: keras.Model, path: str | Path) -> Path:
    """The whole model (architecture + weights) as one ``.keras`` file, loadable with ``core.model.classifier.load_model``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)
    return path


def export_savedmodel(model: keras.Model, directory: str | Path) -> Path:
    """A TensorFlow SavedModel for TF Serving (Keras ``ExportArchive``).

    Signature ``serving_default``: input ``image`` float32 (None, S, S, 3), RGB pixels 0..255
    (preprocessing is inside the model); outputs ``probability`` = P(PNEUMONIA) = sigmoid of the
    logit, and ``logit``, each (None, 1).
    """
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(image):
        logit = tf.cast(model(image, training=False), tf.float32)
        return {"probability": tf.sigmoid(logit), "logit": logit}

    archive.add_endpoint("serve", serve, input_signature=[_input_spec(model)])
    archive.write_out(str(directory), verbose=False)
    return directory


def export_tflite(model: keras.Model, path: str | Path) -> Path:
    """A float32 TFLite flat buffer with the SavedModel's ``serving_default`` signature.

    Converted from a temporary SavedModel (``TFLiteConverter.from_saved_model``), the route that
    works for Keras 3 models; no quantisation, so probabilities match the Keras model to ~1e-6.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        saved = export_savedmodel(model, Path(tmp) / "savedmodel")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["serving_default"])
        flatbuffer = converter.convert()
    tmp_path = path.with_name(f".{path.name}.tmp")
    tmp_path.write_bytes(flatbuffer)
    os.replace(tmp_path, path)
    return path


def serving_info(run: Any, model: keras.Model) -> dict[str, Any]:
    """What a deployer needs besides the weights: input, output and the run's decision threshold."""
    config = run.config()
    info = run.read_json("threshold.json") or {}
    return {
        "run_id": run.path.name,
        "backbone": config.model.backbone,
        "input": {"name": "image", "dtype": "float32", "shape": [None, *model.input_shape[1:]],
                  "range": "0..255 RGB (grayscale X-ray repeated 3×)", "resize_mode": config.data.resize_mode,
                  # core.data.preprocess, applied by core.data.images.load_image before the model: not in the export
                  "preprocessing": {"field_of_view": config.data.field_of_view,
                                    "remove_markers": config.data.remove_markers, "intensity": config.data.intensity}},
        "output": "logit (Keras file); probability = sigmoid(logit) = P(PNEUMONIA) and logit (SavedModel, TFLite)",
        "threshold": float(run.threshold()),
        "threshold_method": info.get("method"),
        "classes": ["NORMAL", "PNEUMONIA"],
        "notice": "Research and education only; not for diagnosis.",
    }


def export_run(run: Any, fmt: str) -> Path:
    """Export a run's trained model under ``<run>/export/`` and return the file to hand out.

    ``keras`` → ``<run-id>.keras``; ``savedmodel`` → ``<run-id>_savedmodel.zip`` (the SavedModel
    folder plus ``serving.json``); ``tflite`` → ``<run-id>.tflite``. ``serving.json`` (input,
    output, threshold) is written next to every export.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}; got {fmt!r}")
    if not Path(run.model_path).is_file():
        raise FileNotFoundError(f"run {run.path.name} has no trained model ({run.model_path.name}); train it first")
    model = load_model(run.model_path)
    out_dir = Path(run.path) / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    info = json.dumps(serving_info(run, model), indent=2)
    (out_dir / "serving.json").write_text(info)
    run_id = run.path.name
    if fmt == "keras":
        return export_keras(model, out_dir / f"{run_id}.keras")
    if fmt == "tflite":
        return export_tflite(model, out_dir / f"{run_id}.tflite")
    target = out_dir / f"{run_id}_savedmodel.zip"
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        folder = export_savedmodel(model, Path(tmp) / f"{run_id}_savedmodel")
        (folder / "serving.json").write_text(info)
        archive = shutil.make_archive(str(Path(tmp) / "archive"), "zip", root_dir=tmp, base_dir=folder.name)
        os.replace(archive, target)
    return target
