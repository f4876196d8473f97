"""A sweep's grid: named axes, normalising a grid, each member's settings and config, and settings in words."""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from core.config import BACKBONES, ConfigError, RunConfig, augment_strength

MAX_MEMBERS = 100
# The grid's named axes, in the user's words, and the setting each varies; any dotted setting works too.
AXES = {
    "unfreeze_from_block": "model.unfreeze_from_block",
    "augment": "augment",  # a named strength (core.config.AUGMENT_STRENGTHS): every augment.* setting at once
    "finetune_learning_rate": "train.finetune.learning_rate",
    "head_learning_rate": "train.head.learning_rate",
    "backbone": "model.backbone",
    "field_of_view": "data.field_of_view",  # the preprocessing that removes non-anatomical cues (core.data.preprocess)
    "remove_markers": "data.remove_markers",
    "intensity": "data.intensity",
    "image_size": "data.image_size",  # resolution, e.g. 64,128,224,448 px
    "resize_mode": "data.resize_mode",  # the film's geometry: stretch, letterbox, center_square
}
AXIS_LABELS = {
    "model.unfreeze_from_block": "unfreeze from block",
    "augment": "augmentation",
    "train.finetune.learning_rate": "fine-tune learning rate",
    "train.head.learning_rate": "head learning rate",
    "model.backbone": "backbone",
    "data.field_of_view": "field of view",
    "data.remove_markers": "remove markers",
    "data.intensity": "intensity",
    "data.image_size": "image size (px)",
    "data.resize_mode": "resize",
}
_SHORT = {"model.unfreeze_from_block": "b", "train.finetune.learning_rate": "ftlr", "train.head.learning_rate": "hlr",
          "data.field_of_view": "fov", "data.remove_markers": "markers", "data.intensity": "",
          "data.image_size": "px", "data.resize_mode": ""}
RESERVED = ("name", "data.cache", "train.evaluate_test")  # set by the sweep on every member


def _is_setting(name: str) -> bool:
    node: Any = RunConfig().to_dict()
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, dict)


def normalize_grid(grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The grid with axis names resolved (``unfreeze_from_block`` → ``model.unfreeze_from_block``), values deduplicated.

    Raises:
        ConfigError: an empty grid, an axis without values or given twice, an unknown setting, one the sweep
            sets itself, or an unknown augmentation strength.
    """
    if not grid:
        raise ConfigError("sweep grid: empty; vary at least one setting, e.g. unfreeze_from_block=2,3,4 "
                          "or augment=none,light")
    out: dict[str, list[Any]] = {}
    for axis, values in grid.items():
        name = AXES.get(axis, axis)
        if name != "augment" and not _is_setting(name):
            raise ConfigError(f"sweep grid: {axis}: no such setting; use {', '.join(AXES)} or a dotted setting "
                              "such as model.dropout")
        if name in RESERVED:
            raise ConfigError(f"sweep grid: {axis}: the sweep sets it on every member; it cannot vary")
        if name in out:
            raise ConfigError(f"sweep grid: {axis}: given twice")
        values = [values] if isinstance(values, str) or not isinstance(values, Sequence) else values
        unique: list[Any] = []
        for value in values:
            if value not in unique:
                unique.append(value)
        if not unique:
            raise ConfigError(f"sweep grid: {axis}: no values")
        if name == "augment":
            for value in unique:
                try:
                    augment_strength(value)
                except ConfigError as exc:  # it names the known strengths
                    raise ConfigError(f"sweep grid: {exc}") from None
        out[name] = unique
    if "augment" in out and any(name.startswith("augment.") for name in out):
        raise ConfigError("sweep grid: vary either augment (a named strength) or single augment.* settings, not both")
    return out


def describe(settings: Mapping[str, Any]) -> str:
    """One grid point in words: ``unfreeze from block 3 · augmentation light``."""
    return " · ".join(f"{AXIS_LABELS.get(key, key)} {_value_text(value)}" for key, value in settings.items())


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _short(settings: Mapping[str, Any]) -> str:
    parts = [f"{_SHORT.get(key, '' if key in ('augment', 'model.backbone') else key.rsplit('.', 1)[-1])}"
             f"{_value_text(value)}" for key, value in settings.items()]
    return "-".join(parts)


def _member_config(base: RunConfig, settings: Mapping[str, Any], name: str) -> RunConfig:
    """``base`` with one grid point, and the sweep's own settings on top (not validated)."""
    overrides: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "augment":
            overrides.update({f"augment.{k}": v for k, v in dataclasses.asdict(augment_strength(value)).items()})
        else:
            overrides[key] = value
    if "model.backbone" in settings and "model.alpha" not in settings:  # as the Train page does on a backbone change

        spec = BACKBONES.get(settings["model.backbone"])
        if spec is not None and base.model.alpha not in spec.alphas:
            overrides["model.alpha"] = spec.default_alpha
    overrides.update({"name": name, "data.cache": "disk", "train.evaluate_test": False})
    return base.with_overrides(**overrides)


def plan_members(base: RunConfig, grid: Mapping[str, Any], name: str) -> list[tuple[dict[str, Any], RunConfig]]:
    """Every grid point as ``(settings, validated member config)``, in grid order (the last axis varies fastest).

    Raises:
        ConfigError: the base settings or the grid are invalid, or any member's config is rejected: every
            rejected member is named, and nothing has been created.
    """
    try:
        base.validate()
    except ConfigError as exc:
        raise ConfigError(f"sweep base settings: {exc}") from None
    axes = normalize_grid(grid)
    points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    if len(points) > MAX_MEMBERS:
        raise ConfigError(f"sweep grid: {len(points)} members; at most {MAX_MEMBERS} (each is a full training run)")
    members, problems = [], []
    for index, settings in enumerate(points, start=1):
        try:
            config = _member_config(base, settings, f"{name[:24]}-{index:02d}-{_short(settings)}").validate()
        except (TypeError, ValueError) as exc:  # ConfigError, or a value of the wrong type
            problems.append(f"member {index} ({describe(settings)}): {exc}")
        else:
            members.append((settings, config))
    if problems:
        raise ConfigError(f"sweep grid: {len(problems)} of {len(points)} members have settings the config rejects; "
                          "nothing was created.\n" + "\n".join(problems))
    return members
