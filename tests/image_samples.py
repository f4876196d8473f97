"""Small test images shared by the core tests: a gradient, encoders, class folders and DICOM files."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(w: int = 64, h: int = 48) -> np.ndarray:
    """A test image that is asymmetric left/right and top/bottom."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 3 + yy) % 256).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def touch_images(folder: Path, names: list[str]) -> None:
    """Small distinct PNGs with the given names in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    png = encode(Image.fromarray(gradient()), "PNG")
    for i, name in enumerate(names):
        (folder / name).write_bytes(png + bytes([i]))  # distinct bytes: no duplicates


def dicom(pixels: np.ndarray, photometric: str, slope: float = 1.0, intercept: float = 0.0,
          window: tuple[float, float] | None = None) -> bytes:
    """A 16-bit (12 bits stored) DICOM file with patient tags, a rescale and an optional VOI window."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "Doe^Jane", "SECRET-123"
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
