"""Pure metrics of a binary classifier on P(PNEUMONIA): confusion figures, ROC/PR curves, calibration, patient bootstrap intervals (no I/O, no model)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

__all__ = [
    "CI_METRICS",
    "as_arrays",
    "both_classes",
    "compute_metrics",
    "weighted_rank_metrics",
    "bootstrap_ci",
    "sigmoid",
    "subgroups",
    "baseline_always_pneumonia",
]

MAX_CURVE_POINTS = 200
CI_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc")

def as_arrays(y_true: Sequence, prob: Sequence) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities contain NaN or inf")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (NORMAL) or 1 (PNEUMONIA)")
    return y.astype(np.int64), p


def both_classes(y: np.ndarray) -> bool:
    return y.size > 0 and 0 < y.sum() < y.size


def _downsample(n: int, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Evenly spaced indices into a curve of ``n`` points, always keeping both ends."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))


def _floats(values: Iterable) -> list[float]:
    return [float(v) for v in np.clip(np.asarray(values, dtype=np.float64), -1e300, 1e300)]


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def compute_metrics(y_true: Sequence, prob: Sequence, threshold: float) -> dict[str, Any]:
    """All test-set figures at one decision threshold, as plain JSON-safe values.

    Scalar metrics that are undefined for the data (e.g. ROC AUC with one class, specificity
    without normal images) are ``None``. Curves are down-sampled to at most 200 points; the ROC
    curve's infinite first threshold is reported as 1.0. PR thresholds follow scikit-learn: one
    fewer than the precision/recall points. Calibration uses 10 uniform bins
    (``sklearn.calibration.calibration_curve``) and the Brier score (Brier 1950).
    """
    y, p = as_arrays(y_true, prob)
    pred = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, pred, labels=[0, 1]).ravel())
    n = int(y.size)
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "n": n,
        "n_positive": int(y.sum()),
        "accuracy": _ratio(tp + tn, n),
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "f1": float(skm.f1_score(y, pred, zero_division=0)) if n else None,
        "roc_auc": None,
        "pr_auc": None,
        "brier": float(skm.brier_score_loss(y, p)) if n else None,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "roc": {"fpr": [], "tpr": [], "thresholds": []},
        "pr": {"precision": [], "recall": [], "thresholds": []},
        "calibration": {"prob_true": [], "prob_pred": [], "count": [], "bins": 10, "brier": None},
    }
    if n:
        edges = np.linspace(0.0, 1.0, 11)
        counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=10)  # calibration_curve's binning
        prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
        out["calibration"] = {"prob_true": _floats(prob_true), "prob_pred": _floats(prob_pred),
                              "count": [int(c) for c in counts if c > 0], "bins": 10, "brier": out["brier"]}
    if both_classes(y):
        out["roc_auc"] = float(skm.roc_auc_score(y, p))
        out["pr_auc"] = float(skm.average_precision_score(y, p))
        fpr, tpr, roc_t = skm.roc_curve(y, p)
        keep = _downsample(fpr.size)
        out["roc"] = {"fpr": _floats(fpr[keep]), "tpr": _floats(tpr[keep]),
                      "thresholds": _floats(np.minimum(roc_t[keep], 1.0))}
        prec, rec, pr_t = skm.precision_recall_curve(y, p)
        keep = _downsample(prec.size)
        out["pr"] = {"precision": _floats(prec[keep]), "recall": _floats(rec[keep]),
                     "thresholds": _floats(pr_t[keep[keep < pr_t.size]])}
    return out


def weighted_rank_metrics(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and average precision for many weightings of the same images at once.

    ``weights`` is (B, N): how often each image is drawn in each bootstrap sample. Because only
    the weights change, the images are sorted and grouped by tied score once; AUC is the
    Mann–Whitney statistic with ties counted half, AP is scikit-learn's step-wise sum
    Σ (R_k − R_{k−1}) P_k over distinct thresholds. Undefined values are NaN.
    """
    order = np.argsort(-p, kind="stable")
    ps, ys, ws = p[order], y[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])  # tie groups, highest score first
    pos = np.add.reduceat(ws * ys, starts, axis=1)  # (B, G)
    neg = np.add.reduceat(ws * (1 - ys), starts, axis=1)
    total_pos, total_neg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        neg_below = total_neg[:, None] - np.cumsum(neg, axis=1)  # negatives with a lower score
        auc = (pos * (neg_below + 0.5 * neg)).sum(1) / (total_pos * total_neg)
        tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
        ap = (pos * np.where(tp + fp > 0, tp / (tp + fp), 0.0)).sum(1) / total_pos
    undefined = (total_pos == 0) | (total_neg == 0)
    auc[undefined] = np.nan
    ap[undefined] = np.nan
    return auc, ap


