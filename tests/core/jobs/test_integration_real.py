"""Integration on the real X-rays in ../shared/data: a short run trains, evaluates on a test slice, explains."""
from __future__ import annotations

import numpy as np
import pytest

from core.config import preset
from core.data.images import load_image
from core.data.splits import resolve_splits
from core.evaluation.explain import Explainer, deletion_score
from core.model.classifier import load_model
from core.store.runs import RunStore
from core.jobs.run import run_and_record

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_short_run_on_real_xrays_trains_evaluates_and_explains(tmp_path, real_data):
    config = preset("Quick CPU demo").with_overrides(**{
        "name": "real-smoke", "data.source": "folder", "data.path": str(real_data), "data.image_size": 64,
        "data.max_images_per_class": 60, "data.max_test_images_per_class": 20,
        "train.finetune.epochs": 3, "train.early_stopping_patience": 0,
    })
    splits = resolve_splits(config.data, config.split_seed)
    assert len(splits.test) == 40 and all(r.split == "test" for r in splits.test)
    assert not {r.patient for r in splits.train} & {r.patient for r in splits.val}

    run = RunStore(tmp_path).create(config)
    assert run_and_record(run, resume=False) == 0, run.raw_status().error
    metrics = run.metrics()
    assert metrics["n"] == 40  # the official test slice, full-size grayscale originals
    for name in ("sensitivity", "specificity", "roc_auc"):
        assert 0.0 <= metrics[name] <= 1.0
    assert set(metrics["ci"]) >= {"sensitivity", "specificity", "roc_auc"}
    # Three epochs on 120 films from scratch learn something, though far from a usable model.
    assert metrics["roc_auc"] > 0.6

    model = load_model(run.model_path)
    image = load_image(splits.test[0].path, 64)  # a full-size original, resized through the core
    explanation = Explainer(model, threshold=run.threshold()).explain(image, "gradcam")
    assert explanation.cam.shape == (64, 64) and 0.0 <= explanation.probability <= 1.0
    assert np.isfinite(explanation.cam).all() and explanation.cam.max() <= 1.0
    faithfulness = deletion_score(model, image, explanation.cam)
    assert set(faithfulness) >= {"drop", "random_drop"}
