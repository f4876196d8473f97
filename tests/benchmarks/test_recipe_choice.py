"""benchmarks.recipe_choice: rows compared seed by seed on validation, runs trained without the test split, and finished
runs of the same settings reused whether or not they had been tested."""
from __future__ import annotations

import json

import pytest

from benchmarks import quality, recipe_choice


def _row(name: str, losses: list[float], aucs: list[float]) -> dict:
    return {"name": name, "error": None,
            "runs": [{"seed": 42 + i, "val_loss": loss, "val_auc": auc} for i, (loss, auc) in enumerate(zip(losses, aucs))]}


def test_candidates_are_compared_with_the_first_row_seed_by_seed():
    rows = recipe_choice.compare([_row("ref", [0.10, 0.12, 0.09], [0.990, 0.991, 0.992]),
                                  _row("better", [0.08, 0.10, 0.07], [0.991, 0.991, 0.993]),
                                  _row("worse", [0.11, 0.20, 0.10], [0.990, 0.980, 0.992]),
                                  _row("mixed", [0.09, 0.13, 0.08], [0.991, 0.990, 0.993]),
                                  _row("lower auc", [0.09, 0.11, 0.08], [0.991, 0.989, 0.993])])
    by_name = {row["name"]: row for row in rows}
    assert by_name["ref"]["verdict"] == "reference"
    assert by_name["better"]["verdict"] == "helps"
    assert by_name["better"]["loss_minus_reference"] == pytest.approx([-0.02, -0.02, -0.02])
    assert by_name["worse"]["verdict"] == "hurts"
    assert by_name["mixed"]["verdict"] == "seeds disagree"
    assert by_name["lower auc"]["verdict"] == "seeds disagree"  # lower loss everywhere, but one seed lost AUC
    assert by_name["ref"]["val_loss"][0] == pytest.approx(0.31 / 3)
    assert recipe_choice.choose(rows) == "better"
    best = recipe_choice.compare([_row("ref", [0.10, 0.12], [0.99, 0.99]), _row("a", [0.09, 0.11], [0.99, 0.99]),
                                  _row("b", [0.05, 0.11], [0.99, 0.99])])
    assert recipe_choice.choose(best) == "b"  # of the candidates that help, the lowest mean loss
    assert recipe_choice.choose(rows[:1] + rows[2:]) == "ref"  # none helps: the reference stays


def test_a_candidate_with_a_missing_seed_gets_no_verdict():
    rows = recipe_choice.compare([_row("ref", [0.10, 0.12], [0.99, 0.99]), _row("cut", [0.05], [0.995])])
    assert rows[1]["verdict"].startswith("incomplete")


def test_rows_are_trained_without_test_and_tested_runs_of_the_same_settings_are_reused(tmp_path, cache_dir,
                                                                                       keras_weights_dir):
    from core.store.runs import RunStore

    store = RunStore(tmp_path / "runs")
    common = ["--data", "demo", "--image-size", "64", "--head-epochs", "1", "--finetune-epochs", "1",
              "--store", str(store.root)]
    # The reference row as benchmarks.quality trains it: evaluated on test at its end.
    assert quality.main([*common, "--rows", "small-cnn-scratch", "--seeds", "1",
                         "--out", str(tmp_path / "report.md"), "--results", str(tmp_path / "results")]) == 0
    (tested,) = store.list()
    assert tested.metrics() is not None

    out = tmp_path / "choice.json"
    code = recipe_choice.main([*common, "--rows", "small-cnn-scratch,mobilenet025-imagenet-noaug", "--seeds", "1",
                               "--out", str(out)])
    figures = json.loads(out.read_text())
    reference, candidate = figures["rows"]
    assert reference["runs"][0]["run_id"] == tested.id and reference["runs"][0]["reused"]
    assert reference["runs"][0]["test_read_by_that_run"] is True
    assert reference["verdict"] == "reference" and 0 <= reference["runs"][0]["val_auc"] <= 1
    assert code == 0
    (run,) = [r for r in store.list() if r.id == candidate["runs"][0]["run_id"]]
    assert run.config().train.evaluate_test is False and run.metrics() is None  # the test split was never read
    assert not candidate["runs"][0]["reused"] and candidate["verdict"] in ("helps", "hurts", "seeds disagree")
    assert candidate["loss_minus_reference"] == pytest.approx(
        [candidate["runs"][0]["val_loss"] - reference["runs"][0]["val_loss"]])
