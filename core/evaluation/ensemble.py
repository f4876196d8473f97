"""Ensembles as evaluators: an ensemble run's members, and one Keras model that averages their logits.

An ensemble run folder holds ``ensemble.json`` (the member run ids) beside the usual files. Its
``model.keras`` is one Keras model that feeds the image to every member and averages their logits,
so evaluation, the prediction CLI, Explain and Demo use it like any other run's model (one image
path, one model file), and it keeps working if a member run is deleted later (Lakshminarayanan et
al. 2017 for deep ensembles). Building and training one is :mod:`core.jobs.ensemble`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.store.runs import Run, RunError

__all__ = ["ENSEMBLE_FILE", "MEMBER_PREFIX", "is_ensemble", "member_ids", "combine_models", "member_models"]

ENSEMBLE_FILE = "ensemble.json"
MEMBER_PREFIX = "member_"


def is_ensemble(run: Run) -> bool:
    """True for a run folder that is an ensemble of other runs."""
    return (run.path / ENSEMBLE_FILE).is_file()


def member_ids(run: Run) -> list[str]:
    """The member run ids of an ensemble run."""
    raw = run.read_json(ENSEMBLE_FILE) or {}
    return list(raw.get("members", []))


def combine_models(models: Sequence[Any]) -> Any:
    """One Keras model: the image into every member, the mean of their float32 logits out."""
    import keras  # heavy: Keras

    shape = tuple(models[0].input_shape[1:])
    image = keras.Input(shape, name="image")
    logits = []
    for index, model in enumerate(models):
        if tuple(model.input_shape[1:]) != shape:
            raise RunError(f"member {index + 1} takes {model.input_shape[1:]}, member 1 takes {shape}")
        model.name = f"{MEMBER_PREFIX}{index}_{model.name}"
        logits.append(keras.ops.cast(model(image), "float32"))
    mean = keras.layers.Average(name="logit", dtype="float32")(logits)
    return keras.Model(image, mean, name=f"ensemble_of_{len(models)}")


def member_models(model: Any) -> list[Any]:
    """The member classifiers inside an ensemble model, or [] for a single classifier."""
    import keras  # heavy: Keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name.startswith(MEMBER_PREFIX)]
