"""Test-set evaluation: metrics, threshold choice, bootstrap intervals, calibration, saved as the run's metrics.json."""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from core.threshold import THRESHOLD_METHODS, choose_threshold  # re-exported: the rule is part of evaluation

if TYPE_CHECKING:
    from core.splits import Splits

__all__ = [
    "THRESHOLD_METHODS",
    "choose_threshold",
    "compute_metrics",
    "bootstrap_ci",
    "predict_probabilities",
    "choose_run_threshold",
    "TestImages",
    "load_test_images",
    "evaluate_run",
    "main",
]

MAX_CURVE_POINTS = 200
CI_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc")

Progress = Callable[[float, str], None]


def _as_arrays(y_true: Sequence, prob: Sequence) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities contain NaN or inf")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (NORMAL) or 1 (PNEUMONIA)")
    return y.astype(np.int64), p


def _both_classes(y: np.ndarray) -> bool:
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
    y, p = _as_arrays(y_true, prob)
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
    if _both_classes(y):
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


def _weighted_rank_metrics(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    y, p = _as_arrays(y_true, prob)
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
    samples["roc_auc"], samples["pr_auc"] = _weighted_rank_metrics(y, p, weights)
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


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -500, 500)))


def _as_model_input(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.shape[-1] == 1:  # grayscale arrays from the data cache
        x = np.repeat(x, 3, axis=-1)
    return x.astype(np.float32)


def predict_probabilities(model: Any, dataset_or_array: Any, batch_size: int = 32,
                          progress: Progress | None = None, total: int | None = None) -> np.ndarray:
    """P(PNEUMONIA) = sigmoid(logit) for every image, as float64 (N,).

    Accepts a ``tf.data.Dataset`` yielding images or ``(images, labels)`` batches, or an array
    of 0..255 images (N,S,S,3), (N,S,S,1) or a single (S,S,3). ``progress(fraction, message)``
    is called after each batch (``total`` images are needed for the fraction of a dataset).
    """
    import tensorflow as tf

    logits: list[np.ndarray] = []
    done = 0
    if isinstance(dataset_or_array, tf.data.Dataset):
        batches: Iterable = (b[0] if isinstance(b, (tuple, list)) else b for b in dataset_or_array)
    else:
        array = _as_model_input(dataset_or_array)
        total = len(array)
        batches = (array[i:i + batch_size] for i in range(0, len(array), batch_size))
    for batch in batches:
        batch = np.asarray(batch)
        out = model.predict_on_batch(_as_model_input(batch))
        logits.append(np.asarray(out, dtype=np.float64).reshape(-1))
        done += len(batch)
        if progress is not None:
            fraction = min(done / total, 1.0) if total else 0.0
            progress(fraction, f"predicted {done}{f' of {total}' if total else ''} images")
    return _sigmoid(np.concatenate(logits)) if logits else np.zeros(0)


def choose_run_threshold(run: Any, model: Any, dataset: Any, labels: Sequence, groups: Sequence[str],
                         chosen_on: str) -> float:
    """Predict the validation images, choose the run's threshold by its configured rule, save ``threshold.json``.

    The validation labels, probabilities and patients are saved with it, so the rule's choice can be
    checked (and other rules compared, ``benchmarks.operating_point``) without predicting again.

    Args:
        run: the run folder; its config names the rule.
        model: the model that will be evaluated.
        dataset: the validation images (a ``tf.data.Dataset`` or an array), in ``labels`` order.
        labels: validation labels.
        groups: the patient of each validation image (for the patient bootstrap of ``robust_youden``).
        chosen_on: how the validation set is described in the file, e.g. ``"validation (746 images)"``.
    """
    config = run.config()
    prob = predict_probabilities(model, dataset)
    threshold = choose_threshold(labels, prob, config.train.threshold_method, config.train.target_sensitivity,
                                 groups=groups)
    run.write_json("threshold.json", {
        "threshold": float(threshold), "method": config.train.threshold_method,
        "target_sensitivity": config.train.target_sensitivity, "chosen_on": chosen_on,
        "validation": {"labels": [int(v) for v in labels], "probabilities": [float(v) for v in prob],
                       "patients": [str(g) for g in groups]},
    })
    return float(threshold)


def _subgroups(labels: np.ndarray, prob: np.ndarray, subtypes: Sequence[str | None],
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


_HEADLINE = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc", "brier",
             "threshold", "confusion")


@dataclass
class TestImages:
    """A run's saved test split as the model reads it: records, uint8 images, labels, and what was skipped."""

    records: list[Any]
    images: np.ndarray
    labels: np.ndarray
    skipped: list[dict[str, str]]
    splits: Any  # core.splits.Splits
    changes: Any  # core.splits.FolderChanges | None


def load_test_images(run: Any, config: Any, splits: Splits | None = None) -> TestImages:
    """The run's saved test images through the one image path (``core.pipeline.load_arrays``).

    ``splits`` (a ``core.splits.Splits``) gives the test images explicitly; by default they are
    :func:`core.splits.evaluation_splits`: the run's saved test split, or its ``test-films.json``.
    Images missing or changed since training (by sha256) and unreadable ones are skipped and listed.

    Raises:
        RunError: the run has no test images, or none can be used.
    """
    from core.pipeline import load_arrays
    from core.runs import RunError
    from core.sample import portable_path
    from core.splits import evaluation_splits, folder_changes

    if splits is None:
        splits = evaluation_splits(config, run.path)  # a saved test list, never the folder as it is now
    records = list(splits.test)
    if not records:
        raise RunError(f"the data source of run {run.path.name} has no test images")
    changes = folder_changes(splits, check=("test",)) if splits.hashes else None
    unusable = changes.unusable if changes is not None else {}  # missing or changed since training
    skipped = [{"file": portable_path(r.path), "reason": unusable[r.path]} for r in records if r.path in unusable]
    records = [r for r in records if r.path not in unusable]
    if not records:
        raise RunError(f"none of the {len(skipped)} test images of run {run.path.name} can be evaluated: "
                       f"{changes.summary() if changes else 'see the skipped list'}")
    loaded = load_arrays(records, config.data.image_size, config.data.resize_mode, cache=config.data.cache)
    records = [records[i] for i in loaded.kept]  # unreadable files are skipped
    skipped += [{"file": portable_path(path), "reason": reason} for path, reason in loaded.skipped]
    return TestImages(records, loaded.images, loaded.labels, skipped, splits, changes)


def evaluate_run(run: Any, store: Any = None, progress: Progress | None = None, *, splits: Splits | None = None,
                 save_as: str = "metrics.json") -> dict[str, Any]:
    """Evaluate a finished run on its test split and save the result as the run's ``metrics.json``.

    The test split is touched only here. Metrics are reported at the run's threshold (chosen on
    validation at training time, ``threshold.json``) and, for comparison with write-ups that use
    it, at 0.5; with patient-level bootstrap intervals, per-image predictions and the
    sensitivity per pneumonia subtype. ``run`` is a ``core.runs.Run`` or a run id in ``store``.

    ``splits`` (a ``core.splits.Splits``) names the test images explicitly (default: the run's
    :func:`core.splits.evaluation_splits`); ``save_as`` is the file written in the run folder (a
    starter keeps its full official-test evaluation beside ``metrics.json``). The result's
    ``splits.from`` names the manifest the test images came from.
    """
    from core.model import load_model
    from core.pipeline import make_dataset
    from core.runs import RunError, RunStore
    from core.sample import portable_path

    if isinstance(run, str):
        run = (store or RunStore()).get(run)
    if not Path(run.model_path).is_file():
        raise RunError(f"run {run.path.name} has no trained model ({run.model_path.name}); train it first")
    report = progress or (lambda fraction, message: None)
    started = time.time()
    config = run.config()
    threshold = float(run.threshold())
    threshold_info = run.read_json("threshold.json") or {"threshold": threshold, "method": "default"}

    report(0.0, "loading the model")
    model = load_model(run.model_path)
    report(0.05, "loading the test images")
    test = load_test_images(run, config, splits)
    records, images, labels, skipped, splits, changes = (test.records, test.images, test.labels, test.skipped,
                                                        test.splits, test.changes)
    dataset = make_dataset(images, labels, config.train.batch_size, training=False)
    prob = predict_probabilities(
        model, dataset, progress=lambda f, m: report(0.15 + 0.75 * f, m), total=len(records))
    y = np.asarray(labels).astype(np.int64)

    report(0.92, "computing metrics and bootstrap intervals")
    patients = [r.patient or Path(r.path).stem for r in records]
    result = compute_metrics(y, prob, threshold)
    at_half = compute_metrics(y, prob, 0.5)
    result.update({
        "run_id": run.path.name,
        "split": "test",
        "source": splits.source,
        "splits": {"from": splits.manifest or "re-derived from the folder", "note": splits.note,
                   "changes": changes.to_dict() if changes is not None else None},
        "threshold_info": threshold_info,
        "at_0.5": {key: at_half[key] for key in _HEADLINE},
        "ci": bootstrap_ci(y, prob, threshold, groups=patients),
        "ci_method": "95 % percentile bootstrap over patients, 1000 samples",
        "subgroups": _subgroups(y, prob, [r.subtype for r in records], threshold, patients),
        "baseline_always_pneumonia": baseline_always_pneumonia(y),
        "n_patients": len(set(patients)),
        "skipped": skipped,
        "predictions": [
            {"file": portable_path(r.path), "label": int(label), "probability": float(p),
             "patient": r.patient, "subtype": r.subtype}
            for r, label, p in zip(records, y, prob)
        ],
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.time() - started, 2),
    })
    run.write_json(save_as, result)
    report(1.0, f"saved {save_as}")
    return result


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}"


