"""Prediction on image files with a trained run, from Python or the command line, with optional heatmap overlays."""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets import CLASS_NAMES

__all__ = ["predict_files", "main"]


def _safe_stem(path: str | Path) -> str:
    return re.sub(r"[^\w.-]+", "_", Path(str(path)).stem)[:80] or "image"


def predict_files(run: Any, paths: Sequence[str | Path], cam: str | None = None, out_dir: str | Path | None = None,
                  opacity: float = 0.4, colormap: str = "jet", store: Any = None) -> list[dict[str, Any]]:
    """P(PNEUMONIA) and the called class for each image file, with the run's model and threshold.

    The model is loaded once. Each result is ``{"file", "probability", "label", "threshold",
    "heatmap"}``, where ``heatmap`` is the path of the saved overlay PNG (when ``cam`` names one
    of :data:`core.explain.CAM_METHODS`) or None; an image that cannot be read gives
    ``{"file", "error"}`` instead and does not stop the others.

    Args:
        run: a ``core.runs.Run`` or a run id in ``store``.
        out_dir: where overlays go (created); default ``heatmaps/`` in the working folder.
    """
    from PIL import Image

    from core.images import ImageLoadError, load_image
    from core.explain import CAM_METHODS, explainer_for, overlay
    from core.model import load_model
    from core.runs import RunError, RunStore

    if isinstance(run, str):
        run = (store or RunStore()).get(run)
    if cam is not None and cam not in CAM_METHODS:
        raise ValueError(f"cam must be one of {', '.join(CAM_METHODS)}; got {cam!r}")
    if not Path(run.model_path).is_file():
        raise RunError(f"run {run.path.name} has no trained model ({run.model_path.name}); train it first")
    config = run.config()
    threshold = float(run.threshold())
    model = load_model(run.model_path)
    explainer = explainer_for(model, threshold=threshold) if cam else None
    out = Path(out_dir) if out_dir is not None else Path("heatmaps")
    used_names: set[str] = set()
    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            image = load_image(Path(path), config.data.image_size, config.data.resize_mode)
        except (ImageLoadError, OSError) as exc:
            results.append({"file": str(path), "error": str(exc)})
            continue
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
        results.append({
            "file": str(path),
            "probability": probability,
            "label": CLASS_NAMES[int(probability >= threshold)],
            "threshold": threshold,
            "heatmap": heatmap,
        })
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.predict --run RUN IMAGE...``: one JSON line per image.

    Exit status 0 when every image was read, 1 when any image failed, 2 when the run is unusable.
    """
    from core.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    from core.explain import CAM_METHODS

    parser = argparse.ArgumentParser(prog="python -m core.predict",
                                     description="Classify chest X-rays with a trained run (research use only).")
    parser.add_argument("--run", required=True, help="run id in the store")
    parser.add_argument("--store", default=None, help="run store folder (default models/ or $CXR_STUDIO_RUNS)")
    parser.add_argument("--cam", choices=list(CAM_METHODS), default=None, help="also save a heatmap overlay")
    parser.add_argument("--out", default=None, help="folder for heatmap PNGs (default ./heatmaps)")
    parser.add_argument("--opacity", type=float, default=0.4, help="heatmap opacity 0..1")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    args = parser.parse_args(argv)
    if not 0 <= args.opacity <= 1:
        parser.error("--opacity must be between 0 and 1")
    from core.runs import RunError, RunStore

    try:
        run = RunStore(args.store).get(args.run)
        results = predict_files(run, args.images, cam=args.cam, out_dir=args.out, opacity=args.opacity)
    except (RunError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for result in results:
        print(json.dumps(result), flush=True)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
