"""Operating-point rules: how the decision threshold on P(PNEUMONIA) is chosen on validation (never on test)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.config.catalog import THRESHOLD_LABELS, THRESHOLD_METHODS, describe_threshold_rule  # re-exported
from core.evaluation.metrics import as_arrays, both_classes, sigmoid

__all__ = ["THRESHOLD_METHODS", "THRESHOLD_LABELS", "choose_threshold", "describe_threshold_rule"]

_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _roc(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ROC curve with every threshold; imported here, not with the module (the Train page imports
    only the labels, and scikit-learn would slow its first drawing)."""
    from sklearn.metrics import roc_curve

    return roc_curve(y, score, drop_intermediate=False)


def _youden(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, thresholds = _roc(y, p)
    index = int(np.argmax(tpr - fpr))  # first maximum = the highest such threshold
    return float(min(thresholds[index], 1.0))  # roc_curve's first threshold is +inf


def _youden_midpoint(y: np.ndarray, p: np.ndarray) -> float:
    """The middle, in logit space, of the widest run of thresholds that all reach the best J.

    Youden's J is a step function of the threshold: it only changes at the validation scores. Plain
    Youden returns the top end of the best step (the lowest-scored positive it still calls), so the
    threshold hugs the positives and a small shift of the test distribution moves images across it.
    The middle of the step (in logit space, where a nearly separable validation set puts its gap)
    keeps the same validation J with the widest margin on both sides.
    """
    fpr, tpr, thresholds = _roc(y, _logit(p))  # thresholds descending
    j, thresholds = (tpr - fpr)[1:], thresholds[1:]  # drop roc_curve's +inf "call nothing" point
    best = np.flatnonzero(np.isclose(j, j.max(), atol=1e-12))
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)

    def bounds(run: np.ndarray) -> tuple[float, float]:
        # Threshold i gives the same calls on (thresholds[i + 1], thresholds[i]]; a run joins its steps.
        upper = thresholds[run[0]]
        lower = thresholds[run[-1] + 1] if run[-1] + 1 < thresholds.size else thresholds[run[-1]] - 1.0
        return lower, upper

    lower, upper = max((bounds(run) for run in runs), key=lambda b: b[1] - b[0])
    return float(sigmoid((lower + upper) / 2))


def _robust_youden(y: np.ndarray, p: np.ndarray, groups: Sequence | None, n_boot: int, seed: int) -> float:
    """Median, in logit space, of Youden thresholds over patient-bootstrap resamples of validation."""
    rng = np.random.default_rng(seed)
    group_ids = np.asarray(groups if groups is not None else np.arange(y.size))
    unique, inverse = np.unique(group_ids, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(unique.size)]
    picks = []
    for _ in range(n_boot):
        chosen = rng.integers(0, unique.size, unique.size)
        index = np.concatenate([members[g] for g in chosen])
        if 0 < y[index].sum() < index.size:
            picks.append(_logit(np.array([_youden(y[index], p[index])]))[0])
    if not picks:
        return _youden(y, p)
    return float(sigmoid(float(np.median(picks))))


def choose_threshold(y_true: Sequence, prob: Sequence, method: str = "youden",
                     target_sensitivity: float = 0.95, groups: Sequence | None = None,
                     n_boot: int = 200, seed: int = 0) -> float:
    """The decision threshold on P(PNEUMONIA), chosen on validation data (never on test).

    An image is called positive when ``prob >= threshold``. Rules:

    - ``youden``: maximise Youden's J = sensitivity + specificity − 1 (Youden 1950), highest threshold.
    - ``robust_youden``: the median of Youden thresholds over ``n_boot`` bootstrap resamples of
      validation, resampling whole patients (``groups``), so the choice does not rest on one or two
      borderline films.
    - ``youden_midpoint``: the middle of the best-J plateau in logit space.
    - ``sensitivity``: the highest threshold whose sensitivity reaches ``target_sensitivity``
      (a screening setting: few missed pneumonias).
    - ``fixed``: 0.5, the point balanced class weights train towards.

    With only one class present the ROC curve is undefined and 0.5 is returned.

    Args:
        y_true: validation labels (0 NORMAL, 1 PNEUMONIA).
        prob: validation probabilities of PNEUMONIA.
        method: one of :data:`THRESHOLD_METHODS`.
        target_sensitivity: for ``sensitivity``.
        groups: patient id per image, for ``robust_youden`` (each image its own patient if None).
        n_boot: bootstrap resamples for ``robust_youden``.
        seed: bootstrap seed.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be one of {', '.join(THRESHOLD_METHODS)}; got {method!r}")
    y, p = as_arrays(y_true, prob)
    if method == "fixed" or not both_classes(y):
        return 0.5
    if method == "youden":
        return _youden(y, p)
    if method == "youden_midpoint":
        return _youden_midpoint(y, p)
    if method == "robust_youden":
        return _robust_youden(y, p, groups, n_boot, seed)
    fpr, tpr, thresholds = _roc(y, p)
    index = int(np.argmax(tpr >= target_sensitivity - 1e-12))  # tpr rises as thresholds fall
    return float(min(thresholds[index], 1.0))
