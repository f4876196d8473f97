"""Run settings: typed dataclasses with validation and JSON round-trip."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.config.backend import BACKENDS
from core.config.catalog import BACKBONES, FIELDS_OF_VIEW, INTENSITIES, RESIZE_MODES, THRESHOLD_METHODS

__all__ = [
    "ConfigError",
    "DataConfig",
    "AugmentConfig",
    "ModelConfig",
    "PhaseConfig",
    "TrainConfig",
    "RunConfig",
    "MONITORS",
    "AUGMENT_STRENGTHS",
    "augment_strength",
]

DataSource = Literal["demo", "sample", "folder", "kaggle", "medmnist"]
ResizeMode = Literal["stretch", "letterbox", "center_square"]
FieldOfView = Literal["full", "body"]
Intensity = Literal["none", "clahe", "window"]
Validation = Literal["patient_split", "official"]
CacheMode = Literal["memory", "disk", "none"]
ThresholdMethod = Literal["youden", "robust_youden", "youden_midpoint", "sensitivity", "fixed"]
Device = Literal["auto", "cpu", "gpu", "mirrored", "multiworker"]
Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
Backend = Literal["tensorflow", "jax"]
Monitor = Literal["val_loss", "val_exact_auc"]
MONITORS = ("val_loss", "val_exact_auc")


class ConfigError(ValueError):
    """A setting is out of range or inconsistent; the message names the field."""


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field_name}: {message}")


def _one_of(value: Any, allowed: tuple, field_name: str) -> None:
    _check(value in allowed, field_name, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")


@dataclass
class DataConfig:
    """Where the images come from and how they are shaped for the model."""

    source: DataSource = "demo"  # "sample": the real films bundled in sample/chest_xray
    path: str | None = None  # data set root for "folder"/"kaggle", npz file for "medmnist"
    image_size: int = 224
    resize_mode: ResizeMode = "stretch"
    # Preprocessing that removes non-anatomical cues (core.data.preprocess); the defaults change no pixel.
    field_of_view: FieldOfView = "full"  # "body": crop to the body's bounding box before the resize
    remove_markers: bool = False  # inpaint burnt-in letters and labels near the edges before the crop
    intensity: Intensity = "none"  # after the resize: "clahe" (adaptive equalisation) or "window" (1st–99th pct)
    validation: Validation = "patient_split"
    val_fraction: float = 0.15
    split_seed: int | None = None  # seed of the patient-grouped validation split; empty = the training seed
    cache: CacheMode = "memory"
    max_images_per_class: int | None = None  # a balanced subset for quick runs
    max_test_images_per_class: int | None = None
    demo_images_per_class: int = 120

    def validate(self) -> None:
        _one_of(self.source, ("demo", "sample", "folder", "kaggle", "medmnist"), "data.source")
        _check(self.source != "folder" or bool(self.path), "data.path", "a folder source needs a path")
        _check(16 <= self.image_size <= 1024, "data.image_size", f"must be 16..1024 px; got {self.image_size}")
        _one_of(self.resize_mode, RESIZE_MODES, "data.resize_mode")
        _one_of(self.field_of_view, FIELDS_OF_VIEW, "data.field_of_view")
        _one_of(self.remove_markers, (True, False), "data.remove_markers")
        _one_of(self.intensity, INTENSITIES, "data.intensity")
        _one_of(self.validation, ("patient_split", "official"), "data.validation")
        _check(0.02 <= self.val_fraction <= 0.5, "data.val_fraction", f"must be 0.02..0.5; got {self.val_fraction}")
        _one_of(self.cache, ("memory", "disk", "none"), "data.cache")
        for name in ("max_images_per_class", "max_test_images_per_class"):
            value = getattr(self, name)
            _check(value is None or value >= 2, f"data.{name}", f"must be at least 2 or empty; got {value}")
        _check(self.demo_images_per_class >= 8, "data.demo_images_per_class", "must be at least 8")
        _check(self.split_seed is None or self.split_seed >= 0, "data.split_seed", "must be ≥ 0 or empty")


@dataclass
class AugmentConfig:
    """Random training-time augmentation; every field 0/False means off."""

    rotation_degrees: float = 10.0
    zoom: float = 0.1  # fraction, e.g. 0.1 = up to ±10 %
    shift: float = 0.05  # fraction of the image side
    brightness: float = 0.1  # fraction of the value range
    contrast: float = 0.1
    horizontal_flip: bool = False  # anatomy is not left-right symmetric
    noise_std: float = 0.0  # Gaussian noise, in 0..255 pixel units
    # Acquisition shift: films from another scanner, another export, another resize.
    blur_sigma: float = 0.0  # Gaussian blur (half the images) with σ up to this many pixels, at most 1
    gamma: float = 0.0  # gamma drawn as exp(±gamma): 0.2 ≈ γ 0.82..1.22
    jpeg_quality_min: int = 0  # re-encode as JPEG with quality drawn from this..100 (0 = off)

    def validate(self) -> None:
        _check(0 <= self.rotation_degrees <= 45, "augment.rotation_degrees", "must be 0..45")
        for name in ("zoom", "shift", "brightness", "contrast", "gamma"):
            _check(0 <= getattr(self, name) <= 0.5, f"augment.{name}", "must be 0..0.5")
        _check(0 <= self.noise_std <= 50, "augment.noise_std", "must be 0..50")
        _check(0 <= self.blur_sigma <= 1, "augment.blur_sigma", "must be 0..1 pixels")
        _check(self.jpeg_quality_min == 0 or 10 <= self.jpeg_quality_min <= 100, "augment.jpeg_quality_min",
               f"must be 0 (off) or 10..100; got {self.jpeg_quality_min}")

    @property
    def active(self) -> bool:
        return any(
            (self.rotation_degrees, self.zoom, self.shift, self.brightness, self.contrast,
             self.horizontal_flip, self.noise_std, self.blur_sigma, self.gamma, self.jpeg_quality_min)
        )



def _augment_strengths() -> dict[str, AugmentConfig]:
    off = dict(rotation_degrees=0, zoom=0, shift=0, brightness=0, contrast=0)
    light = dict(rotation_degrees=5, zoom=0.05, shift=0.03, brightness=0.05, contrast=0.05)
    return {
        "none": AugmentConfig(**off),
        "light": AugmentConfig(**light),
        "standard": AugmentConfig(),
        "acquisition": AugmentConfig(gamma=0.2, blur_sigma=1.0, jpeg_quality_min=50),
        "strong": AugmentConfig(rotation_degrees=15, zoom=0.15, shift=0.08, brightness=0.15, contrast=0.15,
                                gamma=0.3, blur_sigma=1.0, jpeg_quality_min=30, noise_std=3),
    }


AUGMENT_STRENGTHS = tuple(_augment_strengths())


def augment_strength(name: str) -> AugmentConfig:
    """A named augmentation strength (``none``, ``light``, ``standard``, ``acquisition``, ``strong``), as data."""
    strengths = _augment_strengths()
    if name not in strengths:
        raise ConfigError(f"augment: unknown strength {name!r}; choose one of {', '.join(strengths)}")
    return strengths[name]


@dataclass
class ModelConfig:
    """Backbone, where its weights come from, and how deep it is unfrozen for fine-tuning."""

    backbone: str = "vgg16"
    weights: str = "imagenet"  # "imagenet", "none", or a path to a weights file
    alpha: float | None = None  # width multiplier for MobileNet-style backbones
    unfreeze_from_block: int | None = 3  # 1-based block; None = use unfreeze_top_layers
    unfreeze_top_layers: int | None = None
    dropout: float = 0.3

    def validate(self) -> None:
        _one_of(self.backbone, tuple(BACKBONES), "model.backbone")
        _check(bool(self.weights), "model.weights", "use 'imagenet', 'none' or a file path")
        if self.weights not in ("imagenet", "none"):
            _check(Path(self.weights).is_file(), "model.weights", f"weights file not found: {self.weights}")
        _check(0 <= self.dropout < 1, "model.dropout", "must be 0..<1")
        spec = BACKBONES[self.backbone]
        if self.unfreeze_from_block is not None:
            _check(1 <= self.unfreeze_from_block <= len(spec.blocks), "model.unfreeze_from_block",
                   f"{self.backbone} has blocks 1..{len(spec.blocks)}; got {self.unfreeze_from_block}")
        if self.unfreeze_top_layers is not None:
            _check(self.unfreeze_top_layers >= 0, "model.unfreeze_top_layers", "must be ≥ 0")


@dataclass
class PhaseConfig:
    """One training phase: how many epochs, at what learning rate."""

    epochs: int = 10
    learning_rate: float = 1e-3
    augment: bool = True  # off: this phase sees unaugmented images (and frozen layers can be cached)

    def validate(self, name: str) -> None:
        _check(0 <= self.epochs <= 1000, f"train.{name}.epochs", "must be 0..1000 (0 skips the phase)")
        _check(0 < self.learning_rate <= 1, f"train.{name}.learning_rate", "must be in (0, 1]")


@dataclass
class TrainConfig:
    """The two-phase schedule, class weighting, stopping, threshold choice and device."""

    head: PhaseConfig = field(default_factory=lambda: PhaseConfig(10, 1e-3))
    finetune: PhaseConfig = field(default_factory=lambda: PhaseConfig(10, 1e-5))
    batch_size: int = 32
    class_weight: Literal["balanced", "none"] = "balanced"
    # What each phase's best checkpoint and early stopping follow: validation loss, or scikit-learn's
    # exact ROC AUC over every validation image (Keras's 200-bin AUC saturates near 1).
    monitor: Monitor = "val_loss"
    early_stopping_patience: int = 3  # epochs of a phase without a better monitored value; 0 = off
    # Chosen by benchmarks/operating_point.py on validation over three seeds: as good as any data-chosen rule on
    # held-out validation, and the same threshold for every seed (balanced class weights train towards 0.5).
    threshold_method: ThresholdMethod = "fixed"
    target_sensitivity: float = 0.95
    seed: int = 42
    # The Keras backend the run trains with (core.config.backend); recorded so Runs and the model card can say it.
    backend: Backend = "tensorflow"
    device: Device = "auto"
    precision: Precision = "auto"
    jit_compile: bool | Literal["auto"] = "auto"
    progress_every_steps: int = 5
    cache_frozen_features: bool = True  # reuse frozen-backbone features when no augmentation runs
    # Off for sweep members (core.sweep): they are compared on validation, and only the final run sees test.
    evaluate_test: bool = True

    def validate(self) -> None:
        self.head.validate("head")
        self.finetune.validate("finetune")
        _check(self.head.epochs + self.finetune.epochs > 0, "train", "at least one phase needs epochs")
        _check(1 <= self.batch_size <= 1024, "train.batch_size", "must be 1..1024")
        _one_of(self.class_weight, ("balanced", "none"), "train.class_weight")
        _check(self.monitor in MONITORS, "train.monitor",
               f"must be one of {', '.join(MONITORS)} (validation loss, or the exact ROC AUC over every "
               f"validation image); got {self.monitor!r}")
        _check(0 <= self.early_stopping_patience <= 100, "train.early_stopping_patience", "must be 0..100")
        _one_of(self.threshold_method, THRESHOLD_METHODS, "train.threshold_method")
        _check(0.5 <= self.target_sensitivity < 1, "train.target_sensitivity", "must be 0.5..<1")
        _check(self.backend in BACKENDS, "train.backend",
               f"Keras backend {self.backend!r} is not supported: choose one of {', '.join(BACKENDS)}")
        _one_of(self.device, ("auto", "cpu", "gpu", "mirrored", "multiworker"), "train.device")
        _check(not (self.backend != "tensorflow" and self.device == "multiworker"), "train.device",
               f"multiworker (tf.distribute's MultiWorkerMirroredStrategy) needs the TensorFlow backend, not "
               f"{self.backend}; under JAX, 'auto' or 'mirrored' trains on every GPU of this host")
        _one_of(self.precision, ("auto", "float32", "mixed_bfloat16", "mixed_float16"), "train.precision")
        _one_of(self.jit_compile, (True, False, "auto"), "train.jit_compile")
        _check(self.progress_every_steps >= 1, "train.progress_every_steps", "must be ≥ 1")
        _one_of(self.evaluate_test, (True, False), "train.evaluate_test")


@dataclass
class RunConfig:
    """Everything that defines one training run; saved as the run's config.json."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        _check(bool(self.name.strip()), "name", "must not be empty")
        self.data.validate()
        self.augment.validate()
        self.model.validate()
        self.train.validate()
        return self

    @property
    def split_seed(self) -> int:
        """The seed of the validation split: ``data.split_seed``, else the training seed.

        Members of a seed ensemble share one split (and so one validation set) while their
        training seeds differ.
        """
        return self.train.seed if self.data.split_seed is None else self.data.split_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        return _from_dict(cls, raw, "")

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
        return cls.from_dict(raw)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.from_json(Path(path).read_text())

    def with_overrides(self, **dotted: Any) -> "RunConfig":
        """Copy with dotted-name overrides, e.g. ``{"train.head.epochs": 2}``."""
        raw = self.to_dict()
        for key, value in dotted.items():
            node = raw
            *parents, leaf = key.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"{key}: no such setting")
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"{key}: no such setting")
            node[leaf] = value
        return RunConfig.from_dict(raw)


def _from_dict(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected an object, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown setting")
    kwargs = {}
    for name, value in raw.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{prefix}{name}.")
        else:
            kwargs[name] = value
    return cls(**kwargs)
