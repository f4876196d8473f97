"""Explanations: Grad-CAM, Grad-CAM++ and Score-CAM heatmaps of a classifier or an ensemble, and whether a heatmap means anything (deletion score).

Colour maps and overlays on the X-ray are :mod:`core.evaluation.overlay`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from core.config.backend import require_tensorflow

TENSORFLOW_ONLY = "Grad-CAM, Grad-CAM++ and Score-CAM (tf-keras-vis on TensorFlow's gradients)"
require_tensorflow(TENSORFLOW_ONLY)  # one line, not an ImportError
import tensorflow as tf  # noqa: E402

from core.config import BACKBONES
from core.evaluation.ensemble import member_models
from core.evaluation.metrics import sigmoid
from core.evaluation.overlay import resize_map
from core.model.classifier import backbone_layers, cam_layer_name

__all__ = [
    "CAM_METHODS",
    "CAM_TARGETS",
    "Explanation",
    "Explainer",
    "explainer_for",
    "ENSEMBLE_LAYER",
    "compute_cam",
    "default_cam_layer",
    "cam_layer_choices",
    "deletion_score",
    "EnsembleExplainer",
]

CAM_METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM"}
CAM_TARGETS = ("predicted", "pneumonia", "normal")
SCORECAM_MAX_N = 10  # Faster Score-CAM: only the 10 highest-variance channels (tf-keras-vis docs' value)
CAM_BATCH = 16  # images per tf-keras-vis call
_EPS = 1e-7


# --------------------------------------------------------------------------------------------
# Layers
def _spec_name(model: keras.Model) -> str | None:
    """The backbone a classifier was built from (``build_classifier`` names it ``<backbone>_classifier``)."""
    name = model.name.removesuffix("_classifier")
    return name if name in BACKBONES else None


def default_cam_layer(model: keras.Model) -> str:
    """The backbone's registered Grad-CAM layer, else its last 4-D layer."""
    name = cam_layer_name(model, _spec_name(model))
    try:
        model.get_layer(name)
    except ValueError:
        name = cam_layer_name(model)
    return name


_CAM_LAYER_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
                    keras.layers.Activation, keras.layers.ReLU)


ENSEMBLE_LAYER = "each member's Grad-CAM layer"


def cam_layer_choices(model: keras.Model) -> list[str]:
    """The backbone's 4-D convolution and activation layers, deepest first (the default first of all).

    An ensemble offers one choice: each member's own default layer (its maps are averaged).
    """
    if member_models(model):
        return [ENSEMBLE_LAYER]
    names = [layer.name for layer in reversed(backbone_layers(model))
             if isinstance(layer, _CAM_LAYER_TYPES) and len(layer.output.shape) == 4]
    default = default_cam_layer(model)
    return [default] + [n for n in names if n != default]


# --------------------------------------------------------------------------------------------
# CAMs
def _batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
    x = np.asarray(images, dtype=np.float32)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected images (N,S,S,3) or one image (S,S,3); got shape {x.shape}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x, single


def _logits(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_on_batch(x), dtype=np.float64).reshape(-1)


def _explained_classes(logits: np.ndarray, target: str, threshold: float) -> np.ndarray:
    """True where the map explains PNEUMONIA, False where it explains NORMAL."""
    if target not in CAM_TARGETS:
        raise ValueError(f"target must be one of {', '.join(CAM_TARGETS)}; got {target!r}")
    if target == "predicted":
        return sigmoid(logits) >= threshold
    return np.full(logits.shape, target == "pneumonia")


