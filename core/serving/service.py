"""The served run: its model loaded once (in the background, so health can say "loading"), a batch of films to probabilities, one film's Grad-CAM overlay, and the fields of every answer."""
from __future__ import annotations

import base64
import hashlib
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.data.datasets import CLASS_NAMES
from core.data.images import prepared_pixels
from core.data.preprocess import Preprocessing
from core.evaluation.case_report import DISCLAIMER
from core.evaluation.metrics import sigmoid
from core.evaluation.overlay import overlay
from core.evaluation.sites import OperatingPoint, operating_point
from core.store.runs import Run, RunError

__all__ = ["ModelService", "Explained", "file_sha256", "IMAGE_PATH"]

IMAGE_PATH = "core.data.images.load_image"  # the one image path every consumer of a run goes through


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Explained:
    """One film's probability and its heatmap overlay as a PNG."""

    probability: float
    png: bytes
    method: str
    layer: str
    explained: str  # the class the map argues for


class ModelService:
    """One run, served: what every answer says of it, read when the server starts, and its model once loaded.

    The model is loaded by :meth:`load` (a background thread of the server); until then :attr:`state` is
    ``"loading"``. Inference (:meth:`predict_batch`, :meth:`explain`) runs on one worker thread of the server,
    never on its event loop.
    """

    def __init__(self, run: Run, site: str | None = None):
        if not run.model_path.is_file():
            raise RunError(f"run {run.id} has no trained model ({run.model_path.name}); train it first")
        self.run = run
        self.config = run.config()
        self.point: OperatingPoint = operating_point(run, site)  # SiteError: no such profile
        self.model_sha256 = file_sha256(run.model_path)
        self.state = "loading"  # "loading" → "ready" or "failed"
        self.error: str | None = None
        self._model: Any = None
        self._explainer: Any = None
        self._ready = threading.Event()

    # --- what the answers say ------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    @property
    def resize_mode(self) -> str:
        return str(self.config.data.resize_mode)

    @property
    def preprocessing_settings(self) -> Preprocessing:
        """The run's preprocessing that removes non-anatomical cues (none for runs from before it existed)."""
        return Preprocessing.of(self.config.data)

    def preprocessing(self, notes: tuple[str, ...] = ()) -> dict[str, Any]:
        out = {"image_path": IMAGE_PATH, "image_size": self.image_size, "resize_mode": self.resize_mode,
               "color": "grayscale repeated to 3 channels, 0..255 (the backbone's own scaling is in the model)",
               **self.preprocessing_settings.to_dict()}
        if self.preprocessing_settings.active:
            out["notes"] = list(notes)
        return out

    def answer(self, probability: float, notes: tuple[str, ...] = ()) -> dict[str, Any]:
        """The fields of a prediction: probability, call, threshold and where it comes from, run, model, preprocessing.

        ``notes`` say what the run's preprocessing did to this film (:meth:`decode`); they are answered when the run
        has preprocessing.
        """
        point = self.point
        out = {
            "probability": float(probability),
            "call": CLASS_NAMES[int(probability >= point.threshold)],
            "threshold": point.threshold,
            "threshold_source": point.source,
            "threshold_label": point.label,
            "run_id": self.run.id,
            "model_sha256": self.model_sha256,
            "preprocessing": self.preprocessing(notes),
            "notice": DISCLAIMER,
        }
        if point.temperature is not None:
            out["calibrated_probability"] = point.calibrated(probability)
        return out

    # --- loading ---------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model and trace its forward pass and Grad-CAM once, so the first request is not the slow one."""
        try:
            from core.evaluation.explain import explainer_for  # heavy: Keras and TensorFlow
            from core.model.classifier import load_model  # heavy: Keras

            self._model = load_model(self.run.model_path)
            blank = np.zeros((2, self.image_size, self.image_size, 3), np.float32)
            self.predict_batch(blank[:1])
            self.predict_batch(blank)  # a second batch size: Keras generalises the traced shape
            self._explainer = explainer_for(self._model, threshold=self.point.threshold)
            self._explainer.explain(blank[0], method="gradcam")
        except Exception as exc:  # noqa: BLE001 - any failure to load is reported by health, not raised in a thread
            self.error = f"the model of run {self.run.id} could not be loaded ({type(exc).__name__}: {exc})"
            self.state = "failed"
        else:
            self.state = "ready"
        finally:
            self._ready.set()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    # --- inference -----------------------------------------------------------------------------------------
    def decode(self, data: bytes, filename: str = "") -> tuple[np.ndarray, tuple[str, ...]]:
        """Film bytes → the model's input and what preprocessing did to it, through the one image path.

        Raises:
            ImageLoadError: the bytes are not a readable film.
        """
        prepared = prepared_pixels(data, self.image_size, self.resize_mode,
                                   preprocessing=self.preprocessing_settings, filename=filename)
        return prepared.model_input(), prepared.notes

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """P(PNEUMONIA), float64 (N,), for model inputs (N, S, S, 3)."""
        logits = np.asarray(self._model.predict_on_batch(images), dtype=np.float64).reshape(-1)
        return sigmoid(logits)

    def explain(self, image: np.ndarray, method: str = "gradcam", opacity: float = 0.4) -> Explained:
        """One film's probability and its heatmap blended over the model's input, as a PNG (224 px for the starter)."""
        explanation = self._explainer.explain(image, method=method)
        buffer = io.BytesIO()
        Image.fromarray(overlay(image, explanation.cam, opacity)).save(buffer, format="PNG")
        return Explained(explanation.probability, buffer.getvalue(), method, str(explanation.layer),
                         explanation.explained)

    @staticmethod
    def png_base64(png: bytes) -> str:
        return base64.b64encode(png).decode("ascii")
