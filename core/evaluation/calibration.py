"""Site calibration, cross-fitted: set the threshold on half of a site's patients, score the other half, and the other way round, over repeated patient splits.

A model's threshold is chosen on validation films carved from its training set; a second hospital's
films can sit elsewhere on its probability scale (the official Kaggle test split does: models call
15–50 % of its NORMAL films pneumonia at 0.5, against 1.6–5.7 % of validation NORMAL films). A site
can recalibrate on labelled films of its own. Scored honestly, that is cross-fitting: the films a
threshold is judged on never chose it. This is "Protocol S" of the quality benchmark, and what a
site profile (``sites/<name>.json``) will hold.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from core.config.catalog import THRESHOLD_METHODS
from core.evaluation.metrics import compute_metrics
from core.evaluation.threshold import choose_threshold

__all__ = ["CrossFitted", "SITE_FIGURES", "site_rule", "cross_fitted"]

SITE_FIGURES = ("accuracy", "sensitivity", "specificity", "roc_auc")


def site_rule(method: str) -> str:
    """The rule a site sets its threshold with: the run's own, except that a fixed 0.5 is no rule to set on a site's
    films, so Youden's J stands in for it."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold rule {method!r}; choose one of {', '.join(THRESHOLD_METHODS)}")
    return "youden" if method == "fixed" else method


@dataclass
class CrossFitted:
    """Figures of one model on one site's films, each film called at a threshold set on the other half of the patients."""

    method: str  # the rule the thresholds were set with
    n_splits: int
    n: int
    n_patients: int
    per_split: list[dict[str, Any]]  # each: the two thresholds and the figures over all films
    mean: dict[str, float | None]
    low: dict[str, float | None]  # the smallest and largest value over the splits
    high: dict[str, float | None]
    calls: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool), repr=False)  # [split, film]: called

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values (the call matrix is left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "calls"}


def cross_fitted(labels: Sequence[int], prob: Sequence[float], patients: Sequence[str], method: str = "youden",
                 target_sensitivity: float = 0.95, n_splits: int = 20, seed: int = 0) -> CrossFitted:
    """Cross-fitted site calibration.

    For each of ``n_splits`` random halvings of the patients (every film of a patient on one side),
    the threshold is chosen on half A with ``method`` (``core.evaluation.threshold``) and A's films
    are left alone; B's films are called at it; then the other way round. The split's figures are
    those of all films, each called at the threshold of the half it was not in. ROC AUC does not
    depend on a threshold; it is reported per split for completeness (the same every time).

    Raises:
        ValueError: fewer than 4 patients, one class only, or an unknown rule.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(prob, dtype=np.float64)
    groups = np.asarray([str(g) for g in patients])
    if not len(y) == len(p) == len(groups):
        raise ValueError("labels, probabilities and patients must be as long as each other")
    if len(np.unique(y)) < 2:
        raise ValueError("site calibration needs films of both classes")
    unique = np.unique(groups)
    if len(unique) < 4:
        raise ValueError(f"site calibration needs at least 4 patients; got {len(unique)}")
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold rule {method!r}; choose one of {', '.join(THRESHOLD_METHODS)}")
    rng = np.random.default_rng(seed)
    rows = []
    calls = np.zeros((n_splits, len(y)), dtype=bool)
    for split in range(n_splits):
        half = set(rng.permutation(unique)[: len(unique) // 2])
        in_a = np.array([g in half for g in groups])
        thresholds = {}
        called_at = np.empty(len(y))
        for name, fit, score in (("a", in_a, ~in_a), ("b", ~in_a, in_a)):
            # a half with one class only gets 0.5 (choose_threshold's rule when the ROC curve is undefined)
            thresholds[name] = choose_threshold(y[fit], p[fit], method, target_sensitivity=target_sensitivity,
                                                groups=groups[fit], seed=seed + split)
            called_at[score] = thresholds[name]
        called = calls[split] = p >= called_at
        figures = _figures(y, called)
        figures["roc_auc"] = compute_metrics(y, p, 0.5)["roc_auc"]
        rows.append({"split": split, "threshold_set_on_a": thresholds["a"], "threshold_set_on_b": thresholds["b"],
                     **figures})
    summary = {key: [row[key] for row in rows if row[key] is not None] for key in SITE_FIGURES}
    return CrossFitted(
        method=method, n_splits=n_splits, n=int(len(y)), n_patients=int(len(unique)), per_split=rows,
        mean={k: float(np.mean(v)) if v else None for k, v in summary.items()},
        low={k: float(np.min(v)) if v else None for k, v in summary.items()},
        high={k: float(np.max(v)) if v else None for k, v in summary.items()}, calls=calls)


def _figures(y: np.ndarray, called: np.ndarray) -> dict[str, float | None]:
    tp = int((called & (y == 1)).sum())
    tn = int((~called & (y == 0)).sum())
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    return {"accuracy": (tp + tn) / len(y), "sensitivity": tp / positives if positives else None,
            "specificity": tn / negatives if negatives else None}
