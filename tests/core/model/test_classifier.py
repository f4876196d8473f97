"""The classifier builder: flat graph, unfreeze depth, layer table, weights loading and its failures."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from core.config import BACKBONES
from core.model.weights import WeightsUnavailableError
from core.config import ModelConfig
from core.model.classifier import backbone_layers, build_classifier, cam_layer_name, layer_table, set_trainable

REPO = Path(__file__).resolve().parents[3]


def _weights(model, names):
    return {n: [w.copy() for w in model.get_layer(n).get_weights()] for n in names}


def test_vgg16_two_phases_change_only_the_layers_they_should():
    """Head phase moves only the head; fine-tune from block 4 moves blocks 4-5 and the head."""
    cfg = ModelConfig(backbone="vgg16", weights="none", unfreeze_from_block=4)
    model = build_classifier(cfg, 32)
    assert model.get_layer("block5_conv3") in model.layers  # flat: tf-keras-vis can reach it
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.array([0, 1] * 4, "float32")
    watched = ["block1_conv1", "block3_conv3", "block4_conv1", "block5_conv3", "logit"]

    def fit(phase):
        set_trainable(model, cfg, phase)
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True))
        before = _weights(model, watched)
        model.fit(x, y, epochs=1, batch_size=4, verbose=0)
        after = _weights(model, watched)
        return {n: any(not np.array_equal(a, b) for a, b in zip(before[n], after[n])) for n in watched}

    assert fit("head") == {"block1_conv1": False, "block3_conv3": False, "block4_conv1": False,
                           "block5_conv3": False, "logit": True}
    assert fit("finetune") == {"block1_conv1": False, "block3_conv3": False, "block4_conv1": True,
                               "block5_conv3": True, "logit": True}


def test_layer_table_reports_trainable_parameters_per_block():
    cfg = ModelConfig(backbone="vgg16", weights="none", unfreeze_from_block=3)
    model = build_classifier(cfg, 32)
    set_trainable(model, cfg, "finetune")
    rows = {row.label: row for row in layer_table(model, "vgg16")}
    assert [rows[f"block {i}"].trainable for i in range(1, 6)] == ["no", "no", "yes", "yes", "yes"]
    assert rows["block 1"].params == 38_720  # 3·3·3·64+64 + 3·3·64·64+64
    assert sum(r.params for r in rows.values()) == model.count_params()
    set_trainable(model, cfg, "head")
    assert sum(r.trainable_params for r in layer_table(model, "vgg16")) == 513  # the Dense(1) head


def test_unfreeze_top_k_layers():
    cfg = ModelConfig(backbone="vgg16", weights="none", unfreeze_from_block=None, unfreeze_top_layers=2)
    model = build_classifier(cfg, 32)
    set_trainable(model, cfg, "finetune")
    trainable = [layer.name for layer in backbone_layers(model) if layer.trainable and layer.weights]
    assert trainable == ["block5_conv2", "block5_conv3"]


def test_pretrained_batchnorm_stays_frozen():
    cfg = ModelConfig(backbone="mobilenetv2", weights="none", alpha=0.35, unfreeze_from_block=1)
    model = build_classifier(cfg, 64)
    set_trainable(model, ModelConfig(backbone="mobilenetv2", weights="imagenet", alpha=0.35, unfreeze_from_block=1), "finetune")
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.trainable for layer in bns)
    assert any(layer.trainable for layer in model.layers if isinstance(layer, keras.layers.Conv2D))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_flat_with_a_cam_layer(name):
    model = build_classifier(ModelConfig(backbone=name, weights="none", unfreeze_from_block=1), 64)
    layer = model.get_layer(cam_layer_name(model, name))
    assert len(layer.output.shape) == 4
    assert model.output.shape == (None, 1)
    assert all(BACKBONES[name].block_of(l.name) for l in backbone_layers(model) if l.weights)


def test_offline_imagenet_fails_fast_naming_the_file(tmp_path):
    """With no cached file and no network the error names the file and the folder, within seconds."""
    code = ("from core.model.classifier import build_classifier; from core.config import ModelConfig\n"
            "build_classifier(ModelConfig(backbone='vgg16', weights='imagenet'), 32)")
    result = _python(code, KERAS_HOME=str(tmp_path))
    assert result.returncode != 0
    assert "WeightsUnavailableError" in result.stderr
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in result.stderr
    assert str(tmp_path / "models") in result.stderr and "weights 'none'" in result.stderr


def _python(code: str, **env) -> subprocess.CompletedProcess:
    """Run in a fresh interpreter: Keras reads KERAS_HOME once, at import."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})


