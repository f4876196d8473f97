"""Prediction on image files with a trained run, from Python or the command line, with optional heatmap overlays."""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.data.datasets import CLASS_NAMES
from core.data.decode import ImageLoadError
from core.data.images import prepared_pixels
from core.data.preprocess import Preprocessing
from core.evaluation.overlay import overlay
from core.evaluation.sites import operating_point
from core.store.runs import RunError, RunStore

__all__ = ["predict_files"]


def _safe_stem(path: str | Path) -> str:
    return re.sub(r"[^\w.-]+", "_", Path(str(path)).stem)[:80] or "image"


def predict_files(run: Any, paths: Sequence[str | Path], cam: str | None = None, out_dir: str | Path | None = None,
                  opacity: float = 0.4, colormap: str = "jet", store: Any = None,
                  site: str | None = None) -> list[dict[str, Any]]:
    """P(PNEUMONIA) and the called class for each image file, with the run's model and threshold.

    The model is loaded once. Each result is ``{"file", "probability", "label", "threshold",
    "threshold_from", "heatmap"}`` (plus ``"calibrated_probability"`` when the site profile has a
    temperature, and ``"preprocessing"``, the notes of what the run's preprocessing did to the film,
    when the run has any), where ``heatmap`` is the path of the saved overlay PNG (when ``cam`` names one
    of :data:`core.evaluation.explain.CAM_METHODS`) or None; an image that cannot be read gives
    ``{"file", "error"}`` instead and does not stop the others.

    Args:
        run: a ``core.store.runs.Run`` or a run id in ``store``.
        out_dir: where overlays go (created); default ``heatmaps/`` in the working folder.
        site: a site profile of the run (``sites/<name>.json``) whose threshold calls the films; default the
            run's validation threshold.

    Raises:
        core.evaluation.sites.SiteError: ``site`` names no profile of the run.
    """
    from PIL import Image

    from core.evaluation.explain import CAM_METHODS, explainer_for  # heavy: Keras, scikit-learn, TensorFlow
    from core.model.classifier import load_model  # heavy: Keras

    if isinstance(run, str):
        run = (store or RunStore()).get(run)
    if cam is not None and cam not in CAM_METHODS:
        raise ValueError(f"cam must be one of {', '.join(CAM_METHODS)}; got {cam!r}")
    if not Path(run.model_path).is_file():
        raise RunError(f"run {run.path.name} has no trained model ({run.model_path.name}); train it first")
    config = run.config()
    point = operating_point(run, site)
    threshold = point.threshold
    model = load_model(run.model_path)
    explainer = explainer_for(model, threshold=threshold) if cam else None
    out = Path(out_dir) if out_dir is not None else Path("heatmaps")
    preprocessing = Preprocessing.of(config.data)
    used_names: set[str] = set()
    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            prepared = prepared_pixels(Path(path), config.data.image_size, config.data.resize_mode,
                                       preprocessing=preprocessing)
        except (ImageLoadError, OSError) as exc:
            results.append({"file": str(path), "error": str(exc)})
            continue
        image = prepared.model_input()
        heatmap = None
        if explainer is not None:
            explanation = explainer.explain(image, method=cam)
            probability = explanation.probability
            out.mkdir(parents=True, exist_ok=True)
            name = f"{_safe_stem(path)}_{cam.replace('+', 'pp')}"
            while name in used_names:  # two inputs with the same file name
                name += "_"
            used_names.add(name)
            target = out / f"{name}.png"
            Image.fromarray(overlay(image, explanation.cam, opacity, colormap)).save(target)
            heatmap = str(target)
        else:
            logit = float(np.asarray(model.predict_on_batch(image[None])).reshape(-1)[0])
            probability = float(1.0 / (1.0 + np.exp(-np.clip(logit, -500, 500))))
        result = {
            "file": str(path),
            "probability": probability,
            "label": CLASS_NAMES[int(probability >= threshold)],
            "threshold": threshold,
            "threshold_from": point.source,
            "heatmap": heatmap,
        }
        if point.temperature is not None:
            result["calibrated_probability"] = point.calibrated(probability)
        if preprocessing.active:
            result["preprocessing"] = list(prepared.notes)
        results.append(result)
    return results
