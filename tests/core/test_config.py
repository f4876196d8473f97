"""Run settings: presets validate, JSON round-trips, bad values name their field."""
from __future__ import annotations

import pytest

from core.config import PRESETS, ConfigError, RunConfig, preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates_and_round_trips(name):
    config = preset(name).validate()
    assert RunConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "override, field",
    [
        ({"data.image_size": 8}, "data.image_size"),
        ({"model.backbone": "alexnet"}, "model.backbone"),
        ({"model.unfreeze_from_block": 9}, "model.unfreeze_from_block"),
        ({"model.weights": "/nonexistent/weights.h5"}, "model.weights"),
        ({"train.head.learning_rate": 0}, "train.head.learning_rate"),
        ({"train.head.epochs": 0, "train.finetune.epochs": 0}, "train"),
        ({"data.source": "folder"}, "data.path"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        RunConfig().with_overrides(**override).validate()


def test_unknown_keys_and_bad_json_are_rejected():
    with pytest.raises(ConfigError, match="train.epochz: unknown setting"):
        RunConfig.from_dict({"train": {"epochz": 3}})
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.from_json("{oops")
    with pytest.raises(ConfigError, match="no such setting"):
        RunConfig().with_overrides(**{"model.depth": 3})


def test_augmentation_off_is_detected():
    config = RunConfig()
    assert config.augment.active
    off = config.with_overrides(**{f"augment.{k}": 0 for k in
                                   ("rotation_degrees", "zoom", "shift", "brightness", "contrast", "noise_std")})
    assert not off.augment.active


def test_split_seed_defaults_to_the_training_seed_and_can_be_pinned():
    config = RunConfig()
    config.train.seed = 5
    assert config.split_seed == 5
    pinned = config.with_overrides(**{"data.split_seed": 0, "train.seed": 9})
    assert pinned.split_seed == 0 and pinned.train.seed == 9
    with pytest.raises(ConfigError, match="data.split_seed"):
        config.with_overrides(**{"data.split_seed": -1}).validate()
