"""Heatmaps on the film: colour maps, resizing a map, the blend over the X-ray, a map mapped back onto the film's own size, and its mass inside a mask."""
from __future__ import annotations

import functools

import numpy as np

from core.data.images import film_box, resize_plan

__all__ = ["COLORMAPS", "colorize", "resize_map", "overlay", "cam_on_film", "mass_inside"]

# --------------------------------------------------------------------------------------------
# Colour maps come from plotly (a dependency already, for the charts): its colour scales sampled
# into 256-entry tables, so a heatmap on the X-ray and a plotly colour bar use the same colours.
COLORMAPS = ("jet", "inferno", "viridis", "turbo")


@functools.lru_cache(maxsize=len(COLORMAPS))
def _colormap_table(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table for one of :data:`COLORMAPS`, sampled from plotly's colour scale."""
    from plotly.colors import get_colorscale, sample_colorscale, unlabel_rgb  # heavy: plotly

    if name not in COLORMAPS:
        raise ValueError(f"colormap must be one of {', '.join(COLORMAPS)}; got {name!r}")
    colours = sample_colorscale(get_colorscale(name.capitalize()), list(np.linspace(0.0, 1.0, 256)))
    return np.round(np.array([unlabel_rgb(c) for c in colours])).astype(np.uint8)


def colorize(cam: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A 0..1 heatmap (H,W) as uint8 RGB (H,W,3) in the given colour map."""
    index = np.round(np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float64)), 0, 1) * 255).astype(np.int64)
    return _colormap_table(colormap)[index]


def resize_map(array: np.ndarray, shape: tuple[int, int], method: str = "bilinear") -> np.ndarray:
    """Resize a 2-D map (or a batch of them) to ``shape`` with half-pixel-centred sampling."""
    array = np.asarray(array, dtype=np.float32)
    if array.shape[-2:] == tuple(shape):
        return array
    import tensorflow as tf  # heavy: TensorFlow's resize, the one the model input and the CAMs use

    batched = array if array.ndim == 3 else array[None]
    out = tf.image.resize(batched[..., None], shape, method=method).numpy()[..., 0]
    return out if array.ndim == 3 else out[0]


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an image (H,W), (H,W,1) or (H,W,3); got shape {image.shape}")
    return np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)


def cam_on_film(cam: np.ndarray, height: int, width: int, resize_mode: str = "stretch",
                body: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A model-input heatmap (S,S) mapped back onto the film at its own size (height, width), float32 0..1.

    Undoes the framing of :func:`core.data.images.resize_gray`: a stretched film's map is rescaled per
    axis; a letterboxed film's map is cut to the film's area inside the padding first; a centre-square
    film's map covers its square, and the rest of the film, which the model never saw, gets 0. The
    film can then be shown at its true aspect ratio and full resolution, with the heatmap on it. ``body`` is the
    box (left, top, right, bottom) on this film that a ``field_of_view="body"`` run cropped to
    (:meth:`core.data.preprocess.Prepared.body_on`); the framing then applies inside it.
    """
    cam = np.asarray(cam, dtype=np.float32)
    size = cam.shape[0]
    x0, y0, x1, y1 = film_box(width, height, resize_mode, body)
    (new_w, new_h), (left, top) = resize_plan(x1 - x0, y1 - y0, size, resize_mode)
    out = np.zeros((height, width), dtype=np.float32)
    out[y0:y1, x0:x1] = resize_map(cam[top:top + new_h, left:left + new_w], (y1 - y0, x1 - x0))
    return out


def overlay(image: np.ndarray, cam: np.ndarray, opacity: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """The heatmap blended over the X-ray as uint8 RGB (H,W,3), keras.io Grad-CAM style.

    ``image`` is 0..255 (H,W), (H,W,1) or (H,W,3), float or integer; ``cam`` is 0..1 of any size
    (resized to the image). ``opacity`` 0 gives the X-ray alone, 1 the heatmap alone.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be 0..1; got {opacity}")
    rgb = _to_rgb_uint8(image)
    heat = colorize(resize_map(cam, rgb.shape[:2]), colormap)
    if opacity == 0:
        return rgb
    blended = (1.0 - opacity) * rgb.astype(np.float32) + opacity * heat.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def mass_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the heatmap's total mass that falls inside a binary mask (0 for an empty map)."""
    cam = np.clip(np.asarray(cam, dtype=np.float64), 0, None)
    mask = np.asarray(mask)
    if mask.shape != cam.shape:
        mask = resize_map(mask.astype(np.float32), cam.shape, method="nearest")
    total = cam.sum()
    return float((cam * (mask > 0)).sum() / total) if total > 0 else 0.0
