"""The shift report's figures, without I/O or a model: film statistics side by side, the predicted-positive rate, probability histograms and the domain classifier.

The domain classifier is the classifier two-sample test (Lopez-Paz & Oquab, "Revisiting classifier
two-sample tests", ICLR 2017): a linear model is trained to tell the new films from the training
films on the run's own pooled backbone features, and its out-of-fold ROC AUC says how different the
two sets look to the network (0.5: not at all; 1: always told apart). Folds and the bootstrap keep
a patient's films together, so one patient's several films cannot make the sets look separable.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.evaluation.metrics import bootstrap_ci

__all__ = ["FILM_STATS", "STORAGE_STATS", "film_statistics", "summarise", "compare_films", "processing_signature",
           "positive_rates", "probability_histograms", "domain_classifier", "DOMAIN_C", "MAX_FOLDS"]

# (key, what the user reads); intensities are of the model's input, after the one image path.
FILM_STATS: tuple[tuple[str, str], ...] = (
    ("width", "stored width, px"),
    ("height", "stored height, px"),
    ("aspect_ratio", "width / height"),
    ("file_kb", "file size, KB"),
    ("mean", "mean intensity, 0–255"),
    ("std", "intensity spread, SD"),
    ("p5", "5th intensity percentile"),
    ("p95", "95th intensity percentile"),
    ("dark_share", "near-black pixels, ≤ 10"),
)
STORAGE_STATS = ("width", "height", "file_kb")  # how a film is stored, not what the model sees
DOMAIN_C = 0.1  # inverse L2 strength on standardised features: 1,280 features from a few hundred films
MAX_FOLDS = 5
HISTOGRAM_BINS = 20


def film_statistics(pixels: np.ndarray, header: dict[str, Any] | None) -> dict[str, Any]:
    """One film's figures: its stored size, mode and format (``header``), and the intensities of its model input."""
    gray = np.asarray(pixels, dtype=np.float64)
    header = header or {}
    width, height = header.get("width"), header.get("height")
    low, high = np.percentile(gray, [5, 95])
    return {"width": width, "height": height,
            "aspect_ratio": (width / height) if width and height else None,
            "file_kb": header.get("bytes", 0) / 1024 if header.get("bytes") else None,
            "mode": header.get("mode"), "format": header.get("format"),
            "mean": float(gray.mean()), "std": float(gray.std()), "p5": float(low), "p95": float(high),
            "dark_share": float((gray <= 10).mean())}


