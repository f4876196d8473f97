"""The sweep coordinator: one process that trains the members (one after another, or one per GPU), with a heartbeat, pause and cancel."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from core.jobs.sweep.grid import describe
from core.jobs.sweep.results import best_member, sweep_results
from core.jobs.sweep.store import DONE, ENDINGS, TO_RUN, Sweep
from core.store.heartbeat import StatusWriter
from core.store.runs import Run, RunError
from core.store.status import now_iso

log = logging.getLogger("cxr_studio.sweep")


def visible_gpus() -> list[str]:
    """The GPUs members may be put on: ``CUDA_VISIBLE_DEVICES`` when set, else those ``nvidia-smi`` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [gpu.strip() for gpu in env.split(",") if gpu.strip() and gpu.strip() != "-1"]
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()] if listed.returncode == 0 else []


def member_slots(gpus: int | None = None) -> list[str | None]:
    """Where members run side by side: one per GPU when two or more are visible, else one at a time (None).

    ``gpus`` overrides the count (the GPUs are then ``0..gpus-1``).
    """
    ids = [str(i) for i in range(gpus)] if gpus is not None else visible_gpus()
    return ids if len(ids) > 1 else [None]


class Coordinator:
    """Works through a sweep's queue: the next member on each free slot, until all are done, or a pause or cancel.

    Each member is a ``core.train`` process in the coordinator's process group (a hard stop of the
    coordinator reaches it), with ``CUDA_VISIBLE_DEVICES`` set to its slot's GPU. A member starts at
    most once per coordinator session, so a member stopped by hand is not restarted behind the user's back.
    """

    def __init__(self, sweep: Sweep, writer: StatusWriter, *, slots: Sequence[str | None] = (None,),
                 trainer: Sequence[str] | None = None, poll: float = 0.5):
        self.sweep = sweep
        self.writer = writer
        self.slots = list(slots)
        self.trainer = list(trainer) if trainer else None  # None: python -m core.train
        self.poll = poll
        self._signalled = False
        self._last_report: tuple[float, str] | None = None

    def pause_now(self, *_: Any) -> None:
        """A SIGTERM: end as on a pause request (members stop after their batch; the sweep can resume)."""
        self._signalled = True

    def run(self) -> str:
        """Returns how the sweep ended: "finished", "paused" or "cancelled"."""
        members = [run for run, _ in self.sweep.members()]
        tried: set[str] = set()
        running: dict[int, tuple[Run, subprocess.Popen]] = {}
        ending: str | None = None
        while True:
            for slot, (member, proc) in list(running.items()):
                if proc.poll() is not None:
                    del running[slot]
                    self._settle(member, proc.returncode)
            if ending is None:
                ending = ("cancelled" if self.sweep.cancel_path.exists() else
                          "paused" if self.sweep.pause_path.exists() or self._signalled else None)
                if ending:
                    log.info("%s requested: stopping %d member(s) after their current batch",
                             "cancel" if ending == "cancelled" else "pause", len(running))
                    for member, _ in running.values():
                        member.request_stop()
            waiting = [] if ending else [m for m in members if m.id not in tried and _to_run(m)]
            for slot, gpu in enumerate(self.slots):
                if slot in running or not waiting:
                    continue
                member = waiting.pop(0)
                tried.add(member.id)
                proc = self._start(member, gpu)
                if proc is not None:
                    running[slot] = (member, proc)
            self._report(members, running, ending)
            if not running and not waiting:
                return ending or "finished"
            time.sleep(self.poll)

    def _start(self, member: Run, gpu: str | None) -> subprocess.Popen | None:
        resume = member.status().state != "created"
        try:
            proc = member.spawn(resume, {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None,
                                own_session=False, command=self.trainer)
        except (RunError, OSError) as exc:
            log.warning("member %s not started: %s", member.id, exc)
            return None
        log.info("member %s %s%s (pid %d)", member.id, "resumed" if resume else "started",
                 f" on GPU {gpu}" if gpu is not None else "", proc.pid)
        return proc

    def _settle(self, member: Run, code: int) -> None:
        """After a member's process ended: a trainer that died without saying how is marked failed; the sweep goes on.

        The member's ``launch.json`` gets the exit code and the end time (its wall time in the sweep).
        """
        member.write_json("launch.json", {**(member.launch_record() or {}), "ended": time.time(), "exit_code": code})
        status = member.status()
        if status.state in (*DONE, "stopped") or member.live_trainer():
            log.info("member %s ended: %s%s", member.id, status.state, f" ({status.error})" if status.error else "")
            return
        error = (f"the trainer process ended with exit code {code} without reporting (it crashed or was killed); "
                 "see the run's log.txt")
        member.update_status(state="failed", message="Failed", error=error, finished_at=now_iso(),
                             heartbeat_at=time.time())
        log.warning("member %s failed: %s", member.id, error)

    def _report(self, members: Sequence[Run], running: Mapping[int, tuple[Run, Any]], ending: str | None) -> None:
        states = [member.status() for member in members]
        done = sum(s.state in DONE for s in states)
        failed = sum(s.state == "failed" for s in states)
        progress = sum(1.0 if s.state in DONE else s.progress for s in states) / max(len(states), 1)
        training = [f"{member.id}" + (f" on GPU {self.slots[slot]}" if self.slots[slot] is not None else "")
                    for slot, (member, _) in sorted(running.items())]
        message = (f"{done} of {len(members)} members done" + (f", {failed} failed" if failed else "")
                   + (f"; training {', '.join(training)}" if training else "")
                   + ("; pausing…" if ending == "paused" else "; cancelling…" if ending == "cancelled" else ""))
        if self._last_report != (round(progress, 3), message):
            self._last_report = (round(progress, 3), message)
            self.writer.update(progress=progress, message=message)


def _to_run(member: Run) -> bool:
    return (member.path / "config.json").is_file() and member.status().state in TO_RUN


def _summary(sweep: Sweep) -> str:
    results = sweep_results(sweep, n_boot=0)
    finished = sum(r.state == "finished" for r in results)
    failed = sum(r.state == "failed" for r in results)
    best = best_member(results)
    text = f"{finished} of {len(results)} members finished" + (f", {failed} failed" if failed else "")
    if best is not None:
        text += f"; best on validation: {describe(best.settings)} (val AUC {best.val_auc:.3f})"
    return text


def run_sweep(sweep: Sweep, resume: bool = False, *, gpus: int | None = None, trainer: Sequence[str] | None = None,
              poll: float = 0.5) -> int:
    """Coordinate a sweep in this process until it is done, paused or cancelled; returns an exit code.

    Every outcome ends in the sweep's ``status.json``. Refuses (exit code 3, status untouched) when
    another coordinator is live or the sweep cannot be started as asked. SIGTERM pauses.
    """
    try:
        sweep.check_can_start(resume, by_trainer=True)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    slots = member_slots(gpus)
    writer = StatusWriter(sweep).start(state="running", error=None, finished_at=None, message="Starting…",
                                       started_at=sweep.raw_status().started_at or now_iso())
    coordinator = Coordinator(sweep, writer, slots=slots, trainer=trainer, poll=poll)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, coordinator.pause_now) if in_main else None
    log.info("sweep %s: %d members, %s", sweep.id, len(sweep.members()),
             f"one per GPU on GPUs {', '.join(map(str, slots))}" if slots != [None] else "one after another")
    try:
        ending = coordinator.run()
        summary = _summary(sweep)
        writer.update(state=ending, message=f"{ENDINGS[ending]}. {summary}.",
                      finished_at=None if ending == "paused" else now_iso(),
                      **({"progress": 1.0, "eta_seconds": 0} if ending == "finished" else {}))
        log.info("sweep %s %s: %s", sweep.id, ending, summary)
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure ends in the status, none is swallowed silently
        log.error("sweep coordinator failed:\n%s", traceback.format_exc())
        writer.update(state="failed", finished_at=now_iso(), error=f"{type(exc).__name__}: {exc}", message="Failed")
        return 2
    finally:
        writer.close()
        sweep.pause_path.unlink(missing_ok=True)
        sweep.cancel_path.unlink(missing_ok=True)
        if in_main:
            signal.signal(signal.SIGTERM, previous)
