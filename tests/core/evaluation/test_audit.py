"""The shortcut audit: the border band, and a model that reads only the border is caught by both measures."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.evaluation.audit import border_mask, border_share, mask_border, read_audit, shortcut_audit, uniform_border_share
from core.config import preset
from core.store.runs import RunStore
from core.data.splits import run_splits


def test_border_band_and_what_a_uniform_map_puts_there():
    mask = border_mask(100, 0.1)
    assert mask[:10].all() and mask[:, -10:].all() and not mask[10:90, 10:90].any()
    assert uniform_border_share(100, 0.1) == pytest.approx(1 - 0.8 ** 2)
    corner, centre = np.zeros((100, 100)), np.zeros((100, 100))
    corner[:5, :5], centre[40:60, 40:60] = 1, 1
    assert border_share(np.stack([corner, centre, np.ones((100, 100)), np.zeros((100, 100))])).tolist() == \
        pytest.approx([1.0, 0.0, 0.36, 0.0])
    images = np.full((2, 100, 100, 1), 200, np.uint8)
    masked = mask_border(images, 0.1)
    assert (masked[:, mask] == 0).all() and (masked[:, ~mask] == 200).all() and (images == 200).all()


SIZE = 32


def _film(border: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(60, 200, (SIZE, SIZE)).astype(np.uint8)
    pixels[border_mask(SIZE)] = border
    return Image.fromarray(pixels)


def _border_reader():
    """A classifier whose logit is the mean brightness of the border band and nothing else."""
    import keras

    mask = border_mask(SIZE).astype("float32")[None, :, :, None]
    inputs = keras.Input((SIZE, SIZE, 3))
    border = keras.layers.Lambda(lambda x: x[..., :1] / 255.0 * mask, name="border_only")(inputs)
    features = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="features")(border)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    logit = keras.layers.Dense(1, name="logit")(pooled)
    model = keras.Model(inputs, logit, name="border_reader")
    model.get_layer("logit").set_weights([np.array([[80.0]]), np.array([-80.0 * 0.17])])
    return model


def test_a_model_that_reads_the_border_is_caught(tmp_path, monkeypatch):
    for split in ("train", "test"):
        for label, (name, border) in enumerate((("NORMAL", 30), ("PNEUMONIA", 220))):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for k in range(6):
                _film(border, seed=100 * label + k + (50 if split == "test" else 0)).save(folder / f"{name}-{k}.png")
    config = preset("Quick CPU demo").with_overrides(**{"data.source": "folder", "data.path": str(tmp_path / "data"),
                                                         "data.image_size": SIZE, "data.val_fraction": 0.34})
    run = RunStore(tmp_path / "runs").create(config)
    run_splits(config, run.path)
    run.write_json("threshold.json", {"threshold": 0.5})
    run.model_path.write_bytes(b"a stand-in: load_model is replaced below")
    monkeypatch.setattr("core.model.classifier.load_model", lambda path: _border_reader())

    audit = shortcut_audit(run)
    assert (audit["n"], audit["auc"], audit["auc_border_masked"]) == (12, 1.0, 0.5)
    assert audit["auc_drop_ci"][0] > 0.3
    assert audit["per_class"]["PNEUMONIA"]["border_share"] > 0.99 > audit["uniform_border_share"]
    assert "more than" in audit["reading"][0] and "uses what is in the border" in audit["reading"][1]
    assert np.asarray(audit["per_class"]["PNEUMONIA"]["mean_cam"]).shape == (64, 64)
    assert read_audit(run)["auc_border_masked"] == 0.5
