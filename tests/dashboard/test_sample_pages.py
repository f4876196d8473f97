"""The app on the bundled real sample: its default source, a broken sample, a starter run (and a damaged one), the Demo case browser, the audit and the model card."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_pages import metric, open_page, texts

from core.config import preset
from core.evaluation.metrics import compute_metrics
from core.store.runs import STARTER_MARKER, RunStore
from core.data.sample import local_path, portable_path, sample_root
from core.data.splits import run_splits


def _tiny_sample_config():
    """The real-sample preset with an untrained small CNN at 32 px: real films, a model that loads in a blink."""
    return preset("Quick real-sample demo").with_overrides(**{
        "name": "starter-tiny", "model.backbone": "small_cnn", "model.weights": "none",
        "model.unfreeze_from_block": 1, "data.image_size": 32})


def make_starter(root):
    """A finished run of the sample in a store of its own, marked as the shipped starter (starter.json)."""
    import keras  # noqa: F401  (TensorFlow only for the prepared model)

    from core.model.classifier import build_classifier

    config = _tiny_sample_config()
    store = RunStore(root)
    run = store.create(config)
    build_classifier(config.model, config.data.image_size).save(run.model_path)
    splits = run_splits(config, run.path)
    y = np.array([r.label for r in splits.test])
    prob = np.clip(np.where(y == 1, 0.7, 0.3) + np.random.default_rng(1).normal(0, 0.25, y.size), 0.01, 0.99)
    metrics = compute_metrics(y, prob, 0.5)
    metrics.update({"threshold_info": {"threshold": 0.5, "method": "youden", "chosen_on": "validation"},
                    "predictions": [{"file": portable_path(r.path), "label": int(t), "probability": float(p),
                                     "patient": r.patient, "subtype": r.subtype}
                                    for r, t, p in zip(splits.test, y, prob)]})
    run.write_json("metrics.json", metrics)
    run.write_json("threshold.json", {"threshold": 0.5, "method": "youden"})
    run.write_json(STARTER_MARKER, {"note": "a test starter"})
    run.update_status(state="finished", progress=1.0)
    return store, run


@pytest.fixture(scope="module")
def starter_store(tmp_path_factory, cache_dir):
    return make_starter(tmp_path_factory.mktemp("starter-store"))


@pytest.fixture
def starter_env(starter_store, monkeypatch):
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(starter_store[0].root))
    return starter_store[1]


# ---------------------------------------------------------------------------------- the sample as the default
def test_the_app_opens_on_the_real_sample_with_its_citation(empty_env):
    at = open_page()
    assert at.radio(key="cfg.data.source").value == "sample"
    page = texts(at)
    assert "Real chest X-rays" in page and "doi:10.17632/rscbjbr9sj.2" in page and "CC BY 4.0" in page
    assert metric(at, "Images") == "401" and "synthetic" not in page.lower().replace("built-in demo (synthetic)", "")
    assert "None of the 57 test patient ids occurs in train." in page
    assert at.session_state["preset"] == "Quick real-sample demo"


def test_a_missing_sample_is_reported_and_the_app_starts_on_the_synthetic_set(empty_env, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_STUDIO_SAMPLE", str(tmp_path / "no-sample"))
    at = open_page()
    assert at.session_state["preset"] == "Quick CPU demo" and at.radio(key="cfg.data.source").value == "demo"
    assert "bundled real sample is missing" in texts(at) and "synthetic" in texts(at)
    at.radio(key="cfg.data.source").set_value("sample").run()
    assert not at.exception
    assert any("missing" in e.value and "synthetic demo set is shown" in e.value for e in at.error)


def test_a_damaged_sample_film_is_named(empty_env, tmp_path, monkeypatch):
    copy = tmp_path / "chest_xray"
    shutil.copytree(sample_root(), copy)
    film = next((copy / "test" / "NORMAL").glob("*.jpeg"))
    film.write_bytes(film.read_bytes()[:100])
    monkeypatch.setenv("CXR_STUDIO_SAMPLE", str(copy))
    at = open_page()
    assert any("1 damaged or altered" in w.value and film.name in w.value for w in at.warning)


# ---------------------------------------------------------------------------------- a starter run
def test_the_starter_is_listed_and_cannot_be_deleted(starter_env):
    at = open_page("runs")
    assert bool(at.dataframe[0].value["starter"].iloc[0])
    assert "cannot be deleted here" in texts(at)
    assert at.button(key=f"delete-{starter_env.id}").disabled
    labels = [b.label for b in at.get("download_button")]
    assert "Model card (Markdown)" in labels and "Model card (HTML)" in labels


def test_demo_browses_filters_and_exports_the_starters_test_cases(starter_env):
    at = open_page("demo")
    assert "Case 1 of 80" in texts(at) and "Kermany" in texts(at)
    assert len(at.image) == 2 and any(b.label == "Export this case (PNG)" for b in at.get("download_button"))
    predictions = starter_env.metrics()["predictions"]
    at.segmented_control(key="demo_truth").set_value("NORMAL").run()
    assert "Case 1 of 40" in texts(at)
    at.selectbox(key="demo_order").set_value("Highest P(pneumonia) first").run()
    top = max((p for p in predictions if p["label"] == 0), key=lambda p: p["probability"])
    assert top["file"].rsplit("/", 1)[-1] in texts(at)
    at.segmented_control(key="demo_called").set_value("PNEUMONIA").run()
    false_alarms = sum(p["label"] == 0 and p["probability"] >= 0.5 for p in predictions)
    assert f"Case 1 of {false_alarms}" in texts(at) and "misclassified" in texts(at)
    at.select_slider(key="demo_zoom").set_value(2.0).run()
    assert "zoom 2×" in at.image[0].proto.imgs[0].caption and not at.exception
    at.toggle(key="demo_presentation").set_value(True).run()
    assert not at.exception and "Case 1 of" in texts(at)


def test_demo_upload_is_not_stored(starter_env):
    before = sorted(p.name for p in starter_env.path.iterdir())
    at = open_page("demo")
    at.segmented_control(key="demo_source").set_value("Upload").run()
    film = next((sample_root() / "test" / "PNEUMONIA").glob("*.jpeg"))
    at.file_uploader(key="demo_upload").upload("film.jpeg", film.read_bytes(), "image/jpeg").run()
    assert not at.exception and "Uploaded film" in at.image[0].proto.imgs[0].caption
    assert "unknown (uploaded film)" in texts(at)
    assert sorted(p.name for p in starter_env.path.iterdir()) == before


def test_explain_works_on_the_starter(starter_env):
    at = open_page("explain")
    assert len(at.image) == 3 and metric(at, "True label") in ("NORMAL", "PNEUMONIA") and "Kermany" in texts(at)


def test_explain_and_demo_say_what_the_film_gives_without_its_border_and_markers(starter_env):
    """The sentence under the film carries the probabilities of core.evaluation.audit.film_without_cues for that film."""
    from core.data.images import Preprocessing, load_image, read_image
    from core.data.sample import local_path
    from core.evaluation.audit import film_without_cues
    from core.model.classifier import load_model

    at = open_page("demo")
    sentence = next(line for line in texts(at).splitlines() if "without its border" in line)
    assert "P(pneumonia) =" in sentence and "blurred copy" in sentence
    config = starter_env.config()
    film = next(p["file"] for p in starter_env.metrics()["predictions"] if p["file"].rsplit("/", 1)[-1] in texts(at))
    image = load_image(local_path(film), config.data.image_size, config.data.resize_mode,
                       preprocessing=Preprocessing.of(config.data))
    decoded = read_image(local_path(film), draft_size=config.data.image_size)
    check = film_without_cues(load_model(starter_env.model_path), image, decoded, config.data)
    assert f"{check['without_border']:.1%}" in sentence
    assert config.data.remove_markers  # the starter inpaints markers itself: none reaches its model, and it says so
    assert "inpainted by the run's own preprocessing" in sentence and "without its" not in sentence.split(";")[1]
    at = open_page("explain")
    assert "without its border" in texts(at) and not at.exception


def test_evaluate_runs_the_shortcut_audit_once_and_offers_the_model_card(starter_env):
    at = open_page("evaluate")
    assert {"Model card (Markdown)", "Model card (HTML)"} <= {b.label for b in at.get("download_button")}
    at.button(key=f"audit-{starter_env.id}").click().run()
    assert not at.exception and (starter_env.path / "audit.json").is_file()
    from core.evaluation.audit import uniform_border_share

    audit = starter_env.read_json("audit.json")
    assert metric(at, "Test ROC AUC") == f"{audit['auc']:.3f}"
    assert metric(at, "Calls that change without the border") == f"{audit['border']['flipped']} of {audit['n']}"
    assert "replaced by a blurred copy of the film" in texts(at)
    assert f"{100 * uniform_border_share(32):.0f} %" in texts(at)  # a uniform map's share, in the reading
    assert not any(b.key == f"audit-{starter_env.id}" for b in at.button)  # saved: no second run


# ---------------------------------------------------------------------------------- a damaged starter
def test_a_damaged_or_incomplete_starter_is_reported(starter_store, tmp_path, monkeypatch):
    store = RunStore(tmp_path / "runs")
    damaged = store.root / "starter-damaged"
    shutil.copytree(starter_store[1].path, damaged)
    (damaged / "model.keras").write_bytes(b"PK\x03\x04 not a model")
    incomplete = store.root / "starter-incomplete"
    shutil.copytree(starter_store[1].path, incomplete)
    (incomplete / "model.keras").unlink()
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(store.root))
    at = open_page("demo", run_id="starter-damaged")
    assert any("cannot be used" in e.value for e in at.error)
    assert any("starter-incomplete" in w.value and "incomplete" in w.value for w in at.sidebar.warning)
    at = open_page("explain", run_id="starter-damaged")
    assert any("cannot be loaded" in e.value for e in at.error)


# ---------------------------------------------------------------------------------- the starter shipped in models/
@pytest.fixture
def shipped_env(tmp_path, monkeypatch, cache_dir):
    """A run store holding only a copy of the shipped EfficientNet-Lite0 starter, as on a fresh clone."""
    from core.config.paths import REPO_ROOT

    store = RunStore(tmp_path / "models")
    shutil.copytree(REPO_ROOT / "models" / "starter-efficientnet-lite0", store.root / "starter-efficientnet-lite0")
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(store.root))
    run = store.get("starter-efficientnet-lite0")
    return run, {local_path(p["file"]): p["probability"] for p in run.metrics()["predictions"]}


def test_explain_and_demo_open_on_the_shipped_starter_with_its_stored_probabilities(shipped_env):
    from dashboard import charts

    run, stored = shipped_env
    at = open_page("explain")
    assert not at.exception and len(at.image) == 3 and "Kermany" in texts(at)
    picked = at.session_state["explain_pick"]
    assert picked in stored and metric(at, "P(pneumonia)") == f"{stored[picked]:.1%}"
    at = open_page("demo")
    assert not at.exception and "Case 1 of 80" in texts(at) and "Kermany" in texts(at)
    name = next(line for line in texts(at).splitlines() if "Case 1 of 80" in line).split(" · ")[1]
    film = next(file for file in stored if file.endswith(f"/{name}"))
    assert metric(at, "Probability of pneumonia") == charts.pct(stored[film])


def test_evaluate_and_the_model_card_say_which_test_set_each_figure_is_on(shipped_env):
    from core.evaluation.report import model_card

    run, _ = shipped_env
    official = run.official_test_metrics()
    at = open_page("evaluate")
    assert not at.exception and "test films: 80 images" in texts(at)
    box = next(i.value for i in at.info if "test-films.json" in i.value)
    assert "624 images" in box and f"{official['roc_auc']:.3f}" in box
    card = model_card(run)
    assert "## Metrics on the official test split (metrics-official-test.json)" in card
    assert "## Metrics on the bundled test films (metrics.json, test-films.json)" in card
    assert f"{official['roc_auc']:.3f}" in card and run.starter["source_run"] in card


def test_demo_says_which_preprocessing_its_model_uses_and_shows_what_the_model_sees(starter_env):
    from core.data.images import Preprocessing, prepared_pixels
    from core.data.sample import local_path

    at = open_page("demo")
    config = starter_env.config()
    assert "This model's preprocessing: **burnt-in markers inpainted, cropped to the body, CLAHE**" in texts(at)
    film = next(p["file"] for p in starter_env.metrics()["predictions"] if p["file"].rsplit("/", 1)[-1] in texts(at))
    prepared = prepared_pixels(local_path(film), config.data.image_size, config.data.resize_mode,
                               preprocessing=Preprocessing.of(config.data))
    assert f"On this film: {' · '.join(prepared.notes)}." in texts(at)  # what was done to this very film
    shown = len(at.image)
    at.toggle(key="demo_model_view").set_value(True).run()
    assert not at.exception and len(at.image) == shown + 2
    captions = [image.proto.imgs[0].caption for image in at.image]
    assert f"what the model sees ({config.data.image_size} px)" in captions
    assert "the film: markers removed (green), the part kept (red)" in captions


def test_the_cue_sentence_names_markers_found_or_removed_by_the_run():
    from dashboard.resources import cue_sentence

    check = {"border_fraction": 0.1, "without_border": 0.62, "without_markers": 0.81, "markers": 2}
    assert "without its 2 markers" in cue_sentence(check) and "81.0%" in cue_sentence(check)
    assert "no laterality letter" in cue_sentence({**check, "markers": 0})
    removed = cue_sentence({**check, "markers_removed_by_run": True})
    assert "inpainted by the run's own preprocessing" in removed and "81.0%" not in removed and "62.0%" in removed
