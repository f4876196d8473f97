"""``GET /v1/model``: the model card's summary as JSON, read from the run folder (config, threshold, metrics, sites)."""
from __future__ import annotations

from typing import Any

from core.config import BACKBONES
from core.evaluation.case_report import DISCLAIMER
from core.evaluation.sites import OperatingPoint, site_names
from core.serving.settings import serve_command

__all__ = ["model_summary"]

HEADLINE = ("accuracy", "sensitivity", "specificity", "precision", "roc_auc", "pr_auc", "brier")
INTENDED_USE = ("Research and education: demonstrating transfer learning on chest X-rays and what a classifier's "
                "figures mean. Not for diagnosis, triage or any decision about a patient.")


def _evaluation(metrics: dict[str, Any] | None, where: str) -> dict[str, Any] | None:
    if not metrics:
        return None
    ci = metrics.get("ci") or {}
    return {"films": where, "n": metrics.get("n"), "n_positive": metrics.get("n_positive"),
            "n_patients": metrics.get("n_patients"), "threshold": metrics.get("threshold"),
            **{name: metrics.get(name) for name in HEADLINE},
            "ci95": {name: ci.get(name) for name in HEADLINE if ci.get(name) is not None} or None,
            "ci_method": metrics.get("ci_method"), "evaluated_at": metrics.get("evaluated_at")}


def model_summary(run: Any, point: OperatingPoint, model_sha256: str) -> dict[str, Any]:
    """What a caller should know of the served model: recipe, input, operating point, test figures, limits."""
    config = run.config()
    spec = BACKBONES.get(config.model.backbone)
    threshold_info = run.read_json("threshold.json") or {}
    official = run.official_test_metrics() if run.starter else None
    summary = {
        "run_id": run.id,
        "name": config.name or None,
        "backbone": {"name": config.model.backbone, "label": spec.label if spec else config.model.backbone,
                     "weights": config.model.weights, "unfreeze_from_block": config.model.unfreeze_from_block},
        "input": {"image_size": config.data.image_size, "resize_mode": config.data.resize_mode,
                  "field_of_view": config.data.field_of_view, "remove_markers": config.data.remove_markers,
                  "intensity": config.data.intensity, "data_source": config.data.source},
        "operating_point": {**point.to_dict(), "rule": threshold_info.get("method"),
                            "chosen_on": threshold_info.get("chosen_on"), "site_profiles": site_names(run)},
        "model_sha256": model_sha256,
        "test_evaluation": _evaluation(run.metrics(), "the run's test films (metrics.json)"),
        "intended_use": INTENDED_USE,
        "notice": DISCLAIMER,
        "serve_command": serve_command(run.id, point.site),
    }
    if official:
        summary["official_test_evaluation"] = _evaluation(official, "the official 624-film test split")
    return summary
