"""Non-anatomical cues on a film: the border band, burnt-in markers (found and inpainted), and a neutral fill for the border.

Chest films carry things that are not anatomy: laterality letters ("R", "L"), burnt-in text
("KV58"), ECG clips and leads, collimation edges and padding, mostly near the edges (Zech et al.,
PLOS Medicine 2018; DeGrave, Janizek & Lee, Nature Machine Intelligence 2021). A model can learn
them instead of the lungs. This module finds and removes them on a grayscale film, so the shortcut
audit can ask what a call would be without them.

Markers are found as small, bright, compact structures near the edges that stand out from their
surroundings: a white top-hat (scikit-image) keeps structures smaller than about 5 % of the side
(letters, clips; not bones or the mediastinum), a component must lie in the outer band, be small,
and be much brighter than the ring around it. The rule was tuned by eye on the bundled sample's
films (their "R" and "KV58" markers and ECG clips); it misses faint grey letters and takes a few rib
or clavicle tips. They are removed by biharmonic inpainting (scikit-image), not by hand-written code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BORDER_FRACTION", "Box", "border_mask", "neutral_border", "find_markers", "marker_mask", "remove_markers"]

BORDER_FRACTION = 0.10
EDGE_BAND = 0.12  # a marker's centre lies within this share of the side from an edge
MIN_AREA, MAX_AREA = 0.0002, 0.02  # a marker's share of the film's area
MAX_SIDE = 0.2  # a marker's longer side, as a share of the film's shorter side
MIN_TOPHAT = 60  # grey levels above the opening: brighter than anything its size around it
MIN_CONTRAST = 70  # grey levels between the marker's bright pixels and the ring around it


@dataclass(frozen=True)
class Box:
    """A found marker: rows ``top:bottom`` and columns ``left:right`` of the film it was found on."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def area(self) -> int:
        return (self.bottom - self.top) * (self.right - self.left)

    def scaled(self, rows: float, cols: float) -> "Box":
        """The same box on a film resized by ``rows`` (height) and ``cols`` (width)."""
        return Box(int(np.floor(self.top * rows)), int(np.floor(self.left * cols)),
                   int(np.ceil(self.bottom * rows)), int(np.ceil(self.right * cols)))


