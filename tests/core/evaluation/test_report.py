"""The model card (Markdown and HTML) read from a run folder, and the one-case PNG export."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.evaluation.audit import AUDIT_FILE, AUDIT_VERSION
from core.config import preset
from core.evaluation.metrics import bootstrap_ci, compute_metrics
from core.evaluation.report import DISCLAIMER, CaseReport, case_png, model_card, model_card_html
from core.store.runs import RunStore
from core.data.splits import run_splits


@pytest.fixture
def sample_run(tmp_path):
    """A run of the real-sample preset with its splits, threshold, test metrics and audit (no model needed)."""
    config = preset("Quick real-sample demo").with_overrides(name="card <demo>")
    run = RunStore(tmp_path).create(config)
    splits = run_splits(config, run.path)
    y = np.array([r.label for r in splits.test])
    prob = np.clip(0.3 + 0.4 * y + np.random.default_rng(0).normal(0, 0.2, y.size), 0.01, 0.99)
    metrics = compute_metrics(y, prob, 0.5)
    metrics.update({"threshold_info": {"threshold": 0.5, "method": "youden", "chosen_on": "validation (64 images)"},
                    "ci": bootstrap_ci(y, prob, 0.5, groups=[r.patient for r in splits.test]),
                    "n_patients": len({r.patient for r in splits.test}),
                    "subgroups": {"virus": {"n": 3, "detected": 2, "missed": 1, "sensitivity": 2 / 3,
                                            "sensitivity_ci": [0.2, 1.0]}}})
    run.write_json("metrics.json", metrics)
    run.write_json("threshold.json", {"threshold": 0.5, "method": "youden"})
    run.append_history({"type": "epoch", "phase": "head", "epoch": 1, "val_auc": 0.91})
    run.write_json(AUDIT_FILE, {"version": AUDIT_VERSION, "layer": "top_activation", "target": "the called class",
                                "border_fraction": 0.1, "border_px": 22, "image_size": 224,
                                "uniform_border_share": 0.354, "n": int(y.size), "n_patients": 57,
                                "border_share": 0.61, "border_fill": "a blurred copy of the film",
                                "per_class": {"NORMAL": {"n": 40, "border_share": 0.7},
                                              "PNEUMONIA": {"n": 40, "border_share": 0.52}},
                                "border": {"n": 80, "flipped": 12, "rate": 0.15, "mean_abs_delta": 0.2,
                                           "per_class": {"NORMAL": {"n": 40, "flipped": 11, "mean_delta": 0.31,
                                                                    "mean_abs_delta": 0.33},
                                                         "PNEUMONIA": {"n": 40, "flipped": 1, "mean_delta": 0.02,
                                                                       "mean_abs_delta": 0.05}}},
                                "markers": {"films": 30, "flipped": 0, "per_class": {}, "energy": None},
                                "shape": {"NORMAL": {"n": 40, "rho": 0.45, "ci": [0.2, 0.65]},
                                          "PNEUMONIA": {"n": 40, "rho": 0.05, "ci": [-0.2, 0.3]}},
                                "auc": 0.91, "auc_border_neutral": 0.88, "auc_change_ci": [-0.06, 0.01]})
    return run, splits


def test_model_card_holds_use_data_recipe_metrics_audit_limits_and_citation(sample_run):
    run, splits = sample_run
    card = model_card(run)
    for section in ("## Intended use", "## Model details and training recipe", "## Data and splits", "## Metrics",
                    "### Sensitivity per pneumonia type", "### Calibration", "## Shortcut audit", "## Known limits",
                    "## Data citation"):
        assert section in card
    assert DISCLAIMER in card and "Model Cards for Model Reporting" in card
    patients = len({r.patient for r in splits.test})
    assert f"| test | 40 | 40 | 80 | {patients} |" in card  # patient counts from splits.json
    assert "EfficientNet-Lite0" in card and "from block 6 up" in card and "1 of 12 epochs run" in card
    assert "95 % CI" in card and "virus | 3 | 1 | 66.7 %" in card and "Brier" in card
    assert "| NORMAL | 40 | 11 | +0.310 | 0 | 70.0 % | +0.45 |" in card and "0.880" in card
    assert "depend on what is in the border, whatever its AUC does" in card  # 12 of 80 calls change; the AUC barely moves
    assert "Within NORMAL films (ρ = +0.45" in card and "do not decide the calls" in card
    assert "doi:10.17632/rscbjbr9sj.2" in card and "CC BY 4.0" in card
    assert "card &lt;demo&gt;" in card and "<demo>" not in card  # a run name never becomes markup
    page = model_card_html(run)
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "<h2>Shortcut audit</h2>" in page


def test_case_png_puts_film_and_overlay_side_by_side():
    film = np.tile(np.arange(0, 250, 2, dtype=np.uint8), (100, 1))  # 125 x 100
    overlay = np.zeros((100, 125, 3), np.uint8)
    overlay[..., 0] = 255
    data = case_png(CaseReport(film, overlay, 0.8, 0.4, "run · id", "IM-0001-0001.jpeg", "NORMAL", "Kermany 2018"),
                    height=200)
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert image.shape[1] >= 900 and image.shape[0] > 200
    row = image[150]  # through both pictures: the grey film, then the red overlay at 250 px wide each
    assert (row[40:280, 0] == row[40:280, 1]).all()  # grey
    assert (row[300:530, 0] > 200).all() and (row[300:530, 1] < 30).all()  # red


def test_model_card_lists_the_preprocessing_settings(sample_run, tmp_path):
    run, _ = sample_run  # the Quick real-sample demo preprocesses its films
    assert ("**Preprocessing:** field of view *body*, remove markers *yes*, intensity *clahe* "
            "(burnt-in markers inpainted, cropped to the body, CLAHE)") in model_card(run)
    config = preset("Quick real-sample demo").with_overrides(**{
        "name": "as decoded", "data.field_of_view": "full", "data.remove_markers": False, "data.intensity": "none"})
    card = model_card(RunStore(tmp_path / "other").create(config))
    assert "**Preprocessing:** field of view *full*, remove markers *no*, intensity *none* (the film as decoded)" in card
