"""Tests for core.images: decoding every format, bad inputs, resizing, and the one path to a model's input."""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from image_samples import dicom, encode, gradient
from PIL import Image

from core.data.decode import ImageLoadError, decode_image
from core.data.images import load_image, prepare_image


# --------------------------------------------------------------------------- decoding: valid formats


def _gif_two_frames() -> bytes:
    first = Image.fromarray(gradient()).convert("P")
    second = Image.fromarray(255 - gradient()).convert("P")
    return encode(first, "GIF", save_all=True, append_images=[second])


def _valid_inputs() -> dict[str, tuple[bytes, str]]:
    g = gradient()
    rgb = np.stack([g, g, g], axis=-1)
    rgba = np.dstack([rgb, np.full_like(g, 255)])
    g16 = (g.astype(np.uint16) * 16)  # 12-bit data in a 16-bit container
    return {
        "jpeg": (encode(Image.fromarray(rgb), "JPEG", quality=95), "x.jpg"),
        "png8": (encode(Image.fromarray(g), "PNG"), "x.png"),
        "png16": (encode(Image.fromarray(g16.astype(np.uint16)), "PNG"), "x.png"),
        "rgba": (encode(Image.fromarray(rgba, "RGBA"), "PNG"), "x.png"),
        "palette": (encode(Image.fromarray(g).convert("P"), "PNG"), "x.png"),
        "bmp": (encode(Image.fromarray(g), "BMP"), "x.bmp"),
        "tiff16": (encode(Image.fromarray(g16.astype(np.uint16)), "TIFF"), "x.tif"),
        "webp": (encode(Image.fromarray(rgb), "WEBP", lossless=True), "x.webp"),
        "gif": (_gif_two_frames(), "x.gif"),
        "dicom": (dicom(g16, "MONOCHROME2"), "x.dcm"),
    }


@pytest.mark.parametrize("kind", list(_valid_inputs()))
def test_every_valid_format_decodes_to_the_same_picture(kind):
    data, name = _valid_inputs()[kind]
    gray = decode_image(data, name)
    assert gray.dtype == np.uint8 and gray.shape == (48, 64)
    reference = gradient().astype(float)
    # Same picture up to a monotone gray scaling (16-bit and DICOM are min/max stretched).
    assert np.corrcoef(gray.ravel(), reference.ravel())[0, 1] > 0.98


def test_sixteen_bit_keeps_contrast():
    g16 = (gradient().astype(np.uint16) * 16)  # values 0..4080: >>8 would leave 16 gray levels
    gray = decode_image(encode(Image.fromarray(g16), "PNG"))
    assert gray.min() == 0 and gray.max() == 255 and len(np.unique(gray)) > 200


def test_rgba_is_composited_on_black():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :20, 3] = 255  # left half opaque, right half transparent
    gray = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert gray[:, :20].min() >= 199 and gray[:, 20:].max() == 0


def test_gif_gives_first_frame():
    gray = decode_image(_gif_two_frames())
    assert np.corrcoef(gray.ravel(), gradient().ravel().astype(float))[0, 1] > 0.98


def test_dicom_monochrome1_is_inverted_and_windowed_without_tags():
    pixels = (gradient().astype(np.uint16) * 16)
    mono2 = decode_image(dicom(pixels, "MONOCHROME2", slope=2.0, intercept=-100.0))
    mono1 = decode_image(dicom(pixels, "MONOCHROME1", slope=2.0, intercept=-100.0))
    assert np.array_equal(mono1, 255 - mono2)
    # Window on the lower half of rescaled values: everything above the window is white.
    rescaled = pixels * 2.0 - 100
    windowed = decode_image(dicom(pixels, "MONOCHROME2", 2.0, -100.0, window=(1000.0, 2000.0)))
    assert np.all(windowed[rescaled >= 2000] == 255) and np.all(windowed[rescaled <= 0] == 0)
    # No preamble needed when the name says .dcm; only pixels come back, no tags.
    assert isinstance(decode_image(dicom(pixels, "MONOCHROME2")[128:], "scan.dcm"), np.ndarray)


def test_exif_rotation_is_applied():
    img = Image.fromarray(gradient(64, 48))  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to display"
    gray = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert gray.shape == (64, 48)
    expected = np.rot90(gradient(64, 48), k=-1).astype(float)
    assert np.corrcoef(gray.ravel(), expected.ravel())[0, 1] > 0.98


