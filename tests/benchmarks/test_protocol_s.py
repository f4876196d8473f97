"""Protocol S over committed results: each run's test predictions recalibrated as a new site, reported beside Protocol V."""
from __future__ import annotations

import json

import numpy as np

from benchmarks.protocol_s import main, protocol_s_rows, render


def _metrics(folder, shift: float, seed: int, noise: float = 0.05) -> None:
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, 2, 50), 2)
    prob = np.clip(0.25 + 0.3 * labels + shift + rng.normal(0, noise, labels.size), 0.001, 0.999)
    called = prob >= 0.5
    folder.mkdir(parents=True)
    folder.joinpath("metrics.json").write_text(json.dumps({
        "run_id": folder.name, "n": int(labels.size), "threshold": 0.5,
        "threshold_info": {"method": "fixed", "threshold": 0.5},
        "accuracy": float((called == labels).mean()), "sensitivity": float(called[labels == 1].mean()),
        "specificity": float((~called[labels == 0]).mean()), "roc_auc": 0.99,
        "predictions": [{"file": f"f{i}.jpeg", "label": int(y), "probability": float(p), "patient": f"p{i // 2}"}
                        for i, (y, p) in enumerate(zip(labels, prob))]}))


def test_a_shifted_site_gets_its_specificity_back_under_protocol_s(tmp_path):
    _metrics(tmp_path / "recipe" / "seed42", shift=0.3, seed=0)
    rows = protocol_s_rows(tmp_path, n_splits=5)
    assert len(rows) == 1 and rows[0]["site_rule"] == "youden" and rows[0]["protocol_s"]["n_splits"] == 5
    assert rows[0]["protocol_v"]["specificity"] < 0.2 < 0.9 < rows[0]["protocol_s"]["mean"]["specificity"]
    text = render(rows, 5)
    assert "| recipe | seed42 | fixed (youden) |" in text and "Kermany" in text


def test_the_command_writes_both_files_and_says_which_target_no_run_meets(tmp_path):
    _metrics(tmp_path / "results" / "recipe" / "seed42", shift=0.0, seed=1, noise=0.25)  # ranks at AUC ≈ 0.8
    out, markdown = tmp_path / "s.json", tmp_path / "S.md"
    assert main(["--results", str(tmp_path / "results"), "--splits", "3", "--out", str(out),
                 "--markdown", str(markdown)]) == 0
    assert json.loads(out.read_text())["n_splits"] == 3
    report = markdown.read_text()
    assert "No committed run meets all four" in report and "roc auc (best 0." in report
    assert "recalibration cannot lift the ROC AUC" in report
