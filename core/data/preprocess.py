"""Preprocessing that removes non-anatomical cues, as run settings: burnt-in markers, the field of view, the grey levels.

A film carries things a model can learn instead of the lungs (Zech et al., PLOS Medicine 2018; DeGrave,
Janizek & Lee, Nature Machine Intelligence 2021): laterality letters and labels, padding and collimation
around the body, each site's own brightness and contrast. Three settings of ``data`` remove them, applied by
the one image path (:func:`core.data.images.preprocess_gray`) in this order: decode → markers → field of view
→ resize → intensity. Each step works on a bounded working copy, says in a short note what it did or why it
left the film as it was, and never fails on a strange film. The defaults change no pixel.

- ``remove_markers``: markers found and inpainted by :mod:`core.data.cues` (white top-hat, biharmonic
  inpainting), looked for on a copy at most :data:`WORK_SIDE` px a side.
- ``field_of_view="body"``: Otsu's threshold (Otsu 1979, scikit-image) on a smoothed copy; the largest bright
  component's bounding box, with a small margin, is the body; the film outside it (air, padding, the edges of
  the collimation) is cut away.
- ``intensity``: ``"clahe"`` — contrast-limited adaptive histogram equalisation (Zuiderveld 1994,
  ``skimage.exposure.equalize_adapthist``); ``"window"`` — the 1st to 99th percentile stretched to 0..255
  (``skimage.exposure.rescale_intensity``). Both undo a site's overall brightness and contrast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from core.config import FIELDS_OF_VIEW, INTENSITIES
from core.data.cues import Box, find_markers, marker_mask, remove_markers

__all__ = ["Preprocessing", "Prepared", "NO_PREPROCESSING", "WORK_SIDE", "without_markers", "foreground", "body_box",
           "adjust_intensity"]

WORK_SIDE = 256  # the working copy's longer side for finding markers and the body: fast, and enough for both
MAX_MARKER_SHARE = 0.25  # markers covering more of the film than this are not inpainted (nothing to fill from)
MIN_BODY_SHARE = 0.10  # the body's component covers at least this share of the film
MIN_BODY_SIDE = 0.30  # and its box at least this share of the film's width and of its height
BODY_MARGIN = 0.02  # added around the body's box on each side, as a share of the film's side
MIN_FILM_SIDE = 32  # a film narrower than this, or more than MAX_ASPECT times longer than wide, keeps its full view
MAX_ASPECT = 4.0
WINDOW_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class Preprocessing:
    """What the image path does to a film besides decoding and resizing; built from a run's ``data`` settings."""

    field_of_view: str = "full"
    remove_markers: bool = False
    intensity: str = "none"

    def __post_init__(self) -> None:
        if self.field_of_view not in FIELDS_OF_VIEW:
            raise ValueError(f"field_of_view must be one of {', '.join(FIELDS_OF_VIEW)}; got {self.field_of_view!r}")
        if self.intensity not in INTENSITIES:
            raise ValueError(f"intensity must be one of {', '.join(INTENSITIES)}; got {self.intensity!r}")
        if self.remove_markers not in (True, False):
            raise ValueError(f"remove_markers must be true or false; got {self.remove_markers!r}")

    @classmethod
    def of(cls, data: Any) -> "Preprocessing":
        """From a :class:`core.config.DataConfig` (or anything with its three fields; missing ones default)."""
        return cls(getattr(data, "field_of_view", "full"), bool(getattr(data, "remove_markers", False)),
                   getattr(data, "intensity", "none"))

    @property
    def active(self) -> bool:
        return self != NO_PREPROCESSING

    def to_dict(self) -> dict[str, Any]:
        return {"field_of_view": self.field_of_view, "remove_markers": self.remove_markers,
                "intensity": self.intensity}

    def describe(self) -> str:
        """In words, for the model card and the export: ``markers removed, cropped to the body, CLAHE``."""
        parts = (["burnt-in markers inpainted"] if self.remove_markers else []) + (
            ["cropped to the body"] if self.field_of_view == "body" else []) + (
            {"clahe": ["CLAHE"], "window": ["1st–99th percentile window"]}.get(self.intensity, []))
        return ", ".join(parts) or "none"


NO_PREPROCESSING = Preprocessing()


@dataclass(frozen=True)
class Prepared:
    """One film through the image path: the model's pixels and what preprocessing did to get them.

    ``body`` and ``markers`` are on the decoded film of ``film_shape`` (height, width); :meth:`body_on` maps the
    body's box onto the same film at another size (a full-resolution copy on screen).
    """

    pixels: np.ndarray  # uint8 (S, S)
    notes: tuple[str, ...] = ()
    film_shape: tuple[int, int] = (0, 0)
    body: tuple[int, int, int, int] | None = None  # (left, top, right, bottom); None: the full film
    markers: tuple[Box, ...] = field(default=())

    def model_input(self) -> np.ndarray:
        """The pixels as the model takes them: float32 (S, S, 3) in 0..255, as :func:`core.data.images.load_image`."""
        return np.repeat(self.pixels[..., None], 3, axis=-1).astype(np.float32)

    def body_on(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """The body's box on the same film at ``height`` × ``width`` (None when the full film was kept)."""
        if self.body is None:
            return None
        rows, cols = height / self.film_shape[0], width / self.film_shape[1]
        left, top, right, bottom = self.body
        return (int(np.floor(left * cols)), int(np.floor(top * rows)),
                min(width, int(np.ceil(right * cols))), min(height, int(np.ceil(bottom * rows))))


def _odd_shape(gray: np.ndarray) -> bool:
    height, width = gray.shape
    return min(height, width) < MIN_FILM_SIDE or max(height, width) > MAX_ASPECT * min(height, width)


def _working_copy(gray: np.ndarray) -> np.ndarray:
    """The film at most :data:`WORK_SIDE` px on its longer side (PIL bilinear, antialiased)."""
    height, width = gray.shape
    scale = WORK_SIDE / max(height, width)
    if scale >= 1:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(gray, mode="L").resize(size, Image.BILINEAR))


