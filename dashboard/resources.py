"""Dashboard cached resources: data set indexes, images for the screen, loaded models and explanations.

Heavy modules (TensorFlow via ``core.model.classifier`` / ``core.evaluation.explain``) are imported inside the cached
functions that need them, so pages that do not touch a model appear at once.
"""
from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.config import ModelConfig
from core.data.datasets import CLASS_NAMES, DatasetError, find_dataset
from core.data.decode import ImageLoadError
from core.data.demo import ensure_demo_dataset
from core.data.images import prepare_image, read_image, resize_gray
from core.data.preprocess import NO_PREPROCESSING, Preprocessing
from core.data.sample import check_sample, local_path, sample_root
from core.data.splits import MANIFEST_NAME, read_manifest, test_manifest
from core.store.files import HistoryTail
from core.store.runs import Run

# File types the uploaders accept (read by core.data.images.load_image, in memory only).
UPLOAD_TYPES = ["jpg", "jpeg", "png", "dcm", "dicom", "bmp", "tif", "tiff", "webp"]


# --------------------------------------------------------------------------------- live runs
@st.cache_resource(max_entries=64, show_spinner=False)
def _history_tail(history_path: str) -> HistoryTail:
    return HistoryTail(Path(history_path))


def history_rows(run: Run) -> list[dict[str, Any]]:
    """A run's history rows, read incrementally: one reader per run shared by every session, so a page that
    polls a live run parses only the lines the trainer appended since the last refresh."""
    return _history_tail(str(run.history_path)).rows()


def thin(rows: list[dict[str, Any]], most: int = 400) -> list[dict[str, Any]]:
    """At most ``most`` evenly spaced rows (the last always kept): a per-step curve needs no more points on screen."""
    if len(rows) <= most:
        return rows
    stride = -(-len(rows) // most)
    return rows[::-1][::stride][::-1]


# --------------------------------------------------------------------------------- data
@st.cache_data(show_spinner="Preparing the synthetic demo set…")
def demo_dataset_root(images_per_class: int = 120) -> str:
    """Generate (first time only) the synthetic demo set the demo runs use; returns its folder."""
    return str(ensure_demo_dataset(images_per_class=images_per_class))


@st.cache_data(ttl=30, show_spinner=False)
def _sample_check(root: str):
    return check_sample(root)


def sample_check():
    """``core.data.sample.check_sample`` of the bundled real sample (sha256 of each film against its manifest)."""
    return _sample_check(str(sample_root()))


def sample_usable() -> bool:
    """Whether the bundled real sample can be used (present, manifest readable, some films intact)."""
    check = sample_check()
    return check.present and not check.problem


@st.cache_data(show_spinner="Indexing the data set…", max_entries=8)
def dataset_index(path: str, modified: float):
    """``core.data.datasets.find_dataset`` for a folder, cached per path and folder modification time."""
    return find_dataset(path)


def folder_mtime(path: str) -> float:
    try:
        return Path(path).expanduser().stat().st_mtime
    except OSError:
        return 0.0


def display_image(gray: np.ndarray, model_size: int, resize_mode: str,
                  preprocessing: Preprocessing = NO_PREPROCESSING, largest: int = 512) -> np.ndarray:
    """The X-ray as the model sees it (same framing and preprocessing), at a resolution fit for the screen."""
    side = int(max(model_size, min(largest, max(gray.shape[:2]))))
    return prepare_image(gray, side, resize_mode, preprocessing)[..., 0].astype(np.uint8)


@st.cache_data(max_entries=2048, show_spinner=False)
def thumbnail(path: str, size: int = 160) -> np.ndarray | None:
    """A small uint8 grayscale copy of an image file or MedMNIST reference, or None when it cannot be read."""
    try:
        gray = read_image(path, draft_size=size)
    except ImageLoadError:
        return None
    return resize_gray(gray, size, "letterbox")


@st.cache_data(max_entries=64, show_spinner=False)
def screen_film(path: str, longest: int = 1024) -> np.ndarray | None:
    """A film in its own framing and aspect ratio, at most ``longest`` pixels a side (uint8), or None when unreadable."""
    from PIL import Image  # heavy: Pillow, only for the resize

    try:
        gray = read_image(path, draft_size=longest)
    except ImageLoadError:
        return None
    scale = longest / max(gray.shape[:2])
    if scale >= 1:
        return gray
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.LANCZOS))


@st.cache_data(max_entries=16, show_spinner=False)
def _saved_test_split(manifest: str, modified: float) -> tuple[str, list[tuple[str, int]]]:
    splits = read_manifest(manifest)
    return splits.root, [(r.path, r.label) for r in splits.test]


@st.cache_data(max_entries=64, show_spinner=False)
def saved_split_table(run_path: str, modified: float) -> dict[str, Any]:
    """The data root of a run's splits.json and, per split, its images per class and patients."""
    splits = read_manifest(Path(run_path) / MANIFEST_NAME)
    rows = [{"split": name, **{c: sum(r.label == i for r in records) for i, c in enumerate(CLASS_NAMES)},
             "patients": len({r.patient for r in records})}
            for name in ("train", "val", "test", "unused") if (records := splits.split(name))]
    return {"root": splits.root, "source": splits.source, "rows": rows}


def runs_with_saved_splits(runs: list[Run], root: str) -> list[Run]:
    """Those of ``runs`` whose saved splits (splits.json) came from the data folder ``root``."""
    found = []
    for run in runs:
        manifest = run.path / MANIFEST_NAME
        try:
            if saved_split_table(str(run.path), manifest.stat().st_mtime)["root"] == root:
                found.append(run)
        except (OSError, DatasetError):
            continue
    return found


