"""benchmarks.quality: the tables built from metrics.json (mean ± sd over seeds, every run, the ensemble), the targets
check on fixed numbers, the baseline and published rows, row presets and selection, portable result files, the report
section, and tiny real runs (one seed; two seeds and their ensemble)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import quality
from benchmarks.quality import (KAGGLE_ROWS, MEDMNIST_ROWS, TARGETS, RowOutcome, RowResult, baseline_row,
                                build_report, build_summary, check_targets)

REPO = quality.REPO


def _metrics(n: int = 624, positives: int = 390) -> dict:
    """A metrics.json as core.evaluate writes it (only the fields the report reads)."""
    return {
        "n": n, "n_positive": positives, "n_patients": 500, "threshold": 0.73,
        "threshold_info": {"method": "youden", "chosen_on": "validation (746 images)"},
        "accuracy": 0.9, "sensitivity": 0.95, "specificity": 0.8, "roc_auc": 0.955, "pr_auc": 0.97,
        "ci": {"accuracy": [0.88, 0.92], "sensitivity": [0.93, 0.97], "specificity": [0.75, 0.85],
               "roc_auc": [0.94, 0.97], "pr_auc": [0.96, 0.98]},
        "ci_method": "95 % percentile bootstrap over patients, 1000 samples",
        "at_0.5": {"accuracy": 0.85, "sensitivity": 0.99, "specificity": 0.6, "roc_auc": 0.955, "pr_auc": 0.97},
        "subgroups": {"bacteria": {"n": 242, "detected": 240, "missed": 2, "sensitivity": 240 / 242},
                      "virus": {"n": 148, "detected": 130, "missed": 18, "sensitivity": 130 / 148}},
    }


def test_baseline_is_the_always_pneumonia_classifier():
    base = baseline_row(_metrics())
    assert base["accuracy"] == pytest.approx(0.625)  # 390 / 624, the published 62.5 %
    assert (base["sensitivity"], base["specificity"], base["roc_auc"]) == (1.0, 0.0, 0.5)
    assert base["pr_auc"] == pytest.approx(0.625)


def test_report_has_ours_with_intervals_published_baseline_and_not_run_rows():
    done = RowResult("mobilenet025-imagenet", "a row", weights="ImageNet, local file x.h5", run_id="r1",
                     state="finished", metrics=_metrics(), config={"model": {"backbone": "mobilenet", "alpha": 0.25},
                                                                   "data": {"image_size": 224}},
                     wall_seconds=125, train_seconds=100, epochs={"head": 15, "finetune": 6}, best_epoch=19,
                     counts={"train": 4470, "val": 746, "test": 624}, load=(2.0, 3.5), seed=42, label="seed 42")
    one_seed = RowOutcome("mobilenet025-imagenet", "a row", seeds=[42], split_seed=42, runs=[done], wall_seconds=130)
    missing = RowOutcome("vgg16-imagenet", "reference", error="ImageNet weights for VGG16 are unavailable: offline")
    text = build_report([one_seed, missing], "kaggle", "python -m benchmarks.quality", "2 CPU cores",
                        date="2026-01-01", wall_seconds=131)
    assert "| accuracy | sensitivity | specificity | ROC AUC | PR AUC |" in text
    assert "90.0 % [88.0–92.0]" in text and "0.955 [0.940–0.970]" in text  # ours, with the CI from metrics.json
    assert "same run at threshold 0.5 | 85.0 % | 99.0 % | 60.0 %" in text
    assert "Kermany et al. 2018" in text and "92.8 % | 93.2 % | 90.1 % | 0.968" in text
    assert 'always "pneumonia" (trivial baseline) | 62.5 % | 100.0 % | 0.0 % | 0.500 | 0.625' in text
    assert "vgg16-imagenet — not run: ImageNet weights for VGG16 are unavailable" in text
    assert "bacterial pneumonia" in text and "(missed 18 of 148)" in text
    assert "2 min 05 s" in text and "ImageNet, local file x.h5" in text and "`r1`" in text
    assert "- date: 2026-01-01" in text and "- machine: 2 CPU cores" in text and "- total wall time: 2 min 11 s" in text
    assert "**ours: mobilenet025-imagenet, seed 42** (threshold 0.730, youden on validation (746 images))" in text
    assert "| accuracy ≥ 92.8 % | 90.0 % | 90.0 % | **missed** (seed 42) |" in text  # one seed: no sd
    assert "| specificity spread (max − min) across seeds ≤ 3 points | 80.0 % | – | not checked (needs two or more " \
           "seeds) |" in text
    assert "**vgg16-imagenet**: not checked, the row did not run (ImageNet weights for VGG16 are unavailable" in text


def test_medmnist_report_lists_the_medmnist_v2_rows():
    done = RowResult("small-cnn-scratch", "a row", state="finished", metrics=_metrics(), seed=42, label="seed 42")
    text = build_report([RowOutcome("small-cnn-scratch", "a row", seeds=[42], runs=[done])], "medmnist", "cmd",
                        "machine")
    assert "MedMNIST v2: ResNet-18 (28) (published) | 85.4 % | – | – | 0.944" in text
    assert "Google AutoML Vision" in text and "94.6 %" in text and "0.991" in text
    assert "| accuracy ≥ 92 % | 90.0 % | 90.0 % | **missed** (seed 42) |" in text  # PneumoniaMNIST's own targets
    assert "| ROC AUC ≥ 0.98 | 0.955 | 0.955 | **missed** (seed 42) |" in text and "sensitivity ≥" not in text


def _seed_metrics(accuracy: float, sensitivity: float, specificity: float, roc_auc: float) -> dict:
    metrics = _metrics()
    metrics.update({"accuracy": accuracy, "sensitivity": sensitivity, "specificity": specificity, "roc_auc": roc_auc})
    return metrics


def _three_seeds(specificities=(0.90, 0.92, 0.93), accuracies=(0.927, 0.94, 0.95)) -> RowOutcome:
    runs = [RowResult("efficientnet-lite0-imagenet", "a row", run_id=f"r{seed}", state="finished", seed=seed,
                      label=f"seed {seed}", metrics=_seed_metrics(acc, 0.95, spec, 0.98), wall_seconds=600)
            for seed, acc, spec in zip((42, 43, 44), accuracies, specificities)]
    ensemble = RowResult("efficientnet-lite0-imagenet", "a row", run_id="ens", state="finished", label="ensemble of 3",
                         metrics=_seed_metrics(0.945, 0.96, 0.925, 0.985), members=["r42", "r43", "r44"],
                         wall_seconds=60)
    return RowOutcome("efficientnet-lite0-imagenet", "a row", seeds=[42, 43, 44], split_seed=42, runs=runs,
                      ensemble=ensemble, wall_seconds=1860)


def test_targets_are_checked_on_every_seed_not_only_the_mean():
    kaggle = TARGETS["kaggle"]
    assert [t.label for t in kaggle] == ["accuracy ≥ 92.8 %", "sensitivity ≥ 93 %", "specificity ≥ 90 %",
                                         "ROC AUC ≥ 0.975", "specificity spread (max − min) across seeds ≤ 3 points"]
    good = {"accuracy": 0.93, "sensitivity": 0.95, "specificity": 0.91, "roc_auc": 0.98}
    checks = check_targets([(42, good), (43, {**good, "specificity": 0.93}), (44, good)], kaggle)
    assert [c.met for c in checks] == [True] * 5 and all(not c.misses for c in checks)
    assert checks[4].spread == pytest.approx(0.02)

    # One seed below 92.8 % misses the target although the mean (93.57 %) is above it.
    checks = check_targets([(42, {**good, "accuracy": 0.927}), (43, {**good, "accuracy": 0.94}),
                            (44, {**good, "accuracy": 0.94})], kaggle)
    assert checks[0].mean == pytest.approx(0.93567, abs=1e-5) and checks[0].met is False and checks[0].misses == [42]
    assert checks[0].sd == pytest.approx(statistics.stdev([0.927, 0.94, 0.94]))
    assert [c.met for c in checks[1:]] == [True] * 4

    # Exactly on the bound meets it (580/624 = 92.9 % also does); a 3.5-point spread of specificity misses.
    checks = check_targets([(42, {**good, "accuracy": 0.928, "specificity": 0.90}),
                            (43, {**good, "specificity": 0.93}), (44, {**good, "specificity": 0.935})], kaggle)
    assert checks[0].met is True and checks[2].met is True
    assert checks[4].met is False and checks[4].spread == pytest.approx(0.035) and checks[4].misses == [42, 43, 44]
    exactly_three = check_targets([(42, {**good, "specificity": 0.90}), (43, {**good, "specificity": 0.93})], kaggle)
    assert exactly_three[4].met is True  # 3.0 points (0.93 − 0.90 is 0.030000000000000027 in floats)

    # A seed without a result misses every target; one seed cannot have a spread.
    checks = check_targets([(42, good), (43, None)], kaggle)
    assert all(c.met is False and 43 in c.misses and "no result for seed 43" in c.note for c in checks)
    single = check_targets([(42, good)], kaggle)
    assert [c.met for c in single] == [True, True, True, True, None]

    medmnist = check_targets([(42, {"accuracy": 0.921, "roc_auc": 0.979}), (43, {"accuracy": 0.95, "roc_auc": 0.99})],
                             TARGETS["medmnist"])
    assert [(c.label, c.met, c.misses) for c in medmnist] == [("accuracy ≥ 92 %", True, []),
                                                              ("ROC AUC ≥ 0.98", False, [42])]


def test_three_seed_report_has_mean_sd_every_seed_with_its_interval_the_ensemble_and_the_targets_table():
    text = build_report([_three_seeds()], "kaggle", "python -m benchmarks.quality --seeds 3", "2 CPU cores",
                        date="2026-02-03 04:05", wall_seconds=1861)
    assert "— 3 seeds per row and their ensemble" in text and "- total wall time: 31 min 01 s (4 runs" in text
    assert "training seeds 42, 43, 44 per row, all sharing one validation split (data.split_seed 42)" in text
    sd = 100 * statistics.stdev([0.927, 0.94, 0.95])
    assert f"| **ours: efficientnet-lite0-imagenet** (3 seeds: 42, 43, 44; mean ± sd;" in text
    assert f"| 93.9 ± {sd:.1f} % | 95.0 ± 0.0 % | 91.7 ± 1.5 % | 0.980 ± 0.000 | 0.970 ± 0.000 |" in text
    assert "**ours: efficientnet-lite0-imagenet, seed 43** (threshold 0.730, youden on validation (746 images)) " \
           "| 94.0 % [88.0–92.0] | 95.0 % [93.0–97.0] | 92.0 % [75.0–85.0] | 0.980 [0.940–0.970]" in text
    assert "**ours: efficientnet-lite0-imagenet, ensemble of 3** (threshold 0.730" in text and "94.5 % [88.0–92.0]" in text
    assert "| target | each seed (42, 43, 44) | mean ± sd | met? |" in text
    assert f"| accuracy ≥ 92.8 % | 92.7 %, 94.0 %, 95.0 % | 93.9 ± {sd:.1f} % | **missed** (seed 42) |" in text
    assert "| sensitivity ≥ 93 % | 95.0 %, 95.0 %, 95.0 % | 95.0 ± 0.0 % | met |" in text
    assert "| ROC AUC ≥ 0.975 | 0.980, 0.980, 0.980 | 0.980 ± 0.000 | met |" in text
    assert "| specificity spread (max − min) across seeds ≤ 3 points | 90.0 %, 92.0 %, 93.0 % | spread 3.0 points " \
           "| met |" in text
    assert "**efficientnet-lite0-imagenet** (seeds 42, 43, 44): **not met**: accuracy ≥ 92.8 % (seed 42)." in text
    assert "| target | ensemble of 3 | met? |" in text and "| accuracy ≥ 92.8 % | 94.5 % | met |" in text
    assert "efficientnet-lite0-imagenet, ensemble of 3: every target met." in text
    assert "| efficientnet-lite0-imagenet | ensemble of 3 | `ens` |" in text and "none: combines the 3 seed runs" in text
    assert "Wall time per row (its seeds and ensemble, one after another): efficientnet-lite0-imagenet 31 min 00 s." in text

    missed_everywhere = build_report([_three_seeds(specificities=(0.85, 0.89, 0.95), accuracies=(0.9, 0.91, 0.92))],
                                     "kaggle", "cmd", "machine")
    assert "**not met**: accuracy ≥ 92.8 % (all seeds); specificity ≥ 90 % (seed 42, 43); specificity spread " \
           "(max − min) across seeds ≤ 3 points." in missed_everywhere
    assert "spread 10.0 points | **missed** |" in missed_everywhere


def test_summary_holds_every_figure_of_the_report():
    outcome = _three_seeds()
    summary = build_summary([outcome], "kaggle", "cmd", "machine", date="2026-02-03 04:05", wall_seconds=1861)
    json.dumps(summary)  # plain JSON
    (row,) = summary["rows"]
    assert [run["seed"] for run in row["runs"]] == [42, 43, 44] and row["split_seed"] == 42
    assert [run["values"]["accuracy"] for run in row["runs"]] == [0.927, 0.94, 0.95]
    assert row["runs"][0]["ci"]["accuracy"] == [0.88, 0.92] and row["runs"][0]["at_0.5"]["specificity"] == 0.6
    assert row["stats"]["accuracy"]["mean"] == pytest.approx(statistics.fmean([0.927, 0.94, 0.95]))
    assert row["stats"]["accuracy"]["sd"] == pytest.approx(statistics.stdev([0.927, 0.94, 0.95]))
    assert row["stats"]["specificity"]["spread"] == pytest.approx(0.03)
    assert row["ensemble"]["values"]["roc_auc"] == 0.985 and row["ensemble"]["members"] == ["r42", "r43", "r44"]
    assert [(t["label"], t["met"]) for t in row["targets"]][0] == ("accuracy ≥ 92.8 %", False)
    assert all(t["met"] for t in row["ensemble_targets"])
    assert summary["invocations"] == [{"date": "2026-02-03 04:05", "machine": "machine", "command": "cmd",
                                       "wall_seconds": 1861, "rows": ["efficientnet-lite0-imagenet"], "runs": 4}]
    assert summary["baseline_always_pneumonia"]["accuracy"] == pytest.approx(0.625)
    assert quality.render_report(summary) == build_report([outcome], "kaggle", "cmd", "machine",
                                                          date="2026-02-03 04:05", wall_seconds=1861)


def test_a_later_command_replaces_its_rows_and_keeps_the_others_with_their_command():
    first = build_summary([_three_seeds(), RowOutcome("small-cnn-scratch", "s", error="x")], "kaggle", "cmd 1", "m1",
                          date="d1", wall_seconds=10)
    rerun = RowOutcome("small-cnn-scratch", "s", error="y")
    merged = quality.merge_summary(json.loads(json.dumps(first)),
                                   build_summary([rerun], "kaggle", "cmd 2", "m2", date="d2", wall_seconds=5))
    assert [row["name"] for row in merged["rows"]] == ["efficientnet-lite0-imagenet", "small-cnn-scratch"]
    assert [row["invocation"] for row in merged["rows"]] == [0, 1] and merged["rows"][1]["error"] == "y"
    assert [(i["command"], i["rows"]) for i in merged["invocations"]] == [("cmd 1", ["efficientnet-lite0-imagenet"]),
                                                                         ("cmd 2", ["small-cnn-scratch"])]
    text = quality.render_report(merged)
    assert "1. d1: `cmd 1`, rows efficientnet-lite0-imagenet" in text and "2. d2: `cmd 2`, rows small-cnn-scratch" in text
    other_data = build_summary([rerun], "medmnist", "cmd 3", "m3")
    assert quality.merge_summary(first, other_data) is other_data


def test_paths_of_this_machine_become_relative_or_placeholders(tmp_path):
    data, store = tmp_path / "data", tmp_path / "runs"
    roots = quality.path_roots((data, "<data>"), (store, "<store>"))
    repo, parent = str(quality.REPO), str(quality.REPO.parent)
    raw = {"data": {"path": f"{parent}/shared/data/chest_xray", "other": f"{data}/test/NORMAL/a.jpeg"},
           "model": {"weights": f"{parent}/shared/data/keras_weights/w.h5"},
           "predictions": [{"file": f"{repo}/sample/chest_xray/test/x.jpeg"},
                           {"file": f"{parent}/shared/data/medmnist/p.npz::test/3"}],
           "note": f"run {store}/r1 failed; see {repo}", "n": 3, "id": "2026-quality", "keep": f"{parent}x/y"}
    out = quality.portable(raw, roots)
    assert out["data"] == {"path": "../shared/data/chest_xray", "other": "<data>/test/NORMAL/a.jpeg"}
    assert out["model"]["weights"] == "../shared/data/keras_weights/w.h5"
    assert out["predictions"] == [{"file": "sample/chest_xray/test/x.jpeg"},
                                  {"file": "../shared/data/medmnist/p.npz::test/3"}]
    assert out["note"] == "run <store>/r1 failed; see ." and out["n"] == 3 and out["id"] == "2026-quality"
    assert out["keep"] == f"{parent}x/y"  # only whole folder names match: {parent}x is another folder
    assert [quality.portable_arg(a, roots) for a in (f"{store}/x", "--out=/elsewhere/r.md", "/elsewhere/r.md", "--seeds")] \
        == ["<store>/x", "--out=…/r.md", "…/r.md", "--seeds"]

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(raw))
    (run / "model.keras").write_text("not copied")
    assert quality.copy_run_files(run, tmp_path / "copy", roots) == ["config.json"]
    assert json.loads((tmp_path / "copy" / "config.json").read_text()) == out
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["config.json"]


def test_report_goes_into_its_data_sets_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nintro\n")
    quality.write_section(path, "kaggle", "### Kaggle v1\n")
    quality.write_section(path, "medmnist", "### MedMNIST v1\n")
    text = path.read_text()
    assert text.startswith("# Results\n\nintro\n") and text.index("Kaggle v1") < text.index("MedMNIST v1")
    path.write_text(text + "\nthe lead's reading\n")  # written outside the markers: kept
    quality.write_section(path, "kaggle", "### Kaggle v2\n")
    text = path.read_text()
    assert "Kaggle v2" in text and "Kaggle v1" not in text and "MedMNIST v1" in text
    assert text.endswith("the lead's reading\n") and text.count("benchmarks.quality:kaggle start") == 1


def test_rows_are_valid_configs_and_flags_override_them(tmp_path, monkeypatch):
    import core.data.restage

    def no_build(*_args, **_kwargs):
        raise AssertionError("building a row's config must not build a data copy")

    monkeypatch.setattr(core.data.restage, "restage", no_build)
    args = quality.build_parser().parse_args(["--image-size", "96", "--finetune-epochs", "2", "--max-images-per-class", "50"])
    for name, row in MEDMNIST_ROWS.items():
        config = quality.build_config(name, row, "medmnist", str(tmp_path / "x.npz"), args)
        assert (config.data.source, config.data.image_size, config.train.finetune.epochs) == ("medmnist", 96, 2)
        assert config.data.max_images_per_class == 50
    for name, row in KAGGLE_ROWS.items():
        if row.overrides.get("model.weights", "imagenet") not in ("imagenet", "none") and not \
                (REPO / row.overrides["model.weights"]).is_file():
            continue  # the offline weights file is not staged on this machine
        config = quality.build_config(name, row, "kaggle", str(tmp_path), None)
        if row.restaged:  # the restaged copy, named but not built: its val/ holds the validation patients' originals
            assert Path(config.data.path).parts[-2:] == (".cache", "chest_xray-restaged")
            assert config.data.validation == "official"
        else:
            assert config.data.path == str(tmp_path) and config.data.validation == "patient_split"
        assert config.data.source == "folder"
    reference = quality.build_config("vgg16-imagenet", KAGGLE_ROWS["vgg16-imagenet"], "kaggle", str(tmp_path))
    assert (reference.model.backbone, reference.model.weights, reference.augment.active) == ("vgg16", "imagenet", True)
    rule = quality.build_parser().parse_args(["--threshold-method", "youden_midpoint", "--target-sensitivity", "0.9"])
    fixed = quality.build_config("small-cnn-scratch", KAGGLE_ROWS["small-cnn-scratch"], "kaggle", str(tmp_path), rule)
    assert (fixed.train.threshold_method, fixed.train.target_sensitivity) == ("youden_midpoint", 0.9)
    with pytest.raises(SystemExit):
        quality.build_parser().parse_args(["--threshold-method", "best-on-test"])


def test_efficientnet_rows_are_the_issues_recipes(tmp_path):
    kaggle = quality.build_config("efficientnet-lite0-imagenet", KAGGLE_ROWS["efficientnet-lite0-imagenet"], "kaggle",
                                  str(tmp_path))
    assert (kaggle.model.backbone, kaggle.model.weights, kaggle.data.image_size, kaggle.model.unfreeze_from_block) == \
        ("efficientnet_lite0", "imagenet", 224, 7)
    assert (kaggle.train.head.epochs, kaggle.train.head.learning_rate, kaggle.train.head.augment) == (12, 1e-3, False)
    assert (kaggle.train.finetune.epochs, kaggle.train.finetune.learning_rate, kaggle.train.finetune.augment) == \
        (10, 1e-4, True)
    assert (kaggle.train.early_stopping_patience, kaggle.train.monitor, kaggle.train.cache_frozen_features) == \
        (3, "val_loss", True)
    assert kaggle.augment == type(kaggle.augment)()  # the default augmentation in the fine-tune phase
    medmnist = quality.build_config("efficientnet-lite0-imagenet", MEDMNIST_ROWS["efficientnet-lite0-imagenet"],
                                    "medmnist", str(tmp_path / "x.npz"))
    assert (medmnist.model.backbone, medmnist.model.weights, medmnist.data.image_size,
            medmnist.model.unfreeze_from_block) == ("efficientnet_lite0", "imagenet", 64, 1)
    assert (medmnist.train.head.epochs, medmnist.train.head.learning_rate, medmnist.train.head.augment) == \
        (10, 1e-3, False)
    assert (medmnist.train.finetune.epochs, medmnist.train.finetune.learning_rate, medmnist.augment.active) == \
        (20, 1e-4, True)
    assert (medmnist.train.early_stopping_patience, medmnist.train.monitor) == (4, "val_loss")


@pytest.mark.parametrize("candidate, reference, backbone", [
    ("efficientnet-lite0-imagenet-noaug", "efficientnet-lite0-imagenet", None),
    ("efficientnet-lite1-imagenet-noaug", "efficientnet-lite0-imagenet", "efficientnet_lite1"),
    ("efficientnet-lite2-imagenet-noaug", "efficientnet-lite0-imagenet", "efficientnet_lite2"),
    ("mobilenet025-imagenet-noaug", "mobilenet025-imagenet", None)])
def test_noaug_rows_differ_from_their_reference_only_in_the_fine_tune_augmentation_and_backbone(
        tmp_path, candidate, reference, backbone):
    """What benchmarks.recipe_choice compares must be one change: the fine-tune phase's augmentation (and the size)."""
    def flat(name: str) -> dict:
        config = quality.build_config(name, KAGGLE_ROWS[name], "kaggle", str(tmp_path)).to_dict()
        config.pop("name")
        return {f"{section}.{key}": value for section, values in config.items() if isinstance(values, dict)
                for key, value in values.items()}  # train.finetune stays one dict

    ours, theirs = flat(candidate), flat(reference)
    changed = {key for key in ours if ours[key] != theirs.get(key)}
    assert changed == {"train.finetune"} | ({"model.backbone"} if backbone else set())
    assert ours["train.finetune"] == {**theirs["train.finetune"], "augment": False}
    assert backbone is None or ours["model.backbone"] == backbone


