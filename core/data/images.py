"""Images: decoding and validating every supported format, and THE one path from any source to a model's input."""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "MAX_MEGAPIXELS",
    "ImageLoadError",
    "ImageSource",
    "decode_image",
    "read_image",
    "resize_gray",
    "prepare_image",
    "model_pixels",
    "load_image",
    "is_npz_ref",
    "source_digest",
    "image_size_spread",
    "unreadable_files",
]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm")
MIN_SIDE = 32
MAX_MEGAPIXELS = 100

ImageSource = bytes | bytearray | memoryview | str | Path
"""File bytes (an upload), a file path, or a MedMNIST reference ``"x.npz::split::i"``."""


class ImageLoadError(ValueError):
    """An image could not be used; the message says why in words a person can act on."""


# --------------------------------------------------------------------------- recognising bad input


def _looks_like(data: bytes) -> str | None:
    """A name for common non-image contents, for error messages."""
    head = data[:512]
    signatures = (
        (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive (or Office document)"),
        (b"\x1f\x8b", "a gzip archive"), (b"\x93NUMPY", "a NumPy array file"),
        (b"Rar!", "a RAR archive"), (b"7z\xbc\xaf", "a 7-Zip archive"),
        (b"\x7fELF", "a program (ELF)"), (b"MZ", "a Windows program"),
    )
    for magic, what in signatures:
        if head.startswith(magic):
            return what
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if lowered.startswith(b"<svg") or b"<svg" in lowered[:200]:
        return "an SVG drawing (vector images are not supported)"
    if head.lstrip().startswith((b"{", b"[")) and _is_text(head):
        return "JSON text"
    if b"\x00" not in head and _is_text(head):
        return "a text file"
    return None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(1, len(text))


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_MEGAPIXELS * 1_000_000:
        raise ImageLoadError(f"image is {width}x{height} px ({width * height / 1e6:.0f} MP); "
                             f"the limit is {MAX_MEGAPIXELS} MP")
    if min(width, height) < MIN_SIDE:
        raise ImageLoadError(f"image is {width}x{height} px; at least {MIN_SIDE} px a side is needed")


def _png_dims(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


# --------------------------------------------------------------------------- decoding


def _to_uint8_minmax(array: np.ndarray) -> np.ndarray:
    """Stretch any numeric array to 0..255; a flat image becomes black."""
    array = np.asarray(array, dtype=np.float64)
    lo, hi = float(np.min(array)), float(np.max(array))
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.rint((array - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _is_dicom(data: bytes, filename: str) -> bool:
    return data[128:132] == b"DICM" or filename.lower().endswith(".dcm")


def _dicom_voi_to_uint8(values: np.ndarray, ds) -> np.ndarray:
    """Rescaled DICOM values → uint8 through the VOI window or LUT (pydicom), else min/max.

    pydicom maps a window onto the output range [y_min, y_max] of DICOM PS3.3 C.11.2.1.2; pushing
    -inf/+inf-like values through the same call yields those two ends, which become 0 and 255.
    """
    from pydicom.pixels import apply_voi_lut  # heavy: pydicom

    if "WindowCenter" not in ds and "WindowWidth" not in ds and "VOILUTSequence" not in ds:
        return _to_uint8_minmax(values)
    try:
        out = apply_voi_lut(values, ds, prefer_lut=False)
        lo, hi = (float(v) for v in apply_voi_lut(np.array([-1e30, 1e30]), ds, prefer_lut=False))
    except (ValueError, TypeError, IndexError, AttributeError, KeyError):  # odd VOI tags: show the full range
        return _to_uint8_minmax(values)
    if "VOILUTSequence" in ds and not ("WindowCenter" in ds and "WindowWidth" in ds):
        return _to_uint8_minmax(out)  # a LUT's output range is its own; stretch it
    if hi == lo:
        return _to_uint8_minmax(values)
    return np.rint(np.clip((np.asarray(out, np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def _decode_dicom(data: bytes) -> np.ndarray:
    """DICOM → uint8 grayscale: Modality LUT, VOI window or LUT (else min/max), MONOCHROME1 inverted.

    Patient tags are read by pydicom but never returned or logged.
    """
    import pydicom  # heavy: pydicom
    from pydicom.errors import InvalidDicomError  # heavy: pydicom
    from pydicom.pixels import apply_modality_lut  # heavy: pydicom

    if data[:4] == b"DICM":  # preamble stripped but magic kept: put the preamble back
        data = bytes(128) + data
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (InvalidDicomError, AttributeError, ValueError, TypeError, EOFError, OSError) as exc:
        raise ImageLoadError(f"not a readable DICOM image ({type(exc).__name__}: {exc})") from None
    _check_size(cols, rows)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises plain exceptions for missing codecs and short data
        raise ImageLoadError(f"DICOM pixel data cannot be decoded ({exc}); it may be truncated or use a "
                             "compression this installation cannot read") from None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) == 3:
        return np.asarray(Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB").convert("L"))
    gray = _dicom_voi_to_uint8(apply_modality_lut(pixels, ds).astype(np.float64), ds)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1: high values are dark
    return gray


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    """Any PIL mode → uint8 grayscale; alpha is composited on black, 16-bit is min/max scaled."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # Min/max rather than >>8: X-ray PNG/TIFFs usually hold 10-12-bit data in 16 bits, which
        # >>8 would crush into a few dark levels; stretching keeps all the contrast there is.
        return _to_uint8_minmax(np.asarray(img))
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8)


def _open_checked(data: bytes) -> Image.Image:
    """``Image.open`` with typed errors; the size limit is checked from the header before decoding."""
    if not data:
        raise ImageLoadError("file is empty")
    try:
        # PIL warns between 89 and 179 MP and raises above; our own 100 MP limit is checked below.
        # (No warnings.catch_warnings here: it is not thread-safe and load_arrays uses threads.)
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)) / 1e6:.0f} MP" if pixels else "too many pixels"
        dims = _png_dims(data)
        text = f"{dims[0]}x{dims[1]} px ({size})" if dims else size
        raise ImageLoadError(f"image is {text}; the limit is {MAX_MEGAPIXELS} MP") from None
    except UnidentifiedImageError:
        what = _looks_like(data)
        raise ImageLoadError(f"not an image file (looks like {what})" if what else
                             "not an image file, or an image type that cannot be read "
                             f"(supported: {' '.join(IMAGE_EXTENSIONS)})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(f"image header cannot be read ({exc}); the file may be damaged") from None
    _check_size(*img.size)
    return img


def _decode(data: bytes, filename: str = "", draft_size: int | None = None) -> np.ndarray:
    if not data:
        raise ImageLoadError("file is empty")
    if _is_dicom(data, filename):
        return _decode_dicom(data)
    img = _open_checked(data)
    try:
        if draft_size and img.format == "JPEG":
            # Let the JPEG decoder downscale by 1/2..1/8 while staying ≥ the target size: several
            # times faster on 2,000 px films, and the final resize does the rest.
            img.draft("L", (draft_size, draft_size))
        img.load()  # force the full decode so truncated files fail here, not later
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img = ImageOps.exif_transpose(img)
        gray = _pil_to_gray(img)
    except ImageLoadError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        kind = img.format or "image"
        reason = "truncated" if "truncated" in str(exc).lower() or isinstance(exc, EOFError) else "damaged"
        raise ImageLoadError(f"{reason} {kind} file ({exc})") from None
    _check_size(gray.shape[1], gray.shape[0])
    return gray


def decode_image(data: bytes, filename: str = "", draft_size: int | None = None) -> np.ndarray:
    """Decode image bytes to uint8 grayscale (H, W), for display; a model's input comes from :func:`load_image`.

    Reads JPEG, PNG (8/16-bit, RGBA composited on black, palette), BMP, TIFF (incl. 16-bit),
    WebP, GIF (first frame) and DICOM (Modality LUT, VOI window, MONOCHROME1 inverted; patient
    tags are never returned). EXIF orientation is applied; colour is converted to grayscale.

    Args:
        data: the file's bytes.
        filename: optional name; a ``.dcm`` suffix selects DICOM even without the preamble.
        draft_size: let the JPEG decoder shrink by a power of two while staying at least this size.

    Raises:
        ImageLoadError: empty, not an image, truncated, smaller than 32 px a side, or more than
            100 megapixels (checked from the header before the pixels are decoded).
    """
    return _decode(bytes(data), filename, draft_size)


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
        return _decode(bytes(source), filename, draft_size)
    text = str(source)
    if is_npz_ref(text):
        array = _npz_array(text, opened)
        return array if array.ndim == 2 else _pil_to_gray(Image.fromarray(array))
    return _decode(_read_file(text), text, draft_size)


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
        for path in chosen:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Image.open(path) as img:  # header only, no pixel decode
                        widths.append(img.width)
                        heights.append(img.height)
            except Exception:  # a bad file is reported by load, not here
                continue
    if not widths:
        summary = "n/a" if not files else "no readable headers in the sample"
    else:
        w, h = np.array(widths), np.array(heights)
        summary = (f"width min/median/max {w.min()}/{int(np.median(w))}/{w.max()} px, "
                   f"height {h.min()}/{int(np.median(h))}/{h.max()} px (sample of {len(widths)})")
    return {"widths": widths, "heights": heights, "summary": summary}


# --------------------------------------------------------------------------- the model's input


def resize_plan(width: int, height: int, image_size: int, resize_mode: str) -> tuple[tuple[int, int], tuple[int, int]]:
    if resize_mode == "stretch":
        return (image_size, image_size), (0, 0)
    if resize_mode != "letterbox":
        raise ValueError(f"resize_mode must be 'stretch' or 'letterbox'; got {resize_mode!r}")
    scale = image_size / max(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    return new, ((image_size - new[0]) // 2, (image_size - new[1]) // 2)


def resize_gray(gray: np.ndarray, image_size: int, resize_mode: str = "stretch") -> np.ndarray:
    """The one resize used everywhere: PIL bilinear (antialiased when shrinking), uint8 (S, S) out.

    ``"letterbox"`` keeps the aspect ratio and pads with black; ``"stretch"`` fills the square.
    """
    gray = np.asarray(gray)
    if gray.ndim == 3:
        gray = gray[..., 0] if gray.shape[-1] in (1, 3) else gray
    if gray.dtype != np.uint8:
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    img = Image.fromarray(gray, mode="L")
    size, offset = resize_plan(img.width, img.height, image_size, resize_mode)
    if img.size != size:
        img = img.resize(size, Image.BILINEAR)
    if resize_mode == "letterbox":
        canvas = Image.new("L", (image_size, image_size), 0)
        canvas.paste(img, offset)
        img = canvas
    return np.asarray(img, dtype=np.uint8)


def prepare_image(gray: np.ndarray, image_size: int, resize_mode: str = "stretch") -> np.ndarray:
    """Grayscale at any size → float32 (S, S, 3) in 0..255 through :func:`resize_gray` (for display and tests)."""
    return np.repeat(resize_gray(gray, image_size, resize_mode)[..., None], 3, axis=-1).astype(np.float32)


def model_pixels(source: ImageSource, image_size: int, resize_mode: str = "stretch", *, filename: str = "",
                 opened: dict | None = None) -> np.ndarray:
    """THE one path from a source to the pixels a run trains and is evaluated on: uint8 (S, S).

    Decodes (a JPEG with the decoder's own power-of-two downscale to at least ``image_size``),
    then :func:`resize_gray`. :func:`core.pipeline.load_arrays` calls this for every image, and
    :func:`load_image` (Explain, Demo, ``core.predict``) wraps it, so a film gives the same
    pixels, hence the same probability, in training, evaluation and on every page.

    Raises:
        ImageLoadError: see :func:`decode_image`; also a missing file or a bad MedMNIST reference.
    """
    return resize_gray(read_image(source, filename, image_size, opened), image_size, resize_mode)


def load_image(source: ImageSource, image_size: int, resize_mode: str = "stretch", *,
               filename: str = "") -> np.ndarray:
    """The model's input for one image: float32 (S, S, 3) in 0..255, from :func:`model_pixels`.

    Args:
        source: file bytes (an upload), a file path, or a MedMNIST reference ``"x.npz::split::i"``.
        image_size: the run's ``data.image_size``.
        resize_mode: the run's ``data.resize_mode``.
        filename: the upload's name, when ``source`` is bytes (``.dcm`` selects DICOM).

    Raises:
        ImageLoadError: see :func:`decode_image`.
    """
    small = model_pixels(source, image_size, resize_mode, filename=filename)
    return np.repeat(small[..., None], 3, axis=-1).astype(np.float32)