def run_test_images(run: Run) -> list[tuple[str, int]]:
    """The run's test images as ``(source, label)``: from the manifest it is evaluated on (``core.data.splits.test_manifest``:
    a starter's test-films.json, else splits.json), else (older runs) metrics.json."""
    manifest = test_manifest(run.path)
    try:
        return _saved_test_split(str(manifest), manifest.stat().st_mtime)[1]
    except (OSError, DatasetError):  # no manifest (an older run) or an unreadable one
        pass
    return [(p["file"], p["label"]) for p in run_predictions(run)]


def films_from_sample(run: Run) -> bool:
    """Whether the run's test films are the bundled sample's (a run trained on it, or a starter's test-films.json)."""
    manifest = test_manifest(run.path)
    try:
        root = _saved_test_split(str(manifest), manifest.stat().st_mtime)[0]
    except (OSError, DatasetError):
        return run.config().data.source == "sample"
    return Path(root).resolve() == sample_root().resolve()


def run_predictions(run: Run) -> list[dict[str, Any]]:
    """metrics.json's per-image predictions with each file as a path on this machine (a run shipped with the
    repository saves paths relative to it)."""
    return [{**p, "file": local_path(p["file"])} for p in (run.metrics() or {}).get("predictions", [])]


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


# --------------------------------------------------------------------------------- models
_model_lock = threading.Lock()


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def load_model(path: str, modified: float):
    """A saved classifier, loaded once per file version and shared by all sessions."""
    from core.model.classifier import load_model as load  # heavy: Keras

    return load(path)


@st.cache_resource(max_entries=8, show_spinner="Preparing the explainer…")
def explainer(path: str, modified: float, layer: str | None, threshold: float):
    from core.evaluation.explain import explainer_for  # heavy: Keras, scikit-learn, TensorFlow

    return explainer_for(load_model(path, modified), layer=layer, threshold=threshold)


def model_key(run: Run) -> tuple[str, float]:
    return str(run.model_path), run.model_path.stat().st_mtime


@st.cache_data(max_entries=256, show_spinner="Computing the heatmap…")
def explain_image(run_id: str, path: str, modified: float, image_hash: str, _image: np.ndarray,
                  method: str, layer: str, threshold: float) -> dict[str, Any]:
    """Probability and CAM for one image, cached per (run, image hash, method, layer)."""
    result = explainer(path, modified, layer, threshold).explain(_image, method)
    return {"probability": result.probability, "cam": result.cam, "layer": result.layer,
            "explained": result.explained}


@st.cache_data(max_entries=256, show_spinner="Checking the film without its border and markers…")
def without_cues(run_id: str, path: str, modified: float, image_hash: str, _image: np.ndarray, _source: Any,
                 _name: str, _data: Any) -> dict[str, Any]:
    """P(pneumonia) of the film without its border and without its markers (core.evaluation.audit.film_without_cues):
    ``_image`` is the model's input, ``_source``/``_name`` the film it came from, ``_data`` the run's data settings."""
    from core.data.images import read_image  # beside the audit it feeds, imported when a film is checked
    from core.evaluation.audit import film_without_cues  # heavy: scikit-learn

    film = read_image(_source, filename=_name, draft_size=_data.image_size)  # the image path's decode
    return film_without_cues(load_model(path, modified), _image, film, _data)


def cue_sentence(check: dict[str, Any]) -> str:
    """"The same film without its border → P = 62 %; without its 2 markers → P = 81 %"."""
    border = (f"without its border (the outer {check['border_fraction']:.0%} of each side replaced by a blurred copy) "
              f"→ P(pneumonia) = **{check['without_border']:.1%}**")
    if check.get("markers_removed_by_run"):
        return (f"The same film {border}; its burnt-in markers are inpainted by the run's own preprocessing before "
                "the model sees it.")
    if not check["markers"]:
        return f"The same film {border}; no laterality letter, text or clip was found near its edges."
    plural = "s" if check["markers"] > 1 else ""
    return (f"The same film {border}; without its {check['markers']} marker{plural} (letters, text or clips, "
            f"inpainted) → P(pneumonia) = **{check['without_markers']:.1%}**.")


@st.cache_data(max_entries=256, show_spinner="Checking the heatmap's faithfulness…")
def faithfulness(run_id: str, path: str, modified: float, image_hash: str, _image: np.ndarray,
                 _cam: np.ndarray, method: str, layer: str, threshold: float) -> dict[str, Any]:
    from core.evaluation.explain import deletion_score  # heavy: Keras, scikit-learn, TensorFlow

    return deletion_score(load_model(path, modified), _image, _cam, threshold=threshold)


@st.cache_resource(max_entries=16, show_spinner="Building the layer table…")
def _skeleton(backbone: str, alpha: float | None):
    """The classifier without weights (parameter counts do not depend on weights or image size)."""
    from core.model.classifier import build_classifier  # heavy: Keras

    return build_classifier(ModelConfig(backbone=backbone, weights="none", alpha=alpha), 64)


def layer_rows(model_cfg) -> list[dict[str, Any]]:
    """The per-block table for the fine-tune phase under the chosen unfreeze depth."""
    from core.model.classifier import layer_table, set_trainable  # heavy: Keras

    model = _skeleton(model_cfg.backbone, model_cfg.alpha)
    with _model_lock:  # the skeleton is shared; set_trainable mutates it
        set_trainable(model, model_cfg, "finetune")
        rows = layer_table(model, model_cfg.backbone)
    return [{"block": row.label, "layers": row.layers, "parameters": row.params,
             "trainable parameters": row.trainable_params, "trainable": row.trainable} for row in rows]
