"""Decoding and validating every supported format (JPEG, PNG, 16-bit, DICOM, …) into uint8 grayscale, with a message a person can act on when a file is not a usable image."""
from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "MIN_SIDE", "MAX_MEGAPIXELS", "ImageLoadError", "decode_image", "pil_to_gray"]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm")
MIN_SIDE = 32
MAX_MEGAPIXELS = 100



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


def pil_to_gray(img: Image.Image) -> np.ndarray:
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
        gray = pil_to_gray(img)
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