def test_seeds_share_the_base_seeds_validation_split(tmp_path):
    base = quality.build_config("small-cnn-scratch", KAGGLE_ROWS["small-cnn-scratch"], "demo", "demo",
                                quality.build_parser().parse_args(["--seed", "7"]))
    members = [quality.seed_config(base, seed, 7, f"quality-demo-seed{seed}-x") for seed in (7, 8, 9)]
    assert [m.train.seed for m in members] == [7, 8, 9] and {m.split_seed for m in members} == {7}
    assert [m.name for m in members] == ["quality-demo-seed7-x", "quality-demo-seed8-x", "quality-demo-seed9-x"]
    assert base.train.seed == 7 and base.data.split_seed is None  # the base config itself is untouched


def test_row_selection_and_default_paths():
    parse = quality.build_parser().parse_args
    assert [n for n, _ in quality.select_rows(parse([]), "kaggle")] == list(quality.KAGGLE_DEFAULT_ROWS)
    assert [n for n, _ in quality.select_rows(parse(["--medmnist"]), "medmnist")] == list(quality.MEDMNIST_DEFAULT_ROWS)
    assert quality.KAGGLE_DEFAULT_ROWS == ("efficientnet-lite2-imagenet-noaug", "mobilenet025-imagenet-noaug",
                                           "small-cnn-scratch")
    assert quality.MEDMNIST_DEFAULT_ROWS == ("efficientnet-lite0-imagenet", "small-cnn-scratch")
    assert {"vgg16-imagenet", "mobilenet025-imagenet-cache", "mobilenetv2-035-imagenet"} <= set(KAGGLE_ROWS)
    assert {"small-cnn-scratch-64", "mobilenet025-imagenet", "vgg16-imagenet"} <= set(MEDMNIST_ROWS)
    assert parse([]).seeds == 3 and parse([]).ensemble is None
    assert [n for n, _ in quality.select_rows(parse(["--backbone", "resnet50v2"]), "kaggle")] == ["custom"]
    with pytest.raises(SystemExit, match="unknown row"):
        quality.select_rows(parse(["--rows", "nope"]), "kaggle")
    kind, path = quality.resolve_data(None, medmnist=True)
    assert kind == "medmnist" and path.endswith(os.path.join("shared", "data", "medmnist", "pneumoniamnist.npz"))
    assert quality.resolve_data(None, medmnist=False)[1].endswith(os.path.join("shared", "data", "chest_xray"))
    assert quality.resolve_data("demo", medmnist=False) == ("demo", "demo")
    assert quality.is_smoke(parse(["--data", "demo"]), "demo") and quality.is_smoke(parse(["--max-images-per-class",
                                                                                            "20"]), "kaggle")
    assert not quality.is_smoke(parse(["--threshold-method", "youden_midpoint"]), "kaggle")


