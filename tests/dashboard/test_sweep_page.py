"""The Sweep page: members live, settings against validation AUC and loss, the best with its CI, the final run; test hidden."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, STAND_IN, wait_for_heartbeat
from test_pages import open_page, plotly_spec, texts

from core.config import preset
from core.store.runs import Run, RunStore
from core.jobs.sweep import Sweep, create_sweep

QUALITY = {1: 0.55, 2: 0.9, 3: 0.7}  # member 2 is the best on validation
FAILED = "the trainer process ended with exit code 1 without reporting (it crashed or was killed)"


def _finished(run: Run, quality: float, seed: int) -> None:
    labels = np.array([0] * 30 + [1] * 30)
    noise = np.random.default_rng(seed).normal(0, 0.3, 60)
    probabilities = np.clip(np.where(labels == 1, quality, 1 - quality) + noise, 0.01, 0.99)
    run.write_json("threshold.json", {"threshold": 0.5, "method": "youden", "validation": {
        "labels": labels.tolist(), "probabilities": probabilities.tolist(), "patients": [f"p{i // 2}" for i in range(60)]}})
    run.update_status(state="finished", progress=1.0, message="Finished (not evaluated on test: compared on validation only)")


def _heartbeat(run: Run, **fields) -> subprocess.Popen:
    """A stand-in process that keeps ``run``'s (or a sweep's) heartbeat fresh, as its trainer or coordinator would."""
    run.update_status(state="running", **fields)
    proc = subprocess.Popen([sys.executable, "-c", STAND_IN, str(run.path)], cwd=REPO)
    wait_for_heartbeat(run, proc)
    return proc


@pytest.fixture
def finished_sweep(tmp_path, cache_dir, monkeypatch):
    """Four members: three finished with validation predictions (member 1 also has a test figure), one crashed."""
    store = RunStore(tmp_path / "runs")
    sweep = create_sweep(store, preset("Quick CPU demo").with_overrides(name="pages"),
                         {"unfreeze_from_block": [2, 3], "augment": ["none", "light"]})
    runs = [run for run, _ in sweep.members()]
    for index, quality in QUALITY.items():
        _finished(runs[index - 1], quality, index)
    runs[3].update_status(state="failed", error=FAILED, message="Failed")
    runs[0].write_json("metrics.json", {"roc_auc": 0.999})  # a test figure nobody should choose on
    sweep.update_status(state="finished", progress=1.0, message="Finished. 3 of 4 members finished, 1 failed.")
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(store.root))
    return store, sweep, runs


def test_members_are_compared_on_validation_and_the_best_is_shown_with_its_ci(finished_sweep):
    store, sweep, runs = finished_sweep
    at = open_page("sweep")
    table = at.dataframe[0].value
    assert list(table["#"]) == [1, 2, 3, 4] and list(table["state"]) == ["finished"] * 3 + ["failed"]
    assert "test AUC" not in table.columns  # hidden by default
    assert table.loc[table["best"] != "", "#"].tolist() == [2]
    assert FAILED in table.loc[3, "note"]
    shown = texts(at)
    assert "Best on validation:" in shown and "unfreeze from block 2 · augmentation light" in shown
    assert "95 % CI" in shown and "patient bootstrap over 30 patients" in shown
    spec = plotly_spec(at)
    assert spec["data"][0]["type"] == "parcoords"
    labels = [d["label"] for d in spec["data"][0]["dimensions"]]
    assert labels == ["unfreeze from block", "augmentation", "validation AUC", "validation loss"]
    assert spec["data"][0]["line"]["color"] == [0, 1, 0]  # the best member's line stands out

    at.toggle(key=f"show-test-{sweep.id}").set_value(True).run()
    table = at.dataframe[0].value
    assert table.loc[0, "test AUC"] == pytest.approx(0.999) and np.isnan(table.loc[1, "test AUC"])


def test_train_the_final_run_with_the_best_settings(finished_sweep, monkeypatch):
    store, sweep, runs = finished_sweep
    launched = []
    monkeypatch.setattr(Run, "launch", lambda self, resume=False, env=None: launched.append(self.id) or 1)
    at = open_page("sweep")
    assert at.selectbox(key=f"final-member-{sweep.id}").value == runs[1].id
    at.button(key=f"final-{sweep.id}").click().run()
    assert not at.exception
    final = Sweep(sweep.path).final_run_id
    assert launched == [final]
    config = store.get(final).config()
    assert config.train.evaluate_test is True and config.model.unfreeze_from_block == 2
    assert config.augment == runs[1].config().augment


def test_a_running_sweep_shows_live_progress_and_pauses(tmp_path, cache_dir, monkeypatch):
    store = RunStore(tmp_path / "runs")
    sweep = create_sweep(store, preset("Quick CPU demo").with_overrides(name="live"), {"unfreeze_from_block": [2, 3]})
    (first, _), (second, _) = sweep.members()
    _finished(first, 0.8, 1)
    procs = [_heartbeat(second, progress=0.4, message="finetune: epoch 2/4"),
             _heartbeat(sweep, progress=0.7, message=f"1 of 2 members done; training {second.id}")]
    monkeypatch.setenv("CXR_STUDIO_RUNS", str(store.root))
    try:
        at = open_page("sweep")
        table = at.dataframe[0].value
        assert list(table["state"]) == ["finished", "running"] and table.loc[1, "progress"] == pytest.approx(0.4)
        assert f"training {second.id}" in at.get("progress")[0].proto.text
        assert at.button(key=f"final-{sweep.id}").disabled  # not while the sweep runs
        at.button(key=f"pause-{sweep.id}").click().run()
        assert sweep.pause_path.exists() and "stop after their current batch" in texts(at)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_new_sweep_names_bad_grids_and_starts_a_valid_one(empty_env, monkeypatch):
    launched = []
    monkeypatch.setattr(Sweep, "launch", lambda self, resume=False, env=None: launched.append(self.id) or 1)
    at = open_page("sweep")
    start = next(b for b in at.button if b.label == "Start sweep")
    assert start.disabled and "Choose at least one setting to vary" in texts(at)

    at.text_input(key="sweep_lrs").input("1e-4, fast").run()
    assert any("not a list of numbers" in e.value for e in at.error)
    at.text_input(key="sweep_lrs").input("").run()
    blocks = at.multiselect(key="sweep_blocks").options
    assert len(blocks) > 4  # the default base (the real-sample preset's EfficientNet-Lite0) has more blocks than the small CNN
    at.multiselect(key="sweep_blocks").set_value([int(blocks[-1].split(" · ")[0])]).run()
    at.multiselect(key="sweep_backbones").set_value(["small_cnn"]).run()
    assert any("nothing was created" in e.value and "small_cnn has blocks 1..4" in e.value for e in at.error)

    at.multiselect(key="sweep_backbones").set_value([]).run()
    at.multiselect(key="sweep_blocks").set_value([int(b.split(" · ")[0]) for b in blocks[-2:]]).run()
    at.multiselect(key="sweep_augment").set_value(["none", "light"]).run()
    assert "**4 members** (2 × 2)" in texts(at)
    next(b for b in at.button if b.label == "Start sweep").click().run()
    assert not at.exception
    sweeps = [p for p in empty_env.iterdir() if p.name.startswith("sweep-")]
    assert len(sweeps) == 1 and launched == [sweeps[0].name]
    assert len(json.loads((sweeps[0] / "sweep.json").read_text())["members"]) == 4


def test_a_sweep_over_preprocessing_starts_members_that_see_the_films_differently(empty_env, monkeypatch):
    monkeypatch.setattr(Sweep, "launch", lambda self, resume=False, env=None: 1)
    at = open_page("sweep")
    at.multiselect(key="sweep_intensity").set_value(["none", "clahe", "window"]).run()
    at.multiselect(key="sweep_fov").set_value(["body"]).run()
    assert "**3 members** (1 × 3)" in texts(at)  # field of view × intensity
    next(b for b in at.button if b.label == "Start sweep").click().run()
    assert not at.exception
    (folder,) = [p for p in empty_env.iterdir() if p.name.startswith("sweep-")]
    members = [Run(empty_env / m["run"]).config().data for m in json.loads((folder / "sweep.json").read_text())["members"]]
    assert [(d.intensity, d.field_of_view) for d in members] == [("none", "body"), ("clahe", "body"), ("window", "body")]


def test_runs_groups_members_and_evaluate_explains_why_a_member_has_no_test_figures(finished_sweep):
    store, sweep, runs = finished_sweep
    at = open_page("runs")
    assert "Every run here is a sweep member" in texts(at)  # hidden until asked
    assert at.dataframe[0].value["sweep"].tolist() == ["pages"]
    at.toggle(key="runs_show_members").set_value(True).run()
    table = at.dataframe[0].value
    assert table["sweep"].tolist() == [f"pages #{i}" for i in (1, 2, 3, 4)]

    from core.model.classifier import build_classifier

    config = runs[1].config()
    build_classifier(config.model, config.data.image_size).save(runs[1].model_path)  # a member's model, no metrics
    at = open_page("evaluate", run_id=runs[1].id)
    assert "is a sweep member" in texts(at) and not at.error


def test_a_sweep_over_resolution_and_geometry_starts_members_at_each_size_and_resize(empty_env, monkeypatch):
    monkeypatch.setattr(Sweep, "launch", lambda self, resume=False, env=None: 1)
    at = open_page("sweep")
    at.multiselect(key="sweep_sizes").set_value([64, 128]).run()
    at.multiselect(key="sweep_resize").set_value(["stretch", "center_square"]).run()
    assert "**4 members** (2 × 2)" in texts(at)
    next(b for b in at.button if b.label == "Start sweep").click().run()
    assert not at.exception
    (folder,) = [p for p in empty_env.iterdir() if p.name.startswith("sweep-")]
    members = [Run(empty_env / m["run"]).config().data for m in json.loads((folder / "sweep.json").read_text())["members"]]
    assert sorted((d.image_size, d.resize_mode) for d in members) == [
        (64, "center_square"), (64, "stretch"), (128, "center_square"), (128, "stretch")]
