"""Shortcut audit of a run: where its Grad-CAM sits relative to the film's border, and what masking the border costs in AUC; saved as audit.json.

Chest X-ray classifiers are known to read what is not anatomy: laterality markers, burnt-in
text, collimation edges, the hospital a film came from (Zech et al., "Variable generalization
performance of a deep learning model to detect pneumonia in chest radiographs", PLOS Medicine
2018; DeGrave, Janizek & Lee, "AI for radiographic COVID-19 detection selects shortcuts over
signal", Nature Machine Intelligence 2021). Most of those cues sit near the edges of the film.
The audit asks two questions of a run's test split:

1. How much of the Grad-CAM energy falls in a border band (``border_fraction`` of the side on
   each edge)? A map spread evenly over the image puts ``1 - (1 - 2f)²`` there (36 % for f = 0.1);
   a model that reads the lungs puts clearly less.
2. Does the test ROC AUC drop when the band is set to black, through the same model input path?
   A drop means the model uses what is in the band. (A black frame is itself new to the model, so
   a drop is an upper bound on that reliance; no drop is the reassuring result.)
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from core.data.datasets import CLASS_NAMES
from core.data.sample import portable_path
from core.evaluation.overlay import overlay
from core.store.runs import RunError

__all__ = ["AUDIT_FILE", "AUDIT_VERSION", "BORDER_FRACTION", "border_mask", "uniform_border_share",
           "border_share", "mask_border", "shortcut_audit", "read_audit", "audit_reading", "audit_picture"]

AUDIT_FILE = "audit.json"
AUDIT_VERSION = 1
BORDER_FRACTION = 0.10
MAP_SIZE = 64  # side of the mean maps saved in audit.json
Progress = Callable[[float, str], None]


def border_mask(size: int, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Boolean (size, size), True in the band of ``round(fraction · size)`` pixels along each edge."""
    if not 0 < fraction < 0.5:
        raise ValueError(f"border fraction must be in (0, 0.5); got {fraction}")
    band = max(1, int(round(fraction * size)))
    mask = np.ones((size, size), dtype=bool)
    mask[band:size - band, band:size - band] = False
    return mask


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


def mask_border(images: np.ndarray, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """A copy of model-input images (N,S,S[,C]) with the border band set to black (0)."""
    out = np.array(images, copy=True)
    out[:, border_mask(out.shape[1], fraction)] = 0
    return out


def _small(maps: np.ndarray) -> list[list[float]]:
    """A mean map at MAP_SIZE², rounded, for JSON."""
    from PIL import Image

    img = Image.fromarray(np.asarray(maps, dtype=np.float32), mode="F").resize((MAP_SIZE, MAP_SIZE), Image.BILINEAR)
    return np.round(np.asarray(img, dtype=np.float64), 3).tolist()


def _auc_drop_ci(y: np.ndarray, p: np.ndarray, p_masked: np.ndarray, groups: list[str],
                 n_boot: int = 1000, seed: int = 0) -> list[float | None]:
    """95 % percentile interval of AUC − masked AUC, both on the same bootstrap samples of patients."""
    from core.evaluation.metrics import weighted_rank_metrics  # the patient bootstrap of the headline intervals

    rng = np.random.default_rng(seed)
    _, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    n = int(index.max()) + 1
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)[:, index].astype(np.float64)
    drop = weighted_rank_metrics(y, p, weights)[0] - weighted_rank_metrics(y, p_masked, weights)[0]
    drop = drop[np.isfinite(drop)]
    if drop.size < n_boot // 10:
        return [None, None]
    lo, hi = np.percentile(drop, [2.5, 97.5])
    return [float(lo), float(hi)]


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def audit_reading(audit: dict[str, Any]) -> list[str]:
    """The audit in plain words, one sentence per finding."""
    share, uniform = audit["border_share"], audit["uniform_border_share"]
    band = f"the outer {_pct(audit['border_fraction'])} of each side"
    if share > uniform + 0.05:
        where = (f"The heatmaps put {_pct(share)} of their energy in {band}, more than the {_pct(uniform)} an evenly "
                 "spread map would: the model looks at the edges of the film, where markers, text and "
                 "collimation edges are, rather than at the lungs.")
    elif share < uniform - 0.05:
        where = (f"The heatmaps put {_pct(share)} of their energy in {band}, less than the {_pct(uniform)} an evenly "
                 "spread map would: they sit mostly inside the film, away from its edges.")
    else:
        where = (f"The heatmaps put {_pct(share)} of their energy in {band}, about the {_pct(uniform)} an evenly "
                 "spread map would: they are not concentrated on the lungs.")
    auc, masked = audit["auc"], audit["auc_border_masked"]
    lo, hi = audit.get("auc_drop_ci") or (None, None)
    if auc is None or masked is None:
        return [where, "The AUC comparison needs test images of both classes."]
    drop = auc - masked
    change = f"from {auc:.3f} to {masked:.3f}"
    interval = f" (95 % CI of the drop {lo:+.3f} to {hi:+.3f})" if lo is not None else ""
    if abs(drop) < 0.02:
        cost = (f"Blacking out the border leaves the test ROC AUC where it was ({auc:.3f} → {masked:.3f}{interval}): "
                "the model does not need the border to rank these films.")
    elif lo is not None and (lo > 0 or hi < 0):
        cost = (f"Blacking out the border lowers the test ROC AUC {change}{interval}: the model uses what is in the "
                "border to rank these films — read its calls with suspicion." if drop > 0 else
                f"Blacking out the border raises the test ROC AUC {change}{interval}: what is in the border misleads "
                "the model.")
    else:
        cost = (f"Blacking out the border {'lowers' if drop > 0 else 'raises'} the test ROC AUC {change}, but the "
                f"interval{interval} includes no change: with {audit['n']} films ({audit['n_patients']} patients) "
                "this test cannot tell whether the model needs the border.")
    return [where, cost]


