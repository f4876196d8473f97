"""Which model ships as the starter, decided on validation originals only (Protocol V), and whether its calls follow the film's shape.

    python -m benchmarks.starter_choice STARTER_RUN CANDIDATE_RUN [CANDIDATE_RUN …]
        [--data .cache/chest_xray-restaged] [--out benchmarks/results/starter-choice.json]

Every run is scored, through its own image path (its resize mode and preprocessing), on the same
validation films: the restaged copy's ``val/`` (core.data.restage), the originals of the validation
patients of the starter's own split (data.split_seed 42, 15 % of train by patient), so none of them
trained any run here. The official test split is not opened.

Each run is scored as it would ship (its model re-saved with float16 variables, as the starter is
packaged) and weighed as that file. Per run: ROC AUC with its patient-bootstrap interval, log loss, sensitivity and specificity at the
run's threshold, and the shape cue: within each true class, Spearman's ρ between P(PNEUMONIA) and
the film's width/height (its real shape: these are originals), with a patient-bootstrap interval.
Per candidate: the paired patient-bootstrap interval of AUC(candidate) − AUC(starter).

The rule, written here before any candidate existed (issue 18, item 6): a candidate may replace the
starter when its model file is at most 20 MB and the upper end of that paired interval is ≥ 0 (its
AUC on validation is not worse than the starter's beyond chance). Among those, one whose shape cue
interval contains 0 in both classes comes first (it does not follow the film's shape); then the
lowest validation log loss; then the smaller file. With no such candidate the starter stays.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import base_parser, finish, machine, table
from benchmarks.quality.paths import RESTAGED_KAGGLE
from benchmarks.quality.results import path_roots, portable
from benchmarks.stability import _model, _probabilities
from core.data.datasets import find_dataset
from core.data.images import film_size, preprocess_gray, read_image

__all__ = ["MAX_STARTER_MB", "score_run", "choose", "main"]

MAX_STARTER_MB = 20.0


def _shape_free(cue: dict[str, Any]) -> bool:
    """Both classes' shape-cue intervals contain 0."""
    return all(c.get("ci", [None])[0] is not None and c["ci"][0] <= 0 <= c["ci"][1] for c in cue.values())


def score_run(run_dir: Path, films: list[tuple[str, int, str]]) -> dict[str, Any]:
    """One run on the validation films: its probabilities and figures (see the module docstring)."""
    from sklearn.metrics import log_loss  # heavy: scikit-learn

    from core.evaluation.cue_stats import shape_cue
    from core.evaluation.metrics import bootstrap_ci, compute_metrics

    from core.model.classifier import load_model, save_float16  # heavy: Keras

    model, meta = _model(run_dir)
    with tempfile.TemporaryDirectory() as folder:  # scored and weighed as it would ship: float16 variables
        shipped = Path(folder) / "model.keras"
        save_float16(model, shipped)
        model, shipped_mb = load_model(shipped), round(shipped.stat().st_size / 1e6, 2)
    pixels = np.stack([preprocess_gray(read_image(path), meta["image_size"], meta["resize_mode"],
                                       meta["preprocessing"]).pixels for path, _, _ in films])
    prob = _probabilities(model, pixels)
    labels = np.array([label for _, label, _ in films])
    patients = [patient for _, _, patient in films]
    sizes = [film_size(path) for path, _, _ in films]
    aspect = [s[0] / s[1] if s else None for s in sizes]
    metrics = compute_metrics(labels, prob, meta["threshold"])
    ci = bootstrap_ci(labels, prob, meta["threshold"], groups=patients)
    return {"run": meta["run"], "threshold": meta["threshold"], "resize_mode": meta["resize_mode"],
            "preprocessing": meta["preprocessing"].to_dict(), "model_mb": shipped_mb,
            "roc_auc": metrics["roc_auc"], "roc_auc_ci": ci.get("roc_auc"),
            "log_loss": float(log_loss(labels, np.clip(prob, 1e-7, 1 - 1e-7))),
            "sensitivity": metrics["sensitivity"], "specificity": metrics["specificity"],
            "shape_cue": shape_cue(labels, prob, aspect, patients), "probabilities": prob.round(6).tolist()}


def choose(starter: dict[str, Any], candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The module docstring's rule: which run ships, and why, in words."""
    eligible = [c for c in candidates if c["model_mb"] <= MAX_STARTER_MB
                and c["auc_change_ci"][1] is not None and c["auc_change_ci"][1] >= 0]
    if not eligible:
        return {"chosen": starter["run"], "why": "no candidate is as good on validation within the paired "
                                                 "interval (or small enough): the starter stays"}
    best = min(eligible, key=lambda c: (not _shape_free(c["shape_cue"]), c["log_loss"], c["model_mb"]))
    return {"chosen": best["run"], "why": (
        f"AUC on validation {best['roc_auc']:.4f} against the starter's {starter['roc_auc']:.4f}, paired interval of "
        f"the difference [{best['auc_change_ci'][0]:+.4f}, {best['auc_change_ci'][1]:+.4f}] (not worse beyond "
        f"chance); shape cue {'absent' if _shape_free(best['shape_cue']) else 'present'} in both classes; "
        f"log loss {best['log_loss']:.3f}; {best['model_mb']} MB")}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(data=RESTAGED_KAGGLE)
    parser.add_argument("starter", type=Path, help="the shipped starter's run folder")
    parser.add_argument("candidates", nargs="+", type=Path, help="candidate run folders")
    args = parser.parse_args(argv)
    from core.evaluation.cue_stats import auc_change_ci
    from core.jobs.commands.startup import import_tensorflow_quietly  # heavy: TensorFlow, quietly

    import_tensorflow_quietly()
    films = [(r.path, r.label, r.patient) for r in find_dataset(args.data).split("val")]
    if not films:
        parser.error(f"{args.data} has no val split (build it with python -m core.data.restage)")
    labels = np.array([label for _, label, _ in films])
    patients = [patient for _, _, patient in films]
    starter = score_run(args.starter, films)
    candidates = []
    for path in args.candidates:
        scored = score_run(path, films)
        scored["auc_change_ci"] = auc_change_ci(labels, np.array(starter["probabilities"]),
                                                np.array(scored["probabilities"]), patients)
        candidates.append(scored)
    result = portable({"benchmark": "starter_choice", "data": str(args.data), "machine": machine(),
                       "films": len(films), "normal": int((labels == 0).sum()), "patients": len(set(patients)),
                       "starter": starter, "candidates": candidates, "decision": choose(starter, candidates)},
                      path_roots())

    def cue(run: dict[str, Any], name: str) -> str:
        c = run["shape_cue"][name]
        return "–" if c["rho"] is None else f"{c['rho']:+.2f} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]"

    def change(run: dict[str, Any]) -> str:
        interval = run.get("auc_change_ci", [None])
        return "" if None in interval else "[{:+.4f}, {:+.4f}]".format(*interval)

    rows = [[r["run"], f"{r['roc_auc']:.4f}", change(r), f"{r['log_loss']:.3f}",
             f"{100 * r['sensitivity']:.1f}", f"{100 * r['specificity']:.1f}", cue(r, "NORMAL"), cue(r, "PNEUMONIA"),
             r["model_mb"]] for r in (starter, *candidates)]
    finish(result, args.out, table(rows, ["run", "val AUC", "Δ AUC interval", "log loss", "sens %", "spec %",
                                          "ρ NORMAL", "ρ PNEUMONIA", "MB"])
           + f"\n\nchosen: {result['decision']['chosen']} — {result['decision']['why']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