def _values(films: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.asarray([f[key] for f in films if f.get(key) is not None], dtype=np.float64)


def summarise(films: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median, quartiles and range of each statistic, and how the films are stored (mode, format, commonest size)."""
    stats = {}
    for key, _ in FILM_STATS:
        v = _values(films, key)
        stats[key] = (None if v.size == 0 else
                      {"median": float(np.median(v)), "q1": float(np.percentile(v, 25)),
                       "q3": float(np.percentile(v, 75)), "min": float(v.min()), "max": float(v.max())})
    sizes = Counter((f["width"], f["height"]) for f in films if f.get("width"))
    common = sizes.most_common(1)
    return {"n": len(films), "stats": stats,
            "modes": dict(Counter(str(f.get("mode")) for f in films)),
            "formats": dict(Counter(str(f.get("format")) for f in films)),
            "common_size": ({"width": common[0][0][0], "height": common[0][0][1], "share": common[0][1] / len(films)}
                            if common else None)}


def compare_films(new: Sequence[dict[str, Any]], training: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per statistic: the median and quartiles of each side, and the two-sample Kolmogorov–Smirnov D and p."""
    from scipy.stats import ks_2samp  # heavy: SciPy

    rows = []
    for key, label in FILM_STATS:
        a, b = _values(new, key), _values(training, key)
        row: dict[str, Any] = {"stat": key, "label": label, "new": None, "training": None, "ks": None, "p": None}
        for side, v in (("new", a), ("training", b)):
            if v.size:
                row[side] = {"median": float(np.median(v)), "q1": float(np.percentile(v, 25)),
                             "q3": float(np.percentile(v, 75))}
        if a.size >= 2 and b.size >= 2:
            test = ks_2samp(a, b)
            row["ks"], row["p"] = float(test.statistic), float(test.pvalue)
        rows.append(row)
    return rows


def processing_signature(new: dict[str, Any], training: dict[str, Any]) -> list[str]:
    """How the training films were stored unlike the new ones, from :func:`summarise` of each side (empty: alike).

    A copy resized to one size for all, or converted to another colour mode, leaves a signature a
    network sees at once; a domain classifier then measures the processing as much as the films.
    """
    found = []
    common, theirs = training.get("common_size"), new.get("common_size")
    if common and common["share"] >= 0.9:
        same = theirs and (theirs["width"], theirs["height"]) == (common["width"], common["height"])
        if not same or theirs["share"] < 0.5:
            found.append(f"{common['share']:.0%} of the training films are stored at exactly "
                         f"{common['width']} × {common['height']} px (a resized copy), the new films are not")
    modes_train, modes_new = training.get("modes") or {}, new.get("modes") or {}
    main_train = max(modes_train, key=modes_train.get) if modes_train else None
    main_new = max(modes_new, key=modes_new.get) if modes_new else None
    if main_train and main_new and main_train != main_new and modes_train[main_train] >= 0.9 * training["n"]:
        found.append(f"the training films are stored in colour mode {main_train}, the new films in {main_new}")
    return found


def _rate(k: int, n: int) -> dict[str, Any]:
    from scipy.stats import binomtest  # heavy: SciPy

    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci": [None, None]}
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return {"k": int(k), "n": int(n), "rate": k / n, "ci": [float(ci.low), float(ci.high)]}


def positive_rates(prob_new: np.ndarray, threshold: float, validation: dict[str, Any] | None,
                   labels_new: Sequence[int] | None = None) -> dict[str, Any]:
    """The share of films called pneumonia at the run's threshold, new films against validation (Wilson 95 % intervals).

    ``validation`` is ``threshold.json``'s ``validation`` (labels and probabilities); the two rates are
    compared with Fisher's exact test. A site with more pneumonia is called positive more often without
    any shift in its films, so with labels on both sides ``expected`` is the rate validation's sensitivity
    and specificity would give at the new films' prevalence, and ``p_value`` there is the binomial test
    of the observed rate against it.
    """
    from scipy.stats import binomtest, fisher_exact  # heavy: SciPy

    p = np.asarray(prob_new, dtype=np.float64)
    called = p >= threshold
    out: dict[str, Any] = {"threshold": float(threshold), "new": _rate(int(called.sum()), len(p)),
                           "validation": None, "p_value": None, "expected": None}
    if labels_new is not None and len(labels_new):
        out["new"]["prevalence"] = float(np.mean(labels_new))
    if not (validation and validation.get("probabilities")):
        return out
    q = np.asarray(validation["probabilities"], dtype=np.float64)
    out["validation"] = val = _rate(int((q >= threshold).sum()), len(q))
    new = out["new"]
    if new["n"] and val["n"]:
        out["p_value"] = float(fisher_exact([[new["k"], new["n"] - new["k"]], [val["k"], val["n"] - val["k"]]]).pvalue)
    y = np.asarray(validation.get("labels") or [], dtype=np.int64)
    if len(y) == len(q) and 0 < y.sum() < len(y):
        val["prevalence"] = float(y.mean())
        sensitivity, specificity = float((q[y == 1] >= threshold).mean()), float((q[y == 0] < threshold).mean())
        if new.get("prevalence") is not None and new["n"]:
            rate = new["prevalence"] * sensitivity + (1 - new["prevalence"]) * (1 - specificity)
            out["expected"] = {"rate": rate, "sensitivity": sensitivity, "specificity": specificity,
                               "p_value": float(binomtest(new["k"], new["n"], min(max(rate, 1e-9), 1 - 1e-9)).pvalue)}
    return out


def probability_histograms(prob_new: np.ndarray, prob_validation: Sequence[float] | None,
                           bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Counts of P(pneumonia) in ``bins`` equal bins over 0–1, for the new films and for validation."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = {"edges": edges.tolist(), "new": np.histogram(np.clip(prob_new, 0, 1), edges)[0].tolist(),
           "validation": None}
    if prob_validation is not None and len(prob_validation):
        out["validation"] = np.histogram(np.clip(np.asarray(prob_validation, dtype=np.float64), 0, 1),
                                         edges)[0].tolist()
    return out


def domain_classifier(features_new: np.ndarray, features_train: np.ndarray, patients_new: Sequence[str],
                      patients_train: Sequence[str], *, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """How well a linear model tells new films from training films: out-of-fold ROC AUC, patient-bootstrap interval.

    Standardised features, L2 logistic regression (scikit-learn, ``C`` = :data:`DOMAIN_C`), up to
    :data:`MAX_FOLDS` folds of scikit-learn's ``StratifiedGroupKFold`` by patient id. Every film is scored
    by a model that never saw its patient; ``scores_new`` / ``scores_train`` are those out-of-fold
    P(new film).

    Raises:
        ValueError: a side has fewer than two patients.
    """
    from sklearn.linear_model import LogisticRegression  # heavy: scikit-learn
    from sklearn.metrics import roc_auc_score  # heavy: scikit-learn
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict  # heavy: scikit-learn
    from sklearn.pipeline import make_pipeline  # heavy: scikit-learn
    from sklearn.preprocessing import StandardScaler  # heavy: scikit-learn

    x = np.vstack([np.asarray(features_new, np.float32), np.asarray(features_train, np.float32)])
    y = np.r_[np.ones(len(features_new), int), np.zeros(len(features_train), int)]
    groups = np.asarray([*patients_new, *patients_train], dtype=str)
    folds = min(MAX_FOLDS, len(set(patients_new)), len(set(patients_train)))
    if folds < 2:
        raise ValueError("the domain classifier needs films of at least two patients on each side")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=DOMAIN_C, max_iter=5000))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, x, y, groups=groups, cv=cv, method="predict_proba")[:, 1]
    return {"auc": float(roc_auc_score(y, scores)),
            "ci": bootstrap_ci(y, scores, 0.5, n_boot=n_boot, seed=seed, groups=groups)["roc_auc"],
            "n_new": int(y.sum()), "n_train": int(len(y) - y.sum()),
            "patients_new": len(set(patients_new)), "patients_train": len(set(patients_train)), "folds": folds,
            "method": (f"L2 logistic regression (C = {DOMAIN_C}) on the run's standardised pooled backbone features, "
                       f"{folds}-fold cross-validation grouped by patient; 95 % interval by patient bootstrap "
                       f"({n_boot} samples) of the out-of-fold scores"),
            "scores_new": scores[y == 1].tolist(), "scores_train": scores[y == 0].tolist()}
