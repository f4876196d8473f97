"""benchmarks.quality: the table built from metrics.json, the baseline and published rows, row selection and one tiny real run."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from benchmarks import quality
from benchmarks.quality import KAGGLE_ROWS, MEDMNIST_ROWS, RowResult, baseline_row, build_report

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
                     counts={"train": 4470, "val": 746, "test": 624}, load=(2.0, 3.5))
    missing = RowResult("vgg16-imagenet", "reference", error="ImageNet weights for VGG16 are unavailable: offline")
    text = build_report([done, missing], "kaggle", "python -m benchmarks.quality", "2 CPU cores", date="2026-01-01")
    assert "| accuracy | sensitivity | specificity | ROC AUC | PR AUC |" in text
    assert "90.0 % [88.0–92.0]" in text and "0.955 [0.940–0.970]" in text  # ours, with the CI from metrics.json
    assert "same run at threshold 0.5 | 85.0 % | 99.0 % | 60.0 %" in text
    assert "Kermany et al. 2018" in text and "92.8 % | 93.2 % | 90.1 % | 0.968" in text
    assert 'always "pneumonia" (trivial baseline) | 62.5 % | 100.0 % | 0.0 % | 0.500 | 0.625' in text
    assert "vgg16-imagenet — not run: ImageNet weights for VGG16 are unavailable" in text
    assert "bacterial pneumonia" in text and "(missed 18 of 148)" in text
    assert "2 min 05 s" in text and "ImageNet, local file x.h5" in text and "`r1`" in text


def test_medmnist_report_lists_the_medmnist_v2_rows():
    done = RowResult("small-cnn-scratch", "a row", state="finished", metrics=_metrics())
    text = build_report([done], "medmnist", "cmd", "machine")
    assert "MedMNIST v2: ResNet-18 (28) (published) | 85.4 % | – | – | 0.944" in text
    assert "Google AutoML Vision" in text and "94.6 %" in text and "0.991" in text


def test_rows_are_valid_configs_and_flags_override_them(tmp_path):
    args = quality._parser().parse_args(["--image-size", "96", "--finetune-epochs", "2", "--max-images-per-class", "50"])
    for name, row in MEDMNIST_ROWS.items():
        config = quality.build_config(name, row, "medmnist", str(tmp_path / "x.npz"), args)
        assert (config.data.source, config.data.image_size, config.train.finetune.epochs) == ("medmnist", 96, 2)
        assert config.data.max_images_per_class == 50
    for name, row in KAGGLE_ROWS.items():
        if row.overrides.get("model.weights", "imagenet") not in ("imagenet", "none") and not \
                (REPO / row.overrides["model.weights"]).is_file():
            continue  # the offline weights file is not staged on this machine
        config = quality.build_config(name, row, "kaggle", str(tmp_path), None)
        assert config.data.source == "folder" and config.data.validation == "patient_split"
    reference = quality.build_config("vgg16-imagenet", KAGGLE_ROWS["vgg16-imagenet"], "kaggle", str(tmp_path))
    assert (reference.model.backbone, reference.model.weights, reference.augment.active) == ("vgg16", "imagenet", True)


def test_row_selection_and_default_paths():
    parse = quality._parser().parse_args
    assert [n for n, _ in quality.select_rows(parse([]), "kaggle")] == list(quality.KAGGLE_DEFAULT_ROWS)
    assert [n for n, _ in quality.select_rows(parse(["--medmnist"]), "medmnist")] == list(quality.MEDMNIST_DEFAULT_ROWS)
    assert [n for n, _ in quality.select_rows(parse(["--backbone", "resnet50v2"]), "kaggle")] == ["custom"]
    with pytest.raises(SystemExit, match="unknown row"):
        quality.select_rows(parse(["--rows", "nope"]), "kaggle")
    kind, path = quality.resolve_data(None, medmnist=True)
    assert kind == "medmnist" and path.endswith(os.path.join("shared", "data", "medmnist", "pneumoniamnist.npz"))
    assert quality.resolve_data(None, medmnist=False)[1].endswith(os.path.join("shared", "data", "chest_xray"))
    assert quality.resolve_data("demo", medmnist=False) == ("demo", "demo")


def test_unavailable_imagenet_weights_give_a_not_run_row(tmp_path, monkeypatch, cache_dir, capsys):
    from core import backbones

    def offline(*_args, **_kwargs):
        raise backbones.WeightsUnavailableError("ImageNet weights for VGG16 are unavailable: offline test")

    monkeypatch.setattr(backbones, "load_imagenet_reference", offline)
    out = tmp_path / "report.md"
    code = quality.main(["--data", "demo", "--rows", "vgg16-imagenet", "--store", str(tmp_path / "runs"),
                         "--out", str(out)])
    assert code == 0
    assert "vgg16-imagenet — not run: ImageNet weights for VGG16 are unavailable: offline test" in out.read_text()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no half-made run


@pytest.mark.slow
def test_tiny_demo_run_lands_in_the_store_and_the_table_matches_its_metrics(tmp_path, cache_dir):
    from core.runs import RunStore

    out = tmp_path / "report.md"
    code = quality.main(["--data", "demo", "--rows", "small-cnn-scratch", "--image-size", "32",
                         "--finetune-epochs", "1", "--demo-images-per-class", "24", "--batch-size", "16",
                         "--store", str(tmp_path / "runs"), "--out", str(out)])
    assert code == 0
    (run,) = RunStore(tmp_path / "runs").list()
    metrics = run.metrics()
    text = out.read_text()
    assert run.status().state == "finished" and f"`{run.id}`" in text
    lo, hi = metrics["ci"]["sensitivity"]
    expected = f"{100 * metrics['sensitivity']:.1f} % [{100 * lo:.1f}–{100 * hi:.1f}]"
    assert expected in text  # the table is metrics.json, verbatim
    assert "synthetic demo set (NOT real X-rays)" in text


def test_weights_in_the_keras_cache_are_found_by_imagenet(tmp_path, keras_weights_dir):
    """Placing Keras's MobileNet 0.25 file in the Keras cache makes weights='imagenet' load it offline."""
    source = keras_weights_dir / "mobilenet_2_5_224_tf_no_top.h5"
    if not source.is_file():
        pytest.skip("mobilenet_2_5_224_tf_no_top.h5 not staged")
    (tmp_path / "models").mkdir()
    os.symlink(source, tmp_path / "models" / source.name)
    script = textwrap.dedent(f"""
        import numpy as np
        from core.backbones import BACKBONES, load_imagenet_reference
        spec = BACKBONES["mobilenet"]
        cached = load_imagenet_reference(spec, 224, 0.25)
        from_file = spec.build_reference(224, {str(source)!r}, 0.25)
        assert all(np.array_equal(a, b) for a, b in zip(cached.get_weights(), from_file.get_weights()))
        print("same weights")
    """)
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "same weights" in done.stdout
