"""What a cue does to a model's calls: calls that flip and Δp per class, heatmap energy inside boxes, and the rank correlation of P with the film's shape (pure numpy/SciPy, no model)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.data.cues import Box, marker_mask
from core.data.datasets import CLASS_NAMES

__all__ = ["auc_change_ci", "call_changes", "box_energy", "shape_cue", "patient_resamples"]


def patient_resamples(groups: Sequence[str], n_boot: int = 1000, seed: int = 0) -> list[np.ndarray]:
    """Index arrays of ``n_boot`` bootstrap samples drawn by patient (all of a patient's films together)."""
    _, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    members = [np.flatnonzero(index == k) for k in range(int(index.max()) + 1)] if len(index) else []
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))]) for _ in range(n_boot)]


def auc_change_ci(y: np.ndarray, before: np.ndarray, after: np.ndarray, groups: list[str],
                  n_boot: int = 1000, seed: int = 0) -> list[float | None]:
    """95 % percentile interval of AUC(after) − AUC(before), both on the same bootstrap samples of patients."""
    from core.evaluation.metrics import weighted_rank_metrics  # the patient bootstrap of the headline intervals

    rng = np.random.default_rng(seed)
    _, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    n = int(index.max()) + 1
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)[:, index].astype(np.float64)
    change = weighted_rank_metrics(y, after, weights)[0] - weighted_rank_metrics(y, before, weights)[0]
    change = change[np.isfinite(change)]
    if change.size < n_boot // 10:
        return [None, None]
    lo, hi = np.percentile(change, [2.5, 97.5])
    return [float(lo), float(hi)]


def call_changes(labels: np.ndarray, before: np.ndarray, after: np.ndarray, threshold: float) -> dict[str, Any]:
    """How many calls at ``threshold`` change between two sets of probabilities, overall and per true class.

    Per class: ``n``, ``flipped`` (calls that changed), ``mean_delta`` (mean of after − before) and
    ``mean_abs_delta``. A class with no films is left out.
    """
    labels, before, after = (np.asarray(a) for a in (labels, before, after))
    flipped = (before >= threshold) != (after >= threshold)
    out: dict[str, Any] = {"n": int(len(labels)), "flipped": int(flipped.sum()),
                           "rate": float(flipped.mean()) if len(labels) else 0.0,
                           "mean_abs_delta": float(np.abs(after - before).mean()) if len(labels) else 0.0,
                           "per_class": {}}
    for label, name in enumerate(CLASS_NAMES):
        chosen = labels == label
        if chosen.any():
            delta = after[chosen] - before[chosen]
            out["per_class"][name] = {"n": int(chosen.sum()), "flipped": int(flipped[chosen].sum()),
                                      "mean_delta": float(delta.mean()), "mean_abs_delta": float(np.abs(delta).mean())}
    return out


def box_energy(cams: np.ndarray, boxes: Sequence[Sequence[Box]]) -> dict[str, Any] | None:
    """Heatmap energy inside each film's boxes against the boxes' share of the film, over the films that have boxes.

    ``cams`` (N,S,S) are on the same pixels as the boxes. Returns None when no film has a box.
    """
    energy, area = [], []
    for cam, film_boxes in zip(np.clip(np.asarray(cams, dtype=np.float64), 0, None), boxes):
        if not film_boxes:
            continue
        mask = marker_mask(cam.shape, list(film_boxes))
        total = cam.sum()
        energy.append(float((cam * mask).sum() / total) if total > 0 else 0.0)
        area.append(float(mask.mean()))
    if not energy:
        return None
    return {"films": len(energy), "energy_share": float(np.mean(energy)), "area_share": float(np.mean(area))}


def shape_cue(labels: np.ndarray, prob: np.ndarray, aspect: Sequence[float | None], groups: Sequence[str],
              n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Within each true class, Spearman's ρ between P(PNEUMONIA) and the film's original width/height, with a 95 % CI.

    A model that reads the lungs gives ρ near 0 within a class; one that reads the film's shape (or
    the framing that goes with it) follows it. The interval is a percentile bootstrap over patients.
    Films whose original size is unknown are left out; a class needs 10 films with known, varying
    shapes, else its entry says why there is no figure.
    """
    from scipy.stats import spearmanr  # heavy: SciPy, only when the shape cue is measured

    labels, prob = np.asarray(labels), np.asarray(prob, dtype=np.float64)
    known = np.array([a is not None and np.isfinite(a) for a in aspect])
    ratio = np.array([a if ok else np.nan for a, ok in zip(aspect, known)], dtype=np.float64)
    out: dict[str, Any] = {}
    for label, name in enumerate(CLASS_NAMES):
        chosen = np.flatnonzero((labels == label) & known)
        if len(chosen) < 10 or np.ptp(ratio[chosen]) == 0:
            out[name] = {"n": int(len(chosen)), "rho": None, "ci": [None, None],
                         "note": "too few films with a known original shape" if len(chosen) < 10
                         else "every film has the same shape"}
            continue
        rho = float(spearmanr(ratio[chosen], prob[chosen]).statistic)
        sampled = []
        for rows in patient_resamples([groups[i] for i in chosen], n_boot, seed):
            x, y = ratio[chosen][rows], prob[chosen][rows]
            if np.ptp(x) > 0 and np.ptp(y) > 0:
                sampled.append(spearmanr(x, y).statistic)
        lo, hi = (np.percentile(sampled, [2.5, 97.5]) if len(sampled) >= n_boot // 2 else (None, None))
        out[name] = {"n": int(len(chosen)), "rho": rho, "ci": [None if lo is None else float(lo),
                                                               None if hi is None else float(hi)]}
    return out
