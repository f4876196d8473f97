"""Tests for core.data.preprocess through the one image path: defaults change nothing; body crop, markers, intensity do."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from core.config import ConfigError, DataConfig, RunConfig
from core.config.paths import REPO_ROOT
from core.data.datasets import ImageRecord, find_dataset
from core.data.images import film_box, model_pixels, prepared_pixels, preprocess_gray, read_image
from core.data.pipeline import load_arrays
from core.data.preprocess import NO_PREPROCESSING, Preprocessing
from core.data.sample import sample_root

BODY = (120, 60, 330, 260)  # left, top, right, bottom of the synthetic body on a 400 × 300 film


def _sample_films(n: int = 4) -> list[str]:
    index = find_dataset(sample_root())
    return [r.path for r in index.split("test")[:n // 2]] + [r.path for r in index.split("train")[-(n // 2):]]


def _padded_body(seed: int = 0) -> np.ndarray:
    """A bright body (soft tissue with two darker lungs) on a black, padded background."""
    rng = np.random.default_rng(seed)
    film = np.clip(rng.normal(8, 3, (300, 400)), 0, 255)
    left, top, right, bottom = BODY
    film[top:bottom, left:right] = np.clip(rng.normal(170, 12, (bottom - top, right - left)), 0, 255)
    film[top + 30:bottom - 30, left + 25:left + 90] = 90  # the lungs: darker, inside the body
    film[top + 30:bottom - 30, right - 90:right - 25] = 90
    return film.astype(np.uint8)


def _film_with_letter() -> tuple[np.ndarray, tuple[slice, slice]]:
    """A smooth textured film with a bright, burnt-in "L" near its top-left corner, and where the letter is."""
    rng = np.random.default_rng(1)
    film = np.clip(np.linspace(80, 140, 256)[None, :] + rng.normal(0, 3, (256, 256)), 0, 255).astype(np.uint8)
    film[8:24, 10:14] = 255  # the upright of the L
    film[20:24, 10:22] = 255  # its foot
    return film, (slice(8, 24), slice(10, 22))


def _old_path(source: str, size: int, mode: str) -> np.ndarray:
    """The image path as it was before preprocessing existed, written out with PIL."""
    img = Image.fromarray(read_image(source, draft_size=size), mode="L")
    if mode == "center_square":
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if mode == "letterbox":
        scale = size / max(img.size)
        new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(img.resize(new, Image.BILINEAR), ((size - new[0]) // 2, (size - new[1]) // 2))
        return np.asarray(canvas)
    return np.asarray(img.resize((size, size), Image.BILINEAR) if img.size != (size, size) else img)


# --------------------------------------------------------------------------- defaults: nothing changes


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center_square"])
def test_defaults_give_byte_identical_pixels_to_the_path_before_preprocessing(mode):
    for path in _sample_films():
        old = _old_path(path, 96, mode)
        assert np.array_equal(model_pixels(path, 96, mode), old)
        prepared = prepared_pixels(path, 96, mode, preprocessing=Preprocessing.of(DataConfig()))
        assert np.array_equal(prepared.pixels, old) and prepared.notes == () and prepared.body is None


def test_old_configs_have_no_preprocessing_and_the_shipped_starter_says_which_it_has():
    starter = REPO_ROOT / "models" / "starter-efficientnet-lite0"
    raw = json.loads((starter / "config.json").read_text())
    old = {**raw, "data": {k: v for k, v in raw["data"].items() if k not in ("field_of_view", "remove_markers",
                                                                            "intensity")}}  # as written before them
    assert Preprocessing.of(RunConfig.from_dict(old).data) == NO_PREPROCESSING
    shipped = Preprocessing.of(RunConfig.from_dict(raw).data)
    assert shipped.active and f"preprocessing: {shipped.describe()};" in json.loads((starter / "starter.json").read_text())["recipe"]
    assert not NO_PREPROCESSING.active and NO_PREPROCESSING.describe() == "none"


@pytest.mark.parametrize("field, value", [("field_of_view", "lungs"), ("intensity", "histeq"), ("remove_markers", 1.5)])
def test_bad_values_are_refused_naming_the_setting(field, value):
    with pytest.raises(ConfigError, match=f"data.{field}"):
        DataConfig(**{field: value}).validate()
    with pytest.raises(ValueError, match=field):
        Preprocessing(**{field: value})


# --------------------------------------------------------------------------- field of view


def test_body_crop_keeps_the_body_and_cuts_the_padding():
    film = _padded_body()
    prepared = preprocess_gray(film, 64, "stretch", Preprocessing(field_of_view="body"))
    left, top, right, bottom = prepared.body
    margin = 0.02 * 400 + 2  # the crop's own margin, plus the smoothing's reach
    assert abs(left - BODY[0]) <= margin and abs(right - BODY[2]) <= margin
    assert abs(top - BODY[1]) <= 0.02 * 300 + 2 and abs(bottom - BODY[3]) <= 0.02 * 300 + 2
    assert "cropped to the body" in prepared.notes[0]
    full = preprocess_gray(film, 64, "stretch")
    assert (full.pixels < 30).mean() > 0.6 and (prepared.pixels < 30).mean() < 0.15  # only the margin stays dark
    # A box on a bigger copy of the same film scales with it.
    assert prepared.body_on(600, 800) == (2 * left, 2 * top, 2 * right, 2 * bottom)


@pytest.mark.parametrize("film, words", [
    (np.zeros((300, 400), np.uint8), "no body found"),
    (np.full((300, 400), 255, np.uint8), "no body found"),
    (np.tile(np.linspace(0, 255, 4000, dtype=np.uint8), (10, 1)), "odd film shape"),
])
@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_films_without_a_sensible_body_keep_the_full_view_and_say_so(film, words, mode):
    settings = Preprocessing("body", True, "window")
    prepared = preprocess_gray(film, 48, mode, settings)
    assert prepared.pixels.shape == (48, 48) and prepared.pixels.dtype == np.uint8
    assert prepared.body is None and any(words in note and "full film kept" in note for note in prepared.notes)


def test_a_tiny_bright_spot_is_not_taken_for_a_body():
    film = np.zeros((300, 400), np.uint8)
    film[140:150, 190:200] = 220  # covers almost nothing
    prepared = preprocess_gray(film, 48, "stretch", Preprocessing(field_of_view="body"))
    assert prepared.body is None and prepared.notes == ("no body found: full film kept",)


def test_a_body_heatmap_goes_back_onto_the_box_the_model_saw():
    from core.evaluation.overlay import cam_on_film

    body = (100, 20, 300, 220)
    assert film_box(400, 300, "stretch", body) == body
    assert film_box(400, 300, "center_square", (100, 20, 300, 180)) == (120, 20, 280, 180)
    on_film = cam_on_film(np.ones((8, 8), np.float32), 300, 400, "stretch", body)
    assert on_film[20:220, 100:300].min() > 0.99
    assert on_film[:20].max() == on_film[220:].max() == on_film[:, :100].max() == on_film[:, 300:].max() == 0


# --------------------------------------------------------------------------- markers


def test_a_burnt_in_letter_near_a_corner_is_inpainted_from_its_surroundings():
    film, letter = _film_with_letter()
    prepared = preprocess_gray(film, 256, "stretch", Preprocessing(remove_markers=True))
    assert prepared.notes == ("1 marker removed",) and len(prepared.markers) == 1
    box = prepared.markers[0]
    assert box.top <= 8 and box.left <= 10 and box.bottom >= 24 and box.right >= 22
    surroundings = float(np.median(film[30:50, 5:30]))
    ink = film[letter] == 255
    before = np.abs(film[letter][ink].astype(float) - surroundings).mean()
    after = np.abs(prepared.pixels[letter][ink].astype(float) - surroundings).mean()
    assert before > 150 and after < 10
    assert np.array_equal(prepared.pixels[100:, 100:], film[100:, 100:])  # the rest of the film is untouched


def test_markers_are_looked_for_at_a_bounded_resolution_and_boxes_map_back_to_the_film():
    film, _ = _film_with_letter()
    big = np.asarray(Image.fromarray(film).resize((1024, 1024), Image.NEAREST))
    prepared = preprocess_gray(big, 64, "stretch", Preprocessing(remove_markers=True))
    (box,) = prepared.markers
    assert box.top <= 32 and box.left <= 40 and box.bottom >= 96 and box.right >= 88  # on the 1024 px film
    assert big[32:96, 40:88].mean() > 150 and prepared.pixels[2:6, 3:5].mean() < 150


def test_a_film_without_markers_is_left_alone():
    film = np.clip(np.linspace(80, 140, 128)[None, :] + np.zeros((128, 1)), 0, 255).astype(np.uint8)
    prepared = preprocess_gray(film, 128, "stretch", Preprocessing(remove_markers=True))
    assert prepared.notes == ("no markers found",) and np.array_equal(prepared.pixels, film)


# --------------------------------------------------------------------------- intensity


def test_window_maps_the_1st_and_99th_percentiles_to_black_and_white():
    rng = np.random.default_rng(2)
    film = np.clip(rng.normal(110, 12, (200, 200)), 0, 255).astype(np.uint8)  # a dull, low-contrast film
    before = preprocess_gray(film, 64, "stretch").pixels
    after = preprocess_gray(film, 64, "stretch", Preprocessing(intensity="window")).pixels
    assert np.percentile(after, 1) <= 3 and np.percentile(after, 99) >= 252
    assert after.std() > 3 * before.std()
    assert np.corrcoef(before.ravel(), after.ravel())[0, 1] > 0.98  # a monotone stretch: the same picture


def test_clahe_spreads_a_narrow_histogram_and_letterbox_bars_stay_black():
    film = np.tile(np.linspace(100, 130, 160), (100, 1)).astype(np.uint8)  # a wide film, 31 grey levels
    before = preprocess_gray(film, 64, "letterbox").pixels
    after = preprocess_gray(film, 64, "letterbox", Preprocessing(intensity="clahe"))
    assert after.notes == ("CLAHE applied",)
    rows = slice(22, 42)  # the film's band inside the letterbox
    assert np.ptp(after.pixels[rows]) > 3 * np.ptp(before[rows])
    assert after.pixels[:10].max() == 0 and after.pixels[-10:].max() == 0  # the padding is not equalised


def test_preprocessing_runs_in_order_on_a_real_film():
    path = _sample_films(2)[0]
    settings = Preprocessing("body", True, "clahe")
    prepared = prepared_pixels(path, 64, "stretch", preprocessing=settings)
    assert prepared.pixels.shape == (64, 64) and len(prepared.notes) == 3
    assert prepared.notes[-1] == "CLAHE applied" and "marker" in prepared.notes[0]
    assert not np.array_equal(prepared.pixels, model_pixels(path, 64, "stretch"))
    assert np.array_equal(model_pixels(path, 64, "stretch", preprocessing=settings), prepared.pixels)


# --------------------------------------------------------------------------- the array cache


def test_the_disk_cache_does_not_serve_plain_pixels_to_a_run_with_preprocessing(tmp_path):
    records = [ImageRecord(path, i % 2, "test", f"p{i}") for i, path in enumerate(_sample_films(4))]
    cache = tmp_path / "cache"
    plain = load_arrays(records, 48, "stretch", cache="disk", cache_dir=cache)
    clahe = load_arrays(records, 48, "stretch", cache="disk", cache_dir=cache,
                        preprocessing=Preprocessing(intensity="clahe"))
    assert len(list((cache / "arrays").glob("*.json"))) == 2  # two keys, two cached sets
    assert not np.array_equal(plain.images, clahe.images)
    for i, record in enumerate(records):
        assert np.array_equal(clahe.images[i, ..., 0],
                              model_pixels(record.path, 48, "stretch", preprocessing=Preprocessing(intensity="clahe")))
    again = load_arrays(records, 48, "stretch", cache="disk", cache_dir=cache)
    assert np.array_equal(again.images, plain.images)
