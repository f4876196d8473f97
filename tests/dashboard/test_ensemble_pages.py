"""An ensemble run on the pages: listed on Runs with its members, evaluated, explained by its averaged heatmap."""
from __future__ import annotations

import pytest
from test_pages import metric, open_page, texts

from core.config import preset
from core.jobs.ensemble import build_ensemble, create_seed_ensemble
from core.evaluation.ensemble import member_ids
from core.evaluation.explain import ENSEMBLE_LAYER
from core.store.runs import RunStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ensemble_store(tmp_path_factory, cache_dir):
    store = RunStore(tmp_path_factory.mktemp("ensemble-runs"))
    config = preset("Quick CPU demo").with_overrides(**{
        "name": "pages", "data.image_size": 32, "data.demo_images_per_class": 40, "train.finetune.epochs": 1})
    run = create_seed_ensemble(store, config, seeds=2)
    build_ensemble(run)
    return store, run


def test_explain_shows_the_ensembles_probability_and_its_averaged_heatmap(ensemble_store, monkeypatch):
    store, run = ensemble_store
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(store.root))
    at = open_page("explain", run_id=run.id)
    first = run.metrics()["predictions"][0]
    assert at.selectbox(key="explain_pick").value == first["file"]
    assert not at.error and len(at.image) == 3
    assert metric(at, "P(pneumonia)") == f"{first['probability']:.1%}"
    assert at.selectbox(key=f"explain_layer-{run.id}").value == ENSEMBLE_LAYER
    assert "ensemble of 2 runs" in texts(at)


def test_runs_and_evaluate_show_the_ensemble(ensemble_store, monkeypatch):
    store, run = ensemble_store
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(store.root))
    at = open_page("runs")
    table = at.dataframe[0].value
    assert table.loc[table["id"] == run.id, "backbone"].item().startswith("ensemble of 2")
    at.multiselect(key="runs_selected").set_value([run.id]).run()
    shown = texts(at)
    assert "ensemble of 2 runs" in shown and all(member in shown for member in member_ids(run))
    at = open_page("evaluate", run_id=run.id)
    assert "ensemble of 2" in texts(at)


def test_demo_shows_the_ensembles_cases_with_its_averaged_heatmap(ensemble_store, monkeypatch):
    from pathlib import Path

    store, run = ensemble_store
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(store.root))
    predictions = run.metrics()["predictions"]
    at = open_page("demo", run_id=run.id, demo_order="File name")
    assert f"Case 1 of {len(predictions)}" in texts(at) and not at.exception
    first = min(predictions, key=lambda p: Path(p["file"]).name)
    assert metric(at, "Probability of pneumonia") == f"{100 * first['probability']:.1f} %"
    assert len(at.image) == 2 and "Grad-CAM" in at.image[1].proto.imgs[0].caption