# --------------------------------------------------------------------------- decoding: bad inputs


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (a decompression bomb shape)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def real_jpeg(real_data) -> bytes:
    folder = real_data / "test" / "NORMAL"
    return (folder / sorted(os.listdir(folder))[0]).read_bytes()


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not an image"),
    (b"Patient notes\nnothing to see here\n" * 20, "text"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF"),
    (b"PK\x03\x04" + b"\0" * 100, "ZIP"),
    (encode(Image.fromarray(gradient(10, 10)), "PNG"), "10x10 px; at least 32"),
    (_png_claiming(20000, 20000), "20000x20000 px (400 MP); the limit is 100 MP"),
    (_png_claiming(12000, 9000), "12000x9000 px (108 MP)"),
], ids=["empty", "random", "text", "pdf", "zip", "tiny", "bomb-400MP", "over-limit-108MP"])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_inputs_raise_image_load_error(data, words):
    with pytest.raises(ImageLoadError) as err:
        decode_image(data)
    assert words in str(err.value)


def test_bomb_is_refused_before_decoding(monkeypatch):
    limit = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels were decoded"))
    with pytest.raises(ImageLoadError):
        decode_image(_png_claiming(20000, 20000))
    assert Image.MAX_IMAGE_PIXELS == limit  # the global is left alone


@pytest.mark.realdata
def test_truncated_real_jpeg(real_jpeg):
    with pytest.raises(ImageLoadError, match="truncated"):
        decode_image(real_jpeg[: len(real_jpeg) // 2], "x.jpeg")


def test_truncated_dicom_and_missing_file(tmp_path):
    data = dicom(gradient().astype(np.uint16), "MONOCHROME2")
    with pytest.raises(ImageLoadError):
        decode_image(data[:-500], "x.dcm")
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.png", 32)


# --------------------------------------------------------------------------- prepare / load


def test_prepare_image_stretch_and_letterbox():
    gray = np.full((50, 100), 200, np.uint8)
    stretched = prepare_image(gray, 32)
    assert stretched.shape == (32, 32, 3) and stretched.dtype == np.float32
    assert np.all(stretched == 200)
    boxed = prepare_image(gray, 32, "letterbox")
    assert boxed.shape == (32, 32, 3)
    assert np.all(boxed[0] == 0) and np.all(boxed[-1] == 0) and np.all(boxed[16] == 200)
    assert np.array_equal(boxed[..., 0], boxed[..., 2])


def test_unreadable_files_names_each_broken_file_with_its_reason(tmp_path):
    from core.data.images import unreadable_files

    good = tmp_path / "good.png"
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(good)
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)).save(jpeg, "JPEG")
    (tmp_path / "truncated.jpeg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp_path / "notes.png").write_bytes(b"%PDF-1.4 not an image")
    (tmp_path / "empty.jpeg").write_bytes(b"")
    seen = []
    bad = dict(unreadable_files([str(p) for p in sorted(tmp_path.iterdir())], progress=lambda d, n: seen.append((d, n))))
    assert set(bad) == {str(tmp_path / n) for n in ("truncated.jpeg", "notes.png", "empty.jpeg")}
    assert "truncated" in bad[str(tmp_path / "truncated.jpeg")] and "empty" in bad[str(tmp_path / "empty.jpeg")]
    assert "PDF" in bad[str(tmp_path / "notes.png")]
    assert seen[-1] == (4, 4)


def test_center_square_keeps_the_middle_of_a_wide_film_unsqueezed():
    from core.data.images import crop_box, resize_gray

    film = np.zeros((100, 160), np.uint8)
    film[:, :30] = 255  # the outer 30 columns on the left: cut away by the centred 100 × 100 square
    film[40:60, 70:90] = 200  # a square in the middle stays a square
    assert crop_box(160, 100, "center_square") == (30, 0, 130, 100) and crop_box(160, 100, "stretch") == (0, 0, 160, 100)
    small = resize_gray(film, 50, "center_square")
    assert small.shape == (50, 50) and small[:, :3].max() == 0
    rows, cols = np.nonzero(small >= 150)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1  # not squeezed
    squeezed = resize_gray(film, 50, "stretch")
    rows, cols = np.nonzero(squeezed >= 150)
    assert (rows.max() - rows.min()) > (cols.max() - cols.min()) + 2  # stretch squeezes it


def test_a_center_square_heatmap_goes_back_onto_the_square_it_came_from():
    from core.evaluation.overlay import cam_on_film

    cam = np.ones((8, 8), np.float32)
    on_film = cam_on_film(cam, 100, 160, "center_square")
    assert on_film.shape == (100, 160) and on_film[:, 30:130].min() > 0.99
    assert on_film[:, :30].max() == 0 and on_film[:, 130:].max() == 0  # the model never saw these columns


def test_a_run_can_choose_center_square():
    from core.config import ConfigError, DataConfig

    DataConfig(resize_mode="center_square").validate()
    with pytest.raises(ConfigError, match="data.resize_mode"):
        DataConfig(resize_mode="crop").validate()
