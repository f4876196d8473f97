"""The run store: atomic files, torn history lines, stop requests, and kill-then-resume without losing an epoch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from run_helpers import wait_for

from core.config import preset
from core.store.status import HOST, STALE_AFTER_SECONDS, process_alive, process_start_time
from core.store.heartbeat import StatusWriter
from core.store.runs import DEFAULT_TRAINER_NICE, TRAINER_NICE_ENV, RunError, RunStore, trainer_nice
from core.store.files import HistoryTail, latest_epochs, read_jsonl
from core.config.paths import REPO_ROOT


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


def _beat_from(run, host: str = "gpu-server-7", **fields) -> None:
    """Write status.json as a trainer on ``host`` does: state, host, pid and a heartbeat time."""
    run.update_status(**{"state": "running", "host": host, "pid": 4242, "heartbeat_at": time.time(), **fields})


def test_a_trainer_on_another_host_reads_as_running_while_its_heartbeat_is_fresh(tmp_path):
    store = RunStore(tmp_path)
    run = store.create(_tiny_config())
    _beat_from(run)  # pid 4242 need not exist here: it is the other host's
    assert run.status().state == "running"
    with pytest.raises(RunError, match="gpu-server-7"):
        run.launch(resume=True)  # a second trainer in the same folder is refused
    with pytest.raises(RunError, match="still running"):
        store.delete(run.id)
    with pytest.raises(RunError, match="gpu-server-7"):
        run.kill()  # signals cannot reach another host: only the stop request does
    _beat_from(run, heartbeat_at=time.time() - STALE_AFTER_SECONDS - 1)
    status = run.status()
    assert status.state == "interrupted" and "Resume" in status.message
    assert [r.id for r in store.resumable()] == [run.id]


def test_a_dead_trainer_on_this_host_is_interrupted_without_waiting_for_its_heartbeat(tmp_path):
    run = RunStore(tmp_path).create(_tiny_config())
    _beat_from(run, host=HOST, pid=2 ** 22 + 12345)  # no such process
    assert run.status().state == "interrupted"
    started = process_start_time(os.getpid())
    _beat_from(run, host=HOST, pid=os.getpid(), pid_started=started + 100)  # a reused pid: another process
    assert run.status().state == "interrupted"
    run.update_status(state="running", host=None, pid=os.getpid(), pid_started=None, heartbeat_at=None)
    assert run.status().state == "interrupted"  # an older status without a heartbeat


def test_status_writer_keeps_the_heartbeat_fresh_without_losing_fields(tmp_path):
    run = RunStore(tmp_path).create(_tiny_config())
    with StatusWriter(run, interval=0.05).start(state="running", epoch=3) as writer:
        first = run.raw_status().heartbeat_at
        wait_for(lambda: run.raw_status().heartbeat_at > first, 60, what="the status writer's next heartbeat")
        after = writer.update(step=7).heartbeat_at
        wait_for(lambda: run.raw_status().heartbeat_at > after, 60,  # a beat later, the step is still there
                 what="a heartbeat after the step update")
        status = run.status()
        assert (status.state, status.epoch, status.step) == ("running", 3, 7)
        assert (status.host, status.pid, status.pgid) == (HOST, os.getpid(), os.getpgrp())
        with pytest.raises(RunError, match="heartbeat"):
            run.check_can_start(resume=True)
    assert run.raw_status().created_at, "fields written before the trainer started are kept"


# Stands in for ``python -m core.train``: ignores SIGTERM and starts a child in its own process group.
STAND_IN = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            "open(sys.argv[1], 'w').write(str(child.pid)); time.sleep(120)")


@pytest.mark.slow
def test_launcher_never_writes_status_and_kill_ends_the_trainers_process_group(tmp_path, monkeypatch):
    run = RunStore(tmp_path / "runs").create(_tiny_config())
    _beat_from(run, host=HOST, pid=2 ** 22 + 12345, epoch=2)  # a trainer of this host that was killed
    assert run.status().state == "interrupted"
    before = (run.path / "status.json").read_bytes()
    child_file = tmp_path / "child.pid"
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kw: real_popen(
        [sys.executable, "-c", STAND_IN, str(child_file)], **kw))
    with pytest.raises(RunError, match="already started"):
        run.launch()  # a used folder is resumed, never trained again from scratch
    pid = run.launch(resume=True)
    launch = run.launch_record()
    assert (launch["pid"], launch["pgid"], launch["host"], launch["resume"]) == (pid, pid, HOST, True)
    assert run.status().state == "queued"  # the launch is newer than the dead trainer's last heartbeat
    with pytest.raises(RunError, match="just launched"):
        run.launch(resume=True)
    wait_for(lambda: child_file.exists() and child_file.read_text(), 60, what="the stand-in trainer to start its child")
    child = int(child_file.read_text())
    child_started = process_start_time(child)
    assert os.getpgid(child) == pid != os.getpgrp()  # the trainer leads its own group; ours is not in it
    assert run.kill(grace=0.5)  # SIGTERM is ignored here, so SIGKILL follows the grace period
    wait_for(lambda: not process_alive(pid, launch["started"]) and not process_alive(child, child_started), 60,
             what="the killed trainer and its child to be gone")
    status = run.status()
    assert status.state == "failed" and "before it reported" in status.error
    assert (run.path / "status.json").read_bytes() == before, "only the trainer writes status.json"


@pytest.mark.slow
def test_stop_request_is_honoured_quickly(tmp_path, cache_dir):
    run = RunStore(tmp_path).create(_tiny_config(epochs=50))
    run.launch()
    wait_for(lambda: run.history("step"), 240, run, what="the trainer's first step")
    with pytest.raises(RunError, match="still running"):
        RunStore(tmp_path).delete(run.id)
    run.request_stop()
    seen = len(run.history("step"))  # read once the request is there: every batch that ends from now on sees it
    status = run.wait(timeout=60)
    assert status.state == "stopped", run.log_tail()
    # Checked at every batch's end: at most the batch that had just passed its check writes its row, then the run
    # ends, long before its 50th epoch.
    steps = run.history("step")
    assert len(steps) <= seen + 1, f"{len(steps) - seen} steps trained after the stop request"
    assert max(row["epoch"] for row in steps) < 50 and len(run.epochs()) < 50
    assert not run.stop_path.exists()


@pytest.mark.slow
def test_hard_stop_ends_the_trainer_gracefully_within_the_grace_period(tmp_path, cache_dir):
    """Stop's SIGTERM reaches the trainer, which ends "stopped" with its best checkpoint; log.txt has each line once."""
    run = RunStore(tmp_path).create(_tiny_config(epochs=400))  # minutes of epochs: the stop lands mid-training
    run.launch()
    wait_for(lambda: run.epochs(), 240, run)
    assert run.kill(grace=120)
    status = run.wait(timeout=30)
    assert status.state == "stopped", run.log_tail()  # SIGKILL would have left it "interrupted"
    assert run.model_path.exists(), "the best checkpoint so far is kept"
    log = run.log_path.read_text()
    assert log.count("epoch 1 (finetune)") == 1 and log.count("device: DevicePlan") == 1, log
    assert log.count("stopped by request") == 1


