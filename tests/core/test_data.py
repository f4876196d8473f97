"""Tests for core.data: patient ids, data set discovery, splits, decoding every format, bad inputs, arrays, tf.data."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import data as data_mod
from core.config import AugmentConfig, DataConfig
from core.data import (
    CLASS_NAMES,
    DatasetError,
    ImageLoadError,
    ImageRecord,
    decode_image,
    find_dataset,
    load_arrays,
    load_image,
    make_dataset,
    parse_patient,
    patient_split,
    prepare_image,
    resolve_splits,
)


def gradient(w: int = 64, h: int = 48) -> np.ndarray:
    """A test image that is asymmetric left/right and top/bottom."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 3 + yy) % 256).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------- patient ids


@pytest.mark.parametrize("name, expected", [
    ("person1234_bacteria_3106.jpeg", ("person1234", "bacteria")),
    ("person56_virus_112.jpeg", ("person56", "virus")),
    ("IM-0115-0001.jpeg", ("IM-0115", None)),
    ("NORMAL2-IM-0381-0001.jpeg", ("NORMAL2-IM-0381", None)),
    ("IM-0640-0001-0001.jpeg", ("IM-0640", None)),
    ("scan_42.png", ("scan_42", None)),
    ("/some/dir/person7_virus_9.png", ("person7", "virus")),
])
def test_parse_patient(name, expected):
    assert parse_patient(name) == expected


@pytest.mark.realdata
def test_patient_split_on_real_names_is_grouped_and_stratified(real_data):
    records = []
    for label, cls in enumerate(CLASS_NAMES):
        for name in os.listdir(real_data / "train" / cls):
            records.append(ImageRecord(name, label, "train", *parse_patient(name)))
    train, val = patient_split(records, 0.15, seed=3)
    assert len(train) + len(val) == len(records) == 5216
    assert not {r.patient for r in train} & {r.patient for r in val}
    assert {r.split for r in val} == {"val"}
    assert 0.10 < len(val) / len(records) < 0.20
    share = lambda recs: sum(r.label for r in recs) / len(recs)  # noqa: E731
    assert abs(share(val) - share(records)) < 0.03
    assert patient_split(records, 0.15, seed=3)[1] == val  # deterministic


# --------------------------------------------------------------------------- find_dataset


@pytest.mark.realdata
def test_find_dataset_real_kaggle_layout(real_data):
    index = find_dataset(real_data.parent)  # the parent holding chest_xray/ works too
    assert index.layout == "kaggle"
    assert index.counts() == {"train": {"NORMAL": 1341, "PNEUMONIA": 3875},
                              "val": {"NORMAL": 8, "PNEUMONIA": 8},
                              "test": {"NORMAL": 234, "PNEUMONIA": 390}}
    assert len(index.duplicates) == 30
    assert ["test/NORMAL/NORMAL2-IM-0095-0001.jpeg", "test/NORMAL/NORMAL2-IM-0096-0001.jpeg"] in index.duplicates
    assert any("person1372_bacteria_3503.jpeg" in p for p in index.problems)
    assert index.patients("test") < 624
    subtypes = {r.subtype for r in index.split("train") if r.label == 1}
    assert subtypes == {"bacteria", "virus"}


def _touch_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    png = encode(Image.fromarray(gradient()), "PNG")
    for i, name in enumerate(names):
        (folder / name).write_bytes(png + bytes([i]))  # distinct bytes: no duplicates


def test_find_dataset_class_folders_with_aliases_and_problems(tmp_path):
    _touch_images(tmp_path / "normal", ["IM-0001-0001.png", "IM-0002-0001.png"])
    _touch_images(tmp_path / "Pneumonia", ["person1_virus_1.png", "person2_bacteria_3.jpg"])
    (tmp_path / "normal" / "notes.txt").write_text("hi")
    (tmp_path / "normal" / ".DS_Store").write_bytes(b"x")
    _touch_images(tmp_path / "Pneumonia" / "extra", ["a.png"])
    index = find_dataset(tmp_path)
    assert index.layout == "class_folders"
    assert index.counts() == {"train": {"NORMAL": 2, "PNEUMONIA": 2}}
    text = " | ".join(index.problems)
    assert "notes.txt" in text and "DS_Store" not in text
    assert "unexpected folder" in text


