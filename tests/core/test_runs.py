"""The run store: atomic files, torn history lines, stop requests, and kill-then-resume without losing an epoch."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from core.config import preset
from core.runs import RunError, RunStore, read_jsonl


def _tiny_config(epochs: int = 4, name: str = "tiny"):
    config = preset("Quick CPU demo").with_overrides(**{
        "name": name, "data.image_size": 48, "data.demo_images_per_class": 40,
        "train.finetune.epochs": epochs, "train.batch_size": 16, "train.early_stopping_patience": 0,
        "train.progress_every_steps": 1,
    })
    return config.validate()


def test_create_list_get_delete(tmp_path):
    store = RunStore(tmp_path)
    assert store.list() == []
    first, second = store.create(_tiny_config(name="a")), store.create(_tiny_config(name="a"))
    assert first.id != second.id and {r.id for r in store.list()} == {first.id, second.id}
    assert store.get(first.id).config() == _tiny_config(name="a")
    assert first.status().state == "created"
    store.delete(first.id)
    assert [r.id for r in store.list()] == [second.id]
    with pytest.raises(RunError, match="no run"):
        store.get(first.id)
    with pytest.raises(RunError):
        store.get("../etc")


def test_torn_last_history_line_is_ignored(tmp_path):
    run = RunStore(tmp_path).create(_tiny_config())
    run.append_history({"type": "epoch", "epoch": 1, "loss": 0.5})
    run.append_history({"type": "epoch", "epoch": 2, "loss": 0.4})
    with open(run.history_path, "a") as handle:
        handle.write('{"type": "epoch", "epoch": 3, "lo')  # a writer killed mid-line
    assert [row["epoch"] for row in run.epochs()] == [1, 2]
    assert len(read_jsonl(run.history_path)) == 2


def test_status_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    run = RunStore(tmp_path).create(_tiny_config())
    for step in range(50):
        run.update_status(step=step)
    assert run.status().step == 49
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "status.json"]
    json.loads((run.path / "status.json").read_text())


def test_dead_trainer_is_reported_as_interrupted(tmp_path):
    run = RunStore(tmp_path).create(_tiny_config())
    run.update_status(state="running", pid=2 ** 22 + 12345)  # no such process
    status = run.status()
    assert status.state == "interrupted" and "Resume" in status.message
    run.update_status(state="running", pid=os.getpid())  # alive, but not a trainer (pid reuse)
    assert run.status().state == "interrupted"


@pytest.mark.slow
def test_stop_request_is_honoured_quickly(tmp_path, cache_dir):
    run = RunStore(tmp_path).create(_tiny_config(epochs=50))
    run.launch()
    _wait_for(lambda: run.history("step"), 240, run)
    with pytest.raises(RunError, match="still running"):
        RunStore(tmp_path).delete(run.id)
    asked = time.time()
    run.request_stop()
    status = run.wait(timeout=60)
    assert status.state == "stopped", run.log_tail()
    assert time.time() - asked < 30
    assert not run.stop_path.exists()


@pytest.mark.slow
def test_sigkill_then_resume_loses_no_epoch(tmp_path, cache_dir):
    run = RunStore(tmp_path).create(_tiny_config(epochs=4))
    pid = run.launch()
    _wait_for(lambda: len(run.epochs()) >= 2, 240, run)
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    _wait_for(lambda: run.status().state == "interrupted", 30, run)
    kept = {row["epoch"]: row["time"] for row in run.epochs()}
    run.launch(resume=True)
    status = run.wait(timeout=300)
    assert status.state == "finished", run.log_tail()
    epochs = run.epochs()
    assert [row["epoch"] for row in epochs] == [1, 2, 3, 4]
    state = json.loads((run.path / "state.json").read_text())
    completed_before_kill = [e for e in kept if e <= state["epoch"]]
    # Epochs completed before the kill were not trained again: their rows are the original ones.
    for row in epochs:
        if row["epoch"] in completed_before_kill and row["epoch"] <= 2:
            assert row["time"] == kept[row["epoch"]]
    assert run.metrics() and run.model_path.exists()


def _wait_for(condition, timeout: float, run) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if run.raw_status().state == "failed":
            raise AssertionError(f"run failed: {run.raw_status().error}\n{run.log_tail()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out; status {run.status()}\n{run.log_tail()}")
