"""Evaluation: metrics against hand-counted confusion matrices, threshold choice, bootstrap intervals, and the run-level evaluate / predict commands."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.evaluation.metrics import bootstrap_ci, compute_metrics
from core.evaluation.threshold import choose_threshold
from core.evaluation.evaluate import predict_probabilities

# Four pneumonia films and six normal ones; at 0.5: TP 3, FN 1, FP 2, TN 4.
Y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
P = [0.9, 0.8, 0.7, 0.3, 0.6, 0.55, 0.4, 0.2, 0.1, 0.05]


def test_metrics_match_a_hand_counted_confusion_matrix():
    m = compute_metrics(Y, P, threshold=0.5)
    assert m["confusion"] == {"tn": 4, "fp": 2, "fn": 1, "tp": 3}
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert m["roc_auc"] == pytest.approx(21 / 24)  # 21 of the 24 pneumonia/normal pairs ranked right
    assert m["n"] == 10 and m["n_positive"] == 4 and m["threshold"] == 0.5
    # At 0.35 the 0.4 normal film turns positive: FP 3, TN 3.
    assert compute_metrics(Y, P, threshold=0.35)["confusion"] == {"tn": 3, "fp": 3, "fn": 1, "tp": 3}


def test_metrics_are_plain_json_with_short_curves():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    p = np.clip(0.3 * y + 0.7 * rng.random(5000), 0, 1)
    m = compute_metrics(y, p, 0.5)
    text = json.dumps(m, allow_nan=False)  # no NaN/inf, no numpy types
    assert json.loads(text)["roc_auc"] == pytest.approx(m["roc_auc"])
    assert 2 < len(m["roc"]["fpr"]) <= 200 and len(m["roc"]["fpr"]) == len(m["roc"]["thresholds"])
    assert m["roc"]["fpr"][0] == 0.0 and m["roc"]["tpr"][-1] == 1.0
    assert len(m["pr"]["precision"]) <= 200
    assert max(m["roc"]["thresholds"]) <= 1.0
    cal = m["calibration"]
    assert len(cal["prob_true"]) == len(cal["prob_pred"]) == len(cal["count"]) <= 10
    assert sum(cal["count"]) == 5000 and 0 < m["brier"] < 0.25


def test_metrics_with_one_class_do_not_crash():
    m = compute_metrics([1, 1, 1], [0.2, 0.6, 0.9], 0.5)
    assert m["roc_auc"] is None and m["specificity"] is None
    assert m["sensitivity"] == pytest.approx(2 / 3)
    json.dumps(m, allow_nan=False)


def test_youden_threshold_on_a_known_case():
    # Thresholds 0.7/0.6/0.5/0.4/0.3 give J = 0.25/0.5/0.75/0.42/0.67: the best is 0.5.
    y = [0, 0, 1, 0, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert choose_threshold(y, p, "youden") == pytest.approx(0.5)
    # Perfectly separable: the lowest pneumonia score keeps every pneumonia and no normal.
    assert choose_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9]) == pytest.approx(0.6)


def test_sensitivity_threshold_reaches_the_target_and_is_the_highest_that_does():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.25 * y + 0.75 * rng.random(400), 0, 1)
    for target in (0.8, 0.9, 0.95):
        t = choose_threshold(y, p, "sensitivity", target_sensitivity=target)
        assert compute_metrics(y, p, t)["sensitivity"] >= target
        higher = p[p > t].min()
        assert compute_metrics(y, p, higher)["sensitivity"] < target


def test_threshold_degenerate_cases():
    assert choose_threshold([1, 1], [0.2, 0.4]) == 0.5
    assert choose_threshold([], []) == 0.5
    with pytest.raises(ValueError, match="method"):
        choose_threshold(Y, P, "f1")
    with pytest.raises(ValueError):
        choose_threshold([0, 1], [0.5])


def _synthetic(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.625).astype(int)  # the test split's 390 / 624
    p = 1 / (1 + np.exp(-(2.5 * (2 * y - 1) + 1.5 * rng.normal(size=n))))
    return y, p


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_data():
    y, p = _synthetic(624, 0)
    small = bootstrap_ci(y, p, 0.5, n_boot=1000, seed=0)
    point = compute_metrics(y, p, 0.5)
    y4, p4 = _synthetic(4 * 624, 1)
    large = bootstrap_ci(y4, p4, 0.5, n_boot=1000, seed=0)
    for name in ("accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc"):
        lo, hi = small[name]
        assert lo <= point[name] <= hi, name
        assert large[name][1] - large[name][0] < 0.75 * (hi - lo), name


def test_patient_bootstrap_is_wider_when_images_of_a_patient_agree():
    y, p = _synthetic(600, 2)
    y, p = np.repeat(y[:150], 4), np.repeat(p[:150], 4)  # 150 patients, 4 identical films each
    patients = np.repeat(np.arange(150), 4)
    by_image = bootstrap_ci(y, p, 0.5)
    by_patient = bootstrap_ci(y, p, 0.5, groups=patients)
    width = lambda ci: ci["roc_auc"][1] - ci["roc_auc"][0]  # noqa: E731
    assert width(by_patient) > 1.5 * width(by_image)


def test_predict_probabilities_from_arrays_and_datasets():
    import keras
    import tensorflow as tf

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(inputs)))
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 1)).astype(np.uint8)
    logits = model.predict(np.repeat(images, 3, -1).astype(np.float32), verbose=0).ravel()
    expected = 1 / (1 + np.exp(-logits.astype(np.float64)))
    from_array = predict_probabilities(model, images, batch_size=4)
    assert from_array.dtype == np.float64 and from_array.shape == (10,)
    np.testing.assert_allclose(from_array, expected, rtol=1e-5)
    dataset = tf.data.Dataset.from_tensor_slices((np.repeat(images, 3, -1).astype(np.float32), np.zeros(10))).batch(3)
    seen = []
    from_dataset = predict_probabilities(model, dataset, progress=lambda f, m: seen.append(f), total=10)
    np.testing.assert_allclose(from_dataset, expected, rtol=1e-5)
    assert seen[-1] == 1.0 and len(seen) == 4


# ------------------------------------------------------------------ run-level: evaluate and predict
@pytest.fixture()
def finished_run(tmp_path, cache_dir):
    """A run folder as the trainer leaves it (config, model, threshold), without training."""
    import keras

    from core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from core.model.classifier import build_classifier
    from core.store.runs import RunStore

    config = RunConfig(
        name="fake finished run",
        data=DataConfig(source="demo", image_size=48, demo_images_per_class=20),
        model=ModelConfig(backbone="small_cnn", weights="none", unfreeze_from_block=1),
        train=TrainConfig(batch_size=8, seed=0),
    )
    store = RunStore(tmp_path / "models")
    run = store.create(config)
    keras.utils.set_random_seed(0)
    build_classifier(config.model, 48).save(run.model_path)
    run.write_json("threshold.json", {"threshold": 0.45, "method": "youden", "val_auc": 0.9})
    run.update_status(state="finished")
    return store, run


def test_evaluate_run_writes_metrics_matching_single_image_prediction(finished_run):
    from core.data.splits import resolve_splits
    from core.evaluation.evaluate import evaluate_run
    from core.evaluation.predict import predict_files

    store, run = finished_run
    fractions = []
    metrics = evaluate_run(run.path.name, store=store, progress=lambda f, m: fractions.append(f))
    assert run.read_json("metrics.json")["roc_auc"] == metrics["roc_auc"]
    assert "re-derived" in metrics["splits"]["note"]  # a run from before splits.json
    test = resolve_splits(run.config().data, run.config().split_seed).test
    assert metrics["n"] == len(test) == len(metrics["predictions"])
    assert metrics["threshold"] == 0.45 and metrics["at_0.5"]["threshold"] == 0.5
    assert set(metrics["ci"]) == {"accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc"}
    assert set(metrics["subgroups"]) <= {"bacteria", "virus"} and metrics["subgroups"]
    assert fractions[-1] == 1.0
    first = metrics["predictions"][0]
    assert set(first) == {"file", "label", "probability", "patient", "subtype"}
    # The batch pipeline and the single-image path agree on the same file.
    single = predict_files(run, [first["file"]])[0]
    assert single["probability"] == pytest.approx(first["probability"], abs=1e-5)
    json.dumps(metrics, allow_nan=False)


def test_evaluate_uses_the_saved_test_split_and_skips_files_changed_since_training(tmp_path):
    import keras
    from image_samples import touch_images

    from core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from core.evaluation.evaluate import evaluate_run
    from core.model.classifier import build_classifier
    from core.store.runs import RunStore
    from core.data.splits import run_splits

    data = tmp_path / "data"
    touch_images(data / "NORMAL", [f"IM-{k:04d}-0001.png" for k in range(12)])
    touch_images(data / "PNEUMONIA", [f"person{k}_virus_{k}.png" for k in range(12)])
    config = RunConfig(data=DataConfig(source="folder", path=str(data), image_size=32, val_fraction=0.25),
                       model=ModelConfig(backbone="small_cnn", weights="none", unfreeze_from_block=1),
                       train=TrainConfig(batch_size=8, seed=0))
    store = RunStore(tmp_path / "models")
    run = store.create(config)
    keras.utils.set_random_seed(0)
    build_classifier(config.model, 32).save(run.model_path)
    saved = run_splits(config, run.path)  # what the trainer does first
    gone, edited = saved.test[0].path, saved.test[1].path
    Path(gone).unlink()
    Path(edited).write_bytes(Path(edited).read_bytes() + b"changed")
    touch_images(data / "NORMAL", ["IM-0500-0001.png"])  # a new file is not evaluated

    metrics = evaluate_run(run)
    files = [p["file"] for p in metrics["predictions"]]
    assert sorted(files) == sorted(r.path for r in saved.test[2:])
    reasons = {item["file"]: item["reason"] for item in metrics["skipped"]}
    assert "missing" in reasons[gone] and "changed since training" in reasons[edited]
    changes = metrics["splits"]["changes"]
    assert metrics["splits"]["from"] == "splits.json" and metrics["splits"]["note"] is None
    assert len(changes["missing"]) == len(changes["changed"]) == 1 and changes["added"] == ["NORMAL/IM-0500-0001.png"]


def test_evaluate_cli(finished_run, capsys):
    from core.jobs.commands.evaluate import main

    store, run = finished_run
    assert main([run.path.name, "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "sensitivity" in out and "specificity" in out and "ROC AUC" in out and "TN " in out
    assert (run.path / "metrics.json").is_file()

    run.model_path.unlink()
    assert main([run.path.name, "--store", str(store.root)]) == 2
    assert "no trained model" in capsys.readouterr().err
    assert main(["no-such-run", "--store", str(store.root)]) == 2


def test_predict_cli_json_lines_heatmaps_and_exit_codes(finished_run, tmp_path, capsys):
    from PIL import Image

    from core.data.splits import resolve_splits
    from core.jobs.commands.predict import main

    store, run = finished_run
    good = resolve_splits(run.config().data, 0).test[0].path
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    out_dir = tmp_path / "heatmaps"
    code = main(["--run", run.path.name, "--store", str(store.root), "--cam", "gradcam", "--out", str(out_dir),
                 good, str(broken)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and len(lines) == 2
    assert set(lines[0]) == {"file", "probability", "label", "threshold", "threshold_from", "heatmap"}
    assert lines[0]["threshold_from"] == "validation"
    assert lines[0]["label"] in ("NORMAL", "PNEUMONIA") and lines[0]["threshold"] == 0.45
    with Image.open(lines[0]["heatmap"]) as heatmap:
        assert heatmap.size == (48, 48) and heatmap.mode == "RGB"
    assert set(lines[1]) == {"file", "error"} and lines[1]["error"]

    assert main(["--run", run.path.name, "--store", str(store.root), good]) == 0
    assert json.loads(capsys.readouterr().out)["heatmap"] is None
    assert main(["--run", "missing", "--store", str(store.root), good]) == 2


def test_subgroup_sensitivity_has_a_patient_bootstrap_interval_and_the_baseline_is_saved():
    from core.evaluation.metrics import baseline_always_pneumonia, subgroups

    rng = np.random.default_rng(0)
    labels = np.array([0] * 40 + [1] * 60)
    subtypes = [None] * 40 + ["bacteria"] * 35 + ["virus"] * 25
    prob = np.clip(labels * 0.6 + rng.uniform(0, 0.5, 100), 0, 1)
    patients = [f"p{i // 2}" for i in range(100)]
    groups = subgroups(labels, prob, subtypes, 0.7, patients)
    for g in groups.values():
        lo, hi = g["sensitivity_ci"]
        assert lo <= g["sensitivity"] <= hi
    assert baseline_always_pneumonia(labels)["accuracy"] == 0.6
