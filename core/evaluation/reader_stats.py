"""The reader study's figures: a reader's sensitivity and specificity with intervals, their ROC, agreement with the model (κ) and the paired test against it (McNemar).

Pure functions of labels, a reader's answers and the model's probabilities on the same films (no I/O):
Wilson 95 % intervals (Wilson 1927) from SciPy's ``binomtest``; the reader's empirical ROC over the
10-level rating of :func:`core.evaluation.readers.rating` and the model's over its probabilities, from
scikit-learn's ``roc_curve``; Cohen's κ between the reader's and the model's calls (Cohen 1960) from
``cohen_kappa_score``; and the exact McNemar test on the films where one of the two is right and the
other wrong, a two-sided binomial test of those discordant pairs at ½ (McNemar 1947; Fagerland et al.
2013, doi:10.1186/1471-2288-13-91).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

from core.evaluation.readers import Film, ReaderSession

__all__ = ["Proportion", "Curve", "PairedTest", "ReaderFigures", "wilson", "roc", "kappa", "mcnemar_exact",
           "reader_figures", "session_figures", "pooled_films", "model_curve"]


@dataclass(frozen=True)
class Proportion:
    """``successes`` of ``total`` with its 95 % Wilson interval (``value``, ``low``, ``high`` None when total is 0)."""

    successes: int
    total: int
    low: float | None
    high: float | None

    @property
    def value(self) -> float | None:
        return self.successes / self.total if self.total else None


@dataclass(frozen=True)
class Curve:
    """An ROC curve: false- and true-positive rates from (0, 0) to (1, 1), and its area (None with one class)."""

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    auc: float | None


@dataclass(frozen=True)
class PairedTest:
    """The exact McNemar test of a reader against the model on the same films, at the model's operating point."""

    reader_only: int  # films the reader called right and the model wrong
    model_only: int  # films the model called right and the reader wrong
    p_value: float  # two-sided; 1.0 without discordant films


@dataclass(frozen=True)
class ReaderFigures:
    """What the results view and the export show for one reader session."""

    session: str
    reader: str
    n: int  # films answered (and counted)
    threshold: float  # the model's operating point the calls were compared at
    sensitivity: Proportion
    specificity: Proportion
    model_sensitivity: Proportion
    model_specificity: Proportion
    reader_roc: Curve
    model_roc: Curve
    kappa: float | None  # Cohen's κ of the reader's calls against the model's
    agreement: Proportion  # films where the reader and the model made the same call
    mcnemar: PairedTest
    disagreements: tuple[str, ...]  # film ids where the reader's call differs from the model's


def wilson(successes: int, total: int) -> Proportion:
    """A proportion with its 95 % Wilson score interval (``scipy.stats.binomtest(...).proportion_ci``)."""
    from scipy.stats import binomtest  # heavy: SciPy

    if total <= 0:
        return Proportion(0, 0, None, None)
    ci = binomtest(int(successes), int(total)).proportion_ci(0.95, method="wilson")
    return Proportion(int(successes), int(total), float(ci.low), float(ci.high))


def roc(labels: Sequence[int], scores: Sequence[float], every_point: bool = False) -> Curve:
    """The empirical ROC curve and its area (``sklearn.metrics.roc_curve`` / ``roc_auc_score``).

    ``every_point``: keep every distinct score as a point (a reader's rating levels), not only the corners.
    """
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.size == 0 or y.min() == y.max():
        return Curve((0.0, 1.0), (0.0, 1.0), None)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=not every_point)
    return Curve(tuple(float(v) for v in fpr), tuple(float(v) for v in tpr), float(skm.roc_auc_score(y, s)))


def kappa(first: Sequence[int], second: Sequence[int]) -> float | None:
    """Cohen's κ of two sets of calls on the same films (``sklearn.metrics.cohen_kappa_score``); None when undefined
    (both called every film the same one way)."""
    if not len(first):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the undefined case is answered by None below
        value = skm.cohen_kappa_score(first, second, labels=[0, 1], replace_undefined_by=np.nan)
    return None if np.isnan(value) else float(value)


def mcnemar_exact(reader_right: Sequence[bool], model_right: Sequence[bool]) -> PairedTest:
    """The exact McNemar test: of the films where exactly one of the two is right, is each as likely to be the one?"""
    from scipy.stats import binomtest  # heavy: SciPy

    r = np.asarray(reader_right, dtype=bool)
    m = np.asarray(model_right, dtype=bool)
    reader_only, model_only = int((r & ~m).sum()), int((m & ~r).sum())
    discordant = reader_only + model_only
    p = float(binomtest(reader_only, discordant, 0.5).pvalue) if discordant else 1.0
    return PairedTest(reader_only, model_only, p)


def reader_figures(labels: Sequence[int], calls: Sequence[int], scores: Sequence[int], probabilities: Sequence[float],
                   threshold: float, films: Sequence[str] | None = None, session: str = "",
                   reader: str = "") -> ReaderFigures:
    """Every figure of one reader on ``len(labels)`` films against the model called at ``threshold``.

    ``calls``: the reader's (0 NORMAL, 1 PNEUMONIA); ``scores``: their 10-level ratings; ``probabilities``: the
    model's P(pneumonia) on the same films; ``films``: the film ids, named in ``disagreements``.
    """
    y = np.asarray(labels, dtype=np.int64)
    call = np.asarray(calls, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if not (y.shape == call.shape == p.shape == np.shape(scores)):
        raise ValueError(f"{y.size} labels, {call.size} calls, {np.size(scores)} scores and {p.size} probabilities")
    model = (p >= threshold).astype(np.int64)
    ids = list(films) if films is not None else [str(i) for i in range(y.size)]
    positive, negative = y == 1, y == 0
    return ReaderFigures(
        session=session, reader=reader, n=int(y.size), threshold=float(threshold),
        sensitivity=wilson(int((call[positive] == 1).sum()), int(positive.sum())),
        specificity=wilson(int((call[negative] == 0).sum()), int(negative.sum())),
        model_sensitivity=wilson(int((model[positive] == 1).sum()), int(positive.sum())),
        model_specificity=wilson(int((model[negative] == 0).sum()), int(negative.sum())),
        reader_roc=roc(y, scores, every_point=True), model_roc=roc(y, p),
        kappa=kappa(call, model), agreement=wilson(int((call == model).sum()), int(y.size)),
        mcnemar=mcnemar_exact(call == y, model == y),
        disagreements=tuple(f for f, a, b in zip(ids, call, model) if a != b))


def session_figures(session: ReaderSession, threshold: float) -> ReaderFigures:
    """The figures of a session over the films answered so far (answers on films since gone are kept and counted:
    the label and the model's probability were saved with the film)."""
    answered = session.answered
    films = [f for f in session.films if f.film in answered]
    return reader_figures([f.label for f in films], [answered[f.film].call for f in films],
                          [answered[f.film].score for f in films], [f.probability for f in films], threshold,
                          [f.film for f in films], session.name, session.reader)


def pooled_films(sessions: Sequence[ReaderSession]) -> list[Film]:
    """Every film answered in any of the sessions, once each (the films the model's curve is drawn over)."""
    seen: dict[str, Film] = {}
    for session in sessions:
        answered = session.answered
        for film in session.films:
            if film.film in answered:
                seen.setdefault(film.film, film)
    return list(seen.values())


def model_curve(films: Sequence[Film]) -> Curve:
    """The model's ROC over ``films`` (from the probabilities saved with them)."""
    return roc([f.label for f in films], [f.probability for f in films])