def without_markers(gray: np.ndarray) -> tuple[np.ndarray, tuple[Box, ...], str]:
    """The film with its burnt-in markers inpainted, the boxes removed (on the film), and a note."""
    if _odd_shape(gray):
        return gray, (), "odd film shape: markers not looked for"
    work = _working_copy(gray)
    rows, cols = gray.shape[0] / work.shape[0], gray.shape[1] / work.shape[1]
    boxes = [box.scaled(rows, cols) for box in find_markers(work)]
    if not boxes:
        return gray, (), "no markers found"
    share = float(marker_mask(gray.shape, boxes).mean())
    if share > MAX_MARKER_SHARE:
        return gray, (), f"markers would cover {share:.0%} of the film: left as is"
    cleaned, removed = gray.copy(), []
    for box in boxes:  # each inpainted in a window around it: the cost follows the markers, not the film's size
        pad = max(8, box.bottom - box.top, box.right - box.left)
        top, left = max(0, box.top - pad), max(0, box.left - pad)
        window = (slice(top, box.bottom + pad), slice(left, box.right + pad))
        local = Box(box.top - top, box.left - left, box.bottom - top, box.right - left)
        cleaned[window], done = remove_markers(cleaned[window], [local])
        removed += [box] if done else []
    return cleaned, tuple(removed), f"{len(removed)} marker{'s' * (len(removed) != 1)} removed"


def foreground(gray: np.ndarray) -> np.ndarray | None:
    """Where a film (H,W) is body: brighter than its Otsu threshold after a light blur; None for a flat film."""
    from skimage.filters import gaussian, threshold_otsu  # heavy: scikit-image, only when the body is looked for

    smooth = gaussian(np.asarray(gray).astype(np.float64) / 255.0, sigma=max(1.0, min(np.shape(gray)) / 100))
    if float(smooth.max() - smooth.min()) < 4 / 255:
        return None
    return smooth > threshold_otsu(smooth)


def body_box(gray: np.ndarray) -> tuple[tuple[int, int, int, int] | None, str]:
    """The body's bounding box (left, top, right, bottom) on the film, or None and why the full film is kept."""
    from skimage.measure import label, regionprops  # heavy: scikit-image, only when the body is looked for

    height, width = gray.shape
    if _odd_shape(gray):
        return None, f"odd film shape ({width}×{height}): full film kept"
    work = _working_copy(gray)
    body = foreground(work)
    if body is None:
        return None, "flat film, no body found: full film kept"
    regions = regionprops(label(body))
    largest = max(regions, key=lambda region: region.area, default=None)
    if largest is None or largest.area < MIN_BODY_SHARE * work.size:
        return None, "no body found: full film kept"
    top, left, bottom, right = largest.bbox
    if bottom - top < MIN_BODY_SIDE * work.shape[0] or right - left < MIN_BODY_SIDE * work.shape[1]:
        return None, "no body found (too small a region): full film kept"
    rows, cols = height / work.shape[0], width / work.shape[1]
    pad_y, pad_x = BODY_MARGIN * height, BODY_MARGIN * width
    box = (max(0, int(np.floor(left * cols - pad_x))), max(0, int(np.floor(top * rows - pad_y))),
           min(width, int(np.ceil(right * cols + pad_x))), min(height, int(np.ceil(bottom * rows + pad_y))))
    if box == (0, 0, width, height):
        return None, "the body fills the film: full film kept"
    share = (box[2] - box[0]) * (box[3] - box[1]) / (width * height)
    return box, f"cropped to the body ({share:.0%} of the film)"


def adjust_intensity(pixels: np.ndarray, intensity: str) -> tuple[np.ndarray, str | None]:
    """Model pixels (uint8, 2-D) with their grey levels equalised or windowed, and a note (None for ``"none"``)."""
    from skimage.exposure import equalize_adapthist, rescale_intensity  # heavy: scikit-image

    if intensity == "none" or pixels.size == 0:
        return pixels, None
    if intensity == "clahe":
        if min(pixels.shape) < 8 or int(pixels.max()) == int(pixels.min()):
            return pixels, "flat film: CLAHE skipped"
        equalised = equalize_adapthist(pixels, clip_limit=0.01)
        return np.clip(np.round(equalised * 255.0), 0, 255).astype(np.uint8), "CLAHE applied"
    low, high = np.percentile(pixels, WINDOW_PERCENTILES)
    if high - low < 1:
        return pixels, "flat film: window skipped"
    windowed = rescale_intensity(pixels.astype(np.float64), in_range=(float(low), float(high)), out_range=(0.0, 255.0))
    return np.round(windowed).astype(np.uint8), f"window {low:.0f}–{high:.0f} → 0–255"
