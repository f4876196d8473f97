"""THE one image path: any source (file, upload bytes, DICOM, MedMNIST reference) → the exact pixels a run's model sees; decoding is :mod:`core.data.decode`."""
from __future__ import annotations

import hashlib
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from core.config.catalog import RESIZE_MODES
from core.data.decode import IMAGE_EXTENSIONS, MAX_MEGAPIXELS, MIN_SIDE, ImageLoadError, decode_image, pil_to_gray
from core.data.preprocess import NO_PREPROCESSING, Prepared, Preprocessing, adjust_intensity, body_box, without_markers

ImageSource = bytes | bytearray | memoryview | str | Path
"""File bytes (an upload), a file path, or a MedMNIST reference ``"x.npz::split::i"``."""

__all__ = [
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "MAX_MEGAPIXELS",
    "ImageLoadError",
    "ImageSource",
    "decode_image",
    "read_image",
    "RESIZE_MODES",
    "crop_box",
    "film_box",
    "resize_plan",
    "resize_gray",
    "Preprocessing",
    "Prepared",
    "NO_PREPROCESSING",
    "preprocess_gray",
    "prepare_image",
    "model_pixels",
    "prepared_pixels",
    "load_image",
    "is_npz_ref",
    "source_digest",
    "film_size",
    "image_size_spread",
    "unreadable_files",
]

# --------------------------------------------------------------------------- sources


_NPZ_REF = re.compile(r"^(?P<file>.+\.npz)::(?P<split>train|val|test)::(?P<index>\d+)$")


def is_npz_ref(source: object) -> bool:
    """Whether ``source`` is a MedMNIST reference ``"x.npz::split::i"`` rather than a file or bytes."""
    return isinstance(source, (str, Path)) and bool(_NPZ_REF.match(str(source)))


def _npz_array(ref: str, opened: dict | None = None) -> np.ndarray:
    """The stored array of one MedMNIST image; ``opened`` caches whole splits across calls."""
    match = _NPZ_REF.match(ref)
    if not match:
        raise ImageLoadError(f"not a MedMNIST reference: {ref!r} (expected file.npz::split::index)")
    file, split, index = match["file"], match["split"], int(match["index"])
    try:
        if opened is not None and split in opened.get(file, {}):
            images = opened[file][split]
        else:
            with np.load(file, allow_pickle=False) as npz:
                images = np.asarray(npz[f"{split}_images"])
            if opened is not None:
                opened.setdefault(file, {})[split] = images
        return images[index]
    except FileNotFoundError:
        raise ImageLoadError(f"file not found: {file}") from None
    except (OSError, KeyError, IndexError, ValueError, zipfile.BadZipFile) as exc:
        raise ImageLoadError(f"cannot read image {index} of {split} in {file} ({exc})") from None


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise ImageLoadError(f"is a folder, not an image file: {path}") from None
    except OSError as exc:
        raise ImageLoadError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_image(source: ImageSource, filename: str = "", draft_size: int | None = None,
               opened: dict | None = None) -> np.ndarray:
    """Any source → uint8 grayscale (H, W) at its own size (see :func:`decode_image`).

    Args:
        source: file bytes, a file path, or a MedMNIST reference ``"x.npz::split::i"``.
        filename: the name of uploaded bytes (a path names itself).
        draft_size: see :func:`decode_image`.
        opened: a dict that caches MedMNIST arrays between calls.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(bytes(source), filename, draft_size)
    text = str(source)
    if is_npz_ref(text):
        array = _npz_array(text, opened)
        return array if array.ndim == 2 else pil_to_gray(Image.fromarray(array))
    return decode_image(_read_file(text), text, draft_size)


def source_digest(source: ImageSource, opened: dict | None = None) -> str:
    """sha256 of a source's content: the file's bytes, or for a MedMNIST reference the array's bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif is_npz_ref(source):
        data = np.ascontiguousarray(_npz_array(str(source), opened)).tobytes()
    else:
        data = _read_file(str(source))
    return hashlib.sha256(data).hexdigest()


def unreadable_files(paths: Sequence[str], progress: Callable[[int, int], None] | None = None
                     ) -> list[tuple[str, str]]:
    """Every file decoded once, as training will decode it; ``(path, reason)`` for each one that fails.

    The JPEG decoder's draft mode keeps this fast (a 2,000 px film decodes at an eighth of its size);
    truncated and damaged files still fail, because the whole file is read. MedMNIST references are
    skipped (their arrays were checked when the .npz was opened).
    """
    from concurrent.futures import ThreadPoolExecutor

    files = [str(p) for p in paths if not is_npz_ref(p)]

    def check(path: str) -> str | None:
        try:
            read_image(path, draft_size=MIN_SIDE)
        except ImageLoadError as exc:
            return str(exc)
        return None

    bad: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for done, (path, reason) in enumerate(zip(files, pool.map(check, files)), start=1):
            if reason is not None:
                bad.append((path, reason))
            if progress and (done == len(files) or done % 64 == 0):
                progress(done, len(files))
    return bad