@pytest.mark.parametrize("flags", [["--seeds", "0"], ["--seeds", "11"], ["--seeds", "1", "--ensemble"]])
def test_impossible_seed_settings_are_refused(flags):
    with pytest.raises(SystemExit):
        quality.main(["--data", "demo", *flags])


def test_unavailable_imagenet_weights_give_a_not_run_row(tmp_path, monkeypatch, cache_dir, capsys):
    from core.model import backbones

    def offline(*_args, **_kwargs):
        raise backbones.WeightsUnavailableError("ImageNet weights for VGG16 are unavailable: offline test")

    monkeypatch.setattr(backbones, "load_imagenet_reference", offline)
    out = tmp_path / "report.md"
    code = quality.main(["--data", "demo", "--rows", "vgg16-imagenet", "--store", str(tmp_path / "runs"),
                         "--out", str(out), "--results", str(tmp_path / "results")])
    assert code == 0
    assert "vgg16-imagenet — not run: ImageNet weights for VGG16 are unavailable: offline test" in out.read_text()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no half-made run
    summary = json.loads((tmp_path / "results" / "demo" / "summary.json").read_text())
    assert summary["rows"][0]["error"] == "ImageNet weights for VGG16 are unavailable: offline test"
    assert summary["rows"][0]["runs"] == [] and not (tmp_path / "results" / "demo" / "vgg16-imagenet").exists()