@pytest.mark.parametrize("setup, words", [
    ("missing", "not found"),
    ("empty", "empty"),
    ("one_class", "only class NORMAL"),
    ("loose_files", "no class folders"),
    ("wrong_subfolders", "no class folders"),
])
def test_find_dataset_bad_folders(tmp_path, setup, words):
    root = tmp_path / "data"
    if setup != "missing":
        root.mkdir()
    if setup == "one_class":
        _touch_images(root / "NORMAL", ["a.png"])
    elif setup == "loose_files":
        _touch_images(root, ["a.png", "b.png"])
    elif setup == "wrong_subfolders":
        _touch_images(root / "cats", ["a.png"])
        _touch_images(root / "dogs", ["b.png"])
    with pytest.raises(DatasetError) as err:
        find_dataset(root)
    message = str(err.value)
    assert words in message
    assert "{NORMAL,PNEUMONIA}" in message  # says what layout is expected


# --------------------------------------------------------------------------- decoding: valid formats


def _dicom(pixels: np.ndarray, photometric: str, slope: float = 1.0, intercept: float = 0.0,
           window: tuple[float, float] | None = None) -> bytes:
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
        "dicom": (_dicom(g16, "MONOCHROME2"), "x.dcm"),
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
    mono2 = decode_image(_dicom(pixels, "MONOCHROME2", slope=2.0, intercept=-100.0))
    mono1 = decode_image(_dicom(pixels, "MONOCHROME1", slope=2.0, intercept=-100.0))
    assert np.array_equal(mono1, 255 - mono2)
    # Window on the lower half of rescaled values: everything above the window is white.
    rescaled = pixels * 2.0 - 100
    windowed = decode_image(_dicom(pixels, "MONOCHROME2", 2.0, -100.0, window=(1000.0, 2000.0)))
    assert np.all(windowed[rescaled >= 2000] == 255) and np.all(windowed[rescaled <= 0] == 0)
    # No preamble needed when the name says .dcm; only pixels come back, no tags.
    assert isinstance(decode_image(_dicom(pixels, "MONOCHROME2")[128:], "scan.dcm"), np.ndarray)


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
    data = _dicom(gradient().astype(np.uint16), "MONOCHROME2")
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


@pytest.mark.realdata
@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_real_images_load_the_same_alone_and_in_a_batch(real_data, mode):
    index = find_dataset(real_data)
    records = index.split("train")[:3] + index.split("test")[:3]  # 224 RGB copies + full-size originals
    images, labels = load_arrays(records, 96, mode)
    assert images.shape == (6, 96, 96, 1) and images.dtype == np.uint8
    assert labels.dtype == np.float32 and labels.tolist() == [r.label for r in records]
    for i, record in enumerate(records):
        single = load_image(record.path, 96, mode)
        assert single.shape == (96, 96, 3)
        assert np.array_equal(single[..., 0], images[i, ..., 0].astype(np.float32))
        assert np.array_equal(load_image(Path(record.path).read_bytes(), 96, mode), single)


def test_load_arrays_skips_bad_files(tmp_path):
    good = tmp_path / "IM-0001-0001.png"
    good.write_bytes(encode(Image.fromarray(gradient()), "PNG"))
    bad = tmp_path / "IM-0002-0001.png"
    bad.write_bytes(b"not really a png")
    records = [ImageRecord(str(bad), 0, "train", "IM-0002"), ImageRecord(str(good), 1, "train", "IM-0001")]
    seen = []
    result = load_arrays(records, 32, progress=lambda d, t: seen.append((d, t)))
    images, labels = result
    assert images.shape == (1, 32, 32, 1) and labels.tolist() == [1.0]
    assert result.kept.tolist() == [1]
    assert result.skipped[0][0] == str(bad) and "not an image" in result.skipped[0][1]
    assert seen[-1] == (2, 2)


