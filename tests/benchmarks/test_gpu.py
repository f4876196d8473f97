"""benchmarks.gpu and benchmarks.backends: the CPU half runs here end to end on JAX, model FLOPs match VGG16's published count, the reference recipe's time is the sum of its measured parts, and the backend comparison's summary."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.gpu import REFERENCE, reference_estimate
from core.config.paths import REPO_ROOT


def test_the_cpu_half_measures_every_rate_and_prices_the_reference_recipe(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--cpu", "--backbones", "vgg16", "--image-size", "32", "--batch", "4",
         "--large-batch", "8", "--steps", "1", "--fed-images", "8", "--no-end-to-end", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "CXR_STUDIO_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["precision"] == "float32"
    assert result["machine"]["keras_backend"] == "jax" and "tensorflow" not in result["machine"]
    assert result["peak"]["measured_tflops"] > 0 and result["peak"]["datasheet_tflops"] is None
    assert result["decode"]["films"] == 40 and result["decode"]["films_per_s"] > 0
    [vgg] = result["backbones"]
    for key in ("forward", "head_features", "head_images", "finetune_fed", "finetune_fed_plain"):
        assert vgg[f"{key}_images_per_s"] > 0, key
    small, large = vgg["finetune_step"]
    assert (small["batch"], large["batch"]) == (4, 8)
    assert large["flops_per_step"] == pytest.approx(2 * small["flops_per_step"])  # model FLOPs grow with the batch
    assert small["tflops"] == pytest.approx(small["flops_per_step"] / small["seconds"] / 1e12)
    estimate = result["reference_estimate"]
    assert estimate["total_seconds"] == pytest.approx(sum(estimate["parts_seconds"].values()))
    assert result["skipped"] == []


def test_model_flops_of_vgg16_match_its_published_count():
    import keras

    from benchmarks.flops import conv_dense_flops
    from core.config import ModelConfig
    from core.model.classifier import build_classifier, set_trainable

    config = ModelConfig(backbone="vgg16", weights="none", unfreeze_from_block=1)
    model = build_classifier(config, 224)
    set_trainable(model, config, "finetune")  # every block trains
    forward, backward = conv_dense_flops(model, None)
    # VGG16's 13 convolutions at 224 px: 15.35 G multiply-adds (Simonyan & Zisserman's network), 2 FLOPs each.
    assert forward == pytest.approx(2 * 15.35e9, rel=0.01)
    assert backward == pytest.approx(2 * forward, rel=0.01)  # everything trains: weight and input gradients
    keras.backend.clear_session()


def test_the_reference_estimate_adds_decode_epochs_compile_and_test_from_the_rates():
    vgg = {"batch": 32, "unfreeze_from_block": 3, "fed_images": 100, "forward_images_per_s": 1000.0,
           "head_images_images_per_s": 500.0, "finetune_fed_images_per_s": 250.0,
           "head_images_first_epoch_s": 10.2, "finetune_fed_first_epoch_s": 20.4}
    estimate = reference_estimate(vgg, {"films_per_s": 584.0}, val_fraction=0.15)
    parts = estimate["parts_seconds"]
    n_val = round(REFERENCE["train_films"] * 0.15)
    n_train = REFERENCE["train_films"] - n_val
    assert parts["decode_once"] == pytest.approx((REFERENCE["train_films"] + REFERENCE["test_films"]) / 584.0)
    assert parts["head_epochs"] == pytest.approx(10 * (n_train / 500 + n_val / 1000))
    assert parts["finetune_epochs"] == pytest.approx(10 * (n_train / 250 + n_val / 1000))
    assert parts["compile"] == pytest.approx((10.2 - 100 / 500) + (20.4 - 100 / 250))  # first epoch less a warm one
    assert parts["threshold_and_test"] == pytest.approx((n_val + REFERENCE["test_films"]) / 1000)
    assert estimate["total_seconds"] == pytest.approx(sum(parts.values()))


def test_the_backend_comparison_summarises_finished_rounds_by_median_and_range():
    from benchmarks.backends import summarise

    rows = [{"backend": "tensorflow", "seconds": 60.0, "state": "finished", "roc_auc": 0.92},
            {"backend": "jax", "seconds": 500.0, "state": "finished", "roc_auc": 0.91},
            {"backend": "tensorflow", "seconds": 80.0, "state": "finished", "roc_auc": 0.93},
            {"backend": "jax", "seconds": 300.0, "state": "failed", "roc_auc": None}]
    summary = summarise(rows)
    assert summary["tensorflow"]["seconds"] == {"median": 70.0, "min": 60.0, "max": 80.0}
    assert summary["tensorflow"]["roc_auc"] == [0.92, 0.93]
    assert summary["jax"]["rounds"] == 1 and summary["jax"]["seconds"]["median"] == 500.0  # a failed run is no time
