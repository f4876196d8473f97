"""Operating-point rules: each picks what its definition says, on validation-like data."""
from __future__ import annotations

import numpy as np
import pytest

from core.config.catalog import THRESHOLD_METHODS, describe_threshold_rule
from core.evaluation.threshold import choose_threshold


def _logit(p):
    return np.log(p / (1 - p))


def _separable(seed: int = 0):
    """Negatives around logit −3, positives around +3: a wide gap, as on a nearly separable validation set."""
    rng = np.random.default_rng(seed)
    z = np.r_[np.clip(rng.normal(-3, 0.7, 60), -6, -1.5), np.clip(rng.normal(3, 0.7, 120), 1.0, 6)]
    return np.r_[np.zeros(60), np.ones(120)].astype(int), 1 / (1 + np.exp(-z))


def _calls(p, t):
    return (np.asarray(p) >= t).astype(int)


def test_midpoint_sits_in_the_middle_of_the_gap_with_the_same_calls_as_youden():
    y, p = _separable()
    youden = choose_threshold(y, p, "youden")
    midpoint = choose_threshold(y, p, "youden_midpoint")
    gap = _logit(p[y == 0].max()), _logit(p[y == 1].min())
    assert youden == pytest.approx(p[y == 1].min())  # plain Youden hugs the lowest positive
    assert _logit(midpoint) == pytest.approx(sum(gap) / 2, abs=1e-6)
    assert (_calls(p, midpoint) == _calls(p, youden)).all()  # same validation J, wider margin


def test_robust_youden_resamples_patients_and_reaches_near_best_j():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(80), np.ones(160)].astype(int)
    p = 1 / (1 + np.exp(-np.r_[rng.normal(-1.5, 1.2, 80), rng.normal(1.5, 1.2, 160)]))
    groups = np.arange(240) // 2  # two films per patient
    t = choose_threshold(y, p, "robust_youden", groups=groups, seed=0)
    assert t == choose_threshold(y, p, "robust_youden", groups=groups, seed=0)  # seeded: reproducible

    def j(threshold):
        c = _calls(p, threshold)
        return c[y == 1].mean() - c[y == 0].mean()

    best = j(choose_threshold(y, p, "youden"))
    assert j(t) >= best - 0.05
    assert 0.05 < t < 0.95


def test_sensitivity_rule_reaches_the_target_and_fixed_is_half():
    y, p = _separable(2)
    t = choose_threshold(y, p, "sensitivity", target_sensitivity=0.9)
    assert _calls(p, t)[y == 1].mean() >= 0.9
    assert choose_threshold(y, p, "fixed") == 0.5


def test_every_rule_has_words_and_one_class_gives_half():
    for method in THRESHOLD_METHODS:
        assert describe_threshold_rule(method)
        assert choose_threshold([1, 1, 1], [0.2, 0.4, 0.9], method) == 0.5
    assert "90 %" in describe_threshold_rule("sensitivity", 0.9)