def test_disk_cache_round_trip_does_not_decode_again(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    records = []
    for i in range(5):
        path = folder / f"person{i}_virus_{i}.png"
        path.write_bytes(encode(Image.fromarray(np.roll(gradient(), i, axis=1)), "PNG"))
        records.append(ImageRecord(str(path), i % 2, "train", f"person{i}", "virus"))
    first = load_arrays(records, 40, "letterbox", cache="disk", cache_dir=tmp_path / "cache")
    monkeypatch.setattr(data_mod, "_decode", lambda *a, **k: pytest.fail("decoded again"))
    second = load_arrays(records, 40, "letterbox", cache="disk", cache_dir=tmp_path / "cache")
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    with pytest.raises(pytest.fail.Exception):  # another size is another key: it must decode
        load_arrays(records, 48, "letterbox", cache="disk", cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- tf.data


def test_make_dataset_shapes_order_and_augmentation():
    rng = np.random.default_rng(0)
    images = rng.integers(30, 220, (10, 32, 32, 1), dtype=np.uint8)
    labels = (np.arange(10) % 2).astype(np.float32)
    ds = make_dataset(images, labels, 4, training=False, augment=AugmentConfig())
    batches = [(x.numpy(), y.numpy()) for x, y in ds]
    assert [x.shape for x, _ in batches] == [(4, 32, 32, 3), (4, 32, 32, 3), (2, 32, 32, 3)]
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.float32
    x_all = np.concatenate([x for x, _ in batches])
    assert np.array_equal(x_all[..., 1], images[..., 0].astype(np.float32))  # no augmentation when not training
    again = np.concatenate([x.numpy() for x, _ in ds])
    assert np.array_equal(x_all, again)

    train = make_dataset(images, labels, 10, training=True, augment=AugmentConfig(), seed=1)
    x1, y1 = next(iter(train))
    assert x1.shape == (10, 32, 32, 3)
    assert 0 <= float(np.min(x1)) and float(np.max(x1)) <= 255
    order = [images[i, ..., 0] for i in range(10)]
    assert not all(np.array_equal(x1.numpy()[i, ..., 0], order[i]) for i in range(10))
    plain = make_dataset(images, labels, 10, training=True, augment=None, seed=1)
    xp, yp = next(iter(plain))
    assert sorted(yp.numpy().tolist()) == sorted(labels.tolist())
    assert any(np.array_equal(xp.numpy()[0, ..., 0], img) for img in order)  # shuffled, pixels untouched


# --------------------------------------------------------------------------- resolve_splits


def test_resolve_splits_demo(cache_dir):
    cfg = DataConfig(source="demo", demo_images_per_class=24, max_images_per_class=6, max_test_images_per_class=3)
    splits = resolve_splits(cfg, seed=0, cache_dir=cache_dir)
    assert "synthetic" in splits.source
    assert splits.counts()["train"] == {"NORMAL": 6, "PNEUMONIA": 6}
    assert splits.counts()["test"] == {"NORMAL": 3, "PNEUMONIA": 3}
    train_p, val_p, test_p = ({r.patient for r in s} for s in (splits.train, splits.val, splits.test))
    assert not (train_p & val_p) and not (train_p & test_p) and not (val_p & test_p)
    assert {r.split for r in splits.val} == {"val"} and {r.split for r in splits.test} == {"test"}
    official = resolve_splits(DataConfig(source="demo", demo_images_per_class=24, validation="official"), 0, cache_dir)
    assert {r.split for r in official.val} == {"val"} and len(official.val) >= 8


def test_resolve_splits_class_folders_carves_a_test_split(tmp_path):
    _touch_images(tmp_path / "NORMAL", [f"IM-{k:04d}-0001.png" for k in range(20)])
    _touch_images(tmp_path / "PNEUMONIA", [f"person{k}_virus_{k}.png" for k in range(20)])
    splits = resolve_splits(DataConfig(source="folder", path=str(tmp_path), val_fraction=0.2), seed=0)
    assert "test" in splits.source and "held out" in splits.source
    assert len(splits.test) > 0 and len(splits.val) > 0
    assert len(splits.train) + len(splits.val) + len(splits.test) == 40
    paths = [{r.path for r in s} for s in (splits.train, splits.val, splits.test)]
    assert not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    with pytest.raises(DatasetError, match="official"):
        resolve_splits(DataConfig(source="folder", path=str(tmp_path), validation="official"), seed=0)


def test_download_kaggle_fails_fast_offline(monkeypatch):
    import time

    monkeypatch.setattr(data_mod, "_online", lambda *a, **k: "OSError: network unreachable")
    start = time.monotonic()
    with pytest.raises(DatasetError, match="offline"):
        data_mod.download_kaggle()
    assert time.monotonic() - start < 2


def test_cli_inspect(tmp_path, capsys):
    _touch_images(tmp_path / "NORMAL", ["IM-0001-0001.png", "IM-0001-0002.png"])
    _touch_images(tmp_path / "PNEUMONIA", ["person1_virus_1.png"])
    assert data_mod.main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "NORMAL" in out and "patients" in out and "64/64/64" in out
    assert data_mod.main(["inspect", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
