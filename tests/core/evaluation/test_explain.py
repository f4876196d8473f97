"""Explanations: Grad-CAM points at the opacity on a model that learnt it, not on one that learnt noise."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from core.config import ModelConfig
from core.data.demo import generate_image
from core.evaluation.explain import CAM_METHODS, Explainer, cam_layer_choices, compute_cam, default_cam_layer, deletion_score
from core.evaluation.overlay import COLORMAPS, colorize, mass_inside, overlay
from core.evaluation.explain import _finish  # the upsample-and-scale step, for the resolution ceiling
from core.model.classifier import build_classifier, set_trainable

SIZE = 64
# "Does Grad-CAM point at the opacity?", measured as the energy-based pointing game (Wang et al.
# 2020, Score-CAM): the fraction of the ReLU'd Grad-CAM map's mass inside the opacity mask, and as
# the pointing game (Zhang et al. 2016): the share of films whose heatmap peak lies in the mask.
# Measured on this set-up (400 demo-v2 films of 64 px, 12 epochs, 100 held-out films, correctly
# called PNEUMONIA films, block4_relu = 8x8 map; training seeds 0 / 1 / 2):
#   energy inside the mask: trained 0.199 / 0.195 / 0.222, shuffled labels 0.053 / 0.048 / 0.077
#   pointing game hit rate: trained 0.84 / 0.60 / 0.96,    shuffled labels 0.00 / 0.04 / 0.09
# The masks (the opacity's visible extent, core/demo.py MASK_FRACTION) cover 0.056 of the image,
# so ~0.2 is 3.5x chance, but it is NOT "most": at 8x8 even a perfect map (the mask itself seen
# at the CAM's resolution, then upsampled as Grad-CAM is) keeps only 0.55 inside (GRADCAM_CEILING), so
# "most" cannot be reached at this resolution. block3_relu (16x16) localises worse (0.15-0.21,
# pointing 0.3-0.46); 96 px (12x12) or 24 epochs gave 0.21-0.22. Thresholds: below the worst
# trained seed, about twice the worst shuffled one.
MASS_INSIDE_THRESHOLD = 0.15
POINTING_THRESHOLD = 0.45
GRADCAM_CEILING = 0.55  # measured 0.554 (test_gradcam_resolution_ceiling)


def _demo_films(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` synthetic films (float32 0..255, 3 channels), alternating NORMAL/PNEUMONIA, with masks."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    films = [generate_image(rng, bool(label), SIZE) for label in labels]
    images = np.repeat(np.stack([f[0] for f in films])[..., None], 3, axis=-1).astype(np.float32)
    return images, labels, np.stack([f[1] for f in films])


def _train(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    cfg = ModelConfig(backbone="small_cnn", weights="none", unfreeze_from_block=1)
    model = build_classifier(cfg, SIZE)
    set_trainable(model, cfg, "finetune")
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(images, labels.astype(np.float32), batch_size=32, epochs=12, verbose=0, shuffle=True)
    # ~150 steps leave BatchNorm's moving averages behind the final weights; set them to the
    # statistics of the training set so inference mode sees what training saw.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(images, training=True)
    return model


def _probability(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-model.predict(images, verbose=0).reshape(-1).astype(np.float64)))


@pytest.fixture(scope="module")
def held_out():
    return _demo_films(100, seed=99)


@pytest.fixture(scope="module")
def trained():
    images, labels, _ = _demo_films(400, seed=0)
    return _train(images, labels)


@pytest.fixture(scope="module")
def shuffled():
    images, labels, _ = _demo_films(400, seed=0)
    return _train(images, np.random.default_rng(1).permutation(labels))


def _called_pneumonia(model, held_out):
    images, labels, masks = held_out
    chosen = np.flatnonzero((labels == 1) & (_probability(model, images) >= 0.5))
    if chosen.size < 5:  # a model that calls (almost) nothing: explain all pneumonia films
        chosen = np.flatnonzero(labels == 1)
    return images[chosen], masks[chosen]


def test_trained_model_learns_the_opacities(trained, held_out):
    images, labels, _ = held_out
    accuracy = np.mean((_probability(trained, images) >= 0.5) == labels)
    assert accuracy >= 0.85


def _localisation(model, held_out) -> tuple[float, float]:
    """Energy inside the mask and pointing-game hit rate of Grad-CAM on the films the model calls PNEUMONIA."""
    images, masks = _called_pneumonia(model, held_out)
    cams = compute_cam(model, images, "gradcam", target="pneumonia")
    energy = np.mean([mass_inside(c, m) for c, m in zip(cams, masks)])
    hits = np.mean([m.ravel()[np.argmax(c)] > 0 for c, m in zip(cams, masks)])
    return float(energy), float(hits)


def test_gradcam_mass_sits_on_the_opacity_only_when_the_model_learnt_it(trained, shuffled, held_out):
    mask_area = held_out[2][held_out[1] == 1].mean()
    assert 0.04 < mask_area < MASS_INSIDE_THRESHOLD / 2  # measured 0.056

    energy_trained, hits_trained = _localisation(trained, held_out)
    energy_shuffled, hits_shuffled = _localisation(shuffled, held_out)
    figures = dict(energy_trained=energy_trained, energy_shuffled=energy_shuffled,
                   hits_trained=hits_trained, hits_shuffled=hits_shuffled)
    assert energy_trained >= MASS_INSIDE_THRESHOLD, figures
    assert energy_shuffled < MASS_INSIDE_THRESHOLD, figures
    assert hits_trained >= POINTING_THRESHOLD, figures
    assert hits_shuffled < POINTING_THRESHOLD, figures


def test_gradcam_resolution_ceiling(held_out):
    """Why the energy figure stays near 0.2: an 8x8 map cannot put most of its mass in a 5 % mask."""
    masks = held_out[2][held_out[1] == 1].astype(np.float32)
    cell = SIZE // 8  # block4_relu's stride
    perfect = masks.reshape(len(masks), 8, cell, 8, cell).mean(axis=(2, 4))  # the mask, seen at 8x8
    cams = _finish(perfect, (SIZE, SIZE))  # upsampled and scaled as compute_cam does
    ceiling = np.mean([mass_inside(c, m) for c, m in zip(cams, masks)])
    assert GRADCAM_CEILING - 0.05 < ceiling < GRADCAM_CEILING + 0.05, ceiling


@pytest.mark.parametrize("method", ["gradcam++", "scorecam"])
def test_other_methods_also_find_the_opacity(trained, held_out, method):
    images, masks = _called_pneumonia(trained, held_out)
    images, masks = images[:12], masks[:12]
    cams = compute_cam(trained, images, method, target="pneumonia")
    assert cams.shape == (len(images), SIZE, SIZE) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() <= 1
    inside = np.mean([mass_inside(c, m) for c, m in zip(cams, masks)])
    assert inside >= 0.08, inside  # ≈0.12 on v1 core masks; v2 masks contain them, so no less


def test_explaining_normal_points_away_from_the_opacity(trained, held_out):
    images, masks = _called_pneumonia(trained, held_out)
    images, masks = images[:12], masks[:12]
    for_pneumonia = compute_cam(trained, images, target="pneumonia")
    for_normal = compute_cam(trained, images, target="normal")
    inside = lambda cams: np.mean([mass_inside(c, m) for c, m in zip(cams, masks)])  # noqa: E731
    assert inside(for_pneumonia) > 2 * inside(for_normal)


def test_single_image_and_all_methods_give_a_0_to_1_map(trained, held_out):
    image = held_out[0][1]
    for method in CAM_METHODS:
        cam = compute_cam(trained, image, method)
        assert cam.shape == (SIZE, SIZE)
        assert 0.0 <= cam.min() and cam.max() <= 1.0
    with pytest.raises(ValueError, match="method"):
        compute_cam(trained, image, "lime")
    with pytest.raises(ValueError, match="target"):
        compute_cam(trained, image, target="virus")


def test_fast_gradcam_equals_tf_keras_vis(trained, held_out):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.scores import BinaryScore

    images, labels, _ = held_out
    explainer = Explainer(trained)
    for index in (0, 1, 2, 3):  # NORMAL and PNEUMONIA films, explained as predicted
        image = images[index]
        fast = explainer.explain(image)
        assert fast.probability == pytest.approx(_probability(trained, image[None])[0], abs=1e-5)
        assert fast.explained == ("pneumonia" if fast.probability >= 0.5 else "normal")
        assert fast.layer == "block4_relu"

        same_path = compute_cam(trained, image, "gradcam")
        np.testing.assert_allclose(fast.cam, same_path, atol=1e-4)

        # tf-keras-vis on its own: its scipy upsampling aligns pixel corners, ours pixel centres.
        native = Gradcam(trained, model_modifier=None, clone=False)(
            BinaryScore(fast.explained == "pneumonia"), image[None], penultimate_layer="block4_relu",
            seek_penultimate_conv_layer=False)[0]
        if native.max() > 0:
            assert np.corrcoef(native.ravel(), fast.cam.ravel())[0, 1] > 0.95


def test_fast_gradcam_plus_plus_equals_the_tf_keras_vis_path(trained, held_out):
    """The compiled Grad-CAM++ (one forward, one backward) gives the map compute_cam gets from tf-keras-vis."""
    images, _, _ = held_out
    explainer = Explainer(trained)
    for index in (0, 1, 2, 3):
        fast = explainer.explain(images[index], method="gradcam++")
        np.testing.assert_allclose(fast.cam, compute_cam(trained, images[index], "gradcam++"), atol=1e-3)


def test_explainer_other_methods_and_wrong_size(trained, held_out):
    explainer = Explainer(trained, threshold=0.5)
    for method in ("gradcam++", "scorecam"):
        result = explainer.explain(held_out[0][1], method=method)
        assert result.method == method and result.cam.shape == (SIZE, SIZE)
    with pytest.raises(ValueError, match="64"):
        explainer.explain(np.zeros((32, 32, 3), np.float32))


def test_score_cam_builds_its_two_class_view_once_per_explainer(trained, held_out):
    """The two-class model (and its compiled predict function) is reused, not rebuilt and retraced per call."""
    explainer = Explainer(trained, threshold=0.5)
    first = explainer.explain(held_out[0][0], method="scorecam")
    scorecam = explainer._visualizers["scorecam"]
    predict_function = scorecam.model.predict_function
    assert predict_function is not None
    again = explainer.explain(held_out[0][0], method="scorecam")
    assert explainer._visualizers["scorecam"] is scorecam and scorecam.model.predict_function is predict_function
    np.testing.assert_allclose(again.cam, first.cam, atol=1e-5)


def test_deleting_salient_pixels_hurts_more_than_random(trained, held_out):
    images, _ = _called_pneumonia(trained, held_out)
    images = images[:10]
    cams = compute_cam(trained, images, target="pneumonia")
    scores = [deletion_score(trained, image, cam, fraction=0.1, target="pneumonia") for image, cam in zip(images, cams)]
    drop = np.mean([s["drop"] for s in scores])
    random_drop = np.mean([s["random_drop"] for s in scores])
    assert drop > random_drop + 0.05, (drop, random_drop)
    first = scores[0]
    assert set(first) >= {"probability_before", "probability_after", "drop", "random_drop"}
    assert first["drop"] == pytest.approx(first["probability_before"] - first["probability_after"])


def test_deletion_score_measures_the_explained_class(trained, held_out):
    image = held_out[0][0]  # a NORMAL film
    cam = compute_cam(trained, image, target="normal")
    score = deletion_score(trained, image, cam, target="normal", baseline="mean")
    assert score["explained"] == "normal"
    assert score["drop"] == pytest.approx(score["probability_after"] - score["probability_before"])


def test_mass_inside():
    cam = np.zeros((4, 4))
    cam[:2] = 1.0
    mask = np.zeros((4, 4), np.uint8)
    mask[:, :2] = 1
    assert mass_inside(cam, mask) == pytest.approx(0.5)
    assert mass_inside(np.zeros((4, 4)), mask) == 0.0
    assert mass_inside(np.ones((4, 4)), np.kron(mask, np.ones((2, 2), np.uint8))) == pytest.approx(0.5)


def test_overlay_shape_dtype_and_opacity():
    rng = np.random.default_rng(0)
    gray = rng.uniform(0, 255, (32, 32)).astype(np.float32)
    cam = rng.uniform(0, 1, (8, 8))
    for image in (gray, np.repeat(gray[..., None], 3, axis=-1)):
        out = overlay(image, cam, opacity=0.4)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(overlay(image, cam, opacity=0.0)[..., 0], np.round(gray).astype(np.uint8))
    full = overlay(gray, np.ones((32, 32)), opacity=1.0, colormap="jet")
    assert tuple(full[0, 0]) == (128, 0, 0)  # jet's top is dark red
    with pytest.raises(ValueError, match="opacity"):
        overlay(gray, cam, opacity=1.5)
    with pytest.raises(ValueError, match="colormap"):
        overlay(gray, cam, colormap="rainbow")


def test_colormaps_run_from_their_published_ends():
    # matplotlib's viridis/inferno/turbo ends; jet as plotly publishes it (matplotlib's starts at 0,0,128).
    ends = {"viridis": ((0x44, 0x01, 0x54), (0xFD, 0xE7, 0x25)), "inferno": ((0, 0, 4), (0xFC, 0xFF, 0xA4)),
            "jet": ((0, 0, 131), (128, 0, 0)), "turbo": ((0x30, 0x12, 0x3B), (0x7A, 0x04, 0x02))}
    for name in COLORMAPS:
        colors = colorize(np.array([[0.0, 1.0]]), name)[0]
        assert tuple(colors[0]) == ends[name][0] and tuple(colors[1]) == ends[name][1]


def test_cam_layer_choices(trained):
    choices = cam_layer_choices(trained)
    assert choices[0] == default_cam_layer(trained) == "block4_relu"
    assert {"block4_conv", "block1_conv", "block1_relu"} <= set(choices)
    assert choices.index("block3_relu") < choices.index("block1_relu")  # deepest first
    assert all(len(trained.get_layer(name).output.shape) == 4 for name in choices)
    cam = compute_cam(trained, np.zeros((SIZE, SIZE, 3), np.float32), layer="block3_relu")
    assert cam.shape == (SIZE, SIZE)


def test_gradcam_batch_equals_one_image_at_a_time(trained, held_out):
    images = held_out[0][:5]
    explainer = Explainer(trained, threshold=0.5)
    probabilities, cams = explainer.gradcam_batch(images, batch_size=2)
    for image, probability, cam in zip(images, probabilities, cams):
        single = explainer.explain(image)
        assert probability == pytest.approx(single.probability, abs=1e-5)
        np.testing.assert_allclose(cam, single.cam, atol=1e-5)


def test_cam_on_film_undoes_the_framing():
    from core.evaluation.overlay import cam_on_film

    cam = np.zeros((64, 64), np.float32)
    cam[16:48, :] = 1.0  # a letterboxed 200x100 film fills rows 16..47 of the model input
    on_film = cam_on_film(cam, 100, 200, "letterbox")
    assert on_film.shape == (100, 200) and on_film.min() > 0.99
    stretched = cam_on_film(cam, 100, 200, "stretch")
    assert stretched.shape == (100, 200) and stretched[:20].max() < 0.01 and stretched[30:70].min() > 0.99