def bootstrap_ci(y_true: Sequence, prob: Sequence, threshold: float, n_boot: int = 1000, seed: int = 0,
                 groups: Sequence | None = None, level: float = 0.95) -> dict[str, list[float | None]]:
    """Percentile bootstrap intervals (Efron & Tibshirani 1993) for the headline metrics.

    Each bootstrap sample is drawn as multinomial counts per image, so all ``n_boot`` samples
    are evaluated as one (n_boot, N) weight matrix. With ``groups`` (patient ids) whole
    patients are resampled (a cluster bootstrap), since images of one patient are not
    independent. Returns ``{metric: [lo, hi]}`` for accuracy, sensitivity, specificity,
    roc_auc and pr_auc; ``[None, None]`` where the metric is undefined.
    """
    y, p = as_arrays(y_true, prob)
    if y.size == 0:
        return {name: [None, None] for name in CI_METRICS}
    rng = np.random.default_rng(seed)
    if groups is None:
        weights = rng.multinomial(y.size, np.full(y.size, 1.0 / y.size), size=n_boot).astype(np.float64)
    else:
        _, group_index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        n_groups = int(group_index.max()) + 1
        drawn = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
        weights = drawn[:, group_index].astype(np.float64)
    pred = (p >= threshold).astype(np.float64)
    tp = weights @ (y * pred)
    tn = weights @ ((1 - y) * (1 - pred))
    pos, neg = weights @ y, weights @ (1 - y)
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = {
            "accuracy": (tp + tn) / (pos + neg),
            "sensitivity": tp / pos,
            "specificity": tn / neg,
        }
    samples["roc_auc"], samples["pr_auc"] = weighted_rank_metrics(y, p, weights)
    tail = 100 * (1 - level) / 2
    out: dict[str, list[float | None]] = {}
    for name in CI_METRICS:
        values = samples[name][np.isfinite(samples[name])]
        if values.size < max(10, n_boot // 10):  # mostly undefined: no honest interval
            out[name] = [None, None]
        else:
            lo, hi = np.percentile(values, [tail, 100 - tail])
            out[name] = [float(lo), float(hi)]
    return out


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """P = 1 / (1 + e^-z), float64, the shape of ``z``: the one logit-to-probability map of the project."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, dtype=np.float64), -500, 500)))


def subgroups(labels: np.ndarray, prob: np.ndarray, subtypes: Sequence[str | None],
               threshold: float, patients: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Sensitivity per pneumonia subtype (bacteria / virus) where file names tell the subtype.

    With ``patients``, each subtype also gets ``sensitivity_ci``: the same patient-level
    percentile bootstrap as the headline intervals, restricted to that subtype's images.
    """
    out = {}
    subtypes = np.asarray([s or "" for s in subtypes])
    for subtype in ("bacteria", "virus"):
        chosen = (labels == 1) & (subtypes == subtype)
        n = int(chosen.sum())
        if n:
            detected = int((prob[chosen] >= threshold).sum())
            out[subtype] = {"n": n, "detected": detected, "missed": n - detected, "sensitivity": detected / n}
            if patients is not None:
                groups = np.asarray(patients, dtype=str)[chosen]
                out[subtype]["sensitivity_ci"] = bootstrap_ci(labels[chosen], prob[chosen], threshold,
                                                              groups=groups)["sensitivity"]
    return out


def baseline_always_pneumonia(labels: np.ndarray) -> dict[str, float | None]:
    """The trivial classifier that calls every image pneumonia, on the same test images.

    Accuracy = prevalence (62.5 % on the Kaggle test split), sensitivity 1, specificity 0; a
    constant score ranks nothing: ROC AUC 0.5, average precision = prevalence.
    """
    y = np.asarray(labels).astype(np.int64)
    n, positives = int(y.size), int(y.sum())
    prevalence = positives / n if n else None
    return {"accuracy": prevalence, "sensitivity": 1.0 if positives else None,
            "specificity": 0.0 if n > positives else None, "roc_auc": 0.5 if 0 < positives < n else None,
            "pr_auc": prevalence}
