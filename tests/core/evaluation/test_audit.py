"""The shortcut audit: a model that reads a marker in the corner is caught by the calls that change, whatever its AUC does."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.config import preset
from core.data.cues import border_mask, find_markers, neutral_border, remove_markers
from core.data.splits import run_splits
from core.evaluation.audit import audit_reading, border_share, read_audit, shortcut_audit, uniform_border_share
from core.evaluation.cue_stats import call_changes, shape_cue
from core.store.runs import RunStore


def test_border_band_and_what_a_uniform_map_puts_there():
    mask = border_mask(100, 0.1)
    assert mask[:10].all() and mask[:, -10:].all() and not mask[10:90, 10:90].any()
    assert uniform_border_share(100, 0.1) == pytest.approx(1 - 0.8 ** 2)
    corner, centre = np.zeros((100, 100)), np.zeros((100, 100))
    corner[:5, :5], centre[40:60, 40:60] = 1, 1
    assert border_share(np.stack([corner, centre, np.ones((100, 100)), np.zeros((100, 100))])).tolist() == \
        pytest.approx([1.0, 0.0, 0.36, 0.0])


def test_the_neutral_border_keeps_brightness_but_not_a_marker():
    films = np.full((2, 100, 100, 3), 100, np.uint8)
    films[0, 2:7, 2:7] = 255  # a marker in the corner of the first film
    filled = neutral_border(films, 0.1)
    assert filled.dtype == np.uint8 and filled.shape == films.shape
    assert (filled[:, ~border_mask(100, 0.1)] == films[:, ~border_mask(100, 0.1)]).all()  # the inside is untouched
    assert filled[0, 2:7, 2:7].max() < 180  # the marker is washed out …
    assert (filled[1] == 100).all()  # … and an even border stays as it was
    assert (films[0, 2:7, 2:7] == 255).all()  # the input is not changed


def _film(size: int, marker: bool, seed: int) -> np.ndarray:
    """A smooth film (a gradient, like soft tissue at this size, plus a little noise) with an even border band."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(80, 140, size)[None, :] + rng.uniform(-10, 10) + np.zeros((size, 1))
    pixels = np.clip(gradient + rng.normal(0, 3, (size, size)), 0, 255).astype(np.uint8)
    pixels[border_mask(size)] = 100
    if marker:
        pixels[2:7, 3:8] = 255
    return pixels


def test_markers_near_the_edge_are_found_and_inpainted():
    film = _film(64, True, 0)
    boxes = find_markers(film)
    assert len(boxes) == 1 and boxes[0].top <= 2 and boxes[0].left <= 3 and boxes[0].bottom >= 7
    cleaned, removed = remove_markers(film)
    assert removed == boxes and cleaned[2:7, 3:8].max() < 160 and abs(int(cleaned[30, 30]) - int(film[30, 30])) <= 1
    assert find_markers(_film(64, False, 1)) == [] and remove_markers(_film(64, False, 1))[1] == []
    bright_middle = _film(64, False, 2)
    bright_middle[28:33, 28:33] = 255  # a small bright thing in the lungs is not a marker
    assert find_markers(bright_middle) == []


def test_preprocessing_of_odd_films_never_fails():
    for film in (np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8), np.zeros((10, 400), np.uint8),
                 np.full((4, 4), 9, np.uint8)):
        cleaned, boxes = remove_markers(film)
        assert cleaned.shape == film.shape and boxes == []
    covered = np.zeros((64, 64), np.uint8)
    covered[::4, ::4] = 255  # a film peppered with bright dots: nothing sensible to inpaint
    assert remove_markers(covered)[0].shape == (64, 64)


def test_calls_that_change_are_counted_per_class():
    change = call_changes(np.array([0, 0, 1, 1]), np.array([0.2, 0.7, 0.8, 0.9]), np.array([0.6, 0.1, 0.85, 0.2]), 0.5)
    assert (change["flipped"], change["rate"]) == (3, 0.75)
    assert change["per_class"]["NORMAL"] == {"n": 2, "flipped": 2, "mean_delta": pytest.approx(-0.1),
                                             "mean_abs_delta": pytest.approx(0.5)}
    assert change["per_class"]["PNEUMONIA"]["flipped"] == 1


def test_the_shape_cue_sees_a_probability_that_follows_the_aspect_ratio():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    aspect = rng.uniform(1.0, 1.7, 120)
    groups = [f"p{i}" for i in range(120)]
    following = shape_cue(labels, 0.5 * aspect - 0.4 + rng.normal(0, 0.02, 120), list(aspect), groups, n_boot=300)
    assert following["NORMAL"]["rho"] > 0.9 and following["NORMAL"]["ci"][0] > 0.5
    blind = shape_cue(labels, rng.uniform(0, 1, 120), list(aspect), groups, n_boot=300)
    assert blind["NORMAL"]["ci"][0] < 0 < blind["NORMAL"]["ci"][1]
    unknown = shape_cue(labels, rng.uniform(0, 1, 120), [None] * 120, groups)
    assert unknown["NORMAL"]["rho"] is None and "known" in unknown["NORMAL"]["note"]


SIZE = 64


