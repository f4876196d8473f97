"""Site profiles in the app, on a copy of the shipped starter: Evaluate makes one from the sample's labelled films, and
Evaluate, Explain and Demo then call films at its threshold and say so."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_pages import metric, open_page, texts

from core.evaluation.sites import read_site
from core.store.runs import RunStore

REPO = Path(__file__).resolve().parents[2]
STARTER = REPO / "models" / "starter-efficientnet-lite0"


@pytest.fixture
def starter(tmp_path, cache_dir, monkeypatch):
    if not (STARTER / "model.keras").is_file():
        pytest.skip("the shipped starter is not in this checkout")
    store = RunStore(tmp_path / "runs")
    shutil.copytree(STARTER, store.root / STARTER.name)
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(store.root))
    return store.get(STARTER.name)


def test_evaluate_makes_a_site_profile_and_every_page_then_calls_at_its_threshold(starter):
    at = open_page("evaluate")
    assert "This run has no site profile yet." in texts(at)
    assert at.sidebar.selectbox(key=f"_site_picker-{starter.id}").value == "The run's validation threshold"
    [t for t in at.text_input if t.label == "Profile name"][0].input("clinic a")
    assert [t for t in at.text_input if t.label == "Labelled site folder"][0].value == "sample/chest_xray/test"
    [b for b in at.button if b.label == "Create site profile"][0].click().run()
    assert not at.exception, [e.message for e in at.exception]
    profile = read_site(starter, "clinic-a")
    assert "Site profile **clinic-a** saved" in texts(at) and "now in use" in texts(at)
    # The new profile is the one in use: the sidebar says so, and the threshold slider starts at its threshold.
    assert at.sidebar.selectbox(key=f"_site_picker-{starter.id}").value == "clinic-a"
    assert at.slider(key=f"threshold-{starter.id}-site:clinic-a").value == pytest.approx(profile["threshold"], abs=1e-3)
    table = at.dataframe[-1].value
    assert list(table["figure"]) == ["Sensitivity", "Specificity", "Accuracy", "ROC AUC"]
    assert f"Site profile **clinic-a**: threshold **{profile['threshold']:.3f}**" in texts(at)

    chosen = {"site_of": {starter.id: "clinic-a"}}
    demo = open_page("demo", **chosen)
    assert f"Called pneumonia from {profile['threshold']:.1%}: the threshold of site profile **clinic-a**" in texts(demo)
    predictions = starter.metrics()["predictions"]
    demo.segmented_control(key="demo_truth").set_value("NORMAL").run()
    demo.segmented_control(key="demo_called").set_value("PNEUMONIA").run()
    over_called = sum(p["label"] == 0 and p["probability"] >= profile["threshold"] for p in predictions)
    assert over_called != sum(p["label"] == 0 and p["probability"] >= starter.threshold() for p in predictions)
    assert f"Case 1 of {over_called}" in texts(demo)

    explain = open_page("explain", **chosen)
    assert f"site profile 'clinic-a': threshold {profile['threshold']:.3f}" in texts(explain)
    assert metric(explain, f"Label at threshold {profile['threshold']:.2f}") in ("NORMAL", "PNEUMONIA")

    # A profile that has gone: the pages fall back to the validation threshold, and nothing breaks.
    (starter.path / "sites" / "clinic-a.json").unlink()
    again = open_page("demo", **chosen)
    assert "Called pneumonia from 50.0%: a threshold chosen on validation data." in texts(again)
