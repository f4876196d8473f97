"""Sweeps: the grid and its messages, the queue (order, GPUs, pause, cancel, resume, crashes) and a tiny real sweep."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from run_helpers import wait_for

from core.config import ConfigError, augment_strength, preset
from core.store.runs import Run, RunError, RunStore
from core.jobs.sweep import (best_member, create_final_run, create_sweep, describe, get_sweep, list_sweeps,
                        member_slots, normalize_grid, plan_members, run_sweep, sweep_of_runs, sweep_results)

REPO = Path(__file__).resolve().parents[3]
STAND_IN = [sys.executable, str(Path(__file__).with_name("sweep_stand_in.py"))]


def _base(**overrides):
    """The quick CPU demo, shrunk: 32 px, 40 synthetic films per class, one epoch per phase."""
    return preset("Quick CPU demo").with_overrides(**{
        "name": "tiny", "data.image_size": 32, "data.demo_images_per_class": 40, "train.head.epochs": 1,
        "train.finetune.epochs": 1, "train.head.augment": False, **overrides})


def _calls(run: Run) -> list[dict]:
    path = run.path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def stand_in(monkeypatch):
    """Stand-in members: quick by default; a test sets STAND_IN_STEPS / STAND_IN_CRASH as it needs."""
    monkeypatch.setenv("STAND_IN_STEPS", "3")
    monkeypatch.setenv("STAND_IN_SECONDS", "0.05")
    monkeypatch.delenv("STAND_IN_CRASH", raising=False)
    return lambda sweep, **kw: run_sweep(sweep, trainer=STAND_IN, poll=0.05, **kw)


def _in_thread(target, *args, **kwargs) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(target(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, result


# ------------------------------------------------------------------------------------- the grid
def test_grid_expands_to_member_configs_that_share_caches_and_skip_test(tmp_path):
    store = RunStore(tmp_path)
    sweep = create_sweep(store, _base(), {"unfreeze_from_block": [2, 3, 3], "augment": ["none", "strong"]})
    members = sweep.members()
    assert [settings for _, settings in members] == [
        {"model.unfreeze_from_block": b, "augment": a} for b in (2, 3) for a in ("none", "strong")]
    for run, settings in members:
        config = run.config()
        assert config.model.unfreeze_from_block == settings["model.unfreeze_from_block"]
        assert config.augment == augment_strength(settings["augment"])
        assert config.data.cache == "disk" and config.train.evaluate_test is False
        assert run.status().state == "created"
    # The run store lists the members (not the sweep folder); each member knows its sweep.
    assert {run.id for run in store.list()} == {run.id for run, _ in members}
    owner, index = sweep_of_runs(store)[members[2][0].id]
    assert owner.id == sweep.id and index == 3
    assert [s.id for s in list_sweeps(store)] == [sweep.id] and get_sweep(store, sweep.id).grid == sweep.grid
    assert sweep.status().state == "created"


def test_backbone_axis_takes_each_backbones_width(tmp_path):
    base = _base(**{"model.backbone": "mobilenet", "model.alpha": 0.25, "model.weights": "none",
                    "model.unfreeze_from_block": 2})
    planned = plan_members(base, {"backbone": ["mobilenet", "small_cnn"]}, "b")
    assert [config.model.alpha for _, config in planned] == [0.25, None]


@pytest.mark.parametrize("grid, message", [
    ({}, "grid: empty"),
    ({"augment": []}, "augment: no values"),
    ({"unfreeze_depth": [1, 2]}, "unfreeze_depth: no such setting"),
    ({"augment": ["none", "medium"]}, "unknown strength 'medium'"),
    ({"data.cache": ["memory"]}, "sets it on every member"),
    ({"augment": ["none"], "augment.zoom": [0.1]}, "not both"),
])
def test_a_bad_grid_is_named_and_creates_nothing(tmp_path, grid, message):
    store = RunStore(tmp_path)
    with pytest.raises(ConfigError, match=message):
        create_sweep(store, _base(), grid)
    assert not list(tmp_path.iterdir())


def test_every_member_is_validated_before_anything_is_created(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(ConfigError) as error:
        create_sweep(store, _base(), {"unfreeze_from_block": [2, 7, 9], "finetune_learning_rate": [1e-3]})
    text = str(error.value)
    assert "2 of 3 members" in text and "nothing was created" in text
    assert "member 2 (unfreeze from block 7 · fine-tune learning rate 0.001)" in text
    assert "small_cnn has blocks 1..4; got 9" in text
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="base settings: data.image_size"):
        create_sweep(store, _base(**{"data.image_size": 8}), {"augment": ["none"]})


def test_preprocessing_settings_are_grid_axes_from_the_command_line(tmp_path):
    from core.jobs.commands.sweep import parse_grid

    grid = parse_grid(["intensity=none,clahe,window", "field_of_view=full,body", "data.remove_markers=true"])
    sweep = create_sweep(RunStore(tmp_path), _base(), grid)
    members = sweep.members()
    assert len(members) == 6 and {run.config().data.remove_markers for run, _ in members} == {True}
    seen = {(run.config().data.intensity, run.config().data.field_of_view) for run, _ in members}
    assert seen == {(i, f) for i in ("none", "clahe", "window") for f in ("full", "body")}
    settings = members[1][1]
    assert settings == {"data.intensity": "none", "data.field_of_view": "body", "data.remove_markers": True}
    assert describe(settings) == "intensity none · field of view body · remove markers True"
    with pytest.raises(ConfigError, match="data.intensity"):
        create_sweep(RunStore(tmp_path / "bad"), _base(), {"intensity": ["none", "gamma"]})


def test_resolution_and_geometry_are_grid_axes_from_the_command_line(tmp_path):
    from core.jobs.commands.sweep import parse_grid

    grid = parse_grid(["image_size=64,128", "resize_mode=stretch,center_square"])
    members = create_sweep(RunStore(tmp_path), _base(), grid).members()
    assert {(run.config().data.image_size, run.config().data.resize_mode) for run, _ in members} == {
        (s, m) for s in (64, 128) for m in ("stretch", "center_square")}
    assert describe(members[0][1]) == "image size (px) 64 · resize stretch"
    with pytest.raises(ConfigError, match="data.image_size"):
        create_sweep(RunStore(tmp_path / "bad"), _base(), {"image_size": [8]})


def test_grid_names_resolve_and_values_deduplicate():
    assert normalize_grid({"finetune_learning_rate": [1e-4, 1e-4, 1e-5], "model.dropout": 0.2}) == {
        "train.finetune.learning_rate": [1e-4, 1e-5], "model.dropout": [0.2]}


# ------------------------------------------------------------------------------------- the queue
def test_members_run_one_after_another_on_a_cpu(tmp_path, stand_in):
    sweep = create_sweep(RunStore(tmp_path), _base(), {"model.dropout": [0.1, 0.2, 0.3]})
    assert stand_in(sweep, gpus=0) == 0
    calls = [_calls(run)[0] for run, _ in sweep.members()]
    assert all(call["gpu"] is None and not call["resume"] for call in calls)
    assert all(a["end"] <= b["start"] for a, b in zip(calls, calls[1:]))  # in grid order, never two at once
    launches = [run.launch_record() for run, _ in sweep.members()]
    assert all(l["exit_code"] == 0 and l["time"] < l["ended"] for l in launches)  # each member's wall time
    assert sweep.status().state == "finished" and sweep.status().progress == 1.0


def test_members_run_one_per_gpu_when_several_are_visible(tmp_path, stand_in, monkeypatch):
    assert member_slots(2) == ["0", "1"] and member_slots(1) == [None] and member_slots(0) == [None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert member_slots() == ["2", "3"]
    monkeypatch.setenv("STAND_IN_STEPS", "20")
    sweep = create_sweep(RunStore(tmp_path), _base(), {"model.dropout": [0.1, 0.2, 0.3, 0.4]})
    assert stand_in(sweep, gpus=2) == 0
    calls = [_calls(run)[0] for run, _ in sweep.members()]
    assert {call["gpu"] for call in calls} == {"0", "1"}
    for gpu in ("0", "1"):  # one member per GPU at any time
        mine = sorted((c for c in calls if c["gpu"] == gpu), key=lambda c: c["start"])
        assert all(a["end"] <= b["start"] for a, b in zip(mine, mine[1:]))
    first, second = calls[0], calls[1]
    assert first["start"] < second["end"] and second["start"] < first["end"]  # two GPUs: side by side


def test_a_crashed_member_is_marked_failed_and_the_sweep_goes_on(tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("STAND_IN_CRASH", "0.3")
    store = RunStore(tmp_path)
    sweep = create_sweep(store, _base(), {"model.dropout": [0.2, 0.3, 0.1]})
    assert stand_in(sweep) == 0
    states = [run.status() for run, _ in sweep.members()]
    assert [s.state for s in states] == ["finished", "failed", "finished"]
    assert "exit code 1" in states[1].error and "log.txt" in states[1].error
    assert sweep.status().state == "finished" and "1 failed" in sweep.status().message

    # Decided on validation: the lowest dropout wins; its CI comes from a patient bootstrap of validation.
    results = sweep_results(sweep)
    best = best_member(results)
    assert best.settings == {"model.dropout": 0.1} and best.index == 3
    lo, hi = best.val_auc_ci
    assert lo <= best.val_auc <= hi and best.val_patients == 10 and best.val_images == 20
    assert results[1].val_auc is None
    final = create_final_run(sweep, store)
    assert final.config().model.dropout == 0.1 and final.config().train.evaluate_test is True
    assert final.status().state == "created" and sweep.spec["final"]["member"] == best.run_id
    with pytest.raises(RunError, match="already has its final run"):
        create_final_run(sweep, store)


def test_pause_then_resume_goes_on_from_the_stopped_member(tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("STAND_IN_STEPS", "400")
    sweep = create_sweep(RunStore(tmp_path), _base(), {"model.dropout": [0.1, 0.2]})
    (first, _), (second, _) = sweep.members()
    thread, result = _in_thread(stand_in, sweep)
    wait_for(lambda: first.status().state == "running", 60, first, what="the first member to run")
    sweep.request_pause()
    thread.join(60)
    assert result == [0] and sweep.status().state == "paused"
    assert first.status().state == "stopped" and second.status().state == "created"
    assert not sweep.pause_path.exists()
    assert stand_in(sweep) == 3  # a paused sweep is resumed, not started again

    monkeypatch.setenv("STAND_IN_STEPS", "3")
    assert stand_in(sweep, resume=True) == 0
    assert [c["resume"] for c in _calls(first)] == [False, True] and [c["resume"] for c in _calls(second)] == [False]
    assert first.status().state == second.status().state == sweep.status().state == "finished"


def test_cancel_ends_the_sweep_for_good(tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("STAND_IN_STEPS", "400")
    sweep = create_sweep(RunStore(tmp_path), _base(), {"model.dropout": [0.1, 0.2, 0.3]})
    members = [run for run, _ in sweep.members()]
    thread, result = _in_thread(stand_in, sweep)
    wait_for(lambda: members[0].status().state == "running", 60, members[0], what="the first member to run")
    sweep.request_cancel()
    thread.join(60)
    assert result == [0] and sweep.status().state == "cancelled"
    assert [m.status().state for m in members] == ["stopped", "created", "created"]
    with pytest.raises(RunError, match="cancelled: there is nothing to resume"):
        sweep.check_can_start(resume=True)
    assert stand_in(sweep, resume=True) == 3


@pytest.mark.slow
def test_a_killed_coordinator_leaves_an_interrupted_sweep_that_resumes_its_member(tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("STAND_IN_STEPS", "400")
    sweep = create_sweep(RunStore(tmp_path), _base(), {"model.dropout": [0.1, 0.2]})
    (first, _), (second, _) = sweep.members()
    script = ("import sys; from core.jobs.sweep import Sweep, run_sweep; "
              "sys.exit(run_sweep(Sweep(sys.argv[1]), trainer=sys.argv[2:], poll=0.05))")
    coordinator = subprocess.Popen([sys.executable, "-c", script, str(sweep.path), *STAND_IN], cwd=REPO,
                                   start_new_session=True)
    wait_for(lambda: first.status().state == "running" and sweep.status().state == "running", 60, first,
             what="the sweep and its first member to run")
    os.killpg(coordinator.pid, signal.SIGKILL)  # the coordinator and its member, at once
    coordinator.wait()
    wait_for(lambda: sweep.status().state == "interrupted" and first.status().state == "interrupted", 10,
             what="the killed sweep and its member to read as interrupted")

    monkeypatch.setenv("STAND_IN_STEPS", "3")
    assert stand_in(sweep, resume=True) == 0
    assert [c["resume"] for c in _calls(first)] == [True]  # the killed start wrote no record
    assert first.status().state == second.status().state == sweep.status().state == "finished"


# ------------------------------------------------------------------------------------- a real sweep
@pytest.mark.slow
def test_a_tiny_sweep_trains_in_turn_shares_caches_and_never_reads_test(tmp_path, monkeypatch):
    from core.data.pipeline import _cache_key
    from core.data.splits import saved_splits

    cache = tmp_path / "cache"
    monkeypatch.setenv("CXR_STUDIO_CACHE", str(cache))  # cold caches, seen by the members' processes too
    store = RunStore(tmp_path / "runs")
    sweep = create_sweep(store, _base(), {"unfreeze_from_block": [2, 3], "augment": ["none"]})
    assert run_sweep(sweep, poll=0.2) == 0, [run.log_tail() for run, _ in sweep.members()]
    (first, _), (second, _) = sweep.members()
    assert first.status().state == second.status().state == "finished", second.log_tail()
    second_launched = second.launch_record()["time"]
    assert first.status().finished_at <= second.status().started_at  # one after another

    # Decoded images: two entries (train, validation), both written by the first member alone.
    arrays = sorted((cache / "arrays").glob("*.json"))
    assert len(arrays) == 2 and all(path.stat().st_mtime < second_launched for path in (cache / "arrays").iterdir())
    # Frozen outputs: the head phase's were computed by the first member and read by the second.
    notes = {(run.id, row["phase"]): row["note"] for run in (first, second) for row in run.history("phase")}
    assert notes[(first.id, "head")].endswith("saved to the disk cache")
    assert notes[(second.id, "head")].endswith("read from the disk cache")
    assert notes[(second.id, "finetune")].endswith("saved to the disk cache")  # another freeze boundary

    # Never test: no metrics.json, and the test images were never decoded (the disk cache would hold them).
    splits = saved_splits(second.path)
    test_key = _cache_key(splits.test, 32, "stretch")
    assert not (cache / "arrays" / f"{test_key}.json").exists()
    assert first.metrics() is None and second.metrics() is None
    assert "not evaluated on test" in second.status().message

    results = sweep_results(sweep)
    best = best_member(results)
    assert best is not None and all(r.val_auc is not None and r.val_auc_ci[0] is not None for r in results)
    assert best.val_images == len(splits.val)
    assert sweep.status().state == "finished" and "best on validation" in sweep.status().message