def _marker_reader():
    """A classifier that calls NORMAL when the border band holds something bright (a marker), and looks at nothing else."""
    import keras

    mask = border_mask(SIZE).astype("float32")[None, :, :, None]
    inputs = keras.Input((SIZE, SIZE, 3))
    border = keras.layers.Lambda(lambda x: x[..., :1] / 255.0 * mask, name="border_only")(inputs)
    features = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="features")(border)
    pooled = keras.layers.GlobalMaxPooling2D(name="pool")(features)
    logit = keras.layers.Dense(1, name="logit")(pooled)
    model = keras.Model(inputs, logit, name="marker_reader")
    model.get_layer("logit").set_weights([np.array([[-40.0]]), np.array([40.0 * 180 / 255])])  # bright → NORMAL
    return model


def test_a_model_that_reads_a_marker_is_caught_by_its_calls(tmp_path, monkeypatch):
    for split in ("train", "test"):
        for label, name in enumerate(("NORMAL", "PNEUMONIA")):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for k in range(6):
                seed = 100 * label + k + (50 if split == "test" else 0)
                Image.fromarray(_film(SIZE, label == 0, seed)).save(folder / f"{name}-{k}.png")
    config = preset("Quick CPU demo").with_overrides(**{"data.source": "folder", "data.path": str(tmp_path / "data"),
                                                         "data.image_size": SIZE, "data.val_fraction": 0.34})
    run = RunStore(tmp_path / "runs").create(config)
    run_splits(config, run.path)
    run.write_json("threshold.json", {"threshold": 0.5})
    run.model_path.write_bytes(b"a stand-in: load_model is replaced below")
    monkeypatch.setattr("core.model.classifier.load_model", lambda path: _marker_reader())

    audit = shortcut_audit(run)
    assert (audit["n"], audit["auc"]) == (12, 1.0)
    assert audit["border"]["per_class"]["NORMAL"]["flipped"] == 6 and audit["border"]["per_class"]["PNEUMONIA"]["flipped"] == 0
    assert audit["border"]["per_class"]["NORMAL"]["mean_delta"] > 0.5
    assert audit["markers"]["films"] == 6 and audit["markers"]["flipped"] == 6
    assert audit["markers"]["energy"]["energy_share"] > 2 * audit["markers"]["energy"]["area_share"]  # 4.6× here
    assert "depend on what is in the border" in audit["reading"][0]
    assert "hang on the markers" in audit["reading"][1]
    assert "shape cue was not measured" in audit["reading"][2]  # every film is 64 × 64
    assert np.asarray(audit["per_class"]["NORMAL"]["mean_cam"]).shape == (64, 64)
    assert read_audit(run)["border"]["flipped"] == 6
    assert audit["markers"]["removed_by_run"] is False
    audit["markers"]["removed_by_run"] = True  # a run that inpaints markers itself: no marker reaches its model
    assert "inpaints burnt-in markers itself" in audit_reading(audit)[1]
    assert "hang on the markers" not in audit_reading(audit)[1]


def test_the_audit_blurs_the_films_border_not_the_edge_of_a_cropped_input():
    """A centred square of a wide film: its input's left and right edges are the film's middle (anatomy, after a
    crop to the body), so they stay sharp; the film's own top and bottom bands, inside the square, are blurred."""
    from types import SimpleNamespace

    from core.data.cues import neutral_film_border
    from core.data.images import preprocess_gray
    from core.data.preprocess import NO_PREPROCESSING
    from core.evaluation.audit import without_border

    film = np.random.default_rng(0).integers(0, 256, (100, 200)).astype(np.uint8)  # texture a blur must change
    film[2:8, 2:8] = 255  # a letter in the film's corner, outside the centred square
    blurred = neutral_film_border(film, 0.1)
    assert blurred.shape == film.shape and (blurred[10:90, 20:180] == film[10:90, 20:180]).all()
    assert blurred[2:8, 2:8].max() < 200 and blurred[:10].std() < film[:10].std() / 3
    data = SimpleNamespace(image_size=100, resize_mode="center_square", field_of_view="full", remove_markers=False,
                           intensity="none")
    plain = preprocess_gray(film, 100, "center_square", NO_PREPROCESSING).pixels
    masked = without_border(None, data, 0.1, film=film)
    assert (masked[10:90, :10] == plain[10:90, :10]).all()  # the input's side edges: the film's middle, untouched
    assert (masked[:10] != plain[:10]).mean() > 0.5  # the film's top band, inside the square: blurred
    assert (neutral_border(plain[None], 0.1)[0][10:90, :10] != plain[10:90, :10]).mean() > 0.5  # as v2 did, wrongly


def test_the_band_body_share_tells_a_tightly_framed_film_from_one_with_air_around_it():
    from core.evaluation.audit import band_body_share

    framed = np.full((100, 120), 20, np.uint8)
    framed[5:95, 5:115] = 180  # the body reaches into the band on every side
    loose = np.full((100, 120), 20, np.uint8)
    loose[25:75, 30:90] = 180  # air all around
    assert band_body_share(framed) > 0.5 > 0.05 > band_body_share(loose)
    assert band_body_share(np.full((50, 50), 90, np.uint8)) == 0.0  # a flat film has no body
