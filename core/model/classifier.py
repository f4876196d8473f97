"""The classifier: a flat backbone → pooling → dropout → Dense(1) logits model, its unfreeze depth and layer table."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from core.config import BACKBONES, BackboneSpec, ModelConfig
from core.model.backbones import BackbonePreprocess, build_backbone, build_reference, load_imagenet_reference
from core.model.weights import WeightsUnavailableError

__all__ = [
    "BlockRow",
    "build_classifier",
    "backbone_layers",
    "set_trainable",
    "layer_table",
    "count_params",
    "load_model",
    "save_float16",
    "cam_layer_name",
]

HEAD_LAYERS = ("pool", "dropout", "logit")


def build_classifier(cfg: ModelConfig, image_size: int) -> keras.Model:
    """Build the classifier as one flat functional graph from ``image`` (0..255 RGB) to a logit.

    The backbone is built on our input tensor rather than nested as a sub-model, so every
    backbone layer (and its Grad-CAM layer) is a layer of the returned model: tf-keras-vis
    cannot look inside a nested model. Pretrained weights are loaded into a standalone copy the
    Keras way (cache, download or file) and copied across layer by layer.
    """
    spec = BACKBONES[cfg.backbone]
    image = keras.Input((image_size, image_size, 3), name="image")
    x = BackbonePreprocess(spec.preprocess, name="preprocess")(image)
    base = build_backbone(spec, x, cfg.alpha)
    y = layers.GlobalAveragePooling2D(name="pool")(base.output)
    y = layers.Dropout(cfg.dropout, name="dropout")(y)
    logit = layers.Dense(1, name="logit", dtype="float32")(y)  # float32 logits under mixed precision
    model = keras.Model(image, logit, name=f"{spec.name}_classifier")
    if cfg.weights != "none":
        if cfg.weights == "imagenet":
            reference = load_imagenet_reference(spec, image_size, cfg.alpha)
        else:
            reference = _load_file_reference(spec, image_size, cfg.weights, cfg.alpha)
        _copy_backbone_weights(reference, model)
    set_trainable(model, cfg, phase="head")
    return model


def _load_file_reference(spec: BackboneSpec, image_size: int, path: str, alpha: float | None) -> keras.Model:
    if not Path(path).is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    try:
        return build_reference(spec, image_size, path, alpha)
    except Exception as exc:  # noqa: BLE001 - wrong file for this backbone/width
        raise WeightsUnavailableError(
            f"{Path(path).name} does not fit {spec.label}"
            f"{f' (alpha {alpha or spec.default_alpha})' if spec.alphas else ''}: {exc}"
        ) from exc


def _copy_backbone_weights(reference: keras.Model, model: keras.Model) -> None:
    """Copy weights from a standalone backbone into the flat model, matching layers in order."""
    source = [layer for layer in reference.layers if layer.weights]
    target = [layer for layer in model.layers if layer.weights and layer.name not in HEAD_LAYERS]
    if len(source) != len(target):
        raise RuntimeError(f"backbone mismatch: {len(source)} weighted layers in the weights, {len(target)} in the model")
    for src, dst in zip(source, target):
        dst.set_weights(src.get_weights())


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers: everything between the input/preprocessing and the head."""
    return [layer for layer in model.layers
            if layer.name not in HEAD_LAYERS and not isinstance(layer, (keras.layers.InputLayer, BackbonePreprocess))]


def _blocks(model: keras.Model, spec: BackboneSpec) -> list[tuple[keras.layers.Layer, int]]:
    """Each backbone layer with its 1-based block; unnamed helper layers inherit the block before them."""
    out, current = [], 1
    for layer in backbone_layers(model):
        block = spec.block_of(layer.name)
        current = block if block is not None else current
        out.append((layer, current))
    return out


