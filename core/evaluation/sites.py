"""Site profiles: a run recalibrated on one site's labelled films (threshold, temperature, cross-fitted figures), kept as ``sites/<name>.json`` in the run folder.

A model's threshold is chosen on validation films carved from its own training set. A second
hospital's films can sit elsewhere on its probability scale, so a site that has labelled films of its
own sets the threshold there with the run's rule (:func:`core.evaluation.calibration.site_rule`) and
keeps it as a named profile. The figures it reports are cross-fitted (the films a threshold is judged
on never chose it), beside the uncalibrated figures on the same films and the run's validation
figures. Every page, ``cxr-predict --site`` and ``cxr-serve --site`` read the threshold in use through
:func:`operating_point`.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.data.datasets import CLASS_NAMES, DatasetError, ImageRecord, find_dataset
from core.data.decode import ImageLoadError
from core.data.images import model_pixels, source_digest
from core.data.preprocess import Preprocessing
from core.data.sample import portable_path
from core.data.splits import saved_splits
from core.evaluation.calibration import cross_fitted, site_rule
from core.evaluation.cue_stats import patient_resamples
from core.evaluation.metrics import bootstrap_ci, compute_metrics, sigmoid
from core.evaluation.threshold import choose_threshold
from core.store.files import atomic_write_text

__all__ = ["SITES_DIR", "MIN_FILMS_PER_CLASS", "SiteError", "OperatingPoint", "site_names", "read_site",
           "list_sites", "operating_point", "free_site_name", "fit_temperature", "find_leaks", "calibrate_site"]

SITES_DIR = "sites"
MIN_FILMS_PER_CLASS = 20  # fewer is allowed, with a warning that names the interval it leaves
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
Progress = Callable[[float, str], None]


class SiteError(ValueError):
    """A site profile cannot be made or found; the message is one sentence for the user."""


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold a page or command calls films at, and where it comes from."""

    threshold: float
    source: str  # "validation" or "site:<name>"
    label: str  # one sentence for the user
    temperature: float | None = None  # a site's calibration of the probability (None: not calibrated)

    @property
    def site(self) -> str | None:
        return self.source.split(":", 1)[1] if self.source.startswith("site:") else None

    def calibrated(self, probability: float) -> float | None:
        """The probability on the site's scale (temperature scaling), or None without a temperature."""
        if self.temperature is None:
            return None
        p = float(np.clip(probability, 1e-7, 1 - 1e-7))
        return float(sigmoid(np.log(p / (1 - p)) / self.temperature))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "site": self.site}


def _safe(name: str) -> str:
    cleaned = _NAME.sub("-", str(name).strip()).strip("-.")[:60]
    if not cleaned:
        raise SiteError("a site profile needs a name of letters, digits, '-', '_' or '.'")
    return cleaned


def _folder(run: Any) -> Path:
    return Path(run.path) / SITES_DIR


def site_names(run: Any) -> list[str]:
    """The run's profile names, oldest first."""
    folder = _folder(run)
    files = sorted(folder.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name)) if folder.is_dir() else []
    return [p.stem for p in files]


