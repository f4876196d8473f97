"""Shortcut audit of a run: do its calls hold without the film's border, without its burnt-in markers, and regardless of the film's shape? Saved as audit.json.

Chest X-ray classifiers are known to read what is not anatomy: laterality markers, burnt-in
text, collimation edges, the hospital a film came from (Zech et al., "Variable generalization
performance of a deep learning model to detect pneumonia in chest radiographs", PLOS Medicine
2018; DeGrave, Janizek & Lee, "AI for radiographic COVID-19 detection selects shortcuts over
signal", Nature Machine Intelligence 2021). The audit asks of a run's test split, through the
same model input path as evaluation:

1. **The border.** The band of ``border_fraction`` of each side of the *film* is replaced by a
   strongly blurred copy of the same film (:func:`core.data.cues.neutral_film_border`), and the
   film then goes through the run's own image path (decode, preprocessing, resize): its letters,
   text and edges go, its overall brightness stays, so the film is not something new to the model
   (a black band would be). The film's border, not the model input's: for a run that crops to the
   body or takes a centred square, the edge of its input is anatomy. How many calls change at the
   run's threshold, and by how much P moves per true class, beside the ROC AUC and a paired
   patient-bootstrap interval of its change, and how much of the band is body (above the film's
   Otsu threshold): on a tightly framed film the band is lung edge and shoulder, so the mask blurs
   anatomy too, and the reading says so.
2. **Markers.** Laterality letters, text and clips found near the edges of the model's input
   (:func:`core.data.cues.find_markers`) are inpainted (for a run that removes markers itself,
   this looks at what its input still holds); how many calls change, and how much of the
   Grad-CAM energy sits inside their boxes against their share of the film.
3. **Shape.** Within each true class, how strongly P follows the film's original width/height
   (Spearman's ρ with a patient-bootstrap interval): a model that reads the lungs does not.
4. **Where the heatmap sits**: its energy in the border band against a uniform map's.

The reading in words follows the calls, not the AUC: a model whose calls change on more than a
few percent of films (:data:`FLIP_TOLERANCE`) depends on the border, whatever its AUC does.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

from core.data.cues import BORDER_FRACTION, border_mask, neutral_film_border, remove_markers
from core.data.datasets import CLASS_NAMES
from core.data.images import film_size, preprocess_gray, read_image
from core.data.preprocess import Preprocessing, foreground
from core.data.sample import portable_path
from core.evaluation.cue_stats import auc_change_ci, box_energy, call_changes, shape_cue
from core.evaluation.overlay import overlay
from core.store.runs import RunError

__all__ = ["AUDIT_FILE", "AUDIT_VERSION", "BORDER_FRACTION", "FLIP_TOLERANCE", "MARKER_TOLERANCE", "border_mask",
           "uniform_border_share", "border_share", "shortcut_audit", "read_audit", "audit_reading", "audit_picture",
           "film_without_cues", "without_border", "band_body_share"]

AUDIT_FILE = "audit.json"
AUDIT_VERSION = 3  # 1: border set to black, AUC only; 2: the model input's border blurred (anatomy, after a crop)
FLIP_TOLERANCE = 0.03  # more calls than this changing without the border: the model depends on the border
MARKER_TOLERANCE = 0.01  # more calls than this changing without the markers: the model depends on them
MAP_SIZE = 64  # side of the mean maps saved in audit.json
Progress = Callable[[float, str], None]


def uniform_border_share(size: int, fraction: float = BORDER_FRACTION) -> float:
    """The share of a uniform map's energy in the band: its share of the pixels (1 − (1 − 2f)² up to rounding)."""
    return float(border_mask(size, fraction).mean())


