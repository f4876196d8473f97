"""The trainer end to end: it learns on the synthetic set, runs under MirroredStrategy, fails readably."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.config import preset
from core.runs import RunStore
from core.train import class_weights, config_from_args, _parser, estimate_run_time, run_and_record

REPO = Path(__file__).resolve().parents[2]


def test_balanced_class_weights_equalise_the_classes():
    labels = np.array([0] * 10 + [1] * 30)
    weights = class_weights(labels, "balanced")
    assert weights[0] * 10 == pytest.approx(weights[1] * 30)
    assert class_weights(labels, "none") is None


def test_cli_flags_override_the_preset():
    args = _parser().parse_args(["--preset", "Quick CPU demo", "--finetune-epochs", "2", "--image-size", "48",
                                 "--no-augment", "--data", "demo"])
    config = config_from_args(args)
    assert config.train.finetune.epochs == 2 and config.data.image_size == 48
    assert not config.augment.active and config.model.backbone == "small_cnn"


@pytest.mark.slow
def test_small_cnn_learns_the_synthetic_set(tmp_path, cache_dir):
    """Small CNN at 64 px on the synthetic set: test ROC AUC ≥ 0.95, threshold chosen on validation."""
    config = preset("Quick CPU demo")  # 64 px, 300 synthetic images per class, 12 epochs from scratch
    run = RunStore(tmp_path).create(config)
    assert run_and_record(run, resume=False) == 0, run.raw_status().error
    status = run.status()
    assert status.state == "finished"
    metrics = run.metrics()
    assert metrics["roc_auc"] >= 0.95, metrics["roc_auc"]
    assert metrics["sensitivity"] >= 0.8 and metrics["specificity"] >= 0.8
    threshold = json.loads((run.path / "threshold.json").read_text())
    assert threshold["chosen_on"].startswith("validation")
    epochs = run.epochs()
    assert len(epochs) >= 3 and all("val_auc" in row for row in epochs)
    assert run.history("step"), "per-step progress rows are written"
    assert any((run.path / "tensorboard").rglob("events.out.tfevents*"))


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path, cache_dir):
    result = subprocess.run(
        [sys.executable, "-m", "core.train", "--preset", "Quick CPU demo", "--store", str(tmp_path),
         "--device", "mirrored", "--cpu-devices", "2", "--finetune-epochs", "1", "--image-size", "32",
         "--no-augment"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunStore(tmp_path).list()[0]
    status = run.status()
    assert status.state == "finished"
    assert status.device["strategy"] == "mirrored" and status.device["replicas"] == 2


def test_bad_data_folder_fails_with_a_readable_message(tmp_path):
    config = preset("Quick CPU demo").with_overrides(**{"data.source": "folder", "data.path": str(tmp_path / "nope")})
    run = RunStore(tmp_path / "runs").create(config)
    assert run_and_record(run, resume=False) == 2
    status = run.status()
    assert status.state == "failed"
    assert "nope" in status.error and "Traceback" not in status.error


def test_offline_imagenet_weights_fail_the_run_readably(tmp_path, cache_dir):
    config = preset("Quick CPU demo").with_overrides(**{"model.backbone": "vgg16", "model.weights": "imagenet",
                                                         "data.image_size": 32})
    run = RunStore(tmp_path).create(config)
    assert run_and_record(run, resume=False) == 2
    error = run.status().error
    assert error.startswith("ImageNet weights for VGG16 are unavailable") or "vgg16" in error.lower(), error


def test_time_estimate_from_a_probe(cache_dir):
    config = preset("Quick CPU demo").with_overrides(**{"data.image_size": 48})
    estimate = estimate_run_time(config, n_train=320, n_val=32)
    assert estimate["total_seconds"] > 0
    assert set(estimate["seconds_per_epoch"]) == {"finetune"}
    assert estimate["images_per_sec"]["finetune"] > 10