def set_trainable(model: keras.Model, cfg: ModelConfig, phase: str) -> None:
    """Freeze the backbone for the head phase; in fine-tuning unfreeze from the chosen depth.

    The setting is honoured as given, with or without pretrained weights (a backbone without
    weights is trained from scratch by unfreezing from block 1 and skipping the head phase).
    Pretrained BatchNormalization layers always stay frozen, which in Keras 3 also runs them in
    inference mode, so fine-tuning on small batches does not wreck the pretrained statistics
    (Keras transfer-learning guide).
    """
    spec = BACKBONES[cfg.backbone]
    rows = _blocks(model, spec)
    pretrained = cfg.weights != "none"
    for layer, block in rows:
        if phase == "head":
            trainable = False
        elif cfg.unfreeze_from_block is not None:
            trainable = block >= cfg.unfreeze_from_block
        else:
            trainable = False
        # Pretrained BatchNorm statistics are kept; a network without pretrained weights must learn its own.
        layer.trainable = trainable and not (pretrained and isinstance(layer, layers.BatchNormalization))
    if phase == "finetune" and cfg.unfreeze_from_block is None and cfg.unfreeze_top_layers:
        weighted = [layer for layer, _ in rows if layer.weights and not isinstance(layer, layers.BatchNormalization)]
        for layer in weighted[-cfg.unfreeze_top_layers:]:
            layer.trainable = True
    for name in HEAD_LAYERS:
        model.get_layer(name).trainable = True


def count_params(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


@dataclass
class BlockRow:
    """One row of the unfreeze table shown to the user."""

    block: int
    label: str
    layers: int
    params: int
    trainable_params: int
    learnable_params: int = 0  # params minus BatchNorm moving statistics, which no optimiser updates

    @property
    def trainable(self) -> str:
        if self.trainable_params == 0:
            return "no"
        return "yes" if self.trainable_params >= self.learnable_params else "partly (BatchNorm frozen)"


def layer_table(model: keras.Model, spec_name: str) -> list[BlockRow]:
    """Per-block layer and parameter counts, with what is trainable under the model's current setting."""
    spec = BACKBONES[spec_name]
    rows: dict[int, BlockRow] = {}
    for layer, block in _blocks(model, spec):
        row = rows.setdefault(block, BlockRow(block, spec.blocks[block - 1][0], 0, 0, 0))
        row.layers += 1
        row.params += count_params(layer.weights)
        row.trainable_params += count_params(layer.trainable_weights)
        row.learnable_params += count_params(w for w in layer.weights if "moving_" not in w.name)
    head = [model.get_layer(name) for name in HEAD_LAYERS]
    rows[len(spec.blocks) + 1] = BlockRow(
        len(spec.blocks) + 1, "classifier head", len(head),
        sum(count_params(layer.weights) for layer in head),
        sum(count_params(layer.trainable_weights) for layer in head),
        sum(count_params(layer.weights) for layer in head),
    )
    return [rows[key] for key in sorted(rows)]


def cam_layer_name(model: keras.Model, spec_name: str | None = None) -> str:
    """The Grad-CAM layer: the backbone's named one, else the last 4-D layer before pooling."""
    if spec_name and BACKBONES[spec_name].cam_layer:
        return BACKBONES[spec_name].cam_layer
    for layer in reversed(backbone_layers(model)):
        if len(layer.output.shape) == 4:
            return layer.name
    raise ValueError("model has no convolutional layer for Grad-CAM")


def load_model(path: str | Path) -> keras.Model:
    """Load a saved classifier (``.keras``) for inference, in float32.

    A model trained under mixed precision is saved with that dtype policy; tf-keras-vis 0.8.7's
    Grad-CAM++ and Score-CAM fail on mixed_bfloat16 models, so such a model is rebuilt in float32
    with the same weights (bf16/fp16 values are exact in float32). A file written by
    :func:`save_float16` is read the same way. The custom layers are registered on import.
    """
    model = keras.models.load_model(path, compile=False)
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    config = model.get_config()
    for layer in config["layers"]:
        layer["config"]["dtype"] = "float32"
    float32 = model.__class__.from_config(config)
    float32.set_weights(model.get_weights())
    return float32


def save_float16(model: keras.Model, path: str | Path) -> None:
    """Save a classifier with float16 variables: half the file, for a model shipped with the repository.

    Every layer's dtype policy becomes ``float16`` (variables stored as float16, no optimizer
    state); :func:`load_model` rebuilds it in float32 with exactly those values, so every consumer
    computes in float32 as before. The rounding to float16 changes the outputs slightly: measure
    the saved file, not the model it came from.
    """
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer":
            layer["config"]["dtype"] = "float16"
    half = model.__class__.from_config(config)
    half.set_weights([np.asarray(w, dtype=np.float16) for w in model.get_weights()])
    half.save(path)