def test_a_sigterm_also_leaves_a_stop_request_that_a_swallowed_exception_cannot_lose(tmp_path):
    import signal

    from core.jobs.run import _stop_on_sigterm
    from core.store.runs import StopRequested

    run = RunStore(tmp_path).create(_tiny_config())
    with pytest.raises(StopRequested):
        _stop_on_sigterm(run)(signal.SIGTERM, None)
    assert run.stop_requested()  # the progress callback raises again after the next batch


def test_list_is_newest_first_by_creation_time_whatever_the_folder_name(tmp_path):
    """A shipped run whose id is not a date (models/starter-*) does not sort ahead of a run made after it."""
    from core.store.runs import Run

    store = RunStore(tmp_path)
    older = store.create(preset("Quick CPU demo"))
    starter = tmp_path / "starter-model"
    older.path.rename(starter)
    Run(starter).update_status(created_at="2026-01-01T00:00:00+00:00")
    newer = store.create(preset("Quick CPU demo"))
    assert [run.id for run in store.list()] == [newer.id, "starter-model"]


def test_history_tail_reads_only_new_lines_waits_for_torn_ones_and_restarts_on_a_rewrite(tmp_path):
    run = RunStore(tmp_path).create(_tiny_config())
    tail = HistoryTail(run.history_path)
    assert tail.rows() == []  # no history yet
    run.append_history({"type": "epoch", "epoch": 1, "loss": 0.5})
    assert [r["epoch"] for r in tail.rows()] == [1]
    with open(run.history_path, "a") as handle:
        handle.write('{"type": "epoch", "epoch": 2, "lo')  # the trainer is mid-write
    assert [r["epoch"] for r in tail.rows()] == [1]
    with open(run.history_path, "a") as handle:
        handle.write('ss": 0.4}\n')  # … and finishes the line
    assert [r.get("loss") for r in tail.rows()] == [0.5, 0.4]
    offset = tail._offset
    run.append_history({"type": "step", "epoch": 3, "step": 1})
    assert len(tail.rows()) == 3 and tail._offset > offset  # parsed from where it left off
    assert tail.rows() == read_jsonl(run.history_path)
    run.truncate_history(1)  # a resume rewrites the file (new inode, shorter): read again from the start
    assert [r["epoch"] for r in latest_epochs(tail.rows())] == [1]
    assert tail.rows() == read_jsonl(run.history_path)


def test_a_launched_trainer_runs_at_a_lower_priority_than_its_launcher(tmp_path, monkeypatch):
    run = RunStore(tmp_path / "runs").create(_tiny_config())
    report = "import os, sys; open(sys.argv[-1] + '/nice.txt', 'w').write(str(os.getpriority(os.PRIO_PROCESS, 0)))"
    probe = ("import os, sys; from core.store.runs import lower_own_priority; lower_own_priority(os.environ); "
             "lower_own_priority(os.environ); " + report.split("; ", 1)[1])
    own = os.getpriority(os.PRIO_PROCESS, 0)
    monkeypatch.delenv(TRAINER_NICE_ENV, raising=False)
    run.spawn(command=[sys.executable, "-c", probe]).wait(30)
    assert int((run.path / "nice.txt").read_text()) == max(own, DEFAULT_TRAINER_NICE)  # applied once, not twice
    other = RunStore(tmp_path / "runs").create(_tiny_config())
    other.spawn(env={TRAINER_NICE_ENV: "3"}, command=[sys.executable, "-c", probe]).wait(30)
    assert int((other.path / "nice.txt").read_text()) == max(own, 3)
    # a process started outside the launcher (a terminal's `python -m core.train`) keeps its priority
    out = subprocess.run([sys.executable, "-c", probe.replace("sys.argv[-1] + '/nice.txt'", "'" + str(tmp_path / "x") + "'")],
                         env={k: v for k, v in os.environ.items() if k != TRAINER_NICE_ENV}, cwd=REPO_ROOT, timeout=30)
    assert out.returncode == 0 and int((tmp_path / "x").read_text()) == own
    assert trainer_nice({TRAINER_NICE_ENV: "99"}) == 19 and trainer_nice({TRAINER_NICE_ENV: "soon"}) == DEFAULT_TRAINER_NICE