def _finish(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """ReLU'd low-resolution maps → upsampled to the input and scaled to 0..1 per image."""
    cam = resize_map(np.maximum(np.asarray(raw, dtype=np.float32), 0.0), size)
    low = cam.min(axis=(1, 2), keepdims=True)
    high = cam.max(axis=(1, 2), keepdims=True)
    return ((cam - low) / (high - low + _EPS)).astype(np.float32)


def _two_class_model(model: keras.Model) -> keras.Model:
    """The same graph with logits [0, z]: softmax of it is [P(NORMAL), P(PNEUMONIA)].

    tf-keras-vis's Score-CAM passes model outputs through a softmax before scoring, which is
    constant 1 for a single logit; with this view the weights are the class probabilities, as
    in Wang et al. 2020.
    """
    logit = model.outputs[0]
    pair = keras.layers.Concatenate(name="cam_two_class")([keras.ops.zeros_like(logit), logit])
    two_class = keras.Model(model.inputs, pair, name=f"{model.name}_two_class")
    two_class.predict = functools.partial(two_class.predict, verbose=0)  # tf-keras-vis would print progress bars
    return two_class


def _visualizer(model: keras.Model, method: str, cache: dict | None):
    """The tf-keras-vis object for ``method``; kept in ``cache`` so Score-CAM's two-class view is built once."""
    if cache is not None and method in cache:
        return cache[method]
    if method == "gradcam":
        from tf_keras_vis.gradcam import Gradcam  # heavy: tf-keras-vis

        visualizer = Gradcam(model, model_modifier=None, clone=False)
    elif method == "gradcam++":
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus  # heavy: tf-keras-vis

        visualizer = GradcamPlusPlus(model, model_modifier=None, clone=False)
    else:
        from tf_keras_vis.scorecam import Scorecam  # heavy: tf-keras-vis

        visualizer = Scorecam(_two_class_model(model), model_modifier=None, clone=False)
    if cache is not None:
        cache[method] = visualizer
    return visualizer


def compute_cam(model: keras.Model, images: np.ndarray, method: str = "gradcam", layer: str | None = None,
                target: str = "predicted", threshold: float = 0.5, visualizers: dict | None = None) -> np.ndarray:
    """Class activation maps for a batch of X-rays, computed with tf-keras-vis.

    Methods: ``gradcam`` (Selvaraju et al. 2017), ``gradcam++`` (Chattopadhay et al. 2018),
    ``scorecam`` (Wang et al. 2020, in its "Faster Score-CAM" form over the
    :data:`SCORECAM_MAX_N` highest-variance channels). ``target``: ``pneumonia`` explains the
    logit, ``normal`` its negative (``BinaryScore``), ``predicted`` whichever class each image
    is called at ``threshold``. The map is taken at ``layer`` exactly (default: the backbone's
    Grad-CAM layer), ReLU'd, upsampled bilinearly to the input size and scaled to 0..1 per
    image; a map that is zero everywhere stays zero.

    Args:
        images: float 0..255, (N,S,S,3) or one (S,S,3).
    Returns:
        float32 (N,S,S), or (S,S) for a single image.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {', '.join(CAM_METHODS)}; got {method!r}")
    from tf_keras_vis.utils.scores import BinaryScore, CategoricalScore  # heavy: tf-keras-vis

    x, single = _batch(images)
    layer = layer or default_cam_layer(model)
    model.get_layer(layer)  # fail early with Keras's message naming the layer
    if len(x) > CAM_BATCH:  # bound memory: Score-CAM alone runs max_N forward passes per image
        cam = np.concatenate([compute_cam(model, x[i:i + CAM_BATCH], method, layer, target, threshold, visualizers)
                              for i in range(0, len(x), CAM_BATCH)])
        return cam
    explained = _explained_classes(_logits(model, x), target, threshold)
    options = dict(penultimate_layer=layer, seek_penultimate_conv_layer=False, expand_cam=False,
                   normalize_cam=False, activation_modifier=None)
    # The model already outputs a linear logit: no ReplaceToLinear modifier, hence no clone.
    visualizer = _visualizer(model, method, visualizers)
    if method in ("gradcam", "gradcam++"):
        raw = visualizer(BinaryScore(list(explained)), x, **options)
    else:
        channels = int(model.get_layer(layer).output.shape[-1])
        raw = visualizer(CategoricalScore([int(e) for e in explained]), x, max_N=min(SCORECAM_MAX_N, channels),
                         batch_size=32, **options)
    cam = _finish(np.asarray(raw), x.shape[1:3])
    return cam[0] if single else cam


@dataclass
class Explanation:
    """One explained prediction."""

    probability: float  # P(PNEUMONIA)
    cam: np.ndarray  # float32 (S,S), 0..1
    method: str
    layer: str
    explained: str = "pneumonia"  # the class the map argues for: "pneumonia" or "normal"


class Explainer:
    """Explanations for one model, built once and reused (the interactive path).

    Grad-CAM runs as one compiled ``tf.function``: one forward pass gives the probability and
    the layer's activations, one backward pass the gradients (keras.io "Grad-CAM class
    activation visualization"; Selvaraju et al. 2017). The gradients of the logit serve both
    classes, since the NORMAL score is the negative logit. Grad-CAM++ and Score-CAM go
    through :func:`compute_cam` (tf-keras-vis).
    """

    def __init__(self, model: keras.Model, layer: str | None = None, threshold: float = 0.5):
        self.model = model
        self.layer = layer or default_cam_layer(model)
        self.threshold = float(threshold)
        self._visualizers: dict = {}  # tf-keras-vis objects, built on first use (Score-CAM's two-class view)
        features = model.get_layer(self.layer).output
        self._grad_model = keras.Model(model.inputs, [features, model.outputs[0]])
        height, width = model.input_shape[1:3]
        self._size = (int(height), int(width))
        self._gradcam = tf.function(
            self._gradcam_graph, input_signature=[tf.TensorSpec((None, height, width, 3), tf.float32)])
        self._gradcampp = tf.function(
            self._gradcampp_graph, input_signature=[tf.TensorSpec((None, height, width, 3), tf.float32),
                                                    tf.TensorSpec((), tf.float32)])

    def _forward_backward(self, x: tf.Tensor, sign: tf.Tensor | float = 1.0):
        with tf.GradientTape() as tape:
            tape.watch(x)  # so the graph is recorded even when the whole backbone is frozen
            features, logit = self._grad_model(x, training=False)
            features = tf.cast(features, tf.float32)
            logit = tf.reshape(tf.cast(logit, tf.float32), [-1])
            total = tf.reduce_sum(sign * logit)  # images are independent in inference mode
        return logit, features, tape.gradient(total, features)

    def _gradcam_graph(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        logit, features, grads = self._forward_backward(x)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # α_k: global-average-pooled gradients
        return logit, tf.reduce_sum(features * weights, axis=-1)

    def _gradcampp_graph(self, x: tf.Tensor, sign: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Grad-CAM++ from the same single forward/backward pass, as tf-keras-vis 0.8.7 computes it
        (exp(score) trick for the higher derivatives; Chattopadhay et al. 2018), activation_modifier=None.

        The exp(score) factor cancels in the alphas and only scales the map, which is normalised
        afterwards, so it is left out: same map, no overflow for confident logits.
        """
        logit, features, grads = self._forward_backward(x, sign)
        d1 = grads
        d2 = d1 * grads
        d3 = d2 * grads
        global_sum = tf.reduce_sum(features, axis=(1, 2), keepdims=True)
        denom = 2.0 * d2 + d3 * global_sum
        alphas = d2 / (denom + tf.cast(d2 == 0.0, denom.dtype))
        norm = tf.reduce_sum(alphas, axis=(1, 2), keepdims=True)
        alphas = alphas / (norm + tf.cast(norm == 0.0, norm.dtype))
        weights = tf.reduce_sum(d1 * alphas, axis=(1, 2), keepdims=True)
        return logit, tf.reduce_sum(weights * features, axis=-1)

    def gradcam_batch(self, images: np.ndarray, target: str = "predicted", batch_size: int = 16
                      ) -> tuple[np.ndarray, np.ndarray]:
        """P(PNEUMONIA) (N,) and Grad-CAM maps (N,S,S), 0..1 each, for many 0..255 images at once.

        The same compiled pass as :meth:`explain`; each map argues for the class ``target`` names
        (``predicted``: the class called at the threshold), so map i equals ``explain(images[i]).cam``.
        """
        x, _ = _batch(images)
        probabilities, cams = [], []
        for start in range(0, len(x), batch_size):
            logit, raw = (t.numpy() for t in self._gradcam(tf.constant(x[start:start + batch_size])))
            pneumonia = _explained_classes(logit.astype(np.float64), target, self.threshold)
            cams.append(_finish(np.where(pneumonia[:, None, None], raw, -raw), self._size))
            probabilities.append(sigmoid(logit))
        if not cams:
            return np.zeros(0), np.zeros((0, *self._size), np.float32)
        return np.concatenate(probabilities), np.concatenate(cams)

    def explain(self, image: np.ndarray, method: str = "gradcam", target: str = "predicted") -> Explanation:
        """P(PNEUMONIA) and a 0..1 heatmap (S,S) for one 0..255 image (S,S,3)."""
        x, _ = _batch(image)
        if x.shape[1:3] != self._size:
            raise ValueError(f"image is {x.shape[1]}×{x.shape[2]} px; the model takes {self._size[0]}×{self._size[1]}")
        if method == "gradcam":
            logit, raw = (t.numpy() for t in self._gradcam(tf.constant(x[:1])))
            pneumonia = _explained_classes(logit.astype(np.float64), target, self.threshold)[0]
            cam = _finish(raw if pneumonia else -raw, self._size)[0]
        elif method == "gradcam++":
            # The class to explain depends on the prediction: run with the pneumonia score, and again
            # with the normal score only when that is the class explained (Grad-CAM++ is not odd in the score).
            logit, raw = (t.numpy() for t in self._gradcampp(tf.constant(x[:1]), tf.constant(1.0)))
            pneumonia = _explained_classes(logit.astype(np.float64), target, self.threshold)[0]
            if not pneumonia:
                raw = self._gradcampp(tf.constant(x[:1]), tf.constant(-1.0))[1].numpy()
            cam = _finish(raw, self._size)[0]
        else:
            logit = _logits(self.model, x[:1])
            pneumonia = _explained_classes(logit, target, self.threshold)[0]
            cam = compute_cam(self.model, x[0], method, self.layer, "pneumonia" if pneumonia else "normal",
                              visualizers=self._visualizers)
        return Explanation(float(sigmoid(logit[0])), cam, method, self.layer,
                           "pneumonia" if pneumonia else "normal")


class EnsembleExplainer:
    """Probability and heatmap of an ensemble: the mean of its members' maps for the class the ensemble calls."""

    def __init__(self, model: Any, threshold: float = 0.5):
        self.model = model
        self.threshold = float(threshold)
        self.members = [Explainer(member, threshold=threshold) for member in member_models(model)]
        if not self.members:
            raise ValueError("not an ensemble model")
        self.layer = f"mean over {len(self.members)} members ({', '.join(sorted({m.layer for m in self.members}))})"

    def explain(self, image: np.ndarray, method: str = "gradcam", target: str = "predicted"):
        x, _ = _batch(image)
        logit = _logits(self.model, x[:1])
        pneumonia = bool(_explained_classes(logit, target, self.threshold)[0])
        member_target = "pneumonia" if pneumonia else "normal"
        maps = np.stack([member.explain(x[0], method, member_target).cam for member in self.members])
        cam = maps.mean(axis=0)
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        return Explanation(float(sigmoid(logit[0])), cam.astype(np.float32), method, self.layer, member_target)


def explainer_for(model: keras.Model, layer: str | None = None, threshold: float = 0.5):
    """The explainer for a saved model: :class:`Explainer`, or for an ensemble the mean of its members' maps."""
    if member_models(model):
        return EnsembleExplainer(model, threshold=threshold)
    return Explainer(model, layer=None if layer == ENSEMBLE_LAYER else layer, threshold=threshold)


# --------------------------------------------------------------------------------------------
# Does the heatmap mean anything?
def _filler(image: np.ndarray, baseline: str) -> np.ndarray:
    if baseline == "blur":
        from scipy.ndimage import gaussian_filter  # heavy: SciPy

        sigma = max(1.0, image.shape[0] / 8)  # wide enough to wash out a lesion-sized structure
        return gaussian_filter(image, sigma=(sigma, sigma, 0), mode="reflect")
    if baseline == "mean":
        return np.broadcast_to(image.mean(axis=(0, 1), keepdims=True), image.shape)
    raise ValueError(f"baseline must be 'blur' or 'mean'; got {baseline!r}")


def deletion_score(model: keras.Model, image: np.ndarray, cam: np.ndarray, fraction: float = 0.1,
                   baseline: str = "blur", target: str = "predicted", threshold: float = 0.5,
                   n_random: int = 5, seed: int = 0) -> dict[str, Any]:
    """How much the explained class loses when the heatmap's top pixels are removed, vs random pixels.

    The ``fraction`` most salient pixels are replaced by a blurred (or mean) copy of the image,
    in the spirit of ROAR (Hooker et al. 2019) and ROAD (Rong et al. 2022) but without
    retraining; the same number of random pixels, averaged over ``n_random`` masks, gives the
    chance level. ``drop`` and ``random_drop`` are the fall in the explained class's probability
    (P(PNEUMONIA) for a pneumonia map, P(NORMAL) for a normal one): a useful heatmap has
    ``drop`` well above ``random_drop``. Probabilities reported are P(PNEUMONIA).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be between 0 and 1; got {fraction}")
    if target not in CAM_TARGETS:
        raise ValueError(f"target must be one of {', '.join(CAM_TARGETS)}; got {target!r}")
    x, _ = _batch(image)
    x = x[0]
    height, width = x.shape[:2]
    saliency = resize_map(cam, (height, width)).ravel()
    k = max(1, int(round(fraction * height * width)))
    filler = _filler(x, baseline)
    rng = np.random.default_rng(seed)
    masks = [np.argsort(-saliency, kind="stable")[:k]]
    masks += [rng.choice(height * width, size=k, replace=False) for _ in range(n_random)]
    batch = [x]
    for chosen in masks:
        keep = np.ones(height * width, dtype=bool)
        keep[chosen] = False
        batch.append(np.where(keep.reshape(height, width, 1), x, filler))
    prob = sigmoid(_logits(model, np.stack(batch).astype(np.float32)))
    pneumonia = bool(prob[0] >= threshold) if target == "predicted" else target == "pneumonia"
    sign = 1.0 if pneumonia else -1.0
    return {
        "explained": "pneumonia" if pneumonia else "normal",
        "fraction": fraction,
        "baseline": baseline,
        "probability_before": float(prob[0]),
        "probability_after": float(prob[1]),
        "drop": float(sign * (prob[0] - prob[1])),
        "random_drop": float(np.mean(sign * (prob[0] - prob[2:]))),
    }


