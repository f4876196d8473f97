"""A run's settings: typed dataclasses with ``validate()``, named presets, and the catalogue of what can be chosen (backbones, threshold rules).

The top layer of :mod:`core`: it imports nothing else of the project, and everything else may import it.
"""
from core.config.catalog import (BACKBONES, FIELDS_OF_VIEW, INTENSITIES, RESIZE_MODES, THRESHOLD_LABELS,
                                 THRESHOLD_METHODS, BackboneSpec, describe_threshold_rule)
from core.config.paths import REPO_ROOT
from core.config.presets import PRESETS, preset
from core.config.settings import (AUGMENT_STRENGTHS, MONITORS, AugmentConfig, ConfigError, DataConfig, ModelConfig,
                                  PhaseConfig, RunConfig, TrainConfig, augment_strength)

__all__ = [
    "AUGMENT_STRENGTHS", "BACKBONES", "FIELDS_OF_VIEW", "INTENSITIES", "MONITORS", "PRESETS", "REPO_ROOT",
    "RESIZE_MODES", "THRESHOLD_LABELS",
    "THRESHOLD_METHODS",
    "AugmentConfig", "BackboneSpec", "ConfigError", "DataConfig", "ModelConfig", "PhaseConfig", "RunConfig",
    "TrainConfig", "augment_strength", "describe_threshold_rule", "preset",
]