def test_local_weights_file_loads_pretrained_mobilenet(keras_weights_dir):
    path = keras_weights_dir / "mobilenet_2_5_224_tf_no_top.h5"
    pretrained = build_classifier(ModelConfig(backbone="mobilenet", weights=str(path), alpha=0.25), 96)
    random = build_classifier(ModelConfig(backbone="mobilenet", weights="none", alpha=0.25), 96)
    gamma = pretrained.get_layer("conv_pw_13_bn").get_weights()[0]
    assert abs(float(gamma.mean()) - 8.04) < 0.05  # PROVENANCE.md: gamma mean 8.04 (init would be 1)
    assert np.allclose(random.get_layer("conv_pw_13_bn").get_weights()[0], 1.0)


def test_imagenet_weights_found_in_the_keras_cache(keras_weights_dir, tmp_path):
    """Placing Keras's own file in the cache makes weights='imagenet' work offline."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mobilenet_2_5_224_tf_no_top.h5").symlink_to(keras_weights_dir / "mobilenet_2_5_224_tf_no_top.h5")
    code = ("from core.model.classifier import build_classifier; from core.config import ModelConfig\n"
            "m = build_classifier(ModelConfig(backbone='mobilenet', weights='imagenet', alpha=0.25), 128)\n"
            "print(float(m.get_layer('conv_pw_13_bn').get_weights()[0].mean()))")
    result = _python(code, KERAS_HOME=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert abs(float(result.stdout.strip().splitlines()[-1]) - 8.04) < 0.05


def test_wrong_weights_file_is_a_clear_error(keras_weights_dir):
    path = keras_weights_dir / "mobilenet_2_5_224_tf_no_top.h5"
    with pytest.raises(WeightsUnavailableError, match="does not fit MobileNet v1"):
        build_classifier(ModelConfig(backbone="mobilenet", weights=str(path), alpha=0.5), 96)


def test_layer_table_says_yes_for_a_network_trained_whole_from_scratch():
    cfg = ModelConfig(backbone="small_cnn", weights="none", unfreeze_from_block=1)
    model = build_classifier(cfg, 32)
    set_trainable(model, cfg, "finetune")
    assert {row.trainable for row in layer_table(model, "small_cnn")} == {"yes"}


def test_a_model_saved_before_the_package_layout_still_loads(tmp_path):
    """Models saved when the preprocessing layer lived in ``core.backbones`` (the v2 starter, every run of then) load
    by its registered name (``cxr_studio>BackbonePreprocess``), not by that old module path. The shipped starter's
    file, with its config rewritten as such a file has it, stands for one."""
    import json
    import zipfile

    starter = REPO / "models" / "starter-efficientnet-lite0" / "model.keras"
    old = tmp_path / "model.keras"
    with zipfile.ZipFile(starter) as archive, zipfile.ZipFile(old, "w") as copy:
        for item in archive.infolist():
            data = archive.read(item)
            if item.filename == "config.json":
                saved = json.loads(data)
                layers = {layer["class_name"]: layer for layer in saved["config"]["layers"]}
                assert layers["BackbonePreprocess"]["module"] == "core.model.backbones"  # saved after the layout
                assert layers["BackbonePreprocess"]["registered_name"] == "cxr_studio>BackbonePreprocess"
                layers["BackbonePreprocess"]["module"] = "core.backbones"  # a module that no longer exists
                data = json.dumps(saved).encode()
            copy.writestr(item, data)
    code = ("from core.model.classifier import load_model; "
            f"m = load_model({str(old)!r}); print(type(m.get_layer('preprocess')).__module__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "core.model.backbones"