def _format_table(m: dict[str, Any]) -> str:
    ci = m.get("ci", {})

    def row(label: str, key: str, as_pct: bool = True) -> str:
        lo, hi = ci.get(key, [None, None])
        value = m.get(key)
        if as_pct:
            text = f"{_pct(value)} %"
            interval = f"  [{_pct(lo).strip()}–{_pct(hi).strip()}]" if lo is not None else ""
        else:
            text = "  n/a" if value is None else f"{value:.3f}"
            interval = f"  [{lo:.3f}–{hi:.3f}]" if lo is not None else ""
        return f"  {label:<12}{text}{interval}"

    c = m["confusion"]
    lines = [
        f"run {m['run_id']} — test split, {m['n']} images ({m['n_positive']} pneumonia), "
        f"threshold {m['threshold']:.3f} ({m['threshold_info'].get('method', '?')})",
        row("sensitivity", "sensitivity"),
        row("specificity", "specificity"),
        row("ROC AUC", "roc_auc", as_pct=False),
        row("accuracy", "accuracy"),
        f"  confusion   TN {c['tn']}  FP {c['fp']}  FN {c['fn']}  TP {c['tp']}",
        f"  at 0.5:     sensitivity {_pct(m['at_0.5']['sensitivity']).strip()} %, "
        f"specificity {_pct(m['at_0.5']['specificity']).strip()} %, accuracy {_pct(m['at_0.5']['accuracy']).strip()} %",
    ]
    for subtype, s in m.get("subgroups", {}).items():
        lo, hi = s.get("sensitivity_ci") or (None, None)
        interval = f"  [{_pct(lo).strip()}–{_pct(hi).strip()}]" if lo is not None else ""
        lines.append(f"  {subtype:<12}sensitivity {_pct(s['sensitivity']).strip()} %{interval} (n={s['n']})")
    lines.append("  (95 % patient-level bootstrap intervals in brackets)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.evaluate RUN_ID [--store DIR]``: evaluate on the test split, print a table."""
    parser = argparse.ArgumentParser(prog="python -m core.evaluate", description=main.__doc__)
    parser.add_argument("run_id")
    parser.add_argument("--store", default=None, help="run store folder (default models/ or $CXR_STUDIO_RUNS)")
    args = parser.parse_args(argv)
    from core.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    from core.runs import RunError, RunStore

    try:
        run = RunStore(args.store).get(args.run_id)
        if not run.model_path.is_file():
            raise RunError(f"run {args.run_id} has no trained model ({run.model_path}); train it first")
        result = evaluate_run(run)
    except (RunError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_format_table(result))
    print(f"saved {run.path / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