@pytest.mark.slow
def test_tiny_demo_run_lands_in_the_store_and_the_table_matches_its_metrics(tmp_path, cache_dir):
    from core.store.runs import RunStore

    out = tmp_path / "report.md"
    code = quality.main(["--data", "demo", "--rows", "small-cnn-scratch", "--image-size", "32", "--seeds", "1",
                         "--finetune-epochs", "1", "--demo-images-per-class", "24", "--batch-size", "16",
                         "--store", str(tmp_path / "runs"), "--out", str(out)])
    assert code == 0
    (run,) = RunStore(tmp_path / "runs").list()  # one seed: no ensemble
    metrics = run.metrics()
    text = out.read_text()
    assert run.status().state == "finished" and f"`{run.id}`" in text
    lo, hi = metrics["ci"]["sensitivity"]
    expected = f"{100 * metrics['sensitivity']:.1f} % [{100 * lo:.1f}–{100 * hi:.1f}]"
    assert expected in text  # the table is metrics.json, verbatim
    assert "synthetic demo set (NOT real X-rays)" in text


@pytest.mark.slow
def test_two_seeds_and_their_ensemble_end_to_end_with_portable_results(tmp_path, cache_dir):
    """The smoke settings of the issue: 2 seeds + their ensemble, copied results, summary, report, no machine paths."""
    from core.evaluation.ensemble import is_ensemble, member_ids
    from core.store.runs import RunStore

    out, results, store = tmp_path / "report.md", tmp_path / "results", RunStore(tmp_path / "runs")
    code = quality.main(["--seeds", "2", "--max-images-per-class", "20", "--max-test-images-per-class", "10",
                         "--head-epochs", "1", "--finetune-epochs", "1", "--data", "demo",
                         "--image-size", "32", "--demo-images-per-class", "24", "--batch-size", "16",
                         "--store", str(store.root), "--results", str(results), "--out", str(out)])
    assert code == 0
    runs = store.list()
    (ensemble,) = [run for run in runs if is_ensemble(run)]
    seeds = sorted((run for run in runs if not is_ensemble(run)), key=lambda run: run.config().train.seed)
    assert len(runs) == 3 and [run.config().train.seed for run in seeds] == [42, 43]
    assert {run.config().split_seed for run in seeds} == {42}  # one validation split for both seeds
    assert member_ids(ensemble) == [run.id for run in seeds]
    assert all(run.status().state == "finished" for run in runs)

    row = results / "demo" / "small-cnn-scratch"
    assert sorted(p.name for p in row.iterdir()) == ["ensemble", "seed42", "seed43"]
    for folder, run in zip(("seed42", "seed43", "ensemble"), (*seeds, ensemble)):
        names = ["config.json", "metrics.json", "threshold.json"] + (["ensemble.json"] if run is ensemble else [])
        assert sorted(p.name for p in (row / folder).iterdir()) == sorted(names)
        copied = json.loads((row / folder / "metrics.json").read_text())
        assert {k: copied[k] for k in ("accuracy", "sensitivity", "specificity", "roc_auc", "ci", "n")} == \
            {k: run.metrics()[k] for k in ("accuracy", "sensitivity", "specificity", "roc_auc", "ci", "n")}
        assert json.loads((row / folder / "threshold.json").read_text())["threshold"] == run.threshold()

    summary = json.loads((results / "demo" / "summary.json").read_text())
    (entry,) = summary["rows"]
    assert [r["run_id"] for r in entry["runs"]] == [run.id for run in seeds]
    assert entry["ensemble"]["run_id"] == ensemble.id and entry["ensemble"]["results"].endswith("ensemble")
    for key in ("accuracy", "roc_auc"):
        values = [run.metrics()[key] for run in seeds]
        assert [r["values"][key] for r in entry["runs"]] == values
        assert entry["stats"][key]["mean"] == pytest.approx(statistics.fmean(values))
        assert entry["stats"][key]["sd"] == pytest.approx(statistics.stdev(values))
    for target in entry["targets"]:
        values = [run.metrics()[target["key"]] for run in seeds]
        if target["rule"] == "each_at_least":
            assert target["met"] == all(v >= target["bound"] - 1e-9 for v in values)
        else:
            assert target["met"] == (max(values) - min(values) <= target["bound"] + 1e-9)
    assert all(t["met"] == (ensemble.metrics()[t["key"]] >= t["bound"] - 1e-9) for t in entry["ensemble_targets"])

    # --resume: every run of the same config is reused as it is; nothing is created or trained again.
    finished_at = {run.id: run.raw_status().finished_at for run in runs}
    code = quality.main(["--seeds", "2", "--max-images-per-class", "20", "--max-test-images-per-class", "10",
                         "--head-epochs", "1", "--finetune-epochs", "1", "--data", "demo",
                         "--image-size", "32", "--demo-images-per-class", "24", "--batch-size", "16",
                         "--store", str(store.root), "--results", str(results), "--out", str(out), "--resume"])
    assert code == 0 and {run.id: run.raw_status().finished_at for run in store.list()} == finished_at
    rerun = json.loads((results / "demo" / "summary.json").read_text())["rows"][0]
    assert [r["run_id"] for r in rerun["runs"]] == [run.id for run in seeds]
    assert rerun["ensemble"]["run_id"] == ensemble.id

    text = out.read_text()
    assert "2 seeds per row and their ensemble" in text and "| target | each seed (42, 43) | mean ± sd | met? |" in text
    assert "not the official 624" in text and all(f"`{run.id}`" in text for run in runs)
    assert summary["invocations"][0]["wall_seconds"] > 0 and "- total wall time:" in text
    written = [p for p in results.rglob("*.json")] + [out]
    for path in written:  # no absolute path of this machine in anything written for the repository
        content = path.read_text()
        assert str(tmp_path) not in content and str(quality.REPO) not in content, path
        assert f"{quality.REPO.parent}/" not in content and str(cache_dir) not in content, path


def test_weights_in_the_keras_cache_are_found_by_imagenet(tmp_path, keras_weights_dir):
    """Placing Keras's MobileNet 0.25 file in the Keras cache makes weights='imagenet' load it offline."""
    source = keras_weights_dir / "mobilenet_2_5_224_tf_no_top.h5"
    if not source.is_file():
        pytest.skip("mobilenet_2_5_224_tf_no_top.h5 not staged")
    (tmp_path / "models").mkdir()
    os.symlink(source, tmp_path / "models" / source.name)
    script = textwrap.dedent(f"""
        import numpy as np
        from core.config import BACKBONES
        from core.model.backbones import build_reference, load_imagenet_reference
        spec = BACKBONES["mobilenet"]
        cached = load_imagenet_reference(spec, 224, 0.25)
        from_file = build_reference(spec, 224, {str(source)!r}, 0.25)
        assert all(np.array_equal(a, b) for a, b in zip(cached.get_weights(), from_file.get_weights()))
        print("same weights")
    """)
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "same weights" in done.stdout
