"""Cross-fitted site calibration: a threshold set on half a site's patients, judged on the other half."""
from __future__ import annotations

import numpy as np
import pytest

from core.evaluation.calibration import cross_fitted, site_rule


def _site(n_patients: int = 60, shift: float = 0.35, seed: int = 0):
    """A site whose films all sit higher on the model's scale: NORMAL ≈ 0.6, PNEUMONIA ≈ 0.9, two films a patient."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, 2, n_patients), 2)
    prob = np.clip(0.25 + 0.3 * labels + shift + rng.normal(0, 0.04, labels.size), 0.001, 0.999)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], 2)
    return labels, prob, patients


def test_a_shifted_site_is_recalibrated_on_its_own_films():
    labels, prob, patients = _site()
    assert ((prob >= 0.5) & (labels == 0)).sum() == (labels == 0).sum()  # at 0.5 every NORMAL film is a false alarm
    result = cross_fitted(labels, prob, patients, method="youden", n_splits=20)
    assert result.n_splits == 20 and len(result.per_split) == 20 and result.n_patients == 60
    assert result.mean["specificity"] > 0.95 and result.mean["sensitivity"] > 0.95
    assert all(0.55 < row["threshold_set_on_a"] < 0.85 for row in result.per_split)
    assert result.low["accuracy"] <= result.mean["accuracy"] <= result.high["accuracy"]
    assert result.mean["roc_auc"] == result.low["roc_auc"] == result.high["roc_auc"]  # no threshold in it


def test_a_fixed_rule_changes_nothing_so_a_site_uses_youden():
    labels, prob, patients = _site()
    fixed = cross_fitted(labels, prob, patients, method="fixed", n_splits=3)
    assert fixed.mean["specificity"] == 0.0 and {r["threshold_set_on_a"] for r in fixed.per_split} == {0.5}
    assert site_rule("fixed") == "youden" and site_rule("sensitivity") == "sensitivity"


def test_no_film_is_judged_by_a_threshold_its_own_patient_helped_to_set():
    """One patient's films far off the scale pull the threshold of the half they are in, never their own call."""
    labels, prob, patients = _site(n_patients=40, shift=0.0)
    result = cross_fitted(labels, prob, patients, n_splits=5, seed=3)
    halves = [(row["threshold_set_on_a"], row["threshold_set_on_b"]) for row in result.per_split]
    assert all(a != b or a == 0.5 for a, b in halves)  # two different halves, two thresholds
    assert cross_fitted(labels, prob, patients, n_splits=5, seed=3).per_split == result.per_split  # seeded


def test_unusable_sites_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="both classes"):
        cross_fitted([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="at least 4 patients"):
        cross_fitted([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], ["a", "a", "b", "c"])
    with pytest.raises(ValueError, match="unknown threshold rule"):
        cross_fitted([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], ["a", "b", "c", "d"], method="guess")