def shortcut_audit(run: Any, progress: Progress | None = None, border_fraction: float = BORDER_FRACTION,
                   save: bool = True) -> dict[str, Any]:
    """Audit a trained run on its saved test split and (by default) save the result as its ``audit.json``.

    Grad-CAM (at the backbone's Grad-CAM layer, explaining the class called at the run's
    threshold, as on the Explain and Demo pages) is computed for every test image; the audit holds
    the mean map and mean film per true class (64 × 64), the border-band energy share per class and
    overall beside a uniform map's, and the test ROC AUC unmasked and with the band black, with a
    patient-bootstrap interval of the difference.

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
    images = np.repeat(test.images.reshape(len(test.labels), *test.images.shape[1:3], 1), 3, axis=-1)
    y = np.asarray(test.labels).astype(np.int64)
    size = images.shape[1]

    probabilities, cams = [], []
    step = 16
    for start in range(0, len(y), step):
        p, c = explainer.gradcam_batch(images[start:start + step].astype(np.float32))
        probabilities.append(p)
        cams.append(c)
        report(0.1 + 0.7 * min(start + step, len(y)) / len(y), f"Grad-CAM {min(start + step, len(y))} of {len(y)} films")
    prob, cams = np.concatenate(probabilities), np.concatenate(cams)
    report(0.85, "predicting with the border band black")
    masked = mask_border(images, border_fraction).astype(np.float32)
    prob_masked = np.concatenate([explainer.gradcam_batch(masked[i:i + step])[0] for i in range(0, len(y), step)])

    shares = border_share(cams, border_fraction)
    both = 0 < y.sum() < len(y)
    auc = float(roc_auc_score(y, prob)) if both else None
    auc_masked = float(roc_auc_score(y, prob_masked)) if both else None
    patients = [r.patient or r.path for r in test.records]
    per_class = {}
    for label, name in enumerate(CLASS_NAMES):
        chosen = y == label
        if chosen.any():
            per_class[name] = {"n": int(chosen.sum()), "border_share": float(shares[chosen].mean()),
                               "mean_cam": _small(cams[chosen].mean(axis=0)),
                               "mean_film": _small(images[chosen, ..., 0].mean(axis=0) / 255.0)}
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
        "uniform_border_share": uniform_border_share(size, border_fraction),
        "n": int(len(y)),
        "n_patients": len(set(patients)),
        "border_share": float(shares.mean()),
        "per_class": per_class,
        "auc": auc,
        "auc_border_masked": auc_masked,
        "auc_drop_ci": _auc_drop_ci(y, prob, prob_masked, patients) if both else [None, None],
        "per_image": [{"file": portable_path(r.path), "label": int(t), "probability": float(p),
                       "probability_border_masked": float(q), "border_share": float(b)}
                      for r, t, p, q, b in zip(test.records, y, prob, prob_masked, shares)],
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
    from PIL import Image, ImageDraw

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