def film_size(source: ImageSource) -> tuple[int, int] | None:
    """A film file's own (width, height), read from its header only; None for bytes, MedMNIST arrays and unreadable files."""
    if isinstance(source, (bytes, bytearray, memoryview)) or is_npz_ref(source):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(source) as img:  # header only, no pixel decode
                return img.width, img.height
    except Exception:  # noqa: BLE001 - a bad file is reported by load, not here
        return None


def image_size_spread(paths: Sequence[str], sample: int = 200, seed: int = 0) -> dict:
    """Widths and heights of a random sample of image files, read from headers only, and a one-line summary.

    MedMNIST references are left out (their arrays have no header).
    """
    files = [str(p) for p in paths if not is_npz_ref(p)]
    widths: list[int] = []
    heights: list[int] = []
    if files:
        rng = np.random.default_rng(seed)
        chosen = [files[i] for i in rng.choice(len(files), size=min(sample, len(files)), replace=False)]
        for size in filter(None, map(film_size, chosen)):
            widths.append(size[0])
            heights.append(size[1])
    if not widths:
        summary = "n/a" if not files else "no readable headers in the sample"
    else:
        w, h = np.array(widths), np.array(heights)
        summary = (f"width min/median/max {w.min()}/{int(np.median(w))}/{w.max()} px, "
                   f"height {h.min()}/{int(np.median(h))}/{h.max()} px (sample of {len(widths)})")
    return {"widths": widths, "heights": heights, "summary": summary}


# --------------------------------------------------------------------------- the model's input