def read_site(run: Any, name: str) -> dict[str, Any]:
    """One profile as saved.

    Raises:
        SiteError: there is no such profile, or its file cannot be read.
    """
    path = _folder(run) / f"{_safe(name)}.json"
    if not path.is_file():
        known = ", ".join(site_names(run)) or "none yet"
        raise SiteError(f"run {Path(run.path).name} has no site profile {name!r} (profiles: {known})")
    try:
        profile = json.loads(path.read_text())
        float(profile["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SiteError(f"site profile {path.name} cannot be read ({type(exc).__name__}); "
                        "calibrate the site again under a new name") from None
    return profile


def list_sites(run: Any) -> list[dict[str, Any]]:
    """A summary row per profile: name, date, films, threshold, rule, cross-fitted means (unreadable ones say so)."""
    rows = []
    for name in site_names(run):
        try:
            profile = read_site(run, name)
        except SiteError as exc:
            rows.append({"name": name, "error": str(exc)})
            continue
        rows.append({"name": name, "created_at": profile.get("created_at"), "n": profile.get("n"),
                     "threshold": profile["threshold"], "method": profile.get("method"),
                     "temperature": profile.get("temperature"),
                     "cross_fitted": (profile.get("cross_fitted") or {}).get("mean"),
                     "uncalibrated": {k: (profile.get("uncalibrated") or {}).get(k)
                                      for k in ("accuracy", "sensitivity", "specificity", "roc_auc")}})
    return rows


def operating_point(run: Any, site: str | None = None) -> OperatingPoint:
    """The threshold to call films at: the named site profile's, or (``site`` None or "") the run's validation one.

    Raises:
        SiteError: the named profile does not exist or cannot be read.
    """
    if not site:
        info = run.read_json("threshold.json") or {}
        method = info.get("method", "default")
        threshold = float(run.threshold())
        return OperatingPoint(threshold, "validation",
                              f"the run's validation threshold {threshold:.3f} ({method}, chosen on validation)")
    profile = read_site(run, site)
    threshold = float(profile["threshold"])
    temperature = profile.get("temperature")
    return OperatingPoint(threshold, f"site:{profile.get('name', site)}",
                          f"site profile {profile.get('name', site)!r}: threshold {threshold:.3f} "
                          f"({profile.get('method', '?')}, set on {profile.get('n', '?')} films of that site, "
                          f"{str(profile.get('created_at', ''))[:10]})",
                          float(temperature) if temperature is not None else None)


def free_site_name(run: Any, name: str) -> str:
    """``name`` made file-safe, with "-2", "-3", … added while a profile of that name exists (nothing is overwritten)."""
    base = _safe(name)
    taken = set(site_names(run))
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def fit_temperature(labels: Sequence[int], prob: Sequence[float]) -> float:
    """The temperature T that makes sigmoid(logit / T) fit the labels best (log-loss; SciPy's bounded scalar search)."""
    from scipy.optimize import minimize_scalar  # heavy: SciPy

    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    logit = np.log(p / (1 - p))

    def loss(log_t: float) -> float:
        q = np.clip(sigmoid(logit / np.exp(log_t)), 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    return float(np.exp(minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


def find_leaks(run: Any, records: Sequence[ImageRecord], digests: Sequence[str]) -> dict[str, list[str]]:
    """Site films that are not new: byte-identical to a film the run trained or validated on, or of a patient it did.

    Returns ``{"identical": [files], "same_patient": [files], "checked_against": description}``.
    """
    splits = saved_splits(run.path)
    if splits is None:
        return {"identical": [], "same_patient": [], "checked_against": "nothing: the run saved no splits.json"}
    seen = [*splits.train, *splits.val]
    hashes = {splits.hashes.get(r.path) for r in seen} - {"", None}
    patients = {r.patient for r in seen}
    identical = [portable_path(r.path) for r, d in zip(records, digests) if d and d in hashes]
    same = [portable_path(r.path) for r, d in zip(records, digests)
            if r.patient in patients and not (d and d in hashes)]
    return {"identical": identical, "same_patient": same,
            "checked_against": f"the run's {len(seen)} training and validation films (splits.json)"}


def _interval_width(n: int) -> float:
    """The width of a 95 % Wilson interval for a proportion of 0.9 over ``n`` films (the warning's figure)."""
    from scipy.stats import binomtest  # heavy: SciPy

    ci = binomtest(int(round(0.9 * n)), n).proportion_ci(0.95, method="wilson")
    return float(ci.high - ci.low)


def _crossfit_intervals(y: np.ndarray, calls: np.ndarray, patients: Sequence[str],
                        n_boot: int = 1000, seed: int = 0) -> dict[str, list[float | None]]:
    """95 % patient-bootstrap intervals of the cross-fitted figures (each the mean over the halvings)."""
    out: dict[str, list[float]] = {"accuracy": [], "sensitivity": [], "specificity": []}
    for index in patient_resamples(patients, n_boot=n_boot, seed=seed):
        yy, cc = y[index], calls[:, index]
        pos, neg = (yy == 1).sum(), (yy == 0).sum()
        if not pos or not neg:
            continue
        tp, tn = (cc & (yy == 1)).sum(axis=1), (~cc & (yy == 0)).sum(axis=1)
        out["accuracy"].append(float(np.mean((tp + tn) / len(yy))))
        out["sensitivity"].append(float(np.mean(tp / pos)))
        out["specificity"].append(float(np.mean(tn / neg)))
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) >= 100 else [None, None]
            for k, v in out.items()}


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in ("threshold", "n", "accuracy", "sensitivity", "specificity", "roc_auc")}


def _predict(model: Any, config: Any, records: Sequence[ImageRecord], report: Progress
             ) -> tuple[list[ImageRecord], np.ndarray, list[str], list[dict[str, str]]]:
    """P(PNEUMONIA) of each readable film through the one image path, in chunks; unreadable films are listed."""
    from core.evaluation.evaluate import predict_probabilities  # heavy: Keras (through the pipeline)

    kept: list[ImageRecord] = []
    probs: list[np.ndarray] = []
    digests: list[str] = []
    skipped: list[dict[str, str]] = []
    chunk: list[np.ndarray] = []

    def flush() -> None:
        if chunk:
            probs.append(predict_probabilities(model, np.stack(chunk)[..., None]))
            chunk.clear()

    for i, record in enumerate(records):
        try:
            digest = source_digest(record.path)
            chunk.append(model_pixels(record.path, config.data.image_size, config.data.resize_mode,
                                      preprocessing=Preprocessing.of(config.data)))
        except (ImageLoadError, OSError) as exc:
            skipped.append({"file": portable_path(record.path), "error": str(exc)})
            continue
        kept.append(record)
        digests.append(digest)
        if len(chunk) == 64:
            flush()
            report(0.1 + 0.7 * (i + 1) / len(records), f"predicted {i + 1} of {len(records)} films")
    flush()
    return kept, (np.concatenate(probs) if probs else np.zeros(0)), digests, skipped


def calibrate_site(run: Any, folder: str | Path, name: str, *, model: Any = None, method: str | None = None,
                   temperature: bool = True, n_splits: int = 20, seed: int = 0,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Create a site profile from a labelled folder (Kaggle layout or one folder per class) and save it.

    Every readable film of the folder (all of its splits) is predicted through the run's one image path.
    Films byte-identical to the run's training or validation films are left out and named (a leak, not
    a new site); films whose patient id the run trained on are kept and named (Kaggle numbers patients
    per split, so an id can recur for another person). The threshold is set on all remaining films with
    the run's rule (:func:`core.evaluation.calibration.site_rule`); the figures are cross-fitted over
    ``n_splits`` patient halvings, with patient-bootstrap intervals, beside the uncalibrated figures on
    the same films and the run's validation figures. Saved as ``sites/<name>.json``; an existing name
    gets a suffix, never overwritten. Returns the profile, with ``path``.

    Raises:
        SiteError: the folder cannot be read as a labelled data set, has one class only, or too few films remain.
    """
    from core.model.classifier import load_model  # heavy: Keras

    report = progress or (lambda fraction, message: None)
    try:
        index = find_dataset(folder)
    except DatasetError as exc:
        raise SiteError(f"a site profile needs labelled films: {exc}") from None
    final_name = free_site_name(run, name)
    config = run.config()
    info = run.read_json("threshold.json") or {}
    rule = site_rule(method or info.get("method", "youden"))
    report(0.02, "loading the model")
    if model is None:
        model = load_model(run.model_path)
    records, prob, digests, skipped = _predict(model, config, index.records, report)
    leaks = find_leaks(run, records, digests)
    identical = set(leaks["identical"])
    keep = [i for i, r in enumerate(records) if portable_path(r.path) not in identical]
    records, prob = [records[i] for i in keep], prob[keep]
    y = np.asarray([r.label for r in records], dtype=np.int64)
    patients = [r.patient or Path(r.path).stem for r in records]
    counts = {c: int((y == i).sum()) for i, c in enumerate(CLASS_NAMES)}
    if min(counts.values()) == 0:
        raise SiteError(f"after leaving out {len(identical)} films identical to training films and {len(skipped)} "
                        f"unreadable ones, the folder has films of one class only ({counts}); a site profile needs both")
    if len(set(patients)) < 4:
        raise SiteError(f"a site profile needs films of at least 4 patients; {folder} has {len(set(patients))}")
    warnings = []
    for cls, n in counts.items():
        if n < MIN_FILMS_PER_CLASS:
            warnings.append(f"only {n} {cls} films: a {('specificity' if cls == 'NORMAL' else 'sensitivity')} "
                            f"near 90 % is known to about ±{_interval_width(n) / 2:.0%} from so few")
    if identical:
        warnings.append(f"{len(identical)} films are byte-identical to films the run trained or validated on "
                        "(left out: that is a leak, not a new site)")
    if leaks["same_patient"]:
        warnings.append(f"{len(leaks['same_patient'])} films carry a patient id that is also among the run's training "
                        "or validation films: kept, as an id can name another person (the Kaggle set numbers "
                        "patients per split); if they are the same people, this is a leak")
    if skipped:
        warnings.append(f"{len(skipped)} unreadable films skipped")

    report(0.85, "setting the threshold and cross-fitting")
    target = float(info.get("target_sensitivity", 0.95))
    threshold = choose_threshold(y, prob, rule, target_sensitivity=target, groups=patients, seed=seed)
    fitted = cross_fitted(y, prob, patients, rule, target_sensitivity=target, n_splits=n_splits, seed=seed)
    run_threshold = float(run.threshold())
    uncalibrated = {**_headline(compute_metrics(y, prob, run_threshold)),
                    "ci": bootstrap_ci(y, prob, run_threshold, groups=patients)}
    validation = None
    val = info.get("validation") or {}
    if val.get("labels"):
        validation = {**_headline(compute_metrics(val["labels"], val["probabilities"], run_threshold)),
                      "ci": bootstrap_ci(val["labels"], val["probabilities"], run_threshold,
                                         groups=val.get("patients"))}
    profile = {
        "version": 1, "name": final_name, "run_id": Path(run.path).name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "folder": portable_path(index.root),
        "threshold": float(threshold), "method": rule, "target_sensitivity": target,
        "temperature": fit_temperature(y, prob) if temperature else None,
        "n": int(len(y)), "counts": counts, "n_patients": len(set(patients)),
        "cross_fitted": {**fitted.to_dict(), "ci": _crossfit_intervals(y, fitted.calls, patients, seed=seed),
                         "ci_method": "95 % percentile bootstrap over patients of the cross-fitted calls, 1000 samples"},
        "uncalibrated": uncalibrated, "validation": validation, "run_threshold": run_threshold,
        "warnings": warnings, "leaks": leaks, "skipped": skipped,
        "films": [{"file": portable_path(r.path), "label": int(label), "patient": patient, "sha256": digest,
                   "probability": float(p)}
                  for r, label, patient, digest, p in zip(records, y, patients,
                                                          [digests[i] for i in keep], prob)],
    }
    path = _folder(run) / f"{final_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(profile, indent=1))
    report(1.0, f"saved {SITES_DIR}/{path.name}")
    return {**profile, "path": str(path)}