def border_mask(size: int | tuple[int, int], fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Boolean (size, size), or (H, W) for a shape: True in the band of ``round(fraction · side)`` pixels (at least
    one) along each edge, the side being the height for the top and bottom bands and the width for the others."""
    if not 0 < fraction < 0.5:
        raise ValueError(f"border fraction must be in (0, 0.5); got {fraction}")
    height, width = (size, size) if isinstance(size, int) else size
    rows, cols = max(1, int(round(fraction * height))), max(1, int(round(fraction * width)))
    mask = np.ones((height, width), dtype=bool)
    mask[rows:height - rows, cols:width - cols] = False
    return mask


def neutral_border(images: np.ndarray, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Model-input images (N,S,S[,C]) with the border band replaced by a strongly blurred copy of the same film.

    The blur (σ = half the band) keeps the band's overall brightness — dark background stays dark,
    a shoulder stays bright — but washes out letters, text and sharp collimation edges. Unlike a
    black band it is not itself something the model never saw.
    """
    from scipy.ndimage import gaussian_filter  # heavy: SciPy, only when a border is filled

    images = np.asarray(images)
    out = images.astype(np.float32, copy=True)
    size = images.shape[1]
    sigma = max(1.0, fraction * size / 2)
    sigmas = (0, sigma, sigma) + (0,) * (images.ndim - 3)
    blurred = gaussian_filter(out, sigma=sigmas, mode="reflect")
    band = border_mask(size, fraction)
    out[:, band] = blurred[:, band]
    return out.astype(images.dtype) if np.issubdtype(images.dtype, np.integer) else out


def neutral_film_border(gray: np.ndarray, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """A decoded film (H,W) of any shape with the band of ``fraction`` of each side along every edge replaced by a
    strongly blurred copy of itself (σ = half the band, per axis), as :func:`neutral_border` does to a model input.

    The audit masks the *film's* border, before the run's image path: for a run that crops to the body or takes
    a centred square, the edge of its input is anatomy, and blurring it would test the lungs, not the border.
    """
    from scipy.ndimage import gaussian_filter  # heavy: SciPy, only when a border is filled

    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"expected a grayscale film (H,W); got shape {gray.shape}")
    band = border_mask(gray.shape, fraction)
    rows, cols = (max(1, int(round(fraction * side))) for side in gray.shape)  # the band's depth, as border_mask
    out = gray.astype(np.float32, copy=True)
    blurred = gaussian_filter(out, sigma=(max(1.0, rows / 2), max(1.0, cols / 2)), mode="reflect")
    out[band] = blurred[band]
    return np.clip(np.round(out), 0, 255).astype(gray.dtype) if np.issubdtype(gray.dtype, np.integer) else out


def find_markers(gray: np.ndarray) -> list[Box]:
    """Small, bright, compact structures near the edges of a uint8 grayscale film (H,W): markers, text, clips."""
    from skimage.measure import label, regionprops  # heavy: scikit-image, only when markers are looked for
    from skimage.morphology import dilation, disk, white_tophat

    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"expected a grayscale film (H,W); got shape {gray.shape}")
    height, width = gray.shape
    side = min(height, width)
    if side < 16:
        return []
    tophat = white_tophat(gray, disk(max(3, round(0.05 * side)))).astype(np.float32)
    bright = min(float(np.percentile(gray, 99)), 230.0) * 0.8
    candidates = dilation((tophat >= MIN_TOPHAT) & (gray >= bright), disk(max(1, round(0.01 * side))))
    boxes = []
    for region in regionprops(label(candidates)):
        top, left, bottom, right = region.bbox
        row, col = (top + bottom) / 2, (left + right) / 2
        near_edge = min(row, height - row) <= EDGE_BAND * height or min(col, width - col) <= EDGE_BAND * width
        share = region.area / (height * width)
        if not near_edge or not MIN_AREA <= share <= MAX_AREA or max(bottom - top, right - left) > MAX_SIDE * side:
            continue
        pad = max(2, round(0.02 * side))
        outer = (slice(max(0, top - pad), bottom + pad), slice(max(0, left - pad), right + pad))
        ring = np.ones(gray[outer].shape, dtype=bool)
        ring[top - outer[0].start:bottom - outer[0].start, left - outer[1].start:right - outer[1].start] = False
        on = gray[region.coords[:, 0], region.coords[:, 1]].astype(np.float32)
        if not ring.any() or np.percentile(on, 90) - np.median(gray[outer][ring]) < MIN_CONTRAST:
            continue
        boxes.append(Box(top, left, bottom, right))
    return boxes


def marker_mask(shape: tuple[int, int], boxes: list[Box]) -> np.ndarray:
    """Boolean (H,W), True inside the boxes."""
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        mask[box.top:box.bottom, box.left:box.right] = True
    return mask


def remove_markers(gray: np.ndarray, boxes: list[Box] | None = None) -> tuple[np.ndarray, list[Box]]:
    """The film (H,W) uint8 with its markers inpainted from their surroundings, and the boxes that were removed.

    Boxes default to :func:`find_markers`. A film with no marker comes back unchanged. Marker
    boxes that would cover more than a quarter of the film are not inpainted (nothing sensible
    can be filled in there); the film then comes back unchanged with no box.
    """
    from skimage.morphology import dilation, disk  # heavy: scikit-image, only when markers are removed
    from skimage.restoration import inpaint_biharmonic

    gray = np.asarray(gray)
    boxes = find_markers(gray) if boxes is None else boxes
    mask = marker_mask(gray.shape, boxes)
    if not mask.any() or mask.mean() > 0.25:
        return gray.copy(), []
    grown = dilation(mask, disk(max(1, round(0.005 * min(gray.shape)))))
    filled = inpaint_biharmonic(gray.astype(np.float64) / 255.0, grown)
    return np.clip(np.round(filled * 255.0), 0, 255).astype(np.uint8), boxes
