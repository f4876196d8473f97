"""Site profiles on the shipped starter and the bundled sample's labelled test films: the threshold set there, cross-fitted
figures that agree with the run's own evaluation, nothing overwritten, leaks and bad folders named, and every consumer
(predict, the CLI, the model card) calling at the profile's threshold."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.evaluation.calibration import cross_fitted, site_rule
from core.evaluation.metrics import compute_metrics, sigmoid
from core.evaluation.sites import (SiteError, calibrate_site, fit_temperature, list_sites, operating_point,
                                   read_site, site_names)
from core.evaluation.threshold import choose_threshold
from core.store.runs import RunStore

REPO = Path(__file__).resolve().parents[3]
STARTER = REPO / "models" / "starter-efficientnet-lite0"
SAMPLE_TEST = REPO / "sample" / "chest_xray" / "test"


@pytest.fixture(scope="module")
def starter(tmp_path_factory):
    if not (STARTER / "model.keras").is_file():
        pytest.skip("the shipped starter is not in this checkout")
    store = RunStore(tmp_path_factory.mktemp("store"))
    shutil.copytree(STARTER, store.root / STARTER.name)
    return store.get(STARTER.name)


@pytest.fixture(scope="module")
def model(starter):
    from core.model.classifier import load_model

    return load_model(starter.model_path)


@pytest.fixture(scope="module")
def profile(starter, model):
    return calibrate_site(starter, SAMPLE_TEST, "sample site", model=model, n_splits=8)


def test_a_profile_sets_the_threshold_on_the_sites_films_and_cross_fits_its_figures(starter, profile):
    saved = read_site(starter, "sample-site")  # the name made file-safe
    assert Path(profile["path"]) == starter.path / "sites" / "sample-site.json"
    assert saved["threshold"] == profile["threshold"] and saved["n"] == 80
    # The films were predicted through the one image path: the probabilities metrics.json holds for them.
    evaluated = {p["file"]: p for p in starter.metrics()["predictions"]}
    films = saved["films"]
    assert {f["file"] for f in films} == set(evaluated)
    assert all(abs(f["probability"] - evaluated[f["file"]]["probability"]) < 1e-5 for f in films)
    assert all(len(f["sha256"]) == 64 for f in films)
    y = np.array([f["label"] for f in films])
    p = np.array([f["probability"] for f in films])
    patients = [f["patient"] for f in films]
    # The starter's rule is a fixed 0.5, which no site can set: Youden's J stands in, chosen on all the site's films.
    assert saved["method"] == site_rule("fixed") == "youden"
    assert saved["threshold"] == pytest.approx(choose_threshold(y, p, "youden", groups=patients))
    again = cross_fitted(y, p, patients, "youden", n_splits=8)
    assert saved["cross_fitted"]["mean"] == pytest.approx(again.mean)
    for key in ("sensitivity", "specificity", "accuracy"):
        lo, hi = saved["cross_fitted"]["ci"][key]
        assert lo <= saved["cross_fitted"]["mean"][key] <= hi
    # Beside it: the uncalibrated figures on the same films, which are the run's own evaluation of them.
    run_metrics = starter.metrics()
    for key in ("sensitivity", "specificity", "roc_auc"):
        assert saved["uncalibrated"][key] == pytest.approx(run_metrics[key])
    assert saved["validation"]["n"] == len(starter.read_json("threshold.json")["validation"]["labels"])
    # The starter misses pneumonias at its 0.5 on these films; the site's threshold is lower and catches more of them.
    assert saved["uncalibrated"]["sensitivity"] < saved["uncalibrated"]["specificity"]
    assert saved["threshold"] < starter.threshold()
    assert saved["cross_fitted"]["mean"]["sensitivity"] > saved["uncalibrated"]["sensitivity"]


def test_a_profile_of_the_same_name_never_overwrites_the_first(starter, model, profile):
    first = (starter.path / "sites" / "sample-site.json").read_bytes()
    second = calibrate_site(starter, SAMPLE_TEST, "sample site", model=model, n_splits=2, temperature=False)
    assert second["name"] == "sample-site-2" and second["temperature"] is None
    assert (starter.path / "sites" / "sample-site.json").read_bytes() == first
    assert site_names(starter)[:2] == ["sample-site", "sample-site-2"]
    (starter.path / "sites" / "sample-site-2.json").unlink()


def test_the_operating_point_is_validation_by_default_and_the_profiles_when_named(starter, profile):
    default = operating_point(starter)
    assert default.threshold == starter.threshold() and default.source == "validation" and default.site is None
    point = operating_point(starter, "sample-site")
    assert point.threshold == profile["threshold"] and point.site == "sample-site"
    assert "sample-site" in point.label and f"{profile['threshold']:.3f}" in point.label
    assert point.calibrated(0.5) == pytest.approx(0.5)  # a temperature keeps 0.5 at 0.5 and moves the rest
    assert point.calibrated(0.9) != pytest.approx(0.9)
    with pytest.raises(SiteError, match="no site profile 'elsewhere'.*sample-site"):
        operating_point(starter, "elsewhere")
    assert [row["name"] for row in list_sites(starter)] == ["sample-site"]


def test_predict_and_the_model_card_use_the_profile(starter, profile):
    from core.evaluation.predict import predict_files
    from core.evaluation.report import model_card

    low, high = sorted((profile["threshold"], starter.threshold()))
    film = next(f for f in profile["films"] if low <= f["probability"] < high)  # called one way, then the other
    path = REPO / film["file"]
    plain, = predict_files(starter, [path])
    at_site, = predict_files(starter, [path], site="sample-site")
    called = "PNEUMONIA" if film["probability"] >= starter.threshold() else "NORMAL"
    assert plain["label"] == called and plain["threshold_from"] == "validation"
    assert at_site["label"] == {"PNEUMONIA": "NORMAL", "NORMAL": "PNEUMONIA"}[called]
    assert at_site["threshold_from"] == "site:sample-site"
    assert at_site["probability"] == pytest.approx(plain["probability"])
    assert at_site["calibrated_probability"] == pytest.approx(operating_point(starter, "sample-site")
                                                              .calibrated(plain["probability"]))
    card = model_card(starter)
    assert "## Site profiles" in card and "| sample-site |" in card and f"{profile['threshold']:.3f}" in card
    assert f"cxr-serve {starter.id}" in card


def test_the_cli_lists_profiles_and_refuses_an_unknown_run(starter, profile, capsys):
    from core.jobs.commands.site import main

    assert main(["list", starter.id, "--store", str(starter.path.parent)]) == 0
    out = capsys.readouterr().out
    assert "sample-site" in out and f"{profile['threshold']:.3f}" in out and "validation threshold" in out
    assert main(["list", "no-such-run", "--store", str(starter.path.parent)]) == 2
    assert "no-such-run" in capsys.readouterr().err


def _folder(tmp_path: Path, normal: int, pneumonia: int, extra: dict[str, bytes] | None = None) -> Path:
    root = tmp_path / "site"
    for cls, n in (("NORMAL", normal), ("PNEUMONIA", pneumonia)):
        (root / cls).mkdir(parents=True)
        for film in sorted((SAMPLE_TEST / cls).iterdir())[:n]:
            shutil.copy(film, root / cls / film.name)
    for name, data in (extra or {}).items():
        (root / name).write_bytes(data)
    return root


def test_a_small_folder_is_allowed_with_a_warning_and_unreadable_films_are_listed(starter, model, tmp_path):
    folder = _folder(tmp_path, 6, 8, {"NORMAL/broken.jpeg": b"\xff\xd8\xff\xe0 truncated",
                                      "PNEUMONIA/notes.png": b"not an image at all"})
    made = calibrate_site(starter, folder, "tiny", model=model, n_splits=2)
    assert made["n"] == 14 and {s["file"].rsplit("/", 1)[-1] for s in made["skipped"]} == {"broken.jpeg", "notes.png"}
    warnings = " ".join(made["warnings"])
    assert "only 6 NORMAL films" in warnings and "only 8 PNEUMONIA films" in warnings and "±" in warnings
    assert "2 unreadable films skipped" in warnings


def test_one_class_or_no_labels_is_refused_in_a_sentence(starter, model, tmp_path):
    one = tmp_path / "one" / "NORMAL"
    one.mkdir(parents=True)
    for film in sorted((SAMPLE_TEST / "NORMAL").iterdir())[:5]:
        shutil.copy(film, one / film.name)
    with pytest.raises(SiteError, match="labelled films.*only class NORMAL"):
        calibrate_site(starter, one.parent, "one", model=model)
    with pytest.raises(SiteError, match="folder not found"):
        calibrate_site(starter, tmp_path / "nowhere", "x", model=model)
    assert "one" not in site_names(starter) and "x" not in site_names(starter)


def test_films_the_run_trained_on_are_named_as_a_leak_and_left_out(starter, model, tmp_path, restaged_data):
    splits = json.loads((starter.path / "splits.json").read_text())
    assert REPO / splits["root"] == restaged_data  # the starter trained on the restaged copy
    trained = [row for row in splits["images"] if row["split"] == "train"]
    leaked = {}
    for row in trained[:3]:
        path = restaged_data / row["file"] if not Path(row["file"]).is_absolute() else Path(row["file"])
        leaked[f"{'PNEUMONIA' if row['label'] else 'NORMAL'}/{Path(row['file']).name}"] = path.read_bytes()
    folder = _folder(tmp_path, 10, 10, leaked)
    made = calibrate_site(starter, folder, "leaky", model=model, n_splits=2)
    assert made["n"] == 20 and len(made["leaks"]["identical"]) == 3
    assert any("3 films are byte-identical" in w for w in made["warnings"])


def test_temperature_scaling_recovers_an_overconfident_models_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < sigmoid(z)).astype(int)
    assert fit_temperature(y, sigmoid(2.5 * z)) == pytest.approx(2.5, rel=0.1)
    assert fit_temperature(y, sigmoid(z)) == pytest.approx(1.0, rel=0.1)
    assert compute_metrics(y, sigmoid(z), 0.5)["roc_auc"] == pytest.approx(
        compute_metrics(y, sigmoid(2.5 * z), 0.5)["roc_auc"])