def crop_box(width: int, height: int, resize_mode: str) -> tuple[int, int, int, int]:
    """The part of a film (left, top, right, bottom) that the model sees: all of it, or for ``center_square`` the
    centred square of its shorter side (as MedMNIST cut its 28 px copies), so no film is squeezed and no padding
    carries its shape."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}; got {resize_mode!r}")
    if resize_mode != "center_square":
        return 0, 0, width, height
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def resize_plan(width: int, height: int, image_size: int, resize_mode: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """The size the (cropped) film is resized to and its offset on the square canvas."""
    left, top, right, bottom = crop_box(width, height, resize_mode)
    if resize_mode != "letterbox":
        return (image_size, image_size), (0, 0)
    width, height = right - left, bottom - top
    scale = image_size / max(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    return new, ((image_size - new[0]) // 2, (image_size - new[1]) // 2)


def _as_film(gray: np.ndarray) -> np.ndarray:
    """A film as uint8 (H, W): the first channel of (H, W, 1|3), values rounded and clipped to 0..255."""
    gray = np.asarray(gray)
    if gray.ndim == 3:
        gray = gray[..., 0] if gray.shape[-1] in (1, 3) else gray
    if gray.dtype != np.uint8:
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return gray


def resize_gray(gray: np.ndarray, image_size: int, resize_mode: str = "stretch") -> np.ndarray:
    """The one resize used everywhere: PIL bilinear (antialiased when shrinking), uint8 (S, S) out.

    ``"letterbox"`` keeps the aspect ratio and pads with black; ``"stretch"`` fills the square;
    ``"center_square"`` keeps the centred square of the shorter side (:func:`crop_box`).
    """
    img = Image.fromarray(_as_film(gray), mode="L")
    box = crop_box(img.width, img.height, resize_mode)
    if box != (0, 0, img.width, img.height):
        img = img.crop(box)
    size, offset = resize_plan(img.width, img.height, image_size, resize_mode)
    if img.size != size:
        img = img.resize(size, Image.BILINEAR)
    if resize_mode == "letterbox":
        canvas = Image.new("L", (image_size, image_size), 0)
        canvas.paste(img, offset)
        img = canvas
    return np.asarray(img, dtype=np.uint8)


def film_box(width: int, height: int, resize_mode: str,
             body: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """The part of a film (left, top, right, bottom) that the model sees: :func:`crop_box` of the body's box when
    the field of view was cropped to the body (``body``, see :class:`Prepared`), else of the whole film."""
    if body is None:
        return crop_box(width, height, resize_mode)
    left, top, right, bottom = body
    x0, y0, x1, y1 = crop_box(right - left, bottom - top, resize_mode)
    return left + x0, top + y0, left + x1, top + y1


def _intensity_on_film(pixels: np.ndarray, width: int, height: int, resize_mode: str,
                       intensity: str) -> tuple[np.ndarray, str | None]:
    """:func:`adjust_intensity` on the film's part of the square: a letterbox's padding stays black and uncounted."""
    (new_w, new_h), (left, top) = resize_plan(width, height, pixels.shape[0], resize_mode)
    out = pixels.copy()
    region = (slice(top, top + new_h), slice(left, left + new_w))
    out[region], note = adjust_intensity(pixels[region], intensity)
    return out, note


def preprocess_gray(gray: np.ndarray, image_size: int, resize_mode: str = "stretch",
                    preprocessing: Preprocessing = NO_PREPROCESSING) -> Prepared:
    """A decoded film → the model's pixels and what was done: markers → field of view → resize → intensity.

    Without preprocessing this is :func:`resize_gray` alone, pixel for pixel. See :mod:`core.data.preprocess`.
    """
    if not preprocessing.active:
        return Prepared(resize_gray(gray, image_size, resize_mode), (), tuple(np.shape(gray)[:2]))
    film = _as_film(gray)
    notes: list[str] = []
    markers: tuple = ()
    if preprocessing.remove_markers:
        film, markers, note = without_markers(film)
        notes.append(note)
    body = None
    if preprocessing.field_of_view == "body":
        body, note = body_box(film)
        notes.append(note)
    left, top, right, bottom = body or (0, 0, film.shape[1], film.shape[0])
    pixels = resize_gray(film[top:bottom, left:right], image_size, resize_mode)
    if preprocessing.intensity != "none":
        pixels, note = _intensity_on_film(pixels, right - left, bottom - top, resize_mode, preprocessing.intensity)
        notes.append(note or "")
    return Prepared(pixels, tuple(n for n in notes if n), film.shape, body, markers)


def prepare_image(gray: np.ndarray, image_size: int, resize_mode: str = "stretch",
                  preprocessing: Preprocessing = NO_PREPROCESSING) -> np.ndarray:
    """Grayscale at any size → float32 (S, S, 3) in 0..255 through :func:`preprocess_gray` (for display and tests)."""
    return preprocess_gray(gray, image_size, resize_mode, preprocessing).model_input()


def prepared_pixels(source: ImageSource, image_size: int, resize_mode: str = "stretch", *,
                    preprocessing: Preprocessing | None = None, filename: str = "",
                    opened: dict | None = None) -> Prepared:
    """:func:`model_pixels` with what preprocessing did: the notes, the body's box and the markers removed."""
    settings = preprocessing or NO_PREPROCESSING
    return preprocess_gray(read_image(source, filename, image_size, opened), image_size, resize_mode, settings)


def model_pixels(source: ImageSource, image_size: int, resize_mode: str = "stretch", *,
                 preprocessing: Preprocessing | None = None, filename: str = "",
                 opened: dict | None = None) -> np.ndarray:
    """THE one path from a source to the pixels a run trains and is evaluated on: uint8 (S, S).

    Decodes (a JPEG with the decoder's own power-of-two downscale to at least ``image_size``),
    then :func:`preprocess_gray`: the run's preprocessing (none by default) and :func:`resize_gray`.
    :func:`core.data.pipeline.load_arrays` calls this for every image, and
    :func:`load_image` (Explain, Demo, ``core.predict``) wraps it, so a film gives the same
    pixels, hence the same probability, in training, evaluation and on every page.

    Raises:
        ImageLoadError: see :func:`decode_image`; also a missing file or a bad MedMNIST reference.
    """
    return prepared_pixels(source, image_size, resize_mode, preprocessing=preprocessing, filename=filename,
                           opened=opened).pixels


def load_image(source: ImageSource, image_size: int, resize_mode: str = "stretch", *,
               preprocessing: Preprocessing | None = None, filename: str = "") -> np.ndarray:
    """The model's input for one image: float32 (S, S, 3) in 0..255, the pixels of :func:`model_pixels`.

    Args:
        source: file bytes (an upload), a file path, or a MedMNIST reference ``"x.npz::split::i"``.
        image_size: the run's ``data.image_size``.
        resize_mode: the run's ``data.resize_mode``.
        preprocessing: the run's ``Preprocessing.of(config.data)``; default none.
        filename: the upload's name, when ``source`` is bytes (``.dcm`` selects DICOM).

    Raises:
        ImageLoadError: see :func:`decode_image`.
    """
    prepared = prepared_pixels(source, image_size, resize_mode, preprocessing=preprocessing, filename=filename)
    return prepared.model_input()