def border_share(cams: np.ndarray, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Per map (N,S,S) or for one map (S,S): heatmap energy in the border band ÷ all its energy (0 for an empty map)."""
    cams = np.clip(np.asarray(cams, dtype=np.float64), 0, None)
    single = cams.ndim == 2
    cams = cams[None] if single else cams
    mask = border_mask(cams.shape[-1], fraction)
    total = cams.sum(axis=(1, 2))
    inside = (cams * mask).sum(axis=(1, 2))
    share = np.divide(inside, total, out=np.zeros_like(total), where=total > 0)
    return share[0] if single else share


def _small(maps: np.ndarray) -> list[list[float]]:
    """A mean map at MAP_SIZE², rounded, for JSON."""
    img = Image.fromarray(np.asarray(maps, dtype=np.float32), mode="F").resize((MAP_SIZE, MAP_SIZE), Image.BILINEAR)
    return np.round(np.asarray(img, dtype=np.float64), 3).tolist()


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def _changes(change: dict[str, Any]) -> str:
    """"NORMAL 3 of 40 (mean Δp +0.21), PNEUMONIA 0 of 40 (−0.01)"."""
    return ", ".join(f"{name} {c['flipped']} of {c['n']} (mean Δp {c['mean_delta']:+.2f})"
                     for name, c in change["per_class"].items())


def audit_reading(audit: dict[str, Any]) -> list[str]:
    """The audit in plain words, one sentence per finding; the verdicts follow the calls that change."""
    lines = []
    border = audit["border"]
    band = f"the outer {_pct(audit['border_fraction'])} of each side"
    changed = f"{border['flipped']} of {border['n']} calls ({_pct(border['rate'])})"
    auc = (f" The test ROC AUC goes from {audit['auc']:.3f} to {audit['auc_border_neutral']:.3f}."
           if audit.get("auc") is not None and audit.get("auc_border_neutral") is not None else "")
    body = audit.get("border_body_share")
    anatomy = (f" {_pct(body)} of that band is the body itself (brighter than the film's Otsu threshold), so the "
               "mask blurs anatomy too: part of the change may be the model reading a blurred lung edge as "
               "disease, not a shortcut." if body is not None and body >= 0.25 else "")
    if border["rate"] > FLIP_TOLERANCE:
        lines.append(f"With {band} replaced by a blurred copy of the film, {changed} change at the run's threshold — "
                     f"{_changes(border)}. The model's calls depend on what is in the border, whatever its AUC "
                     f"does.{auc}{anatomy}")
    else:
        lines.append(f"With {band} replaced by a blurred copy of the film, {changed} change at the run's threshold "
                     f"(mean |Δp| {border['mean_abs_delta']:.3f}): its calls do not hang on the border's content.{auc}")
    markers = audit["markers"]
    if markers.get("removed_by_run"):
        lines.append("This run inpaints burnt-in markers itself before its model sees a film (data.remove_markers), "
                     "so no marker reaches the model. "
                     + (f"In its input the finder still marks bright spots near the edges of {markers['films']} "
                        f"films (after the crop and CLAHE, mostly bone); inpainting those changes "
                        f"{markers['flipped']} of those {markers['films']} calls." if markers["films"] else ""))
    elif not markers["films"]:
        lines.append("No laterality letters, text or clips were found near the edges of these films, so the audit "
                     "cannot say whether the model reads them.")
    else:
        energy = markers.get("energy")
        held = (f" Their boxes cover {_pct(energy['area_share'])} of those films and hold "
                f"{_pct(energy['energy_share'])} of the heatmap." if energy else "")
        verdict = ("the calls hang on the markers" if markers["flipped"] > MARKER_TOLERANCE * markers["films"]
                   else "the markers do not decide the calls")
        lines.append(f"Markers (letters, text, clips) were found on {markers['films']} of {audit['n']} films.{held} "
                     f"Inpainting them changes {markers['flipped']} of those {markers['films']} calls "
                     f"({_pct(markers['flipped'] / markers['films'])}): {verdict}.")
    shape = audit.get("shape") or {}
    following = [f"{name} films (ρ = {c['rho']:+.2f}, 95 % CI {c['ci'][0]:+.2f} to {c['ci'][1]:+.2f})"
                 for name, c in shape.items() if c.get("rho") is not None and c["ci"][0] is not None
                 and (c["ci"][0] > 0 or c["ci"][1] < 0) and abs(c["rho"]) >= 0.2]
    measured = [f"{name} ρ = {c['rho']:+.2f}" for name, c in shape.items() if c.get("rho") is not None]
    if following:
        lines.append("Within " + " and ".join(following) + ", the probability follows the film's original "
                     "width/height: the model reads the film's shape or the framing that goes with it.")
    elif measured:
        lines.append("Within each class the probability does not follow the film's original width/height ("
                     + ", ".join(measured) + "; every interval includes no effect or the effect is small).")
    else:
        lines.append("The films' original shapes are not known here (or all alike), so the shape cue was not measured.")
    share, uniform = audit["border_share"], audit["uniform_border_share"]
    if share > uniform + 0.05:
        lines.append(f"The heatmaps put {_pct(share)} of their energy in {band}, more than the {_pct(uniform)} an "
                     "evenly spread map would: the model looks at the edges of the film.")
    elif share < uniform - 0.05:
        lines.append(f"The heatmaps put {_pct(share)} of their energy in {band}, less than the {_pct(uniform)} an "
                     "evenly spread map would: they sit mostly inside the film.")
    else:
        lines.append(f"The heatmaps put {_pct(share)} of their energy in {band}, about the {_pct(uniform)} an evenly "
                     "spread map would: they are not concentrated on the lungs.")
    return lines


def without_border(source: Any, data: Any, fraction: float = BORDER_FRACTION, film: np.ndarray | None = None) -> np.ndarray:
    """The model's pixels (S,S) uint8 of a film whose own border was blurred first, then the run's image path.

    ``data`` is the run's data settings (image size, resize mode, preprocessing); ``film`` the decoded film when the
    caller has it already (decoded as the image path does, at the run's draft size).
    """
    size = data.image_size
    gray = read_image(source, draft_size=size) if film is None else np.asarray(film)
    return preprocess_gray(neutral_film_border(gray, fraction), size, data.resize_mode, Preprocessing.of(data)).pixels


def band_body_share(gray: np.ndarray, fraction: float = BORDER_FRACTION) -> float:
    """Of the film's border band, the share that is body (:func:`core.data.preprocess.foreground`), against air,
    padding and collimation. A flat film has no body: 0."""
    body = foreground(gray)
    return 0.0 if body is None else float(body[border_mask(np.shape(gray), fraction)].mean())


def _predict(explainer: Any, images: np.ndarray, step: int = 16) -> np.ndarray:
    return np.concatenate([explainer.gradcam_batch(images[i:i + step].astype(np.float32))[0]
                           for i in range(0, len(images), step)])


def shortcut_audit(run: Any, progress: Progress | None = None, border_fraction: float = BORDER_FRACTION,
                   save: bool = True) -> dict[str, Any]:
    """Audit a trained run on its saved test split and (by default) save the result as its ``audit.json``.

    Grad-CAM (at the backbone's Grad-CAM layer, explaining the class called at the run's
    threshold, as on the Explain and Demo pages) is computed for every test film. The audit holds
    the calls that change without the border (neutral fill) and without the markers, per true
    class, the ROC AUC both ways with a paired patient-bootstrap interval, the heatmap energy in
    the border band and in the marker boxes, the shape cue, the mean map and film per true class
    (64 × 64), and every film's figures.

    Raises:
        core.store.runs.RunError: no trained model, or no usable test images.
    """
    from sklearn.metrics import roc_auc_score  # heavy: scikit-learn

    from core.evaluation.evaluate import load_test_images  # heavy: scikit-learn
    from core.evaluation.explain import Explainer  # heavy: Keras, scikit-learn, TensorFlow
    from core.model.classifier import load_model  # heavy: Keras

    report = progress or (lambda fraction, message: None)
    if not run.model_path.is_file():
        raise RunError(f"run {run.id} has no trained model; train it first")
    started = time.time()
    config = run.config()
    threshold = run.threshold()
    report(0.0, "loading the model")
    explainer = Explainer(load_model(run.model_path), threshold=threshold)
    report(0.05, "loading the test images")
    test = load_test_images(run, config)
    gray = np.asarray(test.images).reshape(len(test.labels), *test.images.shape[1:3]).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    y = np.asarray(test.labels).astype(np.int64)
    size = images.shape[1]

    probabilities, cams = [], []
    step = 16
    for start in range(0, len(y), step):
        p, c = explainer.gradcam_batch(images[start:start + step].astype(np.float32))
        probabilities.append(p)
        cams.append(c)
        report(0.1 + 0.6 * min(start + step, len(y)) / len(y), f"Grad-CAM {min(start + step, len(y))} of {len(y)} films")
    prob, cams = np.concatenate(probabilities), np.concatenate(cams)
    report(0.72, "predicting with the film's border replaced by a blurred copy of the film")
    films = [read_image(r.path, draft_size=config.data.image_size) for r in test.records]  # the image path's decode
    neutral = np.stack([without_border(None, config.data, border_fraction, film=f) for f in films])
    body_shares = [band_body_share(f, border_fraction) for f in films]
    prob_neutral = _predict(explainer, np.repeat(neutral[..., None], 3, axis=-1), step)
    report(0.8, "finding and inpainting markers")
    cleaned, boxes = zip(*(remove_markers(film) for film in gray))
    with_markers = np.flatnonzero([bool(b) for b in boxes])
    prob_clean = prob.copy()
    if len(with_markers):
        prob_clean[with_markers] = _predict(explainer, np.repeat(np.stack(cleaned)[with_markers][..., None], 3, -1), step)
    report(0.92, "measuring the shape cue")
    patients = [r.patient or r.path for r in test.records]
    aspect = [dims[0] / dims[1] if (dims := film_size(r.path)) else None for r in test.records]

    shares = border_share(cams, border_fraction)
    both = 0 < y.sum() < len(y)
    auc = float(roc_auc_score(y, prob)) if both else None
    auc_neutral = float(roc_auc_score(y, prob_neutral)) if both else None
    marker_change = call_changes(y[with_markers], prob[with_markers], prob_clean[with_markers], threshold)
    per_class = {}
    for label, name in enumerate(CLASS_NAMES):
        chosen = y == label
        if chosen.any():
            per_class[name] = {"n": int(chosen.sum()), "border_share": float(shares[chosen].mean()),
                               "mean_cam": _small(cams[chosen].mean(axis=0)),
                               "mean_film": _small(gray[chosen].mean(axis=0) / 255.0)}
    audit = {
        "version": AUDIT_VERSION,
        "run_id": run.id,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "method": "gradcam",
        "layer": explainer.layer,
        "target": "the class called at the run's threshold",
        "threshold": threshold,
        "image_size": size,
        "border_fraction": border_fraction,
        "border_px": int(border_mask(size, border_fraction)[size // 2].sum() // 2),
        "border_fill": "a Gaussian blur of the same film (sigma half the band), on the film before the run's image path",
        "uniform_border_share": uniform_border_share(size, border_fraction),
        "n": int(len(y)),
        "n_patients": len(set(patients)),
        "border_share": float(shares.mean()),
        "per_class": per_class,
        "border": call_changes(y, prob, prob_neutral, threshold),
        "border_body_share": float(np.mean(body_shares)),
        "auc": auc,
        "auc_border_neutral": auc_neutral,
        "auc_change_ci": auc_change_ci(y, prob, prob_neutral, patients) if both else [None, None],
        "markers": {"films": int(len(with_markers)), "flipped": marker_change["flipped"],
                    "removed_by_run": bool(config.data.remove_markers),
                    "per_class": marker_change["per_class"],
                    "energy": box_energy(cams[with_markers], [boxes[i] for i in with_markers])},
        "shape": shape_cue(y, prob, aspect, patients),
        "per_image": [{"file": portable_path(r.path), "label": int(t), "probability": float(p),
                       "probability_border_neutral": float(q), "probability_without_markers": float(c),
                       "markers": len(b), "aspect_ratio": a, "border_share": float(s), "border_body_share": h}
                      for r, t, p, q, c, b, a, s, h in zip(test.records, y, prob, prob_neutral, prob_clean, boxes,
                                                            aspect, shares, body_shares)],
        "skipped": test.skipped,
        "seconds": round(time.time() - started, 1),
    }
    audit["reading"] = audit_reading(audit)
    if save:
        run.write_json(AUDIT_FILE, audit)
    report(1.0, f"saved {AUDIT_FILE}")
    return audit


def audit_picture(audit: dict[str, Any], class_name: str, size: int = 320) -> np.ndarray:
    """The mean Grad-CAM of one true class over its mean film, with the border band outlined; uint8 RGB (size, size, 3)."""
    entry = audit["per_class"][class_name]
    film = Image.fromarray(np.asarray(entry["mean_film"], np.float32) * 255, mode="F").resize((size, size), Image.BILINEAR)
    cam = np.asarray(entry["mean_cam"], np.float32)
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)  # the mean of 0..1 maps, stretched to 0..1 for colour
    picture = Image.fromarray(overlay(np.asarray(film), cam, 0.5))
    band = round(audit["border_fraction"] * size)
    ImageDraw.Draw(picture).rectangle([band, band, size - 1 - band, size - 1 - band], outline=(255, 255, 255), width=2)
    return np.asarray(picture)


def read_audit(run: Any) -> dict[str, Any] | None:
    """The run's saved audit, or None when there is none (or it is from another audit version)."""
    audit = run.read_json(AUDIT_FILE)
    return audit if audit and audit.get("version") == AUDIT_VERSION else None


def film_without_cues(model: Any, image: np.ndarray, film: np.ndarray, data: Any,
                      border_fraction: float = BORDER_FRACTION) -> dict[str, Any]:
    """P(pneumonia) of one film, without its border and without its markers.

    ``image`` is the model's input (S,S,3, 0..255), ``film`` the decoded film it came from and ``data`` the run's data
    settings: the border is the film's own, blurred before the run's image path (see :func:`without_border`); the
    markers are those still in the model's input, looked for only when the run does not inpaint them itself
    (``markers_removed_by_run``). What the Explain and Demo pages show under the film: whether this
    answer hangs on a letter in the corner or on the film's edges. ``markers`` is the number of markers found
    (0: P is unchanged).
    """
    from core.evaluation.metrics import sigmoid  # heavy: scikit-learn (with the metrics it sits beside)

    image = np.asarray(image, dtype=np.float32)
    border = without_border(None, data, border_fraction, film=film)
    batch = [image, np.repeat(border[..., None], 3, -1).astype(np.float32)]
    boxes: list = []
    if not data.remove_markers:  # a run that inpaints them itself: no marker reaches its model, nothing to check
        cleaned, boxes = remove_markers(np.clip(np.round(image[..., 0]), 0, 255).astype(np.uint8))
        batch.append(np.repeat(cleaned[..., None], 3, -1).astype(np.float32))
    p = sigmoid(np.asarray(model.predict_on_batch(np.stack(batch))).reshape(-1))
    return {"probability": float(p[0]), "without_border": float(p[1]),
            "without_markers": float(p[2] if len(p) > 2 else p[0]), "markers": len(boxes),
            "markers_removed_by_run": bool(data.remove_markers), "border_fraction": border_fraction}
