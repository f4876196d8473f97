"""Evaluating a run: predicting its films, choosing its threshold on validation (threshold.json), and its one test evaluation (metrics.json)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.evaluation.metrics import baseline_always_pneumonia, bootstrap_ci, compute_metrics, sigmoid, subgroups
from core.evaluation.threshold import choose_threshold

if TYPE_CHECKING:
    from core.data.splits import Splits

from core.data.batches import batches_of, real_rows
from core.data.pipeline import load_arrays, make_dataset
from core.data.preprocess import Preprocessing
from core.data.sample import portable_path
from core.data.splits import evaluation_splits, folder_changes
from core.store.runs import RunError, RunStore

__all__ = [
    "predict_probabilities",
    "choose_run_threshold",
    "TestImages",
    "load_test_images",
    "evaluate_run",
]

Progress = Callable[[float, str], None]


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

    Accepts the batches of :func:`core.data.pipeline.make_dataset` (a ``tf.data.Dataset`` or, on
    another backend, the feeder, whose padding rows are dropped), images or ``(images, labels)``
    batches, or an array of 0..255 images (N,S,S,3), (N,S,S,1) or a single (S,S,3).
    ``progress(fraction, message)`` is called after each batch (``total`` images are needed for the
    fraction of a dataset).
    """
    logits: list[np.ndarray] = []
    done = 0
    if isinstance(dataset_or_array, np.ndarray) or _is_image_list(dataset_or_array):
        array = _as_model_input(dataset_or_array)
        total = len(array)
        batches: Iterable = ((array[i:i + batch_size], None) for i in range(0, len(array), batch_size))
    else:
        batches = ((b[0], real_rows(b)[0]) if isinstance(b, (tuple, list)) else (b, None)
                   for b in batches_of(dataset_or_array))
    for batch, keep in batches:
        batch = np.asarray(batch)
        out = np.asarray(model.predict_on_batch(_as_model_input(batch)), dtype=np.float64).reshape(-1)
        out = out if keep is None else out[keep]
        logits.append(out)
        done += len(out)
        if progress is not None:
            fraction = min(done / total, 1.0) if total else 0.0
            progress(fraction, f"predicted {done}{f' of {total}' if total else ''} images")
    return sigmoid(np.concatenate(logits)) if logits else np.zeros(0)


def _is_image_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and np.asarray(value[0]).ndim >= 2


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


_HEADLINE = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc", "brier",
             "threshold", "confusion")


@dataclass
class TestImages:
    """A run's saved test split as the model reads it: records, uint8 images, labels, and what was skipped."""

    records: list[Any]
    images: np.ndarray
    labels: np.ndarray
    skipped: list[dict[str, str]]
    splits: Any  # core.data.splits.Splits
    changes: Any  # core.data.splits.FolderChanges | None


def load_test_images(run: Any, config: Any, splits: Splits | None = None) -> TestImages:
    """The run's saved test images through the one image path (``core.data.pipeline.load_arrays``).

    ``splits`` (a ``core.data.splits.Splits``) gives the test images explicitly; by default they are
    :func:`core.data.splits.evaluation_splits`: the run's saved test split, or its ``test-films.json``.
    Images missing or changed since training (by sha256) and unreadable ones are skipped and listed.

    Raises:
        RunError: the run has no test images, or none can be used.
    """
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
    loaded = load_arrays(records, config.data.image_size, config.data.resize_mode, cache=config.data.cache,
                         preprocessing=Preprocessing.of(config.data))
    records = [records[i] for i in loaded.kept]  # unreadable files are skipped
    skipped += [{"file": portable_path(path), "reason": reason} for path, reason in loaded.skipped]
    return TestImages(records, loaded.images, loaded.labels, skipped, splits, changes)


def evaluate_run(run: Any, store: Any = None, progress: Progress | None = None, *, splits: Splits | None = None,
                 save_as: str = "metrics.json") -> dict[str, Any]:
    """Evaluate a finished run on its test split and save the result as the run's ``metrics.json``.

    The test split is touched only here. Metrics are reported at the run's threshold (chosen on
    validation at training time, ``threshold.json``) and, for comparison with write-ups that use
    it, at 0.5; with patient-level bootstrap intervals, per-image predictions and the
    sensitivity per pneumonia subtype. ``run`` is a ``core.store.runs.Run`` or a run id in ``store``.

    ``splits`` (a ``core.data.splits.Splits``) names the test images explicitly (default: the run's
    :func:`core.data.splits.evaluation_splits`); ``save_as`` is the file written in the run folder (a
    starter keeps its full official-test evaluation beside ``metrics.json``). The result's
    ``splits.from`` names the manifest the test images came from.
    """
    from core.model.classifier import load_model  # heavy: Keras

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
        "subgroups": subgroups(y, prob, [r.subtype for r in records], threshold, patients),
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


